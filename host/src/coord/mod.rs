//! Coordination: what triggers invocations and in which order.
//!
//! - [`script`]: JSON-lines scripts of triggers, with exact interleavings
//!   (pause an invocation before a host call, resume it later).
//!
//! Subscriptions, handoff, guarded actions and leases will live here too.

pub mod script;

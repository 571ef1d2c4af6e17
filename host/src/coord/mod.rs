//! Coordination: what triggers invocations, in which order, and what they
//! cause.
//!
//! - [`script`]: JSON-lines scripts of triggers, with exact interleavings
//!   (pause an invocation before a host call, resume it later).
//! - [`cascade`]: subscriptions and handoffs: the invocations an invocation
//!   causes, with causation and depth.
//! - [`outbox`]: delivering recorded actions to a sink, at least once, with
//!   idempotency keys; [`webhook`]: the HTTP sink (retries with backoff, a
//!   dead letter).
//! - [`operator`]: human pins, reverts and lease breaks.
//! - [`expiry`]: change requests that nobody resolves expire.
//! - [`schedule`]: `[[schedules]]`: agents triggered by time.
//! - [`import`]: `concord import` and `concord export`: entities in and out, as an operator.
//! - [`conflicts`]: the `concord conflicts` analysis.
//! - [`trace`]: causation chains (`concord audit --trace`).
//!
//! Guarded actions, handoffs and leases are host calls, enforced in
//! [`crate::gate`] and stored by [`crate::kb::Store`]; the rules that defer
//! them are in [`crate::policy::rules`].

pub mod cascade;
pub mod conflicts;
pub mod expiry;
pub mod import;
pub mod operator;
pub mod outbox;
pub mod schedule;
pub mod script;
pub mod trace;
pub mod webhook;

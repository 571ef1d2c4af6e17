//! End-to-end scenarios on real compiled agents, through the real host.
//!
//! One test binary with shared helpers ([`common`]). The agents are built
//! from source (`agents/`, `tests/agents/`) once per run; nothing binary is
//! checked in. Interleavings are made exact with breakpoints, never sleeps.

mod common;

mod agent_conformance;
mod audit;
mod bad_input;
mod cli;
mod conformance;
mod console;
mod coord;
mod coordination;
mod crash;
mod durability;
mod group_commit;
mod hardening;
mod http;
mod live;
mod model;
mod outbound;
mod postgres;
mod sandbox;
mod scaffold;
mod schedules;
mod serve;
mod serve_process;
mod trust;
mod webhook;

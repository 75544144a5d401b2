//! A deterministic simulator of the whole platform.
//!
//! One process, one thread, one seed: the order service (HTTP placement,
//! replies, timers), the outbox publishers, a Kafka-like broker, and the
//! inventory and payment consumers, all running the production deciders of
//! `saldo-domain` through the same load / decide / commit / acknowledge rhythm
//! as the hosts, on the in-memory store. Nothing here re-implements a
//! business rule.
//!
//! Faults are drawn from the seed ([`Profile`]): duplicate deliveries,
//! redelivery after a consumer crash, crashes before commit, before
//! acknowledgement and before publishing, publisher crashes between
//! publishing and marking, stalled partitions (so deadlines fire), clock
//! jumps, client retries; declines and stock contention come from the
//! workload. After a bounded number of steps the faults stop and the run
//! continues calmly to quiescence.
//!
//! Faults can also be injected by hand at any step ([`fault`]), and a run's
//! world can be given by hand ([`scenario`]) instead of drawn from the seed:
//! the browser harness's walkthroughs. A trace file reproduces its run and a
//! [`Player`] steps through it forwards and backwards ([`replay`]); [`view`]
//! renders every table at the current step.
//!
//! Invariants ([`invariants`]) are checked after every commit and, from
//! scratch, at quiescence. The same seed and configuration always produce
//! the same trace and trace hash, natively and in WebAssembly.
//!
//! What the broker may reorder: messages of different orders, freely (they
//! live on different partitions or interleave in one); messages of one
//! order, never, except that a redelivery repeats an earlier message after
//! later ones, as Kafka does after a consumer crash.
//!
//! # Example
//!
//! ```
//! use saldo_sim::{Profile, SimConfig, run};
//!
//! let config = SimConfig::new(7, 20, Profile::Heavy);
//! let report = run(config.clone(), false);
//! assert!(report.violation.is_none(), "every invariant held");
//! assert_eq!(report.stats.orders_confirmed + report.stats.orders_cancelled, 20);
//! // The same seed gives the same trace, byte for byte.
//! assert_eq!(run(config, false).trace_hash, report.trace_hash);
//! ```

pub mod broker;
pub mod config;
pub mod fault;
pub mod invariants;
pub mod recorded;
pub mod replay;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod trace;
pub mod view;

pub use config::{Faults, Profile, SimConfig};
pub use fault::Fault;
pub use replay::{Player, Source, TraceFile, TraceHeader};
pub use scenario::{Scenario, Walkthrough, walkthrough, walkthroughs};
pub use sim::{Handlers, Report, Simulation, Stats, StepOutcome, ViolationReport, run};

#[cfg(test)]
mod mutants_tests;

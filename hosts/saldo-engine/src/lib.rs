//! Saldo's engine: the rhythm of ADR 0005, written once for every host path.
//!
//! ```text
//! receive -> load (one round trip per table) -> decide (pure, in order, against an overlay)
//!         -> commit (one transaction) -> acknowledge
//! ```
//!
//! - [`Store`] is the one storage port: load a batch's read set, commit a
//!   batch's merged decisions, and the few reads around them (due timers,
//!   ledger entries, readiness, dead letters). PostgreSQL implements it in
//!   `saldo-postgres`; [`MemoryBackend`] implements it in memory for
//!   `saldo dev` and tests.
//! - [`execute_batch`] is the one re-decide loop: it decides many inputs
//!   with the sdk's [`saldo_domain::batch::Batch`] and commits them once; a
//!   conflict re-decides the batch from fresh state a bounded number of
//!   times, then falls back to smaller batches. [`execute`] is a batch of one.
//! - [`Deliverer`] is the one delivery loop (decode, decide, commit, with
//!   the retry and poison policy and dead letters); the Kafka consumer and
//!   `saldo dev`'s bus hand it their messages and acknowledge after it.
//! - [`timers`] fires due saga deadlines in batches, for the order service
//!   and for `saldo dev`.
//! - [`retention`] purges each service's inbox receipts and idempotency
//!   records past their horizons, in bounded statements (ADR 0015).
//! - [`GroupCommit`] gathers concurrent HTTP requests of one kind into
//!   shared transactions, each request with its own answer.
//! - [`OutboxSource`] is the outbox's port: what a publisher claims, marks
//!   and waits for.
//! - [`OperatorStore`] is the operator API's read port: orders by state
//!   and age, one service's part of an order's story, dead letters and
//!   audit records, each bounded by [`PAGE_MAX`] (ADR 0017).
//! - [`telemetry`]: OpenTelemetry spans that continue each message's W3C
//!   traceparent; a committed decision exports the spans of the messages
//!   it emits (ADR 0020). Off, and free, until the binary enables it.
//! - [`wall_clock`]: hosts own the clock; the sdk takes time as a parameter.
//!
//! The engine owns no business rule: every decision is the sdk's. It knows
//! no SQL and no Kafka: adapters meet here and in the binary only.

mod delivery;
mod group;
mod memory;
mod operator;
mod outbox;
pub mod retention;
mod run;
mod store;
pub mod telemetry;
pub mod timers;

pub use delivery::{
    ATTEMPTS_MAX, BACKOFF_INITIAL, BACKOFF_MAX, DEAD_LETTER_ATTEMPTS_MAX, DeadLetter,
    DeadLetterSink, Deliverer, DeliveryError, Handled, Incoming, outcome_name,
};
pub use group::{Decider, GROUP_COMMIT_MAX, GROUP_COMMIT_WORKERS, GROUP_QUEUE_MAX, GroupCommit};
pub use memory::{DEAD_LETTERS_KEPT_MAX, MemoryBackend};
pub use operator::{
    AuditEntry, OperatorStore, OrderQuery, PAGE_MAX, SAGA_AGE_INTERVAL, saga_age, watch_saga_age,
};
pub use outbox::{OutboxRecord, OutboxSource};
pub use run::{BATCH_REDECIDE_MAX, ExecuteFailure, InputFailure, execute, execute_batch, read};
pub use store::{CommitFailure, Store, Unavailable};

use saldo_types::Timestamp;

/// The wall clock, as the sdk's timestamp (hosts own the clock).
pub fn wall_clock() -> Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_ms(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

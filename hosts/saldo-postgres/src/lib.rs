//! PostgreSQL storage for Saldo.
//!
//! [`PgStore`] implements the two storage operations of the rhythm (ADR 0005)
//! on PostgreSQL: [`PgStore::load`] reads a [`saldo_domain::decision::ReadSet`]
//! into a snapshot, and [`PgStore::commit`] applies a
//! [`saldo_domain::Decision`] in one transaction, checking the version of
//! every row it writes. A conflict rolls everything back and is reported as
//! [`CommitError`]; [`PgStore::execute`] then decides again from fresh state.
//!
//! The adapter owns no business rule: it maps rows to tables and back, and
//! seals postings into the hash chain with the sdk's own `Entry::seal_at`.
//! Each service's tables live in its own schema (`orders`, `inventory`,
//! `payment`); [`migrate`] applies the migrations under `migrations/`.

mod migrate;
mod operator;
pub mod outbox;
pub mod reconcile;
mod store;
mod tables;
pub mod testing;

pub use migrate::{AppliedMigration, MIGRATOR, migrate};
pub use outbox::{
    CLAIM_SETTINGS, LANES, PgOutbox, RETENTION, begin_claim, claim_sql, outbox_channel,
};
pub use saldo_domain::store::CommitError;
pub use store::{ACQUIRE_TIMEOUT, Dump, PgCommitError, PgStore, StoreError, schema};

//! The storage port.

use async_trait::async_trait;
use saldo_domain::batch::{BatchReadSet, Commit, Loaded};
use saldo_domain::messages::Service;
use saldo_domain::retention::Horizons;
use saldo_domain::store::{CommitError, Purged};
use saldo_ledger::{AccountId, Entry};
use saldo_types::{OrderId, Timestamp};

use crate::delivery::DeadLetter;

/// The store could not be reached or answered with an error. The text is
/// for logs; callers show users only that the store is unavailable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why a commit did not happen. Nothing was written in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitFailure {
    /// Someone else changed what the batch read: decide again.
    #[error(transparent)]
    Conflict(CommitError),
    /// The store failed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The store refused this commit for a reason that deciding again
    /// cannot change (a constraint, a value out of range). A batch with
    /// such an input is split until the input stands alone.
    #[error("the store refused the commit: {0}")]
    Refused(String),
}

/// One place where Saldo's tables live: PostgreSQL in production, memory in
/// `saldo dev`, the simulator and tests.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Loads what a batch needs, with versions, in one round trip per table.
    async fn load(&self, read_set: &BatchReadSet) -> Result<Loaded, Unavailable>;

    /// Applies a batch's merged decisions atomically, checking every
    /// version it expects.
    async fn commit(&self, commit: Commit, now: Timestamp) -> Result<(), CommitFailure>;

    /// Orders whose saga deadline is due at `now`, earliest first.
    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<OrderId>, Unavailable>;

    /// The newest ledger entries that move `account`, newest first.
    async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable>;

    /// Records a message `consumer` could not handle.
    async fn record_dead_letter(
        &self,
        consumer: Service,
        letter: &DeadLetter,
    ) -> Result<(), Unavailable>;

    /// Deletes up to `limit` of `service`'s inbox receipts older than the
    /// inbox horizon and up to `limit` of its expired idempotency records
    /// (`saldo_domain::retention`, ADR 0015), each in one short statement.
    async fn purge(
        &self,
        service: Service,
        horizons: &Horizons,
        now: Timestamp,
        limit: usize,
    ) -> Result<Purged, Unavailable>;

    /// Whether the store answers (for `/readyz`).
    async fn ready(&self) -> Result<(), Unavailable>;
}

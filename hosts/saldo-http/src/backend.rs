//! Where the API's decisions are loaded from and committed to.
//!
//! The API is written once against [`Backend`]: the in-memory store of
//! `saldo dev` and PostgreSQL in production both implement it, so the same
//! handlers, deciders and commit rhythm run in both modes.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use saldo_domain::MemoryStore;
use saldo_domain::decision::{Decided, Decision, ReadSet, Snapshot};
use saldo_domain::store::{CommitError, DECIDE_ATTEMPTS_MAX};
use saldo_ledger::{AccountId, Entry};
use saldo_postgres::{PgCommitError, PgStore};
use saldo_types::Timestamp;

/// The store could not be reached or answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why a commit did not happen. Nothing was written in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitFailure {
    /// Someone else changed what the decision read: decide again.
    #[error(transparent)]
    Conflict(CommitError),
    /// The store failed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why [`execute`] gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteFailure<E> {
    /// The decider refused the request.
    #[error(transparent)]
    Rejected(E),
    /// Conflicts persisted through every attempt (heavy contention).
    #[error("still conflicting after {DECIDE_ATTEMPTS_MAX} attempts: {0}")]
    Conflict(CommitError),
    /// The store failed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// One service's tables, as the HTTP API needs them.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Loads what a decider needs, with versions.
    async fn load(&self, read_set: &ReadSet) -> Result<Snapshot, Unavailable>;
    /// Applies a decision atomically, checking every version it expects.
    async fn commit(&self, decision: Decision, now: Timestamp) -> Result<(), CommitFailure>;
    /// The newest ledger entries that move `account`, newest first.
    async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable>;
    /// Whether the store answers (for `/readyz`).
    async fn ready(&self) -> Result<(), Unavailable>;
}

/// The rhythm over any backend: load, decide, commit; on a version conflict
/// decide again from fresh state, at most [`DECIDE_ATTEMPTS_MAX`] times.
pub async fn execute<R, E>(
    backend: &dyn Backend,
    read_set: &ReadSet,
    now: Timestamp,
    mut decide: impl FnMut(&Snapshot) -> Result<Decided<R>, E> + Send,
) -> Result<R, ExecuteFailure<E>> {
    let mut last_conflict = None;
    for _ in 0..DECIDE_ATTEMPTS_MAX {
        let snapshot = backend.load(read_set).await?;
        let decided = decide(&snapshot).map_err(ExecuteFailure::Rejected)?;
        match backend.commit(decided.decision, now).await {
            Ok(()) => return Ok(decided.reply),
            Err(CommitFailure::Conflict(conflict)) => last_conflict = Some(conflict),
            Err(CommitFailure::Unavailable(error)) => return Err(error.into()),
        }
    }
    Err(ExecuteFailure::Conflict(
        last_conflict.expect("at least one attempt ran"),
    ))
}

/// The in-memory store shared by every service of `saldo dev`. A commit
/// wakes whoever waits on [`MemoryBackend::committed`] (the in-process bus).
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<MemoryStore>>,
    committed: Arc<tokio::sync::Notify>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Exclusive access to the store, for the bus and for seeding.
    pub fn lock(&self) -> MutexGuard<'_, MemoryStore> {
        // A panic while holding the lock leaves the store as it was before
        // the panicking commit: commits apply all or nothing.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notified after every commit that wrote something.
    pub fn committed(&self) -> &tokio::sync::Notify {
        &self.committed
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn load(&self, read_set: &ReadSet) -> Result<Snapshot, Unavailable> {
        Ok(self.lock().load(read_set))
    }

    async fn commit(&self, decision: Decision, now: Timestamp) -> Result<(), CommitFailure> {
        let wrote = !decision.is_empty();
        self.lock()
            .commit(decision, now)
            .map_err(CommitFailure::Conflict)?;
        if wrote {
            self.committed.notify_one();
        }
        Ok(())
    }

    async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        let store = self.lock();
        Ok(store
            .entries()
            .iter()
            .rev()
            .filter(|entry| entry.posting.legs.iter().any(|leg| &leg.account == account))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn ready(&self) -> Result<(), Unavailable> {
        Ok(())
    }
}

#[async_trait]
impl Backend for PgStore {
    async fn load(&self, read_set: &ReadSet) -> Result<Snapshot, Unavailable> {
        PgStore::load(self, read_set)
            .await
            .map_err(|error| Unavailable(error.to_string()))
    }

    async fn commit(&self, decision: Decision, now: Timestamp) -> Result<(), CommitFailure> {
        PgStore::commit(self, decision, now)
            .await
            .map_err(|error| match error {
                PgCommitError::Conflict(conflict) => CommitFailure::Conflict(conflict),
                PgCommitError::Store(error) => Unavailable(error.to_string()).into(),
            })
    }

    async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        PgStore::entries_of(self, account, limit)
            .await
            .map_err(|error| Unavailable(error.to_string()))
    }

    async fn ready(&self) -> Result<(), Unavailable> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(drop)
            .map_err(|error| Unavailable(error.to_string()))
    }
}

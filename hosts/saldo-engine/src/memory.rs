//! The in-memory store behind the port: `saldo dev` and tests.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use saldo_domain::MemoryStore;
use saldo_domain::batch::{BatchReadSet, Commit, Loaded};
use saldo_domain::messages::Service;
use saldo_domain::retention::Horizons;
use saldo_domain::store::Purged;
use saldo_ledger::{AccountId, Entry};
use saldo_types::{OrderId, Timestamp};

use crate::delivery::DeadLetter;
use crate::store::{CommitFailure, Store, Unavailable};

/// The most dead letters the in-memory store keeps; older ones are dropped
/// (they were logged as alerts when they arrived).
pub const DEAD_LETTERS_KEPT_MAX: usize = 1_000;

/// The in-memory store shared by every service of `saldo dev`. A commit
/// wakes whoever waits on [`MemoryBackend::committed`] (the in-process bus).
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<MemoryStore>>,
    dead_letters: Arc<Mutex<Vec<(Service, DeadLetter)>>>,
    committed: Arc<tokio::sync::Notify>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the store as it was before the
    // panicking commit: commits apply all or nothing.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Exclusive access to the store, for the bus and for seeding.
    pub fn lock(&self) -> MutexGuard<'_, MemoryStore> {
        locked(&self.store)
    }

    /// Notified after every commit that wrote something.
    pub fn committed(&self) -> &tokio::sync::Notify {
        &self.committed
    }

    /// The dead letters recorded, oldest first.
    pub fn dead_letters(&self) -> Vec<(Service, DeadLetter)> {
        locked(&self.dead_letters).clone()
    }
}

#[async_trait]
impl Store for MemoryBackend {
    async fn load(&self, read_set: &BatchReadSet) -> Result<Loaded, Unavailable> {
        Ok(self.lock().load_batch(read_set))
    }

    async fn commit(&self, commit: Commit, now: Timestamp) -> Result<(), CommitFailure> {
        let wrote = !commit.is_empty();
        self.lock()
            .commit(commit, now)
            .map_err(CommitFailure::Conflict)?;
        if wrote {
            self.committed.notify_one();
        }
        Ok(())
    }

    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<OrderId>, Unavailable> {
        Ok(self.lock().due_timers(now, limit))
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

    async fn record_dead_letter(
        &self,
        consumer: Service,
        letter: &DeadLetter,
    ) -> Result<(), Unavailable> {
        let mut letters = locked(&self.dead_letters);
        if letters.len() == DEAD_LETTERS_KEPT_MAX {
            letters.remove(0);
        }
        letters.push((consumer, letter.clone()));
        Ok(())
    }

    async fn purge(
        &self,
        service: Service,
        horizons: &Horizons,
        now: Timestamp,
        limit: usize,
    ) -> Result<Purged, Unavailable> {
        Ok(self.lock().purge(service, horizons, now, limit))
    }

    async fn ready(&self) -> Result<(), Unavailable> {
        Ok(())
    }
}

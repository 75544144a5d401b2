//! The in-memory store behind the port: `saldo dev` and tests.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use saldo_domain::MemoryStore;
use saldo_domain::batch::{BatchReadSet, Commit, Loaded};
use saldo_domain::decision::{Row, Versioned};
use saldo_domain::messages::MessageId;
use saldo_domain::messages::Service;
use saldo_domain::operator::DeadLetterRow;
use saldo_domain::order::{OrderRow, OrderStatus};
use saldo_domain::retention::Horizons;
use saldo_domain::store::{CommitError, Purged};
use saldo_domain::story::StoryPart;
use saldo_ledger::{AccountId, Entry};
use saldo_types::{OrderId, Timestamp};

use crate::delivery::DeadLetter;
use crate::operator::{AuditEntry, OperatorStore, OrderQuery, PAGE_MAX};
use crate::store::{CommitFailure, Store, Unavailable};

/// The most dead letters the in-memory store keeps; older ones are dropped
/// (they were logged as alerts when they arrived).
pub const DEAD_LETTERS_KEPT_MAX: usize = 1_000;

/// The in-memory store shared by every service of `saldo dev`. A commit
/// wakes whoever waits on [`MemoryBackend::committed`] (the in-process bus).
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<MemoryStore>>,
    dead_letters: Arc<Mutex<DeadLetters>>,
    committed: Arc<tokio::sync::Notify>,
}

/// The dead letters kept in memory, each with its id (ids start at 1 and
/// are never reused, as in the database's tables).
#[derive(Debug, Default)]
struct DeadLetters {
    last_id: u64,
    rows: Vec<DeadLetterRow>,
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

    /// The dead letters kept, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetterRow> {
        locked(&self.dead_letters).rows.clone()
    }
}

#[async_trait]
impl Store for MemoryBackend {
    async fn load(&self, read_set: &BatchReadSet) -> Result<Loaded, Unavailable> {
        Ok(self.lock().load_batch(read_set))
    }

    async fn commit(&self, mut commit: Commit, now: Timestamp) -> Result<(), CommitFailure> {
        let wrote = !commit.is_empty();
        // Dead letters live beside the store: checked first, removed only
        // once the rest committed, both under their locks (all or nothing).
        let mut letters = locked(&self.dead_letters);
        let settled = std::mem::take(&mut commit.dead_letters_settled);
        if let Some(gone) = settled.iter().find(|settled| {
            !letters
                .rows
                .iter()
                .any(|row| row.service == settled.service && row.id == settled.id)
        }) {
            return Err(CommitFailure::Conflict(CommitError::Aborted(format!(
                "dead letter {} of {} was already settled",
                gone.id, gone.service
            ))));
        }
        self.lock()
            .commit(commit, now)
            .map_err(CommitFailure::Conflict)?;
        letters.rows.retain(|row| {
            !settled
                .iter()
                .any(|settled| row.service == settled.service && row.id == settled.id)
        });
        drop(letters);
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
        if letters.rows.len() == DEAD_LETTERS_KEPT_MAX {
            letters.rows.remove(0);
        }
        letters.last_id += 1;
        let row = DeadLetterRow {
            id: letters.last_id,
            service: consumer,
            message_id: letter.message_id.map(|id| id.to_hex()),
            message_type: letter.message_type.map(str::to_owned),
            order_id: letter.order_id.clone(),
            error: letter.error.clone(),
            payload: letter.payload.clone(),
            received_at: crate::wall_clock(),
        };
        letters.rows.push(row);
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

/// The operator's reads over the in-memory tables. Published outbox rows
/// are removed at once in memory, so a story shows only unpublished ones.
#[async_trait]
impl OperatorStore for MemoryBackend {
    async fn oldest_pending_order(&self) -> Result<Option<Timestamp>, Unavailable> {
        let store = self.lock();
        Ok(store
            .rows()
            .filter_map(|(_, versioned)| match &versioned.value {
                Row::Order(order) if order.status() == OrderStatus::Pending => {
                    Some(order.created_at)
                }
                _ => None,
            })
            .min())
    }

    async fn orders(
        &self,
        query: &OrderQuery,
    ) -> Result<Vec<Versioned<Arc<OrderRow>>>, Unavailable> {
        let store = self.lock();
        let mut orders: Vec<Versioned<Arc<OrderRow>>> = store
            .rows()
            .filter_map(|(_, versioned)| match &versioned.value {
                Row::Order(order) => Some(Versioned {
                    version: versioned.version,
                    value: order.clone(),
                }),
                _ => None,
            })
            .filter(|order| matches_query(&order.value, query))
            .collect();
        orders.sort_by(|a, b| a.value.order_id.cmp(&b.value.order_id));
        orders.truncate(query.limit.min(PAGE_MAX));
        Ok(orders)
    }

    async fn story_part(
        &self,
        service: Service,
        order_id: &OrderId,
        received: &[MessageId],
    ) -> Result<StoryPart, Unavailable> {
        let store = self.lock();
        let mut part = store.story_part(service, order_id, received);
        drop(store);
        part.dead_letters = locked(&self.dead_letters)
            .rows
            .iter()
            .filter(|row| {
                row.service == service && row.order_id.as_deref() == Some(order_id.as_str())
            })
            .cloned()
            .collect();
        part.bound();
        Ok(part)
    }

    async fn dead_letters(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterRow>, Unavailable> {
        Ok(locked(&self.dead_letters)
            .rows
            .iter()
            .filter(|row| row.service == service && row.id > after.unwrap_or(0))
            .take(limit.min(PAGE_MAX))
            .cloned()
            .collect())
    }

    async fn dead_letter(
        &self,
        service: Service,
        id: u64,
    ) -> Result<Option<DeadLetterRow>, Unavailable> {
        Ok(locked(&self.dead_letters)
            .rows
            .iter()
            .find(|row| row.service == service && row.id == id)
            .cloned())
    }

    async fn audit(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, Unavailable> {
        let store = self.lock();
        Ok(store
            .audit_records()
            .iter()
            .zip(1u64..)
            .filter(|(record, id)| record.service == service && *id > after.unwrap_or(0))
            .take(limit.min(PAGE_MAX))
            .map(|(record, id)| AuditEntry {
                id,
                record: record.clone(),
            })
            .collect())
    }
}

/// Whether an order matches every filter of `query` that is set.
fn matches_query(order: &OrderRow, query: &OrderQuery) -> bool {
    query
        .status
        .is_none_or(|wanted| wanted == order.status().name())
        && query
            .awaiting
            .is_none_or(|wanted| wanted == order.saga.awaiting().name())
        && query
            .updated_before
            .is_none_or(|before| order.updated_at < before)
        && query
            .after
            .as_ref()
            .is_none_or(|after| &order.order_id > after)
}

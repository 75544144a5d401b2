//! The in-memory store: the same tables the PostgreSQL schemas hold, and a
//! commit that applies a [`Decision`](crate::decision::Decision) all or nothing with version checks.
//! The simulator, `saldo dev` and the browser harness run on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use saldo_idempotency::{IdempotencyRecord, ScopedKey};
use saldo_ledger::{Account, Entry, PostingId};
use saldo_types::{Money, OrderId, Timestamp};

use crate::batch::{Batch, BatchReadSet, Commit, Increment, Loaded};
use crate::decision::{Decided, InboxReceipt, ReadSet, Row, RowKey, Snapshot, Version, Versioned};
use crate::messages::{Envelope, MessageId, Service};
use crate::operator::AuditRecord;
use crate::retention::Horizons;
use crate::story::{OutboxMessage, ReceiptSeen, StoryPart, StoryRow};

/// The most times an input is decided again after version conflicts before
/// the conflict is reported to the caller.
pub const DECIDE_ATTEMPTS_MAX: u32 = 8;

/// Why a commit was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// A row's stored version differs from the one the decider saw.
    #[error("{key:?}: expected version {expected}, found {found}")]
    VersionConflict {
        /// The row.
        key: RowKey,
        /// The version the decision expected.
        expected: Version,
        /// The version stored.
        found: Version,
    },
    /// Another handling of the same message committed first.
    #[error("message {message_id} was already handled by {consumer}")]
    InboxConflict {
        /// The consumer.
        consumer: Service,
        /// The message.
        message_id: MessageId,
    },
    /// The idempotency record changed since it was loaded.
    #[error("idempotency key {key:?} changed concurrently")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// A posting with this id was sealed concurrently.
    #[error("posting {0} already exists")]
    PostingConflict(PostingId),
    /// The store aborted the transaction to break a deadlock between
    /// concurrent commits, or because another commit inserted the same key
    /// first; nothing was written.
    #[error("the store aborted the commit: {0}")]
    Aborted(String),
}

/// Why [`execute`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The decider refused the input.
    #[error(transparent)]
    Rejected(E),
    /// Conflicts persisted through [`DECIDE_ATTEMPTS_MAX`] attempts.
    #[error("still conflicting after {DECIDE_ATTEMPTS_MAX} attempts: {0}")]
    Conflict(CommitError),
}

/// One service's outbox: messages committed but not yet published.
#[derive(Debug, Clone, Default)]
struct Outbox {
    next_sequence: u64,
    pending: BTreeMap<u64, Arc<Envelope>>,
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Inbox receipts deleted.
    pub inbox: usize,
    /// Idempotency records deleted.
    pub idempotency: usize,
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its position in the service's outbox; publishing in this order keeps
    /// every order's messages in order.
    pub sequence: u64,
    /// The message, shared with whoever publishes it.
    pub envelope: Arc<Envelope>,
}

/// FxHash (from rustc): a fast hasher with no random state, so the row
/// table behaves the same in every run, natively and in WebAssembly.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedHasher(u64);

impl Hasher for FixedHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A deterministic `BuildHasher` for [`FixedHasher`].
pub type FixedState = BuildHasherDefault<FixedHasher>;

/// All of Saldo's tables, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    rows: HashMap<RowKey, Versioned<Row>, FixedState>,
    entries: Vec<Entry>,
    entry_by_posting: BTreeMap<PostingId, usize>,
    inbox: HashMap<(Service, MessageId), InboxReceipt, FixedState>,
    idempotency: BTreeMap<(Service, ScopedKey), Versioned<IdempotencyRecord<serde_json::Value>>>,
    outboxes: BTreeMap<Service, Outbox>,
    timers: BTreeSet<(Timestamp, OrderId)>,
    audit: Vec<AuditRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Loads what a decider asked for: a batch of one, seen as its input sees it.
    pub fn load(&self, read_set: &ReadSet) -> Snapshot {
        self.load_batch(&BatchReadSet::of([read_set]))
            .view(read_set)
    }

    /// Loads what a batch needs (see [`crate::batch`]).
    pub fn load_batch(&self, read_set: &BatchReadSet) -> Loaded {
        Loaded {
            rows: read_set
                .rows
                .iter()
                .filter_map(|key| self.rows.get(key).map(|row| (key.clone(), row.clone())))
                .collect(),
            postings: read_set
                .postings
                .iter()
                .filter_map(|id| {
                    self.entry_by_posting
                        .get(id)
                        .map(|index| (*id, self.entries[*index].posting.clone()))
                })
                .collect(),
            inbox: read_set
                .inbox
                .iter()
                .filter_map(|key| self.inbox.get(key).map(|receipt| (*key, receipt.clone())))
                .collect(),
            idempotency: read_set
                .idempotency
                .iter()
                .filter_map(|key| {
                    self.idempotency
                        .get(key)
                        .map(|record| (key.clone(), record.clone()))
                })
                .collect(),
        }
    }

    /// Applies a decision, or a batch's merged decisions, atomically: every
    /// check first, then every write.
    pub fn commit(&mut self, commit: impl Into<Commit>, now: Timestamp) -> Result<(), CommitError> {
        let commit = commit.into();
        if commit.is_empty() {
            return Ok(());
        }
        self.check(&commit)?;
        assert!(
            commit.dead_letters_settled.is_empty(),
            "dead letters live beside the store (the engine's MemoryBackend settles them)"
        );
        self.audit.extend(commit.audit);
        for write in commit.writes {
            let key = write.row.key();
            self.reschedule(&key, Some(&write.row));
            self.rows.insert(
                key,
                Versioned {
                    version: write.expected + 1,
                    value: write.row,
                },
            );
        }
        for increment in commit.increments {
            self.increment(increment);
        }
        for posting in commit.postings {
            let entry = Entry::seal(self.entries.last(), posting, now);
            self.entry_by_posting
                .insert(entry.posting.id, self.entries.len());
            self.entries.push(entry);
        }
        for receipt in commit.inbox {
            self.inbox
                .insert((receipt.consumer, receipt.message_id), receipt);
        }
        for write in commit.idempotency {
            let version = write.expected + 1;
            self.idempotency.insert(
                (write.service, write.key),
                Versioned {
                    version,
                    value: write.record,
                },
            );
        }
        for (service, envelope) in commit.outbox {
            let outbox = self.outboxes.entry(service).or_default();
            outbox
                .pending
                .insert(outbox.next_sequence, Arc::new(envelope));
            outbox.next_sequence += 1;
        }
        Ok(())
    }

    /// Keeps the timer index in step with an order row being replaced.
    fn reschedule(&mut self, key: &RowKey, row: Option<&Row>) {
        let Some(Row::Order(order)) = row else { return };
        if let Some(Versioned {
            value: Row::Order(previous),
            ..
        }) = self.rows.get(key)
            && let Some(deadline) = previous.deadline()
        {
            self.timers.remove(&(deadline, previous.order_id.clone()));
        }
        if let Some(deadline) = order.deadline() {
            self.timers.insert((deadline, order.order_id.clone()));
        }
    }

    /// Applies an increment: the account is opened if absent, and its
    /// version moves so a versioned writer of it notices.
    fn increment(&mut self, increment: Increment) {
        let key = RowKey::Account(increment.account.clone());
        let currency = increment.account.currency();
        let (version, mut account) = match self.rows.remove(&key) {
            Some(Versioned {
                version,
                value: Row::Account(account),
            }) => (version, account),
            Some(other) => panic!("row under {key:?} holds {:?}", other.value.key()),
            None => (0, Account::open(increment.account.clone())),
        };
        let moved = |amount: Money, delta: i64| {
            amount
                .checked_add(Money::from_minor(delta, currency))
                .expect("an account stays within range")
        };
        account.balance = moved(account.balance, increment.balance_minor);
        account.held = moved(account.held, increment.held_minor);
        assert!(
            account.within_rule(),
            "an increment keeps {} within its rule",
            account.id
        );
        self.rows.insert(
            key,
            Versioned {
                version: version + 1,
                value: Row::Account(account),
            },
        );
    }

    /// Checks every precondition of a commit.
    fn check(&self, commit: &Commit) -> Result<(), CommitError> {
        let mut keys: Vec<RowKey> = Vec::with_capacity(commit.writes.len());
        for write in &commit.writes {
            let key = write.row.key();
            let found = self.rows.get(&key).map_or(0, |row| row.version);
            if found != write.expected {
                return Err(CommitError::VersionConflict {
                    key,
                    expected: write.expected,
                    found,
                });
            }
            assert!(!keys.contains(&key), "a commit writes {key:?} twice");
            keys.push(key);
        }
        for receipt in &commit.inbox {
            if self
                .inbox
                .contains_key(&(receipt.consumer, receipt.message_id))
            {
                return Err(CommitError::InboxConflict {
                    consumer: receipt.consumer,
                    message_id: receipt.message_id,
                });
            }
        }
        for write in &commit.idempotency {
            let found = self
                .idempotency
                .get(&(write.service, write.key.clone()))
                .map_or(0, |record| record.version);
            if found != write.expected {
                return Err(CommitError::IdempotencyConflict {
                    key: write.key.to_string(),
                });
            }
        }
        if let Some(posting) = commit
            .postings
            .iter()
            .find(|posting| self.entry_by_posting.contains_key(&posting.id))
        {
            return Err(CommitError::PostingConflict(posting.id));
        }
        Ok(())
    }

    /// Up to `limit` unpublished messages of `service`, oldest first.
    pub fn outbox_pending(&self, service: Service, limit: usize) -> Vec<OutboxRow> {
        self.outboxes.get(&service).map_or_else(Vec::new, |outbox| {
            outbox
                .pending
                .iter()
                .take(limit)
                .map(|(sequence, envelope)| OutboxRow {
                    sequence: *sequence,
                    envelope: envelope.clone(),
                })
                .collect()
        })
    }

    /// How many messages of `service` wait to be published.
    pub fn outbox_backlog(&self, service: Service) -> usize {
        self.outboxes
            .get(&service)
            .map_or(0, |outbox| outbox.pending.len())
    }

    /// Marks messages as published (and, in memory, removes them at once:
    /// the retention rule of the database outbox, with a zero retention).
    pub fn mark_published(&mut self, service: Service, sequences: &[u64]) {
        let outbox = self.outboxes.entry(service).or_default();
        for sequence in sequences {
            outbox.pending.remove(sequence);
        }
    }

    /// Orders whose deadline is due at `now`, earliest first, at most `limit`.
    pub fn due_timers(&self, now: Timestamp, limit: usize) -> Vec<OrderId> {
        self.timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, order_id)| order_id.clone())
            .collect()
    }

    /// The earliest pending deadline, if any.
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.iter().next().map(|(at, _)| *at)
    }

    /// Every versioned row, in a fixed but unspecified order (the same in
    /// every run); sort by key where order matters to an output.
    pub fn rows(&self) -> impl Iterator<Item = (&RowKey, &Versioned<Row>)> {
        self.rows.iter()
    }

    /// One row.
    pub fn row(&self, key: &RowKey) -> Option<&Versioned<Row>> {
        self.rows.get(key)
    }

    /// The operators' audit records, oldest first (docs/adr/0017).
    pub fn audit_records(&self) -> &[AuditRecord] {
        &self.audit
    }

    /// The sealed ledger entries, in sequence.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every inbox receipt, in a fixed but unspecified order.
    pub fn inbox_receipts(&self) -> impl Iterator<Item = &InboxReceipt> {
        self.inbox.values()
    }

    /// Every idempotency record with its service and key, ordered.
    pub fn idempotency_records(
        &self,
    ) -> impl Iterator<
        Item = (
            Service,
            &ScopedKey,
            &Versioned<IdempotencyRecord<serde_json::Value>>,
        ),
    > {
        self.idempotency
            .iter()
            .map(|((service, key), record)| (*service, key, record))
    }

    /// Deletes up to `limit` inbox receipts of `service` older than the
    /// horizon and up to `limit` of its expired idempotency records, oldest
    /// key first (ADR 0015). Deleting changes no decision's outcome: a
    /// redelivery or retry past the horizon is absorbed by its decider.
    pub fn purge(
        &mut self,
        service: Service,
        horizons: &Horizons,
        now: Timestamp,
        limit: usize,
    ) -> Purged {
        let mut receipts: Vec<(Service, MessageId)> = self
            .inbox
            .iter()
            .filter(|(key, receipt)| {
                key.0 == service && horizons.receipt_purgeable(receipt.received_at, now)
            })
            .map(|(key, _)| *key)
            .collect();
        receipts.sort();
        receipts.truncate(limit);
        for key in &receipts {
            self.inbox.remove(key);
        }
        let records: Vec<(Service, ScopedKey)> = self
            .idempotency
            .iter()
            .filter(|(key, record)| {
                key.0 == service && horizons.record_purgeable(&record.value, now)
            })
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        for key in &records {
            self.idempotency.remove(key);
        }
        Purged {
            inbox: receipts.len(),
            idempotency: records.len(),
        }
    }

    /// What `service` knows about `order_id`, as [`StoryPart`]: its row,
    /// the messages its outbox still holds, the receipts of `received`, its
    /// ledger entries and audit records (dead letters live with the host).
    /// Published messages have left a memory outbox, so a story of a run
    /// whose messages were published lacks them.
    pub fn story_part(
        &self,
        service: Service,
        order_id: &OrderId,
        received: &[MessageId],
    ) -> StoryPart {
        let mut part = StoryPart::empty(service, order_id.clone());
        let keys = match service {
            Service::Order => vec![RowKey::Order(order_id.clone())],
            Service::Inventory => vec![RowKey::Reservation(order_id.clone())],
            Service::Payment => vec![RowKey::Payment(order_id.clone())],
        };
        part.rows = keys
            .iter()
            .filter_map(|key| self.row(key))
            .map(|stored| StoryRow {
                version: stored.version,
                row: stored.value.clone(),
            })
            .collect();
        part.outbox = self
            .outbox_pending(service, usize::MAX)
            .into_iter()
            .filter(|pending| &pending.envelope.order_id == order_id)
            .map(|pending| OutboxMessage {
                sequence: pending.sequence,
                bytes: pending.envelope.encode(),
                created_at: pending.envelope.occurred_at,
                published_at: None,
            })
            .collect();
        part.inbox = self
            .inbox_receipts()
            .filter(|receipt| receipt.consumer == service && received.contains(&receipt.message_id))
            .map(|receipt| ReceiptSeen {
                consumer: service,
                message_id: receipt.message_id.to_hex(),
                received_at: receipt.received_at,
            })
            .collect();
        part.inbox
            .sort_by(|a, b| (a.received_at, &a.message_id).cmp(&(b.received_at, &b.message_id)));
        if service == Service::Payment {
            part.entries = self
                .entries()
                .iter()
                .filter(|entry| entry.posting.memo.order_id.as_ref() == Some(order_id))
                .cloned()
                .collect();
        }
        let target = format!("order:{order_id}");
        part.audit = self
            .audit_records()
            .iter()
            .filter(|record| {
                record.service == service
                    && (record.target == target
                        || record.order_id.as_deref() == Some(order_id.as_str()))
            })
            .cloned()
            .collect();
        part
    }

    /// How many inbox receipts a consumer holds.
    pub fn inbox_len(&self, consumer: Service) -> usize {
        self.inbox
            .keys()
            .filter(|(service, _)| *service == consumer)
            .count()
    }
}

/// Runs the rhythm once: load, decide, commit; on a version conflict decide
/// again from fresh state, at most [`DECIDE_ATTEMPTS_MAX`] times. It is a
/// [`Batch`] of one, as every host's rhythm is.
pub fn execute<R, E>(
    store: &mut MemoryStore,
    read_set: &ReadSet,
    now: Timestamp,
    mut decide: impl FnMut(&Snapshot) -> Result<Decided<R>, E>,
) -> Result<R, ExecuteError<E>> {
    let union = BatchReadSet::of([read_set]);
    let mut last_conflict = None;
    for _ in 0..DECIDE_ATTEMPTS_MAX {
        let mut batch = Batch::new(store.load_batch(&union));
        let reply = batch
            .decide(read_set, &mut decide)
            .map_err(ExecuteError::Rejected)?;
        match store.commit(batch.finish(), now) {
            Ok(()) => return Ok(reply),
            Err(conflict) => last_conflict = Some(conflict),
        }
    }
    Err(ExecuteError::Conflict(
        last_conflict.expect("at least one attempt ran"),
    ))
}

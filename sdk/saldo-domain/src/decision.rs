//! Decisions as data: what one handling of one input must commit, atomically.
//!
//! Every service follows one rhythm (docs/adr/0005):
//! 1. receive an input (an HTTP request, a message, a due timer);
//! 2. **load** the [`ReadSet`] it names into a [`Snapshot`] (rows with their versions);
//! 3. **decide**: a pure function `(snapshot, input, now) -> Decided`;
//! 4. **commit** the [`Decision`] in one transaction, checking every
//!    expected version; a conflict aborts it and the input is decided again
//!    from fresh state;
//! 5. acknowledge the input only after the commit.
//!
//! Because a decision is data, the same deciders run on PostgreSQL, on the
//! in-memory [`crate::MemoryStore`] (simulator, dev mode) and in the browser.

use std::collections::BTreeMap;
use std::sync::Arc;

use saldo_idempotency::{Fingerprint, IdempotencyRecord, ScopedKey};
use saldo_ledger::{Account, AccountId, Posting, PostingId};
use saldo_types::{CustomerId, OrderId, Sku, Timestamp};
use serde::{Deserialize, Serialize};

use crate::inventory::{ReservationRow, StockRow};
use crate::messages::{Envelope, MessageId, Service};
use crate::operator::{AuditRecord, DeadLetterRef};
use crate::order::OrderRow;
use crate::payment::{PaymentRow, WalletRow};

/// A row's version. `0` means "absent": a write expecting version 0 is an insert.
pub type Version = u64;

/// The primary key of a versioned row. Each kind belongs to one service's schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "table", content = "key", rename_all = "snake_case")]
pub enum RowKey {
    /// order.orders
    Order(OrderId),
    /// inventory.stock
    Stock(Sku),
    /// inventory.reservations
    Reservation(OrderId),
    /// payment.payments
    Payment(OrderId),
    /// payment.wallets
    Wallet(CustomerId),
    /// payment.accounts
    Account(AccountId),
}

impl RowKey {
    /// The service whose schema holds the row.
    pub fn service(&self) -> Service {
        match self {
            RowKey::Order(_) => Service::Order,
            RowKey::Stock(_) | RowKey::Reservation(_) => Service::Inventory,
            RowKey::Payment(_) | RowKey::Wallet(_) | RowKey::Account(_) => Service::Payment,
        }
    }
}

/// A versioned row's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "table", content = "row", rename_all = "snake_case")]
pub enum Row {
    /// An order and its saga, shared: order rows are the largest, and
    /// loading one should not copy it.
    Order(Arc<OrderRow>),
    /// A SKU's stock.
    Stock(StockRow),
    /// An order's reservation.
    Reservation(ReservationRow),
    /// An order's payment.
    Payment(PaymentRow),
    /// A customer's wallet settings.
    Wallet(WalletRow),
    /// A ledger account's running totals.
    Account(Account),
}

impl Row {
    /// The row's primary key.
    pub fn key(&self) -> RowKey {
        match self {
            Row::Order(row) => RowKey::Order(row.order_id.clone()),
            Row::Stock(row) => RowKey::Stock(row.sku.clone()),
            Row::Reservation(row) => RowKey::Reservation(row.order_id.clone()),
            Row::Payment(row) => RowKey::Payment(row.order_id.clone()),
            Row::Wallet(row) => RowKey::Wallet(row.customer.clone()),
            Row::Account(account) => RowKey::Account(account.id.clone()),
        }
    }
}

/// A row write: the new content and the version the decider saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The version loaded (0 for an insert). The commit fails if the stored
    /// version differs; the new version is `expected + 1`.
    pub expected: Version,
    /// The new content.
    pub row: Row,
}

/// Proof that a consumer handled a message, written in the same transaction
/// as the effect so a redelivery has no second effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxReceipt {
    /// The consuming service.
    pub consumer: Service,
    /// The message handled.
    pub message_id: MessageId,
    /// The fingerprint of the message's content, to spot a reused id.
    pub fingerprint: Fingerprint,
    /// When it was handled.
    pub received_at: Timestamp,
}

/// A write to the idempotency-keys table of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyWrite {
    /// The owning service.
    pub service: Service,
    /// The client's key in its namespace.
    pub key: ScopedKey,
    /// The version loaded (0 for a new key).
    pub expected: Version,
    /// The record to store.
    pub record: IdempotencyRecord<serde_json::Value>,
}

/// Everything one handling must commit atomically. An empty decision (a
/// duplicate, a replay) commits nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Decision {
    /// Versioned row writes.
    pub writes: Vec<Write>,
    /// Ledger postings to seal into the hash chain (payment service only).
    pub postings: Vec<Posting>,
    /// The inbox receipt for the consumed message, if any.
    pub inbox: Option<InboxReceipt>,
    /// Messages to publish, through the outbox of `outbox_service`.
    pub outbox: Vec<Envelope>,
    /// The service whose outbox receives `outbox`.
    pub outbox_service: Option<Service>,
    /// The idempotency record to store, if any.
    pub idempotency: Option<IdempotencyWrite>,
    /// An operator's intervention: who did it and what its dry run showed
    /// (docs/adr/0017), written with the effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditRecord>,
    /// A dead letter an intervention settles (deletes) in the same commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_dead_letter: Option<DeadLetterRef>,
}

impl Decision {
    /// True when committing it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.postings.is_empty()
            && self.inbox.is_none()
            && self.outbox.is_empty()
            && self.idempotency.is_none()
            && self.audit.is_none()
            && self.settle_dead_letter.is_none()
    }

    /// Queues `envelope` in `service`'s outbox.
    pub fn publish(&mut self, service: Service, envelope: Envelope) {
        assert!(
            self.outbox_service
                .is_none_or(|existing| existing == service),
            "a decision publishes through one service's outbox"
        );
        self.outbox_service = Some(service);
        self.outbox.push(envelope);
    }

    /// Writes `row`, expecting the stored version to be `expected`.
    pub fn write(&mut self, expected: Version, row: Row) {
        self.writes.push(Write { expected, row });
    }
}

/// A decision with the answer the caller gets once it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided<R> {
    /// What to commit.
    pub decision: Decision,
    /// What to answer after the commit (an HTTP body, a reply summary).
    pub reply: R,
}

/// What a decider needs loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadSet {
    /// Versioned rows.
    pub rows: Vec<RowKey>,
    /// Postings by id (payment service).
    pub postings: Vec<PostingId>,
    /// The inbox receipt for this consumer and message.
    pub inbox: Option<(Service, MessageId)>,
    /// The idempotency record for this service and key.
    pub idempotency: Option<(Service, ScopedKey)>,
}

/// A row as loaded: its version and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The stored version (never 0).
    pub version: Version,
    /// The content.
    pub value: T,
}

/// The rows of a snapshot: a handful per decision, so a small vector with
/// map-like methods beats a tree (no node allocation, no rebalancing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowSet(Vec<(RowKey, Versioned<Row>)>);

impl RowSet {
    /// The row under `key`, if loaded.
    pub fn get(&self, key: &RowKey) -> Option<&Versioned<Row>> {
        self.0
            .iter()
            .find(|(candidate, _)| candidate == key)
            .map(|(_, row)| row)
    }

    /// Adds or replaces the row under `key`.
    pub fn insert(&mut self, key: RowKey, row: Versioned<Row>) {
        match self.0.iter_mut().find(|(candidate, _)| *candidate == key) {
            Some((_, existing)) => *existing = row,
            None => self.0.push((key, row)),
        }
    }

    /// Removes and returns the row under `key`.
    pub fn remove(&mut self, key: &RowKey) -> Option<Versioned<Row>> {
        let index = self.0.iter().position(|(candidate, _)| candidate == key)?;
        Some(self.0.swap_remove(index).1)
    }

    /// Every loaded row.
    pub fn values(&self) -> impl Iterator<Item = &Versioned<Row>> {
        self.0.iter().map(|(_, row)| row)
    }

    /// Every loaded row, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Versioned<Row>> {
        self.0.iter_mut().map(|(_, row)| row)
    }

    /// How many rows were loaded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no row was loaded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(RowKey, Versioned<Row>)> for RowSet {
    fn from_iter<I: IntoIterator<Item = (RowKey, Versioned<Row>)>>(rows: I) -> Self {
        let mut set = RowSet::default();
        for (key, row) in rows {
            set.insert(key, row);
        }
        set
    }
}

/// What a store loaded for a [`ReadSet`]. Absent rows are absent from `rows`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Loaded rows by key.
    pub rows: RowSet,
    /// Loaded postings by id.
    pub postings: BTreeMap<PostingId, Posting>,
    /// The inbox receipt, if the message was handled before.
    pub inbox: Option<InboxReceipt>,
    /// The idempotency record, if the key was used before.
    pub idempotency: Option<Versioned<IdempotencyRecord<serde_json::Value>>>,
}

macro_rules! typed_row {
    ($method:ident, $variant:ident, $key:ty, $row:ty) => {
        /// The row and its version, or `(0, None)` when absent.
        pub fn $method(&self, key: &$key) -> (Version, Option<&$row>) {
            match self.rows.get(&RowKey::$variant(key.clone())) {
                Some(Versioned {
                    version,
                    value: Row::$variant(row),
                }) => (*version, Some(row)),
                Some(other) => panic!(
                    "row under a {} key holds {:?}",
                    stringify!($variant),
                    other.value.key()
                ),
                None => (0, None),
            }
        }
    };
}

impl Snapshot {
    /// Every loaded ledger account.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.rows
            .values()
            .filter_map(|versioned| match &versioned.value {
                Row::Account(account) => Some(account),
                _ => None,
            })
    }

    typed_row!(stock, Stock, Sku, StockRow);
    typed_row!(reservation, Reservation, OrderId, ReservationRow);
    typed_row!(payment, Payment, OrderId, PaymentRow);
    typed_row!(wallet, Wallet, CustomerId, WalletRow);
    typed_row!(account, Account, AccountId, Account);

    /// The order row and its version, or `(0, None)` when absent.
    pub fn order(&self, key: &OrderId) -> (Version, Option<&OrderRow>) {
        match self.rows.get(&RowKey::Order(key.clone())) {
            Some(Versioned {
                version,
                value: Row::Order(row),
            }) => (*version, Some(row)),
            Some(other) => panic!("row under an Order key holds {:?}", other.value.key()),
            None => (0, None),
        }
    }
}

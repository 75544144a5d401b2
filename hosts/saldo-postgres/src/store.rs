//! Load and commit on PostgreSQL.

use std::sync::Arc;

use saldo_domain::decision::{
    Decided, Decision, InboxReceipt, ReadSet, Row, RowKey, RowSet, Snapshot, Version, Versioned,
    Write,
};
use saldo_domain::inventory::{ReservationState, StockRow};
use saldo_domain::messages::{Envelope, Service};
use saldo_domain::order::{OrderRow, OrderStatus};
use saldo_domain::payment::PaymentState;
use saldo_domain::store::{CommitError, DECIDE_ATTEMPTS_MAX};
use saldo_idempotency::{Fingerprint, IdempotencyRecord};
use saldo_ledger::{Account, AccountId, ChainHash, Entry, Posting, PostingId, Side};
use saldo_types::{Currency, Id128, Money, OrderId, Timestamp};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row as _, Transaction};

/// A failure of the database itself, or stored data that does not read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the request.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migration(String),
    /// A stored row does not decode to the sdk's type.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Why [`PgStore::execute`] did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum PgExecuteError<E> {
    /// The decider refused the input.
    #[error(transparent)]
    Rejected(E),
    /// Conflicts persisted through every attempt; try again later.
    #[error("still conflicting after {DECIDE_ATTEMPTS_MAX} attempts: {0}")]
    Conflict(CommitError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum PgCommitError {
    /// A version, inbox, idempotency or posting conflict: decide again.
    #[error(transparent)]
    Conflict(CommitError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PgCommitError {
    fn from(error: sqlx::Error) -> Self {
        PgCommitError::Store(StoreError::Database(error))
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The PostgreSQL schema holding a service's tables.
pub fn schema(service: Service) -> &'static str {
    match service {
        Service::Order => "orders",
        Service::Inventory => "inventory",
        Service::Payment => "payment",
    }
}

/// The longest wait for a pooled connection.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Milliseconds since the epoch, as SQL: exact integer interval arithmetic.
const TIMESTAMP: &str = "(timestamptz 'epoch' + $N::bigint * interval '1 millisecond')";

fn at(parameter: usize) -> String {
    TIMESTAMP.replace("$N", &format!("${parameter}"))
}

pub(crate) fn unix_ms(column: &str) -> String {
    format!("(extract(epoch from {column}) * 1000)::bigint")
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| corrupt(format!("{what} {value} does not fit in bigint")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("sdk rows always serialise")
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| corrupt(format!("{what}: {error}")))
}

fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::from_code(code.trim()).map_err(corrupt)
}

fn account_kind(id: &AccountId) -> &'static str {
    match id {
        AccountId::Wallet { .. } => "wallet",
        AccountId::MerchantRevenue { .. } => "merchant_revenue",
        AccountId::Funding { .. } => "funding",
    }
}

fn reservation_state(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Held => "held",
        ReservationState::Committed => "committed",
        ReservationState::Released => "released",
        ReservationState::Rejected { .. } => "rejected",
        ReservationState::Cancelled => "cancelled",
    }
}

fn payment_state(state: PaymentState) -> &'static str {
    match state {
        PaymentState::Captured { .. } => "captured",
        PaymentState::Failed { .. } => "failed",
        PaymentState::Refunded { .. } => "refunded",
        PaymentState::CancelledBeforeCharge => "cancelled_before_charge",
    }
}

/// Everything a store holds, in a canonical order: what the contract tests
/// compare between PostgreSQL and the in-memory store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// Every versioned row, sorted by key.
    pub rows: Vec<(RowKey, Version, Row)>,
    /// The ledger entries, in sequence.
    pub entries: Vec<Entry>,
    /// Inbox receipts, sorted by consumer and message id.
    pub inbox: Vec<InboxReceipt>,
    /// Unpublished outbox messages per service, in outbox order.
    pub outbox: Vec<(Service, Envelope)>,
    /// Idempotency records, sorted by service and key.
    pub idempotency: Vec<(
        Service,
        String,
        Version,
        IdempotencyRecord<serde_json::Value>,
    )>,
}

/// Saldo's tables in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool of at most `connections_max` connections. Waiting for
    /// a connection gives up after [`ACQUIRE_TIMEOUT`], so an unreachable
    /// database is reported promptly instead of hanging the caller.
    pub async fn connect(url: &str, connections_max: u32) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(PgStore { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore { pool }
    }

    /// The pool, for queries outside the rhythm (health checks, tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Loads what a decider asked for.
    pub async fn load(&self, read_set: &ReadSet) -> Result<Snapshot, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let mut rows = RowSet::default();
        for key in &read_set.rows {
            if let Some(row) = load_row(&mut connection, key).await? {
                rows.insert(key.clone(), row);
            }
        }
        let mut postings = std::collections::BTreeMap::new();
        if !read_set.postings.is_empty() {
            let ids: Vec<String> = read_set.postings.iter().map(Id128::to_hex).collect();
            let found = sqlx::query(
                "SELECT posting::text FROM payment.ledger_entries WHERE posting_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
            for row in found {
                let posting: Posting = from_json(row.try_get::<&str, _>(0)?, "ledger posting")?;
                postings.insert(posting.id, posting);
            }
        }
        let inbox = match &read_set.inbox {
            Some((consumer, message_id)) => {
                let sql = format!(
                    "SELECT fingerprint, {} FROM {}.inbox WHERE message_id = $1",
                    unix_ms("received_at"),
                    schema(*consumer)
                );
                let found = dynamic(sql)
                    .bind(message_id.to_hex())
                    .fetch_optional(&mut *connection)
                    .await?;
                match found {
                    Some(row) => Some(InboxReceipt {
                        consumer: *consumer,
                        message_id: *message_id,
                        fingerprint: fingerprint_from(row.try_get::<Vec<u8>, _>(0)?)?,
                        received_at: Timestamp::from_unix_ms(to_u64(
                            row.try_get(1)?,
                            "received_at",
                        )?),
                    }),
                    None => None,
                }
            }
            None => None,
        };
        let idempotency = match &read_set.idempotency {
            Some((service, key)) => {
                let sql = format!(
                    "SELECT version, record::text FROM {}.idempotency_keys WHERE key = $1",
                    schema(*service)
                );
                let found = dynamic(sql)
                    .bind(key.as_str())
                    .fetch_optional(&mut *connection)
                    .await?;
                match found {
                    Some(row) => Some(Versioned {
                        version: to_u64(row.try_get(0)?, "version")?,
                        value: from_json(row.try_get::<&str, _>(1)?, "idempotency record")?,
                    }),
                    None => None,
                }
            }
            None => None,
        };
        Ok(Snapshot {
            rows,
            postings,
            inbox,
            idempotency,
        })
    }

    /// Applies a decision in one transaction; any conflict rolls all of it back.
    pub async fn commit(&self, decision: Decision, now: Timestamp) -> Result<(), PgCommitError> {
        if decision.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        match apply(&mut transaction, decision, now).await {
            Ok(()) => {
                transaction.commit().await?;
                Ok(())
            }
            Err(error) => {
                transaction.rollback().await?;
                Err(error)
            }
        }
    }

    /// The rhythm: load, decide, commit; on a conflict decide again from
    /// fresh state, at most [`DECIDE_ATTEMPTS_MAX`] times.
    pub async fn execute<R, E>(
        &self,
        read_set: &ReadSet,
        now: Timestamp,
        mut decide: impl FnMut(&Snapshot) -> Result<Decided<R>, E>,
    ) -> Result<R, PgExecuteError<E>> {
        let mut last_conflict = None;
        for _ in 0..DECIDE_ATTEMPTS_MAX {
            let snapshot = self.load(read_set).await?;
            let decided = decide(&snapshot).map_err(PgExecuteError::Rejected)?;
            match self.commit(decided.decision, now).await {
                Ok(()) => return Ok(decided.reply),
                Err(PgCommitError::Conflict(conflict)) => last_conflict = Some(conflict),
                Err(PgCommitError::Store(error)) => return Err(PgExecuteError::Store(error)),
            }
        }
        Err(PgExecuteError::Conflict(
            last_conflict.expect("at least one attempt ran"),
        ))
    }

    /// Everything stored, in canonical order.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let mut keys: Vec<RowKey> = Vec::new();
        for (sql, make) in [
            ("SELECT order_id FROM orders.orders", RowKind::Order),
            ("SELECT sku FROM inventory.stock", RowKind::Stock),
            (
                "SELECT order_id FROM inventory.reservations",
                RowKind::Reservation,
            ),
            ("SELECT order_id FROM payment.payments", RowKind::Payment),
            ("SELECT customer_id FROM payment.wallets", RowKind::Wallet),
            ("SELECT account_id FROM payment.accounts", RowKind::Account),
        ] {
            for id in sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&mut *connection)
                .await?
            {
                keys.push(make.key(&id)?);
            }
        }
        keys.sort();
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let versioned = load_row(&mut connection, &key)
                .await?
                .ok_or_else(|| corrupt(format!("{key:?} vanished")))?;
            rows.push((key, versioned.version, versioned.value));
        }
        let entries = self.entries().await?;
        let mut inbox = Vec::new();
        for service in Service::ALL {
            let sql = format!(
                "SELECT message_id, fingerprint, {} FROM {}.inbox",
                unix_ms("received_at"),
                schema(service)
            );
            for row in dynamic(sql).fetch_all(&mut *connection).await? {
                inbox.push(InboxReceipt {
                    consumer: service,
                    message_id: Id128::from_hex(row.try_get::<&str, _>(0)?).map_err(corrupt)?,
                    fingerprint: fingerprint_from(row.try_get::<Vec<u8>, _>(1)?)?,
                    received_at: Timestamp::from_unix_ms(to_u64(row.try_get(2)?, "received_at")?),
                });
            }
        }
        inbox.sort_by_key(|receipt| (receipt.consumer, receipt.message_id));
        let mut outbox = Vec::new();
        for service in Service::ALL {
            for envelope in self.outbox_pending(service, i64::MAX).await? {
                outbox.push((service, envelope.1));
            }
        }
        let mut idempotency = Vec::new();
        for service in Service::ALL {
            let sql = format!(
                "SELECT key, version, record::text FROM {}.idempotency_keys ORDER BY key",
                schema(service)
            );
            for row in dynamic(sql).fetch_all(&mut *connection).await? {
                idempotency.push((
                    service,
                    row.try_get::<String, _>(0)?,
                    to_u64(row.try_get(1)?, "version")?,
                    from_json(row.try_get::<&str, _>(2)?, "idempotency record")?,
                ));
            }
        }
        Ok(Dump {
            rows,
            entries,
            inbox,
            outbox,
            idempotency,
        })
    }

    /// The ledger entries, in sequence.
    pub async fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let sql = format!(
            "SELECT sequence, {}, posting::text, previous_hash, hash FROM payment.ledger_entries ORDER BY sequence",
            unix_ms("recorded_at")
        );
        let rows = dynamic(sql).fetch_all(&self.pool).await?;
        rows.into_iter().map(|row| entry_from(&row)).collect()
    }

    /// The newest `limit` ledger entries with a leg on `account`, newest first.
    pub async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = format!(
            "SELECT sequence, {}, posting::text, previous_hash, hash FROM payment.ledger_entries \
             WHERE sequence IN (SELECT sequence FROM payment.ledger_legs WHERE account_id = $1) \
             ORDER BY sequence DESC LIMIT $2",
            unix_ms("recorded_at")
        );
        let rows = dynamic(sql)
            .bind(account.to_string())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| entry_from(&row)).collect()
    }

    /// Up to `limit` unpublished messages of `service`, in outbox order.
    pub async fn outbox_pending(
        &self,
        service: Service,
        limit: i64,
    ) -> Result<Vec<(i64, Envelope)>, StoreError> {
        let sql = format!(
            "SELECT sequence, envelope FROM {}.outbox WHERE published_at IS NULL ORDER BY sequence LIMIT $1",
            schema(service)
        );
        let rows = dynamic(sql).bind(limit).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|row| {
                let envelope = Envelope::decode(&row.try_get::<Vec<u8>, _>(1)?).map_err(corrupt)?;
                Ok((row.try_get(0)?, envelope))
            })
            .collect()
    }

    /// Orders whose saga deadline is due at `now`, earliest first.
    pub async fn due_orders(&self, now: Timestamp, limit: i64) -> Result<Vec<OrderId>, StoreError> {
        let sql = format!(
            "SELECT order_id FROM orders.orders WHERE deadline_at <= {} ORDER BY deadline_at LIMIT $2",
            at(1)
        );
        let ids: Vec<String> = dynamic_scalar(sql)
            .bind(to_i64(now.unix_ms(), "now")?)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        ids.into_iter()
            .map(|id| OrderId::new(id).map_err(corrupt))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum RowKind {
    Order,
    Stock,
    Reservation,
    Payment,
    Wallet,
    Account,
}

impl RowKind {
    fn key(self, id: &str) -> Result<RowKey, StoreError> {
        Ok(match self {
            RowKind::Order => RowKey::Order(id.parse().map_err(corrupt)?),
            RowKind::Stock => RowKey::Stock(id.parse().map_err(corrupt)?),
            RowKind::Reservation => RowKey::Reservation(id.parse().map_err(corrupt)?),
            RowKind::Payment => RowKey::Payment(id.parse().map_err(corrupt)?),
            RowKind::Wallet => RowKey::Wallet(id.parse().map_err(corrupt)?),
            RowKind::Account => RowKey::Account(id.parse().map_err(corrupt)?),
        })
    }
}

fn fingerprint_from(bytes: Vec<u8>) -> Result<Fingerprint, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("a fingerprint is 32 bytes"))?;
    Ok(Fingerprint::from_bytes(array))
}

fn hash_from(bytes: Vec<u8>) -> Result<ChainHash, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("a chain hash is 32 bytes"))?;
    Ok(ChainHash(array))
}

async fn load_row(
    connection: &mut sqlx::PgConnection,
    key: &RowKey,
) -> Result<Option<Versioned<Row>>, StoreError> {
    let row = match key {
        RowKey::Order(id) => {
            sqlx::query("SELECT version, body::text FROM orders.orders WHERE order_id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *connection)
                .await?
        }
        RowKey::Stock(sku) => {
            let found = sqlx::query("SELECT version, on_hand, reserved, unit_price_minor, currency FROM inventory.stock WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&mut *connection)
                .await?;
            return found
                .map(|row| {
                    let unit_price =
                        Money::from_minor(row.try_get(3)?, currency(row.try_get::<&str, _>(4)?)?);
                    Ok(Versioned {
                        version: to_u64(row.try_get(0)?, "version")?,
                        value: Row::Stock(StockRow {
                            sku: sku.clone(),
                            on_hand: to_u64(row.try_get(1)?, "on_hand")?,
                            reserved: to_u64(row.try_get(2)?, "reserved")?,
                            unit_price,
                        }),
                    })
                })
                .transpose();
        }
        RowKey::Reservation(id) => {
            sqlx::query(
                "SELECT version, body::text FROM inventory.reservations WHERE order_id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(&mut *connection)
            .await?
        }
        RowKey::Payment(id) => {
            sqlx::query("SELECT version, body::text FROM payment.payments WHERE order_id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *connection)
                .await?
        }
        RowKey::Wallet(customer) => {
            sqlx::query("SELECT version, body::text FROM payment.wallets WHERE customer_id = $1")
                .bind(customer.as_str())
                .fetch_optional(&mut *connection)
                .await?
        }
        RowKey::Account(id) => {
            let found = sqlx::query("SELECT version, balance_minor, held_minor FROM payment.accounts WHERE account_id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *connection)
                .await?;
            return found
                .map(|row| {
                    let currency = id.currency();
                    Ok(Versioned {
                        version: to_u64(row.try_get(0)?, "version")?,
                        value: Row::Account(Account {
                            id: id.clone(),
                            balance: Money::from_minor(row.try_get(1)?, currency),
                            held: Money::from_minor(row.try_get(2)?, currency),
                        }),
                    })
                })
                .transpose();
        }
    };
    let Some(row) = row else { return Ok(None) };
    let version = to_u64(row.try_get(0)?, "version")?;
    let body: &str = row.try_get(1)?;
    let value = match key {
        RowKey::Order(_) => Row::Order(Arc::new(from_json::<OrderRow>(body, "order")?)),
        RowKey::Reservation(_) => Row::Reservation(from_json(body, "reservation")?),
        RowKey::Payment(_) => Row::Payment(from_json(body, "payment")?),
        RowKey::Wallet(_) => Row::Wallet(from_json(body, "wallet")?),
        RowKey::Stock(_) | RowKey::Account(_) => unreachable!("returned above"),
    };
    if value.key() != *key {
        return Err(corrupt(format!(
            "row under {key:?} holds {:?}",
            value.key()
        )));
    }
    Ok(Some(Versioned { version, value }))
}

async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    decision: Decision,
    now: Timestamp,
) -> Result<(), PgCommitError> {
    let now_ms = to_i64(now.unix_ms(), "now")?;
    for write in &decision.writes {
        write_row(transaction, write).await?;
    }
    if let Some(receipt) = &decision.inbox {
        let sql = format!(
            "INSERT INTO {}.inbox (message_id, fingerprint, received_at) VALUES ($1, $2, {}) ON CONFLICT (message_id) DO NOTHING",
            schema(receipt.consumer),
            at(3)
        );
        let inserted = dynamic(sql)
            .bind(receipt.message_id.to_hex())
            .bind(receipt.fingerprint.as_bytes().to_vec())
            .bind(to_i64(receipt.received_at.unix_ms(), "received_at")?)
            .execute(&mut **transaction)
            .await?;
        if inserted.rows_affected() == 0 {
            return Err(PgCommitError::Conflict(CommitError::InboxConflict {
                consumer: receipt.consumer,
                message_id: receipt.message_id,
            }));
        }
    }
    if let Some(write) = &decision.idempotency {
        let table = format!("{}.idempotency_keys", schema(write.service));
        let record = json(&write.record);
        let expires = to_i64(write.record.expires_at.unix_ms(), "expires_at")?;
        let affected = if write.expected == 0 {
            let sql = format!(
                "INSERT INTO {table} (key, version, record, expires_at) VALUES ($1, 1, $2::jsonb, {}) ON CONFLICT (key) DO NOTHING",
                at(3)
            );
            dynamic(sql)
                .bind(write.key.as_str())
                .bind(&record)
                .bind(expires)
                .execute(&mut **transaction)
                .await?
        } else {
            let sql = format!(
                "UPDATE {table} SET version = version + 1, record = $2::jsonb, expires_at = {} WHERE key = $1 AND version = $4",
                at(3)
            );
            dynamic(sql)
                .bind(write.key.as_str())
                .bind(&record)
                .bind(expires)
                .bind(to_i64(write.expected, "version")?)
                .execute(&mut **transaction)
                .await?
        };
        if affected.rows_affected() == 0 {
            return Err(PgCommitError::Conflict(CommitError::IdempotencyConflict {
                key: write.key.as_str().to_owned(),
            }));
        }
    }
    if !decision.postings.is_empty() {
        seal_postings(transaction, decision.postings, now).await?;
    }
    if let Some(service) = decision.outbox_service {
        let sql = format!(
            "INSERT INTO {}.outbox (message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at) VALUES ($1, $2, $3, $4, $5, $6, {})",
            schema(service),
            at(7)
        );
        for envelope in &decision.outbox {
            dynamic(sql.clone())
                .bind(envelope.message_id.to_hex())
                .bind(envelope.order_id.as_str())
                .bind(envelope.message_type())
                .bind(envelope.correlation_id.as_str())
                .bind(envelope.traceparent.as_str())
                .bind(envelope.encode())
                .bind(now_ms)
                .execute(&mut **transaction)
                .await?;
        }
    }
    Ok(())
}

/// Seals postings after the chain head, which is locked for the rest of the
/// transaction so concurrent payments queue for their place in the chain.
async fn seal_postings(
    transaction: &mut Transaction<'_, Postgres>,
    postings: Vec<Posting>,
    now: Timestamp,
) -> Result<(), PgCommitError> {
    let head = sqlx::query("SELECT sequence, hash FROM payment.chain_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut **transaction)
        .await?;
    let mut sequence = to_u64(head.try_get(0)?, "chain sequence")?;
    let mut previous = hash_from(head.try_get::<Vec<u8>, _>(1)?)?;
    for posting in postings {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payment.ledger_entries WHERE posting_id = $1)",
        )
        .bind(posting.id.to_hex())
        .fetch_one(&mut **transaction)
        .await?;
        if exists {
            return Err(PgCommitError::Conflict(CommitError::PostingConflict(
                posting.id,
            )));
        }
        sequence += 1;
        let entry = Entry::seal_at(sequence, previous, posting, now);
        let sql = format!(
            "INSERT INTO payment.ledger_entries (sequence, posting_id, recorded_at, reverses, order_id, purpose, correlation_id, traceparent, posting, previous_hash, hash) \
             VALUES ($1, $2, {}, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)",
            at(3)
        );
        let memo = &entry.posting.memo;
        dynamic(sql)
            .bind(to_i64(entry.sequence, "sequence")?)
            .bind(entry.posting.id.to_hex())
            .bind(to_i64(entry.recorded_at.unix_ms(), "recorded_at")?)
            .bind(entry.posting.reverses.map(|id: PostingId| id.to_hex()))
            .bind(memo.order_id.as_ref().map(|id| id.as_str().to_owned()))
            .bind(&memo.purpose)
            .bind(
                memo.correlation_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
            )
            .bind(memo.traceparent.clone())
            .bind(json(&entry.posting))
            .bind(entry.previous_hash.0.to_vec())
            .bind(entry.hash.0.to_vec())
            .execute(&mut **transaction)
            .await?;
        for (index, leg) in entry.posting.legs.iter().enumerate() {
            sqlx::query("INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(to_i64(entry.sequence, "sequence")?)
                .bind(i16::try_from(index).map_err(|_| corrupt("too many legs"))?)
                .bind(leg.account.to_string())
                .bind(match leg.side {
                    Side::Debit => "debit",
                    Side::Credit => "credit",
                })
                .bind(leg.amount.amount_minor())
                .bind(leg.amount.currency().code())
                .execute(&mut **transaction)
                .await?;
        }
        previous = entry.hash;
    }
    sqlx::query("UPDATE payment.chain_head SET sequence = $1, hash = $2 WHERE id = 1")
        .bind(to_i64(sequence, "sequence")?)
        .bind(previous.0.to_vec())
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// Inserts (expected version 0) or updates (version check) one row.
async fn write_row(
    transaction: &mut Transaction<'_, Postgres>,
    write: &Write,
) -> Result<(), PgCommitError> {
    let expected = to_i64(write.expected, "version")?;
    let insert = write.expected == 0;
    let result = match &write.row {
        Row::Order(order) => {
            let (status, reason) = match order.status() {
                OrderStatus::Pending => ("PENDING", None),
                OrderStatus::Confirmed => ("CONFIRMED", None),
                OrderStatus::Cancelled(reason) => (
                    "CANCELLED",
                    Some(json(&reason).trim_matches('"').to_owned()),
                ),
            };
            let awaiting = order.saga.awaiting().name().to_owned();
            let deadline = order
                .deadline()
                .map(|deadline| to_i64(deadline.unix_ms(), "deadline"))
                .transpose()?;
            let deadline_sql = format!("CASE WHEN $7::bigint IS NULL THEN NULL ELSE {} END", at(7));
            let query = if insert {
                let sql = format!(
                    "INSERT INTO orders.orders (order_id, version, amount_minor, status, cancel_reason, awaiting, deadline_at, body, updated_at, customer_id, currency, created_at) \
                     VALUES ($1, $2 + 1, $3, $4, $5, $6, {deadline_sql}, $8::jsonb, {}, $10, $11, {}) ON CONFLICT (order_id) DO NOTHING",
                    at(9),
                    at(12)
                );
                order_query(sql, order, expected, status, reason, awaiting, deadline)?
                    .bind(order.customer.as_str().to_owned())
                    .bind(order.currency.code().to_owned())
                    .bind(to_i64(order.created_at.unix_ms(), "created_at")?)
            } else {
                let sql = format!(
                    "UPDATE orders.orders SET version = $2 + 1, amount_minor = $3, status = $4, cancel_reason = $5, awaiting = $6, \
                     deadline_at = {deadline_sql}, body = $8::jsonb, updated_at = {} WHERE order_id = $1 AND version = $2",
                    at(9)
                );
                order_query(sql, order, expected, status, reason, awaiting, deadline)?
            };
            query.execute(&mut **transaction).await?
        }
        Row::Stock(stock) => {
            let sql = if insert {
                "INSERT INTO inventory.stock (sku, version, on_hand, reserved, unit_price_minor, currency) VALUES ($1, $2 + 1, $3, $4, $5, $6) ON CONFLICT (sku) DO NOTHING"
            } else {
                "UPDATE inventory.stock SET version = $2 + 1, on_hand = $3, reserved = $4, unit_price_minor = $5, currency = $6 WHERE sku = $1 AND version = $2"
            };
            sqlx::query(sql)
                .bind(stock.sku.as_str())
                .bind(expected)
                .bind(to_i64(stock.on_hand, "on_hand")?)
                .bind(to_i64(stock.reserved, "reserved")?)
                .bind(stock.unit_price.amount_minor())
                .bind(stock.unit_price.currency().code())
                .execute(&mut **transaction)
                .await?
        }
        Row::Reservation(reservation) => {
            let sql = if insert {
                format!(
                    "INSERT INTO inventory.reservations (order_id, version, state, body, updated_at) VALUES ($1, $2 + 1, $3, $4::jsonb, {}) ON CONFLICT (order_id) DO NOTHING",
                    at(5)
                )
            } else {
                format!(
                    "UPDATE inventory.reservations SET version = $2 + 1, state = $3, body = $4::jsonb, updated_at = {} WHERE order_id = $1 AND version = $2",
                    at(5)
                )
            };
            dynamic(sql)
                .bind(reservation.order_id.as_str())
                .bind(expected)
                .bind(reservation_state(reservation.state))
                .bind(json(reservation))
                .bind(to_i64(reservation.updated_at.unix_ms(), "updated_at")?)
                .execute(&mut **transaction)
                .await?
        }
        Row::Payment(payment) => {
            let sql = if insert {
                format!(
                    "INSERT INTO payment.payments (order_id, version, customer_id, amount_minor, currency, state, body, updated_at) VALUES ($1, $2 + 1, $3, $4, $5, $6, $7::jsonb, {}) ON CONFLICT (order_id) DO NOTHING",
                    at(8)
                )
            } else {
                format!(
                    "UPDATE payment.payments SET version = $2 + 1, customer_id = $3, amount_minor = $4, currency = $5, state = $6, body = $7::jsonb, updated_at = {} WHERE order_id = $1 AND version = $2",
                    at(8)
                )
            };
            dynamic(sql)
                .bind(payment.order_id.as_str())
                .bind(expected)
                .bind(payment.customer.as_str())
                .bind(payment.amount.amount_minor())
                .bind(payment.amount.currency().code())
                .bind(payment_state(payment.state))
                .bind(json(payment))
                .bind(to_i64(payment.updated_at.unix_ms(), "updated_at")?)
                .execute(&mut **transaction)
                .await?
        }
        Row::Wallet(wallet) => {
            let sql = if insert {
                "INSERT INTO payment.wallets (customer_id, version, currency, body) VALUES ($1, $2 + 1, $3, $4::jsonb) ON CONFLICT (customer_id) DO NOTHING"
            } else {
                "UPDATE payment.wallets SET version = $2 + 1, currency = $3, body = $4::jsonb WHERE customer_id = $1 AND version = $2"
            };
            sqlx::query(sql)
                .bind(wallet.customer.as_str())
                .bind(expected)
                .bind(wallet.currency.code())
                .bind(json(wallet))
                .execute(&mut **transaction)
                .await?
        }
        Row::Account(account) => {
            if insert {
                sqlx::query(
                    "INSERT INTO payment.accounts (account_id, version, balance_minor, held_minor, kind, currency) VALUES ($1, $2 + 1, $3, $4, $5, $6) ON CONFLICT (account_id) DO NOTHING",
                )
                .bind(account.id.to_string())
                .bind(expected)
                .bind(account.balance.amount_minor())
                .bind(account.held.amount_minor())
                .bind(account_kind(&account.id))
                .bind(account.id.currency().code())
                .execute(&mut **transaction)
                .await?
            } else {
                sqlx::query("UPDATE payment.accounts SET version = $2 + 1, balance_minor = $3, held_minor = $4 WHERE account_id = $1 AND version = $2")
                    .bind(account.id.to_string())
                    .bind(expected)
                    .bind(account.balance.amount_minor())
                    .bind(account.held.amount_minor())
                    .execute(&mut **transaction)
                    .await?
            }
        }
    };
    if result.rows_affected() == 1 {
        return Ok(());
    }
    let key = write.row.key();
    let found = current_version(transaction, &key).await?;
    Err(PgCommitError::Conflict(CommitError::VersionConflict {
        key,
        expected: write.expected,
        found,
    }))
}

type PgQuery = sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>;

/// A statement whose text was assembled here from fixed identifiers (schema
/// and table names from `Service`, never input); every value is a bind
/// parameter.
fn dynamic(sql: String) -> PgQuery {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

/// [`dynamic`] for a single-column result.
fn dynamic_scalar<O>(
    sql: String,
) -> sqlx::query::QueryScalar<'static, Postgres, O, sqlx::postgres::PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    O: Send + Unpin,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
}

/// The parameters an order insert and update share, $1 to $9.
fn order_query(
    sql: String,
    order: &OrderRow,
    expected: i64,
    status: &'static str,
    reason: Option<String>,
    awaiting: String,
    deadline: Option<i64>,
) -> Result<PgQuery, StoreError> {
    Ok(dynamic(sql)
        .bind(order.order_id.as_str().to_owned())
        .bind(expected)
        .bind(order.amount.map(|amount| amount.amount_minor()))
        .bind(status)
        .bind(reason)
        .bind(awaiting)
        .bind(deadline)
        .bind(json(order))
        .bind(to_i64(order.updated_at.unix_ms(), "updated_at")?))
}

async fn current_version(
    transaction: &mut Transaction<'_, Postgres>,
    key: &RowKey,
) -> Result<Version, PgCommitError> {
    let (sql, id) = match key {
        RowKey::Order(id) => (
            "SELECT version FROM orders.orders WHERE order_id = $1",
            id.as_str().to_owned(),
        ),
        RowKey::Stock(sku) => (
            "SELECT version FROM inventory.stock WHERE sku = $1",
            sku.as_str().to_owned(),
        ),
        RowKey::Reservation(id) => (
            "SELECT version FROM inventory.reservations WHERE order_id = $1",
            id.as_str().to_owned(),
        ),
        RowKey::Payment(id) => (
            "SELECT version FROM payment.payments WHERE order_id = $1",
            id.as_str().to_owned(),
        ),
        RowKey::Wallet(id) => (
            "SELECT version FROM payment.wallets WHERE customer_id = $1",
            id.as_str().to_owned(),
        ),
        RowKey::Account(id) => (
            "SELECT version FROM payment.accounts WHERE account_id = $1",
            id.to_string(),
        ),
    };
    let version: Option<i64> = sqlx::query_scalar(sql)
        .bind(id)
        .fetch_optional(&mut **transaction)
        .await?;
    Ok(version.map_or(Ok(0), |version| to_u64(version, "version"))?)
}

/// Decodes a row of `sequence, recorded_at (unix ms), posting, previous_hash, hash`.
fn entry_from(row: &sqlx::postgres::PgRow) -> Result<Entry, StoreError> {
    Ok(Entry {
        sequence: to_u64(row.try_get(0)?, "sequence")?,
        recorded_at: Timestamp::from_unix_ms(to_u64(row.try_get(1)?, "recorded_at")?),
        posting: from_json(row.try_get::<&str, _>(2)?, "ledger posting")?,
        previous_hash: hash_from(row.try_get::<Vec<u8>, _>(3)?)?,
        hash: hash_from(row.try_get::<Vec<u8>, _>(4)?)?,
    })
}

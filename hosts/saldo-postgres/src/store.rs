//! Load and commit on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};

use saldo_domain::batch::{BatchReadSet, Commit, Increment, Loaded};
use saldo_domain::decision::{
    IdempotencyWrite, InboxReceipt, ReadSet, Row, RowKey, Snapshot, Version, Versioned, Write,
};
use saldo_domain::messages::{Envelope, Service};
use saldo_domain::retention::Horizons;
use saldo_domain::store::{CommitError, Purged};
use saldo_idempotency::{Fingerprint, IdempotencyRecord, ScopedKey};
use saldo_ledger::{AccountId, ChainHash, Entry, Posting, StoredEntry};
use saldo_types::{Currency, Id128, OrderId, Timestamp};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row as _, Transaction};

use saldo_engine::{CommitFailure, DeadLetter, Unavailable};

use crate::tables;

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

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum PgCommitError {
    /// A version, inbox, idempotency or posting conflict: decide again.
    #[error(transparent)]
    Conflict(CommitError),
    /// The database could not be reached or is not serving: try later.
    #[error(transparent)]
    Store(StoreError),
    /// The database refused this commit for a reason that deciding again
    /// cannot change (a constraint, a value out of range, unreadable data):
    /// the input is at fault, not the database's availability.
    #[error("the database refused the commit: {0}")]
    Refused(String),
}

impl From<sqlx::Error> for PgCommitError {
    fn from(error: sqlx::Error) -> Self {
        aborted_or_failed(error)
    }
}

impl From<StoreError> for PgCommitError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(error) => aborted_or_failed(error),
            StoreError::Corrupt(what) => PgCommitError::Refused(what),
            migration @ StoreError::Migration(_) => PgCommitError::Store(migration),
        }
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

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| corrupt(format!("{what} {value} does not fit in bigint")))
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| corrupt(format!("{what}: {error}")))
}

pub(crate) fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::from_code(code.trim()).map_err(corrupt)
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

    /// Loads what one decider asked for.
    pub async fn load(&self, read_set: &ReadSet) -> Result<Snapshot, StoreError> {
        let loaded = self.load_batch(&BatchReadSet::of([read_set])).await?;
        Ok(loaded.view(read_set))
    }

    /// Loads what a batch needs: one query per table it names.
    pub async fn load_batch(&self, read_set: &BatchReadSet) -> Result<Loaded, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let rows = tables::load_rows(&mut connection, &read_set.rows).await?;
        let mut postings = BTreeMap::new();
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
        let mut inbox = BTreeMap::new();
        for service in Service::ALL {
            let ids: Vec<String> = read_set
                .inbox
                .iter()
                .filter(|(consumer, _)| *consumer == service)
                .map(|(_, message_id)| message_id.to_hex())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT message_id, fingerprint, {} FROM {}.inbox WHERE message_id = ANY($1)",
                unix_ms("received_at"),
                schema(service)
            );
            for row in dynamic(sql).bind(&ids).fetch_all(&mut *connection).await? {
                let message_id = Id128::from_hex(row.try_get::<&str, _>(0)?).map_err(corrupt)?;
                let receipt = InboxReceipt {
                    consumer: service,
                    message_id,
                    fingerprint: fingerprint_from(row.try_get::<Vec<u8>, _>(1)?)?,
                    received_at: Timestamp::from_unix_ms(to_u64(row.try_get(2)?, "received_at")?),
                };
                inbox.insert((service, message_id), receipt);
            }
        }
        let mut idempotency = BTreeMap::new();
        for service in Service::ALL {
            let keys: Vec<&ScopedKey> = read_set
                .idempotency
                .iter()
                .filter(|(owner, _)| *owner == service)
                .map(|(_, key)| key)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let texts: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
            let sql = format!(
                "SELECT key, version, record::text FROM {}.idempotency_keys WHERE key = ANY($1)",
                schema(service)
            );
            for row in dynamic(sql)
                .bind(&texts)
                .fetch_all(&mut *connection)
                .await?
            {
                let key = ScopedKey::parse(row.try_get::<&str, _>(0)?).map_err(corrupt)?;
                let record = Versioned {
                    version: to_u64(row.try_get(1)?, "version")?,
                    value: from_json(row.try_get::<&str, _>(2)?, "idempotency record")?,
                };
                idempotency.insert((service, key), record);
            }
        }
        Ok(Loaded {
            rows,
            postings,
            inbox,
            idempotency,
        })
    }

    /// Applies a decision, or a batch's merged decisions, in one
    /// transaction; any conflict rolls all of it back.
    pub async fn commit(
        &self,
        commit: impl Into<Commit>,
        now: Timestamp,
    ) -> Result<(), PgCommitError> {
        let commit = commit.into();
        if commit.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        match apply(&mut transaction, commit, now).await {
            Ok(()) => {
                transaction.commit().await.map_err(aborted_or_failed)?;
                Ok(())
            }
            Err(error) => {
                transaction.rollback().await?;
                Err(error)
            }
        }
    }

    /// Everything stored, in canonical order.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let keys = tables::all_keys(&mut connection).await?;
        let mut loaded = tables::load_rows(&mut connection, &keys).await?;
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let versioned = loaded
                .remove(&key)
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

    /// Deletes up to `limit` of `service`'s inbox receipts received before
    /// the inbox horizon and up to `limit` of its expired idempotency
    /// records, oldest first, one statement each (ADR 0015). Rows locked by
    /// a commit in flight are skipped: that commit decides them, and a later
    /// round deletes them if they are still past the horizon.
    pub async fn purge(
        &self,
        service: Service,
        horizons: &Horizons,
        now: Timestamp,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        let schema = schema(service);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let inbox = format!(
            "DELETE FROM {schema}.inbox WHERE message_id IN (SELECT message_id FROM {schema}.inbox              WHERE received_at < {} ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            at(1)
        );
        let cutoff = horizons.inbox_cutoff(now);
        let inbox = dynamic(inbox)
            .bind(to_i64(cutoff.unix_ms(), "cutoff")?)
            .bind(limit)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let idempotency = format!(
            "DELETE FROM {schema}.idempotency_keys WHERE key IN (SELECT key FROM {schema}.idempotency_keys              WHERE expires_at <= {} ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            at(1)
        );
        let idempotency = dynamic(idempotency)
            .bind(to_i64(now.unix_ms(), "now")?)
            .bind(limit)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let count = |rows: u64| usize::try_from(rows).expect("at most `limit` rows");
        Ok(Purged {
            inbox: count(inbox),
            idempotency: count(idempotency),
        })
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

fn fingerprint_from(bytes: Vec<u8>) -> Result<Fingerprint, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("a fingerprint is 32 bytes"))?;
    Ok(Fingerprint::from_bytes(array))
}

pub(crate) fn hash_from(bytes: Vec<u8>) -> Result<ChainHash, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("a chain hash is 32 bytes"))?;
    Ok(ChainHash(array))
}

/// Rolls a commit's statements out in one transaction, one multi-row
/// statement per table and kind of write. The rows every payment shares
/// come last: the increments of the shared accounts and the chain head
/// are locked until the commit, so everything else is done before them
/// and concurrent payments queue only for the last few statements.
async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    commit: Commit,
    now: Timestamp,
) -> Result<(), PgCommitError> {
    write_rows(transaction, &commit.writes).await?;
    insert_inbox(transaction, &commit.inbox).await?;
    write_idempotency(transaction, &commit.idempotency).await?;
    if !commit.dead_letters_settled.is_empty() {
        crate::operator::drop_published_copies(transaction, &commit.outbox).await?;
    }
    insert_outbox(transaction, &commit.outbox, now).await?;
    crate::operator::settle_dead_letters(transaction, &commit.dead_letters_settled).await?;
    crate::operator::insert_audit(transaction, &commit.audit).await?;
    apply_increments(transaction, &commit.increments).await?;
    if !commit.postings.is_empty() {
        seal_postings(transaction, commit.postings, now).await?;
    }
    Ok(())
}

/// Runs a statement over a JSON array of records; returns the first
/// column of every row it returns (the keys it wrote).
async fn run_records(
    transaction: &mut Transaction<'_, Postgres>,
    sql: String,
    records: Vec<serde_json::Value>,
) -> Result<BTreeSet<String>, PgCommitError> {
    let written: Vec<String> = dynamic_scalar(sql)
        .bind(serde_json::Value::Array(records))
        .fetch_all(&mut **transaction)
        .await
        .map_err(aborted_or_failed)?;
    Ok(written.into_iter().collect())
}

/// Inserts (expected version 0) and updates (version check) rows, per table.
async fn write_rows(
    transaction: &mut Transaction<'_, Postgres>,
    writes: &[Write],
) -> Result<(), PgCommitError> {
    for (table, writes) in tables::by_table(writes, |write| write.row.key()) {
        let (inserts, updates): (Vec<&Write>, Vec<&Write>) =
            writes.into_iter().partition(|write| write.expected == 0);
        for (sql, group) in [(table.insert_sql(), inserts), (table.update_sql(), updates)] {
            if group.is_empty() {
                continue;
            }
            let records = group
                .iter()
                .map(|write| tables::record(write))
                .collect::<Result<Vec<_>, _>>()?;
            // A multi-row update locks its rows in the join's order, not the
            // keys'; two batches over the same rows could then deadlock.
            // Locking them in key order first makes concurrent commits queue.
            let updating = group.first().is_some_and(|write| write.expected > 0);
            if updating && group.len() > 1 {
                let keys: Vec<String> = group
                    .iter()
                    .map(|write| tables::key_text(&write.row.key()))
                    .collect();
                dynamic(table.lock_sql())
                    .bind(&keys)
                    .execute(&mut **transaction)
                    .await?;
            }
            let written = run_records(transaction, sql, records).await?;
            if let Some(missed) = group
                .iter()
                .find(|write| !written.contains(&tables::key_text(&write.row.key())))
            {
                let key = missed.row.key();
                let found: Option<i64> = dynamic_scalar(table.versions_sql())
                    .bind(vec![tables::key_text(&key)])
                    .fetch_optional(&mut **transaction)
                    .await
                    .map_err(aborted_or_failed)?;
                return Err(PgCommitError::Conflict(CommitError::VersionConflict {
                    key,
                    expected: missed.expected,
                    found: found.map_or(Ok(0), |version| to_u64(version, "version"))?,
                }));
            }
        }
    }
    Ok(())
}

/// Applies increments to the accounts that many inputs move at once,
/// opening an account on first use; no version check (they commute).
async fn apply_increments(
    transaction: &mut Transaction<'_, Postgres>,
    increments: &[Increment],
) -> Result<(), PgCommitError> {
    if increments.is_empty() {
        return Ok(());
    }
    let records: Vec<serde_json::Value> = increments
        .iter()
        .map(|increment| {
            serde_json::json!({
                "account_id": increment.account.to_string(),
                "balance_minor": increment.balance_minor,
                "held_minor": increment.held_minor,
                "kind": tables::account_kind(&increment.account),
                "currency": increment.account.currency().code(),
            })
        })
        .collect();
    let sql = "INSERT INTO payment.accounts AS a (account_id, version, balance_minor, held_minor, kind, currency) \
               SELECT u.account_id, 1, u.balance_minor, u.held_minor, u.kind, u.currency \
               FROM jsonb_to_recordset($1::jsonb) AS u(account_id text, balance_minor bigint, held_minor bigint, kind text, currency text) \
               ON CONFLICT (account_id) DO UPDATE SET version = a.version + 1, \
               balance_minor = a.balance_minor + excluded.balance_minor, held_minor = a.held_minor + excluded.held_minor \
               RETURNING account_id";
    run_records(transaction, sql.to_owned(), records).await?;
    Ok(())
}

/// Inserts inbox receipts, per consumer; one that exists is a conflict.
async fn insert_inbox(
    transaction: &mut Transaction<'_, Postgres>,
    receipts: &[InboxReceipt],
) -> Result<(), PgCommitError> {
    for service in Service::ALL {
        let group: Vec<&InboxReceipt> = receipts
            .iter()
            .filter(|receipt| receipt.consumer == service)
            .collect();
        if group.is_empty() {
            continue;
        }
        let records = group
            .iter()
            .map(|receipt| {
                Ok(serde_json::json!({
                    "message_id": receipt.message_id.to_hex(),
                    "fingerprint": hex(receipt.fingerprint.as_bytes()),
                    "received_at": to_i64(receipt.received_at.unix_ms(), "received_at")?,
                }))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let sql = format!(
            "INSERT INTO {}.inbox (message_id, fingerprint, received_at) \
             SELECT u.message_id, decode(u.fingerprint, 'hex'), timestamptz 'epoch' + u.received_at * interval '1 millisecond' \
             FROM jsonb_to_recordset($1::jsonb) AS u(message_id text, fingerprint text, received_at bigint) \
             ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            schema(service)
        );
        let written = run_records(transaction, sql, records).await?;
        if let Some(missed) = group
            .iter()
            .find(|receipt| !written.contains(&receipt.message_id.to_hex()))
        {
            return Err(PgCommitError::Conflict(CommitError::InboxConflict {
                consumer: missed.consumer,
                message_id: missed.message_id,
            }));
        }
    }
    Ok(())
}

/// Inserts new and updates known idempotency records, per service.
async fn write_idempotency(
    transaction: &mut Transaction<'_, Postgres>,
    writes: &[IdempotencyWrite],
) -> Result<(), PgCommitError> {
    for service in Service::ALL {
        let (inserts, updates): (Vec<&IdempotencyWrite>, Vec<&IdempotencyWrite>) = writes
            .iter()
            .filter(|write| write.service == service)
            .partition(|write| write.expected == 0);
        let table = format!("{}.idempotency_keys", schema(service));
        let shape = "u(key text, expected bigint, record jsonb, expires_at bigint)";
        let expires = "timestamptz 'epoch' + u.expires_at * interval '1 millisecond'";
        let statements = [
            (
                format!(
                    "INSERT INTO {table} (key, version, record, expires_at) SELECT u.key, 1, u.record, {expires} \
                     FROM jsonb_to_recordset($1::jsonb) AS {shape} ON CONFLICT (key) DO NOTHING RETURNING key"
                ),
                inserts,
            ),
            (
                format!(
                    "UPDATE {table} AS t SET version = t.version + 1, record = u.record, expires_at = {expires} \
                     FROM jsonb_to_recordset($1::jsonb) AS {shape} WHERE t.key = u.key AND t.version = u.expected RETURNING t.key"
                ),
                updates,
            ),
        ];
        for (sql, group) in statements {
            if group.is_empty() {
                continue;
            }
            let records = group
                .iter()
                .map(|write| {
                    Ok(serde_json::json!({
                        "key": write.key.to_string(),
                        "expected": to_i64(write.expected, "version")?,
                        "record": write.record,
                        "expires_at": to_i64(write.record.expires_at.unix_ms(), "expires_at")?,
                    }))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let written = run_records(transaction, sql, records).await?;
            if let Some(missed) = group
                .iter()
                .find(|write| !written.contains(&write.key.to_string()))
            {
                return Err(PgCommitError::Conflict(CommitError::IdempotencyConflict {
                    key: missed.key.to_string(),
                }));
            }
        }
    }
    Ok(())
}

/// Inserts outbox rows, per service, in commit order (their sequence).
async fn insert_outbox(
    transaction: &mut Transaction<'_, Postgres>,
    outbox: &[(Service, Envelope)],
    now: Timestamp,
) -> Result<(), PgCommitError> {
    let now_ms = to_i64(now.unix_ms(), "now")?;
    for service in Service::ALL {
        let records: Vec<serde_json::Value> = outbox
            .iter()
            .filter(|(owner, _)| *owner == service)
            .map(|(_, envelope)| {
                serde_json::json!({
                    "message_id": envelope.message_id.to_hex(),
                    "order_id": envelope.order_id.as_str(),
                    "message_type": envelope.message_type(),
                    "correlation_id": envelope.correlation_id.as_str(),
                    "traceparent": envelope.traceparent.as_str(),
                    "envelope": hex(&envelope.encode()),
                    "created_at": now_ms,
                })
            })
            .collect();
        if records.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO {}.outbox (message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at) \
             SELECT u.message_id, u.order_id, u.message_type, u.correlation_id, u.traceparent, decode(u.envelope, 'hex'), \
             timestamptz 'epoch' + u.created_at * interval '1 millisecond' \
             FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (message_id text, order_id text, message_type text, \
             correlation_id text, traceparent text, envelope text, created_at bigint)) WITH ORDINALITY \
             AS u(message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at, position) \
             ORDER BY u.position RETURNING message_id",
            schema(service)
        );
        run_records(transaction, sql, records).await?;
        // Wakes the service's publishers when the transaction commits
        // (notifications are transactional; repeats within one are merged).
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::outbox::outbox_channel(service))
            .execute(&mut **transaction)
            .await
            .map_err(aborted_or_failed)?;
    }
    Ok(())
}

/// Seals postings after the chain head, which is locked for the rest of the
/// transaction: one head update per commit, however many entries it seals.
async fn seal_postings(
    transaction: &mut Transaction<'_, Postgres>,
    postings: Vec<Posting>,
    now: Timestamp,
) -> Result<(), PgCommitError> {
    let head = sqlx::query("SELECT sequence, hash FROM payment.chain_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut **transaction)
        .await
        .map_err(aborted_or_failed)?;
    let mut sequence = to_u64(head.try_get(0)?, "chain sequence")?;
    let mut previous = hash_from(head.try_get::<Vec<u8>, _>(1)?)?;
    let ids: Vec<String> = postings.iter().map(|posting| posting.id.to_hex()).collect();
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT posting_id FROM payment.ledger_entries WHERE posting_id = ANY($1) LIMIT 1",
    )
    .bind(&ids)
    .fetch_optional(&mut **transaction)
    .await?;
    if let Some(existing) = existing {
        let id = Id128::from_hex(&existing).map_err(corrupt)?;
        return Err(PgCommitError::Conflict(CommitError::PostingConflict(id)));
    }
    let mut entries = Vec::with_capacity(postings.len());
    let mut legs = Vec::new();
    for posting in postings {
        sequence += 1;
        let entry = Entry::seal_at(sequence, previous, posting, now);
        let sequence_column = to_i64(entry.sequence, "sequence")?;
        // The columns and legs exactly as reconciliation expects them.
        let stored = StoredEntry::of(&entry.posting);
        for leg in &stored.legs {
            legs.push(serde_json::json!({
                "sequence": sequence_column,
                "leg": leg.leg,
                "account_id": leg.account,
                "side": leg.side,
                "amount_minor": leg.amount_minor,
                "currency": leg.currency,
            }));
        }
        entries.push(serde_json::json!({
            "sequence": sequence_column,
            "posting_id": stored.posting_id,
            "recorded_at": to_i64(entry.recorded_at.unix_ms(), "recorded_at")?,
            "reverses": stored.reverses,
            "order_id": stored.order_id,
            "purpose": stored.purpose,
            "correlation_id": stored.correlation_id,
            "traceparent": stored.traceparent,
            "posting": entry.posting,
            "previous_hash": hex(&entry.previous_hash.0),
            "hash": hex(&entry.hash.0),
        }));
        previous = entry.hash;
    }
    let insert_entries = "INSERT INTO payment.ledger_entries (sequence, posting_id, recorded_at, reverses, order_id, purpose, correlation_id, traceparent, posting, previous_hash, hash) \
        SELECT u.sequence, u.posting_id, timestamptz 'epoch' + u.recorded_at * interval '1 millisecond', u.reverses, u.order_id, u.purpose, \
        u.correlation_id, u.traceparent, u.posting, decode(u.previous_hash, 'hex'), decode(u.hash, 'hex') \
        FROM jsonb_to_recordset($1::jsonb) AS u(sequence bigint, posting_id text, recorded_at bigint, reverses text, order_id text, \
        purpose text, correlation_id text, traceparent text, posting jsonb, previous_hash text, hash text) \
        ORDER BY u.sequence RETURNING posting_id";
    run_records(transaction, insert_entries.to_owned(), entries).await?;
    let insert_legs = "INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) \
        SELECT u.sequence, u.leg, u.account_id, u.side, u.amount_minor, u.currency \
        FROM jsonb_to_recordset($1::jsonb) AS u(sequence bigint, leg smallint, account_id text, side text, amount_minor bigint, currency text) \
        RETURNING account_id";
    run_records(transaction, insert_legs.to_owned(), legs).await?;
    sqlx::query("UPDATE payment.chain_head SET sequence = $1, hash = $2 WHERE id = 1")
        .bind(to_i64(sequence, "sequence")?)
        .bind(previous.0.to_vec())
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// Lower-case hexadecimal, as PostgreSQL's `decode(text, 'hex')` reads it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Sorts a failed statement: a deadlock between concurrent commits, a
/// serialisation failure or a key inserted concurrently is a conflict
/// (decide again); a lost connection, a server shutting down or out of
/// resources, or a pool that cannot hand out a connection is the database
/// being unavailable (try later); any other refusal (a constraint, a value
/// out of range) is this commit's own fault and deciding it again cannot
/// help.
pub(crate) fn aborted_or_failed(error: sqlx::Error) -> PgCommitError {
    const CONFLICTS: [&str; 3] = [
        "40P01", // deadlock_detected
        "40001", // serialization_failure
        "23505", // unique_violation
    ];
    // SQLSTATE classes of an unavailable server: connection exception,
    // insufficient resources, operator intervention, system error.
    const UNAVAILABLE_CLASSES: [&str; 4] = ["08", "53", "57", "58"];
    let sqlx::Error::Database(database) = &error else {
        return match error {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => PgCommitError::Refused(error.to_string()),
            other => PgCommitError::Store(StoreError::Database(other)),
        };
    };
    let code = database
        .code()
        .map(|code| code.into_owned())
        .unwrap_or_default();
    if CONFLICTS.contains(&code.as_str()) {
        return PgCommitError::Conflict(CommitError::Aborted(database.message().to_owned()));
    }
    if UNAVAILABLE_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
        || code.is_empty()
    {
        return PgCommitError::Store(StoreError::Database(error));
    }
    PgCommitError::Refused(format!("{code}: {}", database.message()))
}

pub(crate) type PgQuery = sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>;

/// A statement whose text was assembled here from fixed identifiers (schema
/// and table names from `Service`, never input); every value is a bind
/// parameter.
pub(crate) fn dynamic(sql: String) -> PgQuery {
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

/// Decodes a row of `sequence, recorded_at (unix ms), posting, previous_hash, hash`.
pub(crate) fn entry_from(row: &sqlx::postgres::PgRow) -> Result<Entry, StoreError> {
    Ok(Entry {
        sequence: to_u64(row.try_get(0)?, "sequence")?,
        recorded_at: Timestamp::from_unix_ms(to_u64(row.try_get(1)?, "recorded_at")?),
        posting: from_json(row.try_get::<&str, _>(2)?, "ledger posting")?,
        previous_hash: hash_from(row.try_get::<Vec<u8>, _>(3)?)?,
        hash: hash_from(row.try_get::<Vec<u8>, _>(4)?)?,
    })
}

/// PostgreSQL behind the engine's storage port.
#[async_trait::async_trait]
impl saldo_engine::Store for PgStore {
    async fn load(&self, read_set: &BatchReadSet) -> Result<Loaded, Unavailable> {
        self.load_batch(read_set).await.map_err(unavailable)
    }

    async fn commit(&self, commit: Commit, now: Timestamp) -> Result<(), CommitFailure> {
        PgStore::commit(self, commit, now)
            .await
            .map_err(|error| match error {
                PgCommitError::Conflict(conflict) => CommitFailure::Conflict(conflict),
                PgCommitError::Store(error) => unavailable(error).into(),
                PgCommitError::Refused(reason) => CommitFailure::Refused(reason),
            })
    }

    async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<OrderId>, Unavailable> {
        self.due_orders(now, i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(unavailable)
    }

    async fn entries_of(
        &self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<Entry>, Unavailable> {
        PgStore::entries_of(self, account, limit)
            .await
            .map_err(unavailable)
    }

    async fn record_dead_letter(
        &self,
        consumer: Service,
        letter: &DeadLetter,
    ) -> Result<(), Unavailable> {
        let sql = format!(
            "INSERT INTO {}.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ($1, $2, $3, $4, $5, now())",
            schema(consumer)
        );
        dynamic(sql)
            .bind(letter.message_id.map(|id| id.to_hex()))
            .bind(letter.message_type)
            .bind(letter.order_id.as_deref())
            .bind(&letter.error)
            .bind(&letter.payload)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|error| unavailable(StoreError::Database(error)))
    }

    async fn purge(
        &self,
        service: Service,
        horizons: &Horizons,
        now: Timestamp,
        limit: usize,
    ) -> Result<Purged, Unavailable> {
        PgStore::purge(self, service, horizons, now, limit)
            .await
            .map_err(unavailable)
    }

    async fn ready(&self) -> Result<(), Unavailable> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|error| unavailable(StoreError::Database(error)))
    }
}

pub(crate) fn unavailable(error: StoreError) -> Unavailable {
    Unavailable(error.to_string())
}

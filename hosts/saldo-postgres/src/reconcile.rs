//! Reconciliation over PostgreSQL, read-only.
//!
//! Connect as `saldo_reconcile` (SELECT only). One run opens five
//! connections in one exported REPEATABLE READ snapshot, so every table is
//! read as of the same instant, and:
//! - merges four streams sorted by order id (orders, payments, reservations,
//!   and ledger entries aggregated per order) into one [`OrderFacts`] at a
//!   time: memory stays bounded however many orders there are;
//! - verifies the hash chain from its watermark, concurrently;
//! - checks stock against held reservations, account balances against
//!   their legs, entries' legs for balance, old unpublished outbox rows and
//!   dead letters.
//!
//! After the first (full) run, order checks only look at orders touched
//! since the previous run (less the grace period), still pending, or with a
//! finding in the previous run (findings are levels: one that still holds is
//! reported again however old its order), and the chain resumes from the
//! last verified entry, after checking that entry is still as it was verified
//! and that the rows (columns, postings, legs) of every verified entry are unchanged. Each entry's
//! stored columns and legs are compared with its hashed posting; operator
//! checkpoints ([`Reconciler::expect_checkpoint`]) are checked on every run.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use saldo_domain::messages::{OrderLine, Service};
use saldo_domain::order::{CancelReason, OrderStatus};
use saldo_ledger::{ChainHash, Checkpoint, Entry, StoredEntry, StoredLeg};
use saldo_reconcile::{
    ChainVerifier, Finding, LedgerFact, OrderFact, OrderFacts, PaymentFact, PaymentKind,
    ReservationFact, ReservationKind, RowsDigest, Settings, check_account, check_checkpoint,
    check_dead_letters, check_entry_balance, check_order, check_outbox_row, check_stock,
    check_verified_rows,
};
use saldo_types::{Currency, Money, OrderId, Timestamp};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Connection, Executor, PgConnection, Row as _};

use crate::StoreError;
use crate::store::{corrupt, hash_from, unix_ms as ms};

fn timestamp(value: Option<i64>) -> Option<Timestamp> {
    value.map(|ms| Timestamp::from_unix_ms(u64::try_from(ms).unwrap_or(0)))
}

/// What one run found, and how much it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Every finding, sorted.
    pub findings: Vec<Finding>,
    /// Orders judged.
    pub orders_checked: u64,
    /// Ledger entries whose hash was verified in this run.
    pub entries_verified: u64,
    /// True when every order was judged (the first run).
    pub full: bool,
}

/// A reconciler with its watermarks; keep it between runs.
#[derive(Debug)]
pub struct Reconciler {
    pool: PgPool,
    settings: Settings,
    chain: ChainVerifier,
    legs_checked_through: i64,
    rows_verified: RowsDigest,
    checkpoints: Vec<Checkpoint>,
    open_orders: Vec<String>,
    last_run: Option<Timestamp>,
}

/// Which orders a run judges.
enum Scope {
    All,
    /// Touched since the watermark (ms), or with a finding last run.
    ChangedSince(i64, Vec<String>),
}

impl Scope {
    fn filter(&self, updated_column: &str) -> String {
        match self {
            Scope::All => String::from("TRUE"),
            Scope::ChangedSince(..) => format!(
                "{updated_column} >= timestamptz 'epoch' + $1::bigint * interval '1 millisecond' OR order_id IN (SELECT order_id FROM changed)"
            ),
        }
    }

    /// The orders touched since the watermark in any service, or still pending.
    fn changed_cte(&self) -> String {
        match self {
            Scope::All => String::new(),
            Scope::ChangedSince(..) => {
                let since = "timestamptz 'epoch' + $1::bigint * interval '1 millisecond'";
                format!(
                    "WITH changed AS (SELECT order_id FROM orders.orders WHERE updated_at >= {since} OR status = 'PENDING' \
                     UNION SELECT order_id FROM payment.payments WHERE updated_at >= {since} \
                     UNION SELECT order_id FROM inventory.reservations WHERE updated_at >= {since} \
                     UNION SELECT order_id FROM payment.ledger_entries WHERE order_id IS NOT NULL AND recorded_at >= {since} \
                     UNION SELECT unnest($2::text[])) "
                )
            }
        }
    }
}

impl Reconciler {
    /// A reconciler that has not run yet (its first run is full).
    pub fn new(pool: PgPool, settings: Settings) -> Reconciler {
        Reconciler {
            pool,
            settings,
            chain: ChainVerifier::default(),
            legs_checked_through: 0,
            rows_verified: RowsDigest::default(),
            checkpoints: Vec::new(),
            open_orders: Vec::new(),
            last_run: None,
        }
    }

    /// Checks on every run that the ledger still holds `checkpoint` (an
    /// entry's sequence and hash the operator kept elsewhere).
    pub fn expect_checkpoint(&mut self, checkpoint: Checkpoint) {
        self.checkpoints.push(checkpoint);
    }

    /// The hash-chain watermark: the last entry verified.
    pub fn chain_watermark(&self) -> Option<(u64, ChainHash)> {
        self.chain.watermark()
    }

    /// One reconciliation pass at `now`.
    pub async fn run(&mut self, now: Timestamp) -> Result<RunReport, StoreError> {
        let scope = match self.last_run {
            None => Scope::All,
            Some(last) => Scope::ChangedSince(
                i64::try_from(last.unix_ms().saturating_sub(self.settings.grace_ms)).unwrap_or(0),
                std::mem::take(&mut self.open_orders),
            ),
        };
        let mut connections = Vec::with_capacity(5);
        for _ in 0..5 {
            connections.push(PgConnection::connect_with(&self.pool.connect_options()).await?);
        }
        let snapshot: String = {
            let first = &mut connections[0];
            first
                .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut *first)
                .await?
        };
        for connection in &mut connections[1..] {
            connection
                .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            connection
                .execute(sqlx::AssertSqlSafe(format!(
                    "SET TRANSACTION SNAPSHOT '{snapshot}'"
                )))
                .await?;
        }
        let [first, payments, reservations, ledger, chain_connection]: &mut [PgConnection; 5] =
            (&mut connections[..]).try_into().expect("five connections");
        let mut findings = self.judge_checkpoints(chain_connection).await?;
        let chain_from = self
            .chain
            .watermark()
            .map_or(0, |(sequence, _)| sequence as i64);
        self.chain.begin_pass();
        let mut chain = std::mem::take(&mut self.chain);
        let rows_before = self.rows_verified;
        let (orders, chain_result) = tokio::join!(
            judge_orders(
                first,
                payments,
                reservations,
                ledger,
                &scope,
                now,
                &self.settings
            ),
            async {
                let verified = verify_chain(chain_connection, &mut chain, chain_from).await?;
                // The digest of what this pass verified, while the orders
                // are still being judged on the other connections.
                let through = chain.watermark().map_or(0, |(sequence, _)| sequence);
                let digest = rows_digest(chain_connection, rows_before, through).await?;
                Ok::<_, StoreError>((verified, digest))
            },
        );
        self.chain = chain;
        let (order_findings, orders_checked) = orders?;
        let ((chain_findings, entries_verified), digest) = chain_result?;
        findings.extend(order_findings);
        findings.extend(chain_findings);
        self.rows_verified = digest;
        findings.extend(self.judge_rest(first, now).await?);
        for connection in connections {
            connection.close().await?;
        }
        findings.sort();
        findings.dedup();
        self.open_orders = findings
            .iter()
            .flat_map(|finding| &finding.ids)
            .filter_map(|id| id.strip_prefix("order:"))
            .map(str::to_owned)
            .collect();
        self.open_orders.sort();
        self.open_orders.dedup();
        let full = matches!(scope, Scope::All);
        self.last_run = Some(now);
        Ok(RunReport {
            findings,
            orders_checked,
            entries_verified,
            full,
        })
    }

    /// The operator's checkpoints, the last verified entry and the rows of
    /// every verified entry: each must still be as it was seen.
    async fn judge_checkpoints(
        &self,
        connection: &mut PgConnection,
    ) -> Result<Vec<Finding>, StoreError> {
        let watermark = self.chain.watermark_checkpoint();
        let mut findings = Vec::new();
        for (checkpoint, source) in self
            .checkpoints
            .iter()
            .map(|checkpoint| (checkpoint, "checkpoint"))
            .chain(
                watermark
                    .iter()
                    .map(|checkpoint| (checkpoint, "verified watermark")),
            )
        {
            let stored: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT hash FROM payment.ledger_entries WHERE sequence = $1")
                    .bind(i64::try_from(checkpoint.sequence).map_err(corrupt)?)
                    .fetch_optional(&mut *connection)
                    .await?;
            let stored = stored.map(hash_from).transpose()?;
            findings.extend(check_checkpoint(*checkpoint, stored, source));
        }
        if self.rows_verified.through > 0 {
            let now = rows_digest(
                connection,
                RowsDigest::default(),
                self.rows_verified.through,
            )
            .await?;
            findings.extend(check_verified_rows(self.rows_verified, now));
        }
        Ok(findings)
    }

    /// Stock, accounts, legs, outbox and dead letters.
    async fn judge_rest(
        &mut self,
        connection: &mut PgConnection,
        now: Timestamp,
    ) -> Result<Vec<Finding>, StoreError> {
        let mut findings = Vec::new();
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body->>'lines' FROM inventory.reservations WHERE state = 'held'",
        )
        .fetch_all(&mut *connection)
        .await?;
        for lines in bodies {
            let lines: Vec<OrderLine> = serde_json::from_str(&lines)
                .map_err(|error| corrupt(format!("reservation lines: {error}")))?;
            for line in lines {
                *held.entry(line.sku.as_str().to_owned()).or_default() += u64::from(line.quantity);
            }
        }
        let mut stock =
            sqlx::query("SELECT sku, on_hand, reserved FROM inventory.stock ORDER BY sku")
                .fetch(&mut *connection);
        while let Some(row) = stock.try_next().await? {
            let sku: String = row.try_get(0)?;
            let on_hand = u64::try_from(row.try_get::<i64, _>(1)?).map_err(corrupt)?;
            let reserved = u64::try_from(row.try_get::<i64, _>(2)?).map_err(corrupt)?;
            findings.extend(check_stock(
                &sku,
                on_hand,
                reserved,
                held.get(&sku).copied().unwrap_or(0),
            ));
        }
        drop(stock);
        let mut accounts = sqlx::query(
            "SELECT a.account_id, a.balance_minor, COALESCE(l.total, 0)::bigint FROM payment.accounts a \
             LEFT JOIN (SELECT account_id, SUM(CASE side WHEN 'credit' THEN amount_minor ELSE -amount_minor END) AS total \
                        FROM payment.ledger_legs GROUP BY account_id) l USING (account_id)",
        )
        .fetch(&mut *connection);
        while let Some(row) = accounts.try_next().await? {
            findings.extend(check_account(
                row.try_get(0)?,
                row.try_get(1)?,
                i128::from(row.try_get::<i64, _>(2)?),
            ));
        }
        drop(accounts);
        let unbalanced = sqlx::query(
            "SELECT e.sequence, e.posting_id, SUM(CASE l.side WHEN 'debit' THEN l.amount_minor ELSE -l.amount_minor END)::bigint \
             FROM payment.ledger_legs l JOIN payment.ledger_entries e USING (sequence) WHERE e.sequence > $1 \
             GROUP BY e.sequence, e.posting_id HAVING SUM(CASE l.side WHEN 'debit' THEN l.amount_minor ELSE -l.amount_minor END) <> 0",
        )
        .bind(self.legs_checked_through)
        .fetch_all(&mut *connection)
        .await?;
        for row in unbalanced {
            let sequence = u64::try_from(row.try_get::<i64, _>(0)?).map_err(corrupt)?;
            findings.extend(check_entry_balance(
                sequence,
                row.try_get(1)?,
                i128::from(row.try_get::<i64, _>(2)?),
            ));
        }
        let checked_through: Option<i64> =
            sqlx::query_scalar("SELECT max(sequence) FROM payment.ledger_entries")
                .fetch_one(&mut *connection)
                .await?;
        // An unbalanced entry stays a finding on every run until repaired.
        if findings
            .iter()
            .all(|finding| finding.kind != saldo_reconcile::FindingKind::UnbalancedEntry)
        {
            self.legs_checked_through = checked_through.unwrap_or(0);
        }
        for service in Service::ALL {
            let schema = crate::schema(service);
            let sql = format!(
                "SELECT sequence, {} FROM {schema}.outbox WHERE published_at IS NULL ORDER BY sequence",
                ms("created_at")
            );
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *connection);
            while let Some(row) = rows.try_next().await? {
                let created_at = timestamp(Some(row.try_get(1)?)).expect("present");
                findings.extend(check_outbox_row(
                    service,
                    row.try_get(0)?,
                    created_at,
                    now,
                    &self.settings,
                ));
            }
            drop(rows);
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.dead_letters"
            )))
            .fetch_one(&mut *connection)
            .await?;
            findings.extend(check_dead_letters(
                service,
                u64::try_from(count).unwrap_or(0),
            ));
        }
        Ok(findings)
    }
}

/// Verifies the whole chain, with every entry's stored rows, in one
/// snapshot: the last entry as a checkpoint for operators to keep outside
/// the database (`None` for an empty ledger), or the findings that stop it.
pub async fn verified_checkpoint(
    pool: &PgPool,
) -> Result<Result<Option<Checkpoint>, Vec<Finding>>, StoreError> {
    let mut connection = pool.acquire().await?;
    connection
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let mut chain = ChainVerifier::default();
    let (findings, _) = verify_chain(&mut connection, &mut chain, 0).await?;
    connection.execute("COMMIT").await?;
    if !findings.is_empty() {
        return Ok(Err(findings));
    }
    Ok(Ok(chain.watermark_checkpoint()))
}

async fn verify_chain(
    connection: &mut PgConnection,
    chain: &mut ChainVerifier,
    from: i64,
) -> Result<(Vec<Finding>, u64), StoreError> {
    let sql = format!(
        "SELECT e.sequence, {}, e.posting::text, e.previous_hash, e.hash, e.posting_id, e.reverses, e.purpose, e.order_id, \
         e.correlation_id, e.traceparent, COALESCE(l.legs, '[]') \
         FROM payment.ledger_entries e LEFT JOIN (SELECT sequence, json_agg(json_build_array(leg, account_id, side, amount_minor, currency) ORDER BY leg)::text AS legs \
             FROM payment.ledger_legs WHERE sequence > $1 GROUP BY sequence) l USING (sequence) \
         WHERE e.sequence > $1 ORDER BY e.sequence",
        ms("e.recorded_at")
    );
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .fetch(&mut *connection);
    let mut findings = Vec::new();
    let mut verified = 0;
    while let Some(row) = rows.try_next().await? {
        let hash =
            |index: usize| -> Result<ChainHash, StoreError> { hash_from(row.try_get(index)?) };
        let entry = Entry {
            sequence: u64::try_from(row.try_get::<i64, _>(0)?).map_err(corrupt)?,
            recorded_at: timestamp(Some(row.try_get(1)?)).expect("present"),
            posting: serde_json::from_str(row.try_get::<&str, _>(2)?)
                .map_err(|error| corrupt(format!("posting: {error}")))?,
            previous_hash: hash(3)?,
            hash: hash(4)?,
        };
        let legs: Vec<(i64, String, String, i64, String)> =
            serde_json::from_str(row.try_get::<&str, _>(11)?)
                .map_err(|error| corrupt(format!("ledger legs: {error}")))?;
        let stored = StoredEntry {
            posting_id: row.try_get(5)?,
            reverses: row.try_get(6)?,
            purpose: row.try_get(7)?,
            order_id: row.try_get(8)?,
            correlation_id: row.try_get(9)?,
            traceparent: row.try_get(10)?,
            legs: legs
                .into_iter()
                .map(|(leg, account, side, amount_minor, currency)| StoredLeg {
                    leg,
                    account,
                    side,
                    amount_minor,
                    currency,
                })
                .collect(),
        };
        if let Some(finding) = chain.feed_stored(&entry, &stored) {
            // Later entries are not judged until this one is repaired.
            findings.push(finding);
            break;
        }
        verified += 1;
    }
    Ok((findings, verified))
}

/// `base` extended with the rows (entries and legs) of entries after
/// `base.through` up to `through`.
async fn rows_digest(
    connection: &mut PgConnection,
    base: RowsDigest,
    through: u64,
) -> Result<RowsDigest, StoreError> {
    if through <= base.through {
        return Ok(base);
    }
    let row = sqlx::query(
        "WITH legs AS (SELECT count(*) AS rows, COALESCE(sum(hash_record_extended(l, 0)::numeric), 0) AS sum \
             FROM payment.ledger_legs l WHERE sequence > $1 AND sequence <= $2), \
         entries AS (SELECT count(*) AS rows, COALESCE(sum(hash_record_extended(e, 0)::numeric), 0) AS sum \
             FROM payment.ledger_entries e WHERE sequence > $1 AND sequence <= $2) \
         SELECT (legs.rows + entries.rows)::bigint, (legs.sum + entries.sum)::text FROM legs, entries",
    )
    .bind(i64::try_from(base.through).map_err(corrupt)?)
    .bind(i64::try_from(through).map_err(corrupt)?)
    .fetch_one(&mut *connection)
    .await?;
    let count = u64::try_from(row.try_get::<i64, _>(0)?).map_err(corrupt)?;
    let sum: i128 = row
        .try_get::<String, _>(1)?
        .parse()
        .map_err(|error| corrupt(format!("rows digest: {error}")))?;
    Ok(RowsDigest {
        through,
        count: base.count + count,
        sum: base.sum + sum,
    })
}

/// A row of one of the four order streams, keyed by order id.
struct Keyed {
    order_id: String,
    row: PgRow,
}

async fn next_keyed(
    stream: &mut (impl futures_util::Stream<Item = Result<PgRow, sqlx::Error>> + Unpin),
) -> Result<Option<Keyed>, StoreError> {
    match stream.try_next().await? {
        Some(row) => Ok(Some(Keyed {
            order_id: row.try_get(0)?,
            row,
        })),
        None => Ok(None),
    }
}

fn currency(code: String) -> Result<Currency, StoreError> {
    Currency::from_code(code.trim()).map_err(|error| corrupt(format!("currency: {error}")))
}

fn order_fact(row: &PgRow) -> Result<OrderFact, StoreError> {
    let status: &str = row.try_get(1)?;
    let status = match status {
        "PENDING" => OrderStatus::Pending,
        "CONFIRMED" => OrderStatus::Confirmed,
        "CANCELLED" => {
            let reason: Option<String> = row.try_get(2)?;
            let reason: CancelReason =
                serde_json::from_value(serde_json::Value::String(reason.unwrap_or_default()))
                    .map_err(|error| corrupt(format!("cancel reason: {error}")))?;
            OrderStatus::Cancelled(reason)
        }
        other => return Err(corrupt(format!("order status {other:?}"))),
    };
    Ok(OrderFact {
        status,
        amount_minor: row.try_get(3)?,
        currency: currency(row.try_get(6)?)?,
        created_at: timestamp(Some(row.try_get(4)?)).expect("present"),
        deadline: timestamp(row.try_get(5)?),
    })
}

async fn judge_orders(
    orders_connection: &mut PgConnection,
    payments_connection: &mut PgConnection,
    reservations_connection: &mut PgConnection,
    ledger_connection: &mut PgConnection,
    scope: &Scope,
    now: Timestamp,
    settings: &Settings,
) -> Result<(Vec<Finding>, u64), StoreError> {
    let cte = scope.changed_cte();
    let orders_sql = format!(
        "{cte}SELECT order_id, status, cancel_reason, amount_minor, {}, {}, currency FROM orders.orders WHERE {} ORDER BY order_id COLLATE \"C\"",
        ms("created_at"),
        ms("deadline_at"),
        scope.filter("updated_at")
    );
    let payments_sql = format!(
        "{cte}SELECT order_id, state, amount_minor FROM payment.payments WHERE {} ORDER BY order_id COLLATE \"C\"",
        scope.filter("updated_at")
    );
    let reservations_sql = format!(
        "{cte}SELECT order_id, state, (body->'amount'->>'amount_minor')::bigint, body->'amount'->>'currency' FROM inventory.reservations WHERE {} ORDER BY order_id COLLATE \"C\"",
        scope.filter("updated_at")
    );
    let ledger_sql = format!(
        "{cte}SELECT e.order_id, count(*) FILTER (WHERE e.purpose = 'charge'), count(*) FILTER (WHERE e.purpose = 'refund'), \
         COALESCE(sum(w.debit), 0)::bigint, COALESCE(max(w.debit), 0)::bigint \
         FROM payment.ledger_entries e JOIN (SELECT sequence, SUM(CASE WHEN account_id LIKE 'wallet:%' THEN \
             CASE side WHEN 'debit' THEN amount_minor ELSE -amount_minor END ELSE 0 END) AS debit FROM payment.ledger_legs GROUP BY sequence) w USING (sequence) \
         WHERE e.order_id IS NOT NULL AND ({}) GROUP BY e.order_id ORDER BY e.order_id COLLATE \"C\"",
        scope
            .filter("e.recorded_at")
            .replace("order_id IN", "e.order_id IN")
    );
    let bind = |sql: String| {
        let query = sqlx::query(sqlx::AssertSqlSafe(sql));
        match scope {
            Scope::ChangedSince(since, open_orders) => query.bind(*since).bind(open_orders),
            Scope::All => query,
        }
    };
    let mut orders = bind(orders_sql).fetch(orders_connection);
    let mut payments = bind(payments_sql).fetch(payments_connection);
    let mut reservations = bind(reservations_sql).fetch(reservations_connection);
    let mut ledger = bind(ledger_sql).fetch(ledger_connection);
    let mut heads = [
        next_keyed(&mut orders).await?,
        next_keyed(&mut payments).await?,
        next_keyed(&mut reservations).await?,
        next_keyed(&mut ledger).await?,
    ];
    let mut findings = Vec::new();
    let mut checked = 0;
    while let Some(order_id) = heads
        .iter()
        .flatten()
        .map(|head| head.order_id.clone())
        .min()
    {
        let mut facts = OrderFacts {
            order_id: OrderId::new(order_id.clone()).map_err(corrupt)?,
            order: None,
            payment: None,
            reservation: None,
            ledger: LedgerFact::default(),
        };
        if let Some(head) = heads[0].take_if(|head| head.order_id == order_id) {
            facts.order = Some(order_fact(&head.row)?);
            heads[0] = next_keyed(&mut orders).await?;
        }
        if let Some(head) = heads[1].take_if(|head| head.order_id == order_id) {
            let state: &str = head.row.try_get(1)?;
            facts.payment = Some(PaymentFact {
                state: PaymentKind::from_name(state)
                    .ok_or_else(|| corrupt(format!("payment state {state:?}")))?,
                amount_minor: head.row.try_get(2)?,
            });
            heads[1] = next_keyed(&mut payments).await?;
        }
        if let Some(head) = heads[2].take_if(|head| head.order_id == order_id) {
            let state: &str = head.row.try_get(1)?;
            facts.reservation = Some(ReservationFact {
                state: ReservationKind::from_name(state)
                    .ok_or_else(|| corrupt(format!("reservation state {state:?}")))?,
                priced: match (
                    head.row.try_get::<Option<i64>, _>(2)?,
                    head.row.try_get::<Option<String>, _>(3)?,
                ) {
                    (Some(minor), Some(code)) => Some(Money::from_minor(minor, currency(code)?)),
                    _ => None,
                },
            });
            heads[2] = next_keyed(&mut reservations).await?;
        }
        if let Some(head) = heads[3].take_if(|head| head.order_id == order_id) {
            facts.ledger = LedgerFact {
                charges: u32::try_from(head.row.try_get::<i64, _>(1)?).map_err(corrupt)?,
                refunds: u32::try_from(head.row.try_get::<i64, _>(2)?).map_err(corrupt)?,
                net_charged_minor: i128::from(head.row.try_get::<i64, _>(3)?),
                largest_charge_minor: i128::from(head.row.try_get::<i64, _>(4)?),
            };
            heads[3] = next_keyed(&mut ledger).await?;
        }
        findings.extend(check_order(&facts, now, settings));
        checked += 1;
    }
    Ok((findings, checked))
}

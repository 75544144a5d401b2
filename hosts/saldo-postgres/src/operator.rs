//! The operator's tables and reads (docs/adr/0017): each service's audit
//! trail, its dead letters, and its part of an order's story. Reads touch
//! only the asking service's schema.

use std::sync::Arc;

use saldo_domain::decision::{RowKey, Versioned};
use saldo_domain::messages::{Envelope, MessageId, Service};
use saldo_domain::operator::{Actor, AuditRecord, DeadLetterRef, DeadLetterRow};
use saldo_domain::order::OrderRow;
use saldo_domain::store::CommitError;
use saldo_domain::story::{OutboxMessage, ReceiptSeen, STORY_ITEMS_MAX, StoryPart, StoryRow};
use saldo_engine::{AuditEntry, OperatorStore, OrderQuery, PAGE_MAX, Unavailable};
use saldo_types::{OrderId, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row as _, Transaction};

use crate::store::{
    PgCommitError, PgStore, StoreError, aborted_or_failed, dynamic, entry_from, from_json, schema,
    to_i64, to_u64, unavailable, unix_ms,
};
use crate::tables;

/// Deletes the dead letters an intervention settles; one already gone is a
/// conflict (someone settled it first), and the whole commit rolls back.
pub(crate) async fn settle_dead_letters(
    transaction: &mut Transaction<'_, Postgres>,
    settled: &[DeadLetterRef],
) -> Result<(), PgCommitError> {
    for letter in settled {
        let sql = format!(
            "DELETE FROM {}.dead_letters WHERE id = $1",
            schema(letter.service)
        );
        let deleted = dynamic(sql)
            .bind(to_i64(letter.id, "dead letter id")?)
            .execute(&mut **transaction)
            .await
            .map_err(aborted_or_failed)?
            .rows_affected();
        if deleted != 1 {
            return Err(PgCommitError::Conflict(CommitError::Aborted(format!(
                "dead letter {} of {} was already settled",
                letter.id, letter.service
            ))));
        }
    }
    Ok(())
}

/// Before a redrive queues a message again: deletes the published copy of
/// it that an earlier redrive left in the consumer's outbox (its message id
/// is unique there), as retention would; only a copy of the same bytes, so
/// a letter forged with the id of one of the service's own messages deletes
/// nothing. A copy still unpublished stays, and
/// the insert then fails as a conflict: the message is already on its way.
pub(crate) async fn drop_published_copies(
    transaction: &mut Transaction<'_, Postgres>,
    outbox: &[(Service, Envelope)],
) -> Result<(), PgCommitError> {
    for (service, envelope) in outbox {
        let sql = format!(
            "DELETE FROM {}.outbox WHERE message_id = $1 AND envelope = $2 AND published_at IS NOT NULL",
            schema(*service)
        );
        dynamic(sql)
            .bind(envelope.message_id.to_hex())
            .bind(envelope.encode())
            .execute(&mut **transaction)
            .await
            .map_err(aborted_or_failed)?;
    }
    Ok(())
}

/// Appends audit records to their services' audit tables.
pub(crate) async fn insert_audit(
    transaction: &mut Transaction<'_, Postgres>,
    records: &[AuditRecord],
) -> Result<(), PgCommitError> {
    for record in records {
        let sql = format!(
            "INSERT INTO {}.audit (principal, key_name, action, target, order_id, dry_run, at) \
             VALUES ($1, $2, $3, $4, $5, $6, timestamptz 'epoch' + $7::bigint * interval '1 millisecond')",
            schema(record.service)
        );
        dynamic(sql)
            .bind(&record.actor.principal)
            .bind(&record.actor.key)
            .bind(&record.action)
            .bind(&record.target)
            .bind(&record.order_id)
            .bind(&record.dry_run)
            .bind(to_i64(record.at.unix_ms(), "audit time")?)
            .execute(&mut **transaction)
            .await
            .map_err(aborted_or_failed)?;
    }
    Ok(())
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.min(PAGE_MAX)).unwrap_or(0)
}

fn timestamp_of(row: &PgRow, column: usize, what: &str) -> Result<Timestamp, StoreError> {
    Ok(Timestamp::from_unix_ms(to_u64(row.try_get(column)?, what)?))
}

fn dead_letter_from(service: Service, row: &PgRow) -> Result<DeadLetterRow, StoreError> {
    Ok(DeadLetterRow {
        id: to_u64(row.try_get(0)?, "dead letter id")?,
        service,
        message_id: row.try_get(1)?,
        message_type: row.try_get(2)?,
        order_id: row.try_get(3)?,
        error: row.try_get(4)?,
        payload: row.try_get(5)?,
        received_at: timestamp_of(row, 6, "received_at")?,
    })
}

fn dead_letter_columns() -> String {
    format!(
        "id, message_id, message_type, order_id, error, payload, {}",
        unix_ms("received_at")
    )
}

fn audit_from(service: Service, row: &PgRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: to_u64(row.try_get(0)?, "audit id")?,
        record: AuditRecord {
            service,
            actor: Actor {
                principal: row.try_get(1)?,
                key: row.try_get(2)?,
            },
            action: row.try_get(3)?,
            target: row.try_get(4)?,
            dry_run: row.try_get(5)?,
            at: timestamp_of(row, 6, "audit time")?,
            order_id: row.try_get(7)?,
        },
    })
}

fn audit_columns() -> String {
    format!(
        "id, principal, key_name, action, target, dry_run, {}, order_id",
        unix_ms("at")
    )
}

impl PgStore {
    /// One page of `sql` (`WHERE id > $1 ... LIMIT $2`), decoded.
    async fn page<T>(
        &self,
        sql: String,
        after: Option<u64>,
        limit: usize,
        decode: impl Fn(&PgRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, Unavailable> {
        let rows = dynamic(sql)
            .bind(i64::try_from(after.unwrap_or(0)).unwrap_or(i64::MAX))
            .bind(limit_of(limit))
            .fetch_all(self.pool())
            .await
            .map_err(|error| unavailable(StoreError::Database(error)))?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn orders_page(
        &self,
        query: &OrderQuery,
    ) -> Result<Vec<Versioned<Arc<OrderRow>>>, StoreError> {
        let updated_before = query
            .updated_before
            .map(|at| to_i64(at.unix_ms(), "updated_before"))
            .transpose()?;
        let rows = sqlx::query(
            "SELECT version, body::text FROM orders.orders \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR awaiting = $2) \
             AND ($3::bigint IS NULL OR updated_at < timestamptz 'epoch' + $3 * interval '1 millisecond') \
             AND ($4::text IS NULL OR order_id > $4) ORDER BY order_id LIMIT $5",
        )
        .bind(query.status)
        .bind(query.awaiting)
        .bind(updated_before)
        .bind(query.after.as_ref().map(OrderId::as_str))
        .bind(limit_of(query.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Versioned {
                    version: to_u64(row.try_get(0)?, "version")?,
                    value: Arc::new(from_json(row.try_get::<&str, _>(1)?, "order row")?),
                })
            })
            .collect()
    }

    async fn part(
        &self,
        service: Service,
        order_id: &OrderId,
        received: &[MessageId],
    ) -> Result<StoryPart, StoreError> {
        let mut part = StoryPart::empty(service, order_id.clone());
        let schema = schema(service);
        let cap = i64::try_from(STORY_ITEMS_MAX + 1).unwrap_or(i64::MAX);
        let mut connection = self.pool().acquire().await?;
        let key = match service {
            Service::Order => RowKey::Order(order_id.clone()),
            Service::Inventory => RowKey::Reservation(order_id.clone()),
            Service::Payment => RowKey::Payment(order_id.clone()),
        };
        let rows = tables::load_rows(&mut connection, [&key]).await?;
        part.rows = rows
            .into_values()
            .map(|stored| StoryRow {
                version: stored.version,
                row: stored.value,
            })
            .collect();
        let outbox = dynamic(format!(
            "SELECT sequence, envelope, {}, {} FROM {schema}.outbox WHERE order_id = $1 ORDER BY sequence LIMIT $2",
            unix_ms("created_at"),
            unix_ms("published_at")
        ))
        .bind(order_id.as_str())
        .bind(cap)
        .fetch_all(&mut *connection)
        .await?;
        for row in &outbox {
            part.outbox.push(OutboxMessage {
                sequence: to_u64(row.try_get(0)?, "sequence")?,
                bytes: row.try_get(1)?,
                created_at: timestamp_of(row, 2, "created_at")?,
                published_at: row
                    .try_get::<Option<i64>, _>(3)?
                    .map(|ms| to_u64(ms, "published_at").map(Timestamp::from_unix_ms))
                    .transpose()?,
            });
        }
        let ids: Vec<String> = received
            .iter()
            .take(STORY_ITEMS_MAX)
            .map(MessageId::to_hex)
            .collect();
        let receipts = dynamic(format!(
            "SELECT message_id, {} FROM {schema}.inbox WHERE message_id = ANY($1) ORDER BY received_at, message_id",
            unix_ms("received_at")
        ))
        .bind(&ids)
        .fetch_all(&mut *connection)
        .await?;
        for row in &receipts {
            part.inbox.push(ReceiptSeen {
                consumer: service,
                message_id: row.try_get(0)?,
                received_at: timestamp_of(row, 1, "received_at")?,
            });
        }
        if service == Service::Payment {
            let entries = dynamic(format!(
                "SELECT sequence, {}, posting::text, previous_hash, hash FROM payment.ledger_entries \
                 WHERE order_id = $1 ORDER BY sequence LIMIT $2",
                unix_ms("recorded_at")
            ))
            .bind(order_id.as_str())
            .bind(cap)
            .fetch_all(&mut *connection)
            .await?;
            part.entries = entries.iter().map(entry_from).collect::<Result<_, _>>()?;
        }
        let letters = dynamic(format!(
            "SELECT {} FROM {schema}.dead_letters WHERE order_id = $1 ORDER BY id LIMIT $2",
            dead_letter_columns()
        ))
        .bind(order_id.as_str())
        .bind(cap)
        .fetch_all(&mut *connection)
        .await?;
        part.dead_letters = letters
            .iter()
            .map(|row| dead_letter_from(service, row))
            .collect::<Result<_, _>>()?;
        let audit = dynamic(format!(
            "SELECT {} FROM {schema}.audit WHERE target = $1 OR order_id = $2 ORDER BY id LIMIT $3",
            audit_columns()
        ))
        .bind(format!("order:{order_id}"))
        .bind(order_id.as_str())
        .bind(cap)
        .fetch_all(&mut *connection)
        .await?;
        part.audit = audit
            .iter()
            .map(|row| audit_from(service, row).map(|entry| entry.record))
            .collect::<Result<_, _>>()?;
        part.bound();
        Ok(part)
    }
}

/// The operator's reads, each on the asking service's schema only.
#[async_trait::async_trait]
impl OperatorStore for PgStore {
    async fn oldest_pending_order(&self) -> Result<Option<Timestamp>, Unavailable> {
        // Answered from the partial index orders_pending_created.
        let sql = format!(
            "SELECT {} FROM orders.orders WHERE status = 'PENDING'",
            unix_ms("min(created_at)")
        );
        let oldest: Option<i64> = dynamic(sql)
            .fetch_one(self.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|error| unavailable(StoreError::from(error)))?;
        oldest
            .map(|ms| to_u64(ms, "created_at").map(Timestamp::from_unix_ms))
            .transpose()
            .map_err(unavailable)
    }

    async fn orders(
        &self,
        query: &OrderQuery,
    ) -> Result<Vec<Versioned<Arc<OrderRow>>>, Unavailable> {
        self.orders_page(query).await.map_err(unavailable)
    }

    async fn story_part(
        &self,
        service: Service,
        order_id: &OrderId,
        received: &[MessageId],
    ) -> Result<StoryPart, Unavailable> {
        self.part(service, order_id, received)
            .await
            .map_err(unavailable)
    }

    async fn dead_letters(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterRow>, Unavailable> {
        let sql = format!(
            "SELECT {} FROM {}.dead_letters WHERE id > $1 ORDER BY id LIMIT $2",
            dead_letter_columns(),
            schema(service)
        );
        self.page(sql, after, limit, |row| dead_letter_from(service, row))
            .await
    }

    async fn dead_letter(
        &self,
        service: Service,
        id: u64,
    ) -> Result<Option<DeadLetterRow>, Unavailable> {
        let sql = format!(
            "SELECT {} FROM {}.dead_letters WHERE id = $1",
            dead_letter_columns(),
            schema(service)
        );
        let row = dynamic(sql)
            .bind(i64::try_from(id).unwrap_or(i64::MAX))
            .fetch_optional(self.pool())
            .await
            .map_err(|error| unavailable(StoreError::Database(error)))?;
        row.map(|row| dead_letter_from(service, &row))
            .transpose()
            .map_err(unavailable)
    }

    async fn audit(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, Unavailable> {
        let sql = format!(
            "SELECT {} FROM {}.audit WHERE id > $1 ORDER BY id LIMIT $2",
            audit_columns(),
            schema(service)
        );
        self.page(sql, after, limit, |row| audit_from(service, row))
            .await
    }
}

//! The transactional-outbox publisher.

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::producer::FutureProducer;
use saldo_domain::messages::{Envelope, Service};
use saldo_postgres::schema;
use sqlx::{Connection, PgConnection, Row as _};

/// Outbox lanes per service: an order always maps to one lane, and each lane
/// is published by at most one publisher at a time.
pub const LANES: i32 = 16;

/// The most rows one batch claims.
pub const BATCH_MAX: i64 = 500;

/// Batches handed to the producer and not yet marked, at most.
pub const WINDOW: usize = 3;

/// The pause after a failed round before the next attempt.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long published rows are kept before deletion.
pub const RETENTION: Duration = Duration::from_secs(3_600);

/// Why a publishing round failed (it is retried; nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored envelope did not decode.
    #[error("outbox row {sequence} is unreadable: {error}")]
    Unreadable {
        /// The row.
        sequence: i64,
        /// Why.
        error: String,
    },
}

fn lock_class(service: Service) -> i32 {
    // A fixed namespace for Saldo's advisory locks, one per service.
    0x5a1d_0000
        + match service {
            Service::Order => 1,
            Service::Inventory => 2,
            Service::Payment => 3,
        }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose delivery failed; they stay unpublished and are retried.
    pub failed: usize,
    /// Lanes this publisher holds.
    pub lanes: usize,
    /// Rows handed to the producer and not yet settled.
    pub in_flight: usize,
}

/// Rows handed to the producer, with their acknowledgements to come.
#[derive(Default)]
struct Batch {
    /// Sequence and age (ms) of each row, in outbox order.
    rows: Vec<(i64, i64)>,
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
}

/// Publishes one service's outbox. Keep one per process and call
/// [`OutboxPublisher::round`] in a loop.
pub struct OutboxPublisher {
    service: Service,
    database_url: String,
    connection: PgConnection,
    producer: FutureProducer,
    lanes: Vec<i32>,
    rounds: u64,
    in_flight: std::collections::VecDeque<Batch>,
}

impl OutboxPublisher {
    /// A publisher on its own database connection (it holds advisory locks
    /// on it; if the process dies, the connection and its locks go with it
    /// and another publisher takes the lanes over).
    pub async fn connect(
        database_url: &str,
        service: Service,
        producer: FutureProducer,
    ) -> Result<OutboxPublisher, PublishError> {
        let connection = PgConnection::connect(database_url).await?;
        Ok(OutboxPublisher {
            service,
            database_url: database_url.to_owned(),
            connection,
            producer,
            lanes: Vec::new(),
            rounds: 0,
            in_flight: std::collections::VecDeque::new(),
        })
    }

    /// The lanes held now.
    pub fn lanes(&self) -> &[i32] {
        &self.lanes
    }

    /// Tries to take every lane not yet held (another publisher may hold it).
    async fn claim_lanes(&mut self) -> Result<(), PublishError> {
        for lane in 0..LANES {
            if self.lanes.contains(&lane) {
                continue;
            }
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(lock_class(self.service))
                .bind(lane)
                .fetch_one(&mut self.connection)
                .await?;
            if taken {
                self.lanes.push(lane);
            }
        }
        Ok(())
    }

    /// One step of the pipeline: claims the next [`BATCH_MAX`] unpublished
    /// rows of the held lanes that are not already in flight, in outbox
    /// order, and hands them to the producer without waiting; then, when
    /// [`WINDOW`] batches are in flight (or nothing new was found), waits for
    /// the oldest batch's acknowledgements and marks it. So the database
    /// work of one batch overlaps the broker's work on the previous ones.
    ///
    /// Batches settle in order. After a failed delivery, the rows behind it
    /// are not marked, nor is any later batch, so one order's messages never
    /// overtake each other; they are claimed and published again.
    pub async fn round(&mut self) -> Result<Round, PublishError> {
        self.rounds += 1;
        if self.rounds % 16 == 1 {
            self.claim_lanes().await?;
        }
        if self.lanes.is_empty() {
            return Ok(Round::default());
        }
        let schema = schema(self.service);
        let in_flight: Vec<i64> = self
            .in_flight
            .iter()
            .flat_map(|batch| batch.rows.iter().map(|(sequence, _)| *sequence))
            .collect();
        let sql = format!(
            "SELECT sequence, envelope, (extract(epoch from now() - created_at) * 1000)::bigint FROM {schema}.outbox \
             WHERE published_at IS NULL AND ((hashtext(order_id) & 2147483647) % {LANES}) = ANY($1) \
             AND NOT (sequence = ANY($3)) ORDER BY sequence LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.lanes)
            .bind(BATCH_MAX)
            .bind(&in_flight)
            .fetch_all(&mut self.connection)
            .await?;
        let mut batch = Batch::default();
        for row in &rows {
            let sequence: i64 = row.try_get(0)?;
            let bytes: Vec<u8> = row.try_get(1)?;
            let envelope = Envelope::decode(&bytes).map_err(|error| PublishError::Unreadable {
                sequence,
                error: error.to_string(),
            })?;
            let age_ms: i64 = row.try_get(2)?;
            // The row holds the envelope's wire form: decoding it checks it
            // and yields the key and headers; the bytes go out unchanged.
            match crate::producer::enqueue_encoded(&self.producer, &envelope, &bytes) {
                Ok(delivery) => {
                    batch.rows.push((sequence, age_ms));
                    batch.deliveries.push(delivery);
                }
                // The producer's queue is full or closed: the rest of the
                // rows wait for a later round, in order.
                Err(error) => {
                    tracing::warn!(service = %self.service, %error, "producer refused a message; retrying later");
                    break;
                }
            }
        }
        let found = !batch.rows.is_empty();
        if found {
            self.in_flight.push_back(batch);
        }
        let mut round = Round {
            lanes: self.lanes.len(),
            ..Round::default()
        };
        while self.in_flight.len() >= WINDOW || (!found && !self.in_flight.is_empty()) {
            let oldest = self.in_flight.pop_front().expect("checked");
            let (published, failed) = self.settle(oldest).await?;
            round.published += published;
            round.failed += failed;
            if failed > 0 {
                // Later batches may have been delivered, but marking them
                // would let them overtake the failed rows: they go again.
                for later in std::mem::take(&mut self.in_flight) {
                    join_all(later.deliveries).await;
                    round.failed += later.rows.len();
                }
            }
            if !found {
                break;
            }
        }
        round.in_flight = self.in_flight.iter().map(|batch| batch.rows.len()).sum();
        if self.rounds.is_multiple_of(256) {
            self.apply_retention().await?;
        }
        // The backlog gauge costs a count of the unpublished rows: refresh it
        // every few rounds, not on the hot path of every one.
        if self.rounds % 16 == 1 {
            let sql = format!("SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL");
            let backlog: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut self.connection)
                .await?;
            metrics::gauge!("saldo_outbox_backlog", "service" => self.service.name())
                .set(backlog as f64);
        }
        Ok(round)
    }

    /// Waits for a batch's acknowledgements and marks the acknowledged
    /// prefix published; returns (published, failed).
    async fn settle(&mut self, batch: Batch) -> Result<(usize, usize), PublishError> {
        let deliveries = join_all(
            batch
                .deliveries
                .into_iter()
                .map(crate::producer::acknowledged),
        )
        .await;
        let mut published = Vec::with_capacity(batch.rows.len());
        for ((sequence, age_ms), delivery) in batch.rows.iter().zip(&deliveries) {
            if delivery.is_err() {
                break;
            }
            published.push(*sequence);
            metrics::histogram!("saldo_outbox_publish_lag_ms", "service" => self.service.name())
                .record(*age_ms as f64);
        }
        if !published.is_empty() {
            let sql = format!(
                "UPDATE {}.outbox SET published_at = now() WHERE sequence = ANY($1)",
                schema(self.service)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&published)
                .execute(&mut self.connection)
                .await?;
        }
        Ok((published.len(), batch.rows.len() - published.len()))
    }

    /// Deletes rows published longer than [`RETENTION`] ago.
    pub async fn apply_retention(&mut self) -> Result<u64, PublishError> {
        let sql = format!(
            "DELETE FROM {}.outbox WHERE published_at < now() - $1::bigint * interval '1 second'",
            schema(self.service)
        );
        let deleted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(RETENTION.as_secs() as i64)
            .execute(&mut self.connection)
            .await?;
        Ok(deleted.rows_affected())
    }

    /// After a failed round: if the database connection is gone (the server
    /// restarted, an operator terminated the backend, the network dropped),
    /// opens a new one. The advisory locks died with the old connection, so
    /// the lanes are claimed again, and batches in flight are forgotten:
    /// their rows are still unpublished and go out again (consumers' inboxes
    /// absorb the repeats).
    async fn recover(&mut self) {
        if self.connection.ping().await.is_ok() {
            return;
        }
        match PgConnection::connect(&self.database_url).await {
            Ok(connection) => {
                tracing::info!(service = %self.service, "reconnected to the database; claiming lanes again");
                self.connection = connection;
                self.lanes.clear();
                self.in_flight.clear();
                // Claim the lanes on the next round.
                self.rounds = 0;
            }
            Err(error) => {
                tracing::warn!(service = %self.service, %error, "cannot reconnect to the database yet");
            }
        }
    }

    /// Publishes until `stop` resolves, pausing `idle` between empty rounds.
    pub async fn run(
        mut self,
        idle: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), PublishError> {
        tokio::pin!(stop);
        loop {
            let round = tokio::select! {
                round = self.round() => round,
                () = &mut stop => return Ok(()),
            };
            let wait = match round {
                Ok(round) if round.published > 0 || round.in_flight > 0 => Duration::ZERO,
                Ok(_) => idle,
                Err(error) => {
                    tracing::warn!(service = %self.service, %error, "publish round failed");
                    self.recover().await;
                    idle.max(RETRY_PAUSE)
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stop => return Ok(()),
                }
            }
        }
    }
}

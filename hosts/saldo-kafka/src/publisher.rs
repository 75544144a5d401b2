//! The transactional-outbox publisher, over the engine's outbox port.

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::producer::FutureProducer;
use saldo_domain::messages::Service;
use saldo_engine::{OutboxSource, Unavailable};

/// The most rows one batch claims.
pub const BATCH_MAX: usize = 500;

/// Batches handed to the producer and not yet marked, at most.
pub const WINDOW: usize = 3;

/// Every this many rounds the publisher tries to take lanes that no other
/// publisher holds, and refreshes the backlog gauge.
pub const LANE_CLAIM_EVERY: u64 = 16;

/// Every this many rounds the publisher deletes rows past their retention.
pub const RETENTION_EVERY: u64 = 256;

/// The pause after a failed round before the next attempt.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a publishing round failed (it is retried; nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The outbox's store failed.
    #[error(transparent)]
    Store(#[from] Unavailable),
    /// A row names a message type the catalogue does not have.
    #[error("outbox row {sequence} is unroutable: {error}")]
    Unroutable {
        /// The row.
        sequence: i64,
        /// Why.
        error: String,
    },
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
    /// Each row's hop as a span (ADR 0020), only while spans are exported:
    /// its traceparent, type and topic, and when it was committed.
    hops: Vec<Hop>,
}

/// One outbox row's hop from its commit to the broker's acknowledgement.
struct Hop {
    traceparent: String,
    message_type: String,
    topic: &'static str,
    committed: std::time::SystemTime,
}

impl Hop {
    fn of(record: &saldo_engine::OutboxRecord, topic: &'static str) -> Option<Hop> {
        if !saldo_engine::telemetry::exporting() {
            return None;
        }
        let age = std::time::Duration::from_millis(u64::try_from(record.age_ms).unwrap_or(0));
        Some(Hop {
            traceparent: record.traceparent.clone(),
            message_type: record.message_type.clone(),
            topic,
            committed: std::time::SystemTime::now()
                .checked_sub(age)
                .unwrap_or(std::time::UNIX_EPOCH),
        })
    }

    /// Exports the hop, its acknowledgement settled at `acknowledged`, under
    /// the message's own span.
    fn export(self, sequence: i64, acknowledged: std::time::SystemTime) {
        use saldo_engine::telemetry::{KeyValue, SpanKind, export_span};
        export_span(
            &self.traceparent,
            format!("publish {}", self.message_type),
            SpanKind::Producer,
            self.committed,
            acknowledged,
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", self.topic),
                KeyValue::new("saldo.outbox.sequence", sequence),
            ],
        );
    }
}

/// Publishes one service's outbox. Keep one per process and call
/// [`OutboxPublisher::round`] in a loop (or [`OutboxPublisher::run`]).
pub struct OutboxPublisher {
    service: Service,
    source: Box<dyn OutboxSource>,
    producer: FutureProducer,
    lanes: usize,
    rounds: u64,
    in_flight: std::collections::VecDeque<Batch>,
}

impl OutboxPublisher {
    /// A publisher of `source`'s rows through `producer`.
    pub fn new(source: Box<dyn OutboxSource>, producer: FutureProducer) -> OutboxPublisher {
        OutboxPublisher {
            service: source.service(),
            source,
            producer,
            lanes: 0,
            rounds: 0,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// How many lanes it holds now.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Deletes rows published longer ago than the outbox's retention.
    pub async fn apply_retention(&mut self) -> Result<u64, PublishError> {
        Ok(self.source.apply_retention().await?)
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
        if self.rounds % LANE_CLAIM_EVERY == 1 {
            self.lanes = self.source.claim_lanes().await?;
        }
        if self.lanes == 0 {
            return Ok(Round::default());
        }
        let in_flight: Vec<i64> = self
            .in_flight
            .iter()
            .flat_map(|batch| batch.rows.iter().map(|(sequence, _)| *sequence))
            .collect();
        let records = self.source.claim(BATCH_MAX, &in_flight).await?;
        // Every row is routed before any is sent, so an unroutable row
        // (a message type this build does not know) fails the round before
        // anything of it reaches the broker, instead of re-sending the rows
        // ahead of it on every retry.
        let topics = records
            .iter()
            .map(|record| {
                crate::topics::topic_of_type(&record.message_type).map_err(|error| {
                    PublishError::Unroutable {
                        sequence: record.sequence,
                        error: error.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut batch = Batch::default();
        for (record, topic) in records.iter().zip(topics) {
            match crate::producer::enqueue_record(&self.producer, topic, record) {
                Ok(delivery) => {
                    batch.rows.push((record.sequence, record.age_ms));
                    batch.deliveries.push(delivery);
                    batch.hops.extend(Hop::of(record, topic));
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
            lanes: self.lanes,
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
        if self.rounds.is_multiple_of(RETENTION_EVERY) {
            self.source.apply_retention().await?;
        }
        // The backlog gauge costs a count of the unpublished rows: refresh it
        // every few rounds, not on the hot path of every one.
        if self.rounds % LANE_CLAIM_EVERY == 1 {
            let backlog = self.source.backlog().await?;
            metrics::gauge!("saldo_outbox_backlog", "service" => self.service.name())
                .set(backlog as f64);
        }
        Ok(round)
    }

    /// Waits for a batch's acknowledgements and marks the acknowledged
    /// prefix published; returns (published, failed).
    async fn settle(&mut self, batch: Batch) -> Result<(usize, usize), PublishError> {
        // When each acknowledgement was settled, for its hop's span (ADR
        // 0020); only while spans are exported.
        let traced = !batch.hops.is_empty();
        let deliveries = join_all(batch.deliveries.into_iter().map(|delivery| async move {
            let acknowledged = crate::producer::acknowledged(delivery).await;
            (acknowledged, traced.then(std::time::SystemTime::now))
        }))
        .await;
        let (deliveries, settled_at): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
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
            self.source.mark_published(&published).await?;
        }
        for ((hop, sequence), at) in batch.hops.into_iter().zip(&published).zip(settled_at) {
            hop.export(*sequence, at.unwrap_or_else(std::time::SystemTime::now));
        }
        Ok((published.len(), batch.rows.len() - published.len()))
    }

    /// After a failed round: if the store's connection was replaced, the
    /// lanes it held are gone, so they are claimed again on the next round;
    /// batches in flight are forgotten (their rows are still unpublished
    /// and go out again, and consumers' inboxes absorb the repeats).
    async fn recover(&mut self) {
        if self.source.recover().await {
            self.lanes = 0;
            self.in_flight.clear();
            self.rounds = 0;
        }
    }

    /// Publishes until `stop` resolves; between empty rounds it waits for a
    /// commit's notification, at most `idle`.
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
            match round {
                Ok(round) if round.published > 0 || round.in_flight > 0 => {}
                // Nothing to do: wait for a commit to announce rows, or at
                // most `idle` (a missed notification costs no more).
                Ok(_) => {
                    tokio::select! {
                        () = self.source.wait_for_rows(idle) => {}
                        () = &mut stop => return Ok(()),
                    }
                }
                Err(error) => {
                    tracing::warn!(service = %self.service, %error, "publish round failed");
                    self.recover().await;
                    tokio::select! {
                        () = tokio::time::sleep(idle.max(RETRY_PAUSE)) => {}
                        () = &mut stop => return Ok(()),
                    }
                }
            }
        }
    }
}

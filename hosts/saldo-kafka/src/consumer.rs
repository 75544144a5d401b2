//! The consumer runner: at-least-once delivery, exactly-once effects.

use std::time::Duration;
use tracing::Instrument;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saldo_domain::messages::{Envelope, Service};
use saldo_domain::{MessageOutcome, Rules, decide_message, message_read_set};
use saldo_postgres::{PgExecuteError, PgStore};

use crate::{topics, wall_clock};

/// Attempts for one message before it is dead-lettered.
pub const ATTEMPTS_MAX: u32 = 5;
/// Backoff before the second attempt; it doubles each time.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);

/// The consumer configuration Saldo relies on: offsets are stored by hand
/// after the database commit and committed by librdkafka in the background
/// (and synchronously on shutdown and on partition revocation).
pub fn config(bootstrap_servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        // A fetch with no new data waits at most this long. librdkafka's
        // default (500 ms) held every message for half a second against the
        // mock broker (measured: 2 ms to acknowledge, 500 ms to arrive);
        // 10 ms keeps end-to-end latency within the saga's budget at the
        // price of more fetch requests while idle.
        .set("fetch.wait.max.ms", "10")
        .set("allow.auto.create.topics", "true");
    config
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Decided and committed (or recognised as a duplicate).
    Done(MessageOutcome),
    /// Could not be handled; sent to the dead-letter topic and table.
    DeadLettered(String),
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Kafka failed in a way the runner cannot carry on from.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Consumes one service's topic.
pub struct ConsumerRunner {
    service: Service,
    consumer: StreamConsumer,
    producer: FutureProducer,
    store: PgStore,
    rules: Rules,
}

impl ConsumerRunner {
    /// A runner for `service` in consumer group `group`.
    pub fn new(
        bootstrap_servers: &str,
        group: &str,
        service: Service,
        store: PgStore,
        rules: Rules,
    ) -> Result<ConsumerRunner, RunnerError> {
        let consumer: StreamConsumer = config(bootstrap_servers, group).create()?;
        consumer.subscribe(&[topics::consumed_by(service)])?;
        let producer = crate::producer::create(bootstrap_servers)?;
        Ok(ConsumerRunner {
            service,
            consumer,
            producer,
            store,
            rules,
        })
    }

    /// Consumes until `stop` resolves, then commits the stored offsets.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<(), RunnerError> {
        tokio::pin!(stop);
        loop {
            let message = tokio::select! {
                message = self.consumer.recv() => message,
                () = &mut stop => break,
            };
            match message {
                Ok(message) => {
                    self.handle(&message).await;
                    // Only now, after the database commit (or the dead letter),
                    // may the offset move past this message.
                    self.consumer.store_offset_from_message(&message)?;
                }
                Err(error) => {
                    tracing::warn!(service = %self.service, %error, "receive failed");
                    tokio::time::sleep(BACKOFF_INITIAL).await;
                }
            }
        }
        // Graceful shutdown: stop taking work (done) and commit what was done.
        // If the commit fails (the group moved on, say after a broker outage),
        // the messages since the last commit are redelivered to whoever owns
        // the partitions now, and their inboxes absorb them: at-least-once
        // delivery still holds, so this is a warning, not a failure.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                service = %self.service,
                %error,
                "final offset commit failed; messages since the last commit will be redelivered"
            ),
        }
        Ok(())
    }

    /// Handles one message: decode, decide and commit with bounded retries,
    /// or dead-letter it.
    pub async fn handle(&self, message: &BorrowedMessage<'_>) -> Handled {
        let bytes = message.payload().unwrap_or_default();
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                return self
                    .dead_letter(message, None, format!("undecodable: {error}"))
                    .await;
            }
        };
        // The request's correlation id and trace follow the message into
        // this service's logs, as they followed it into the outbox row, the
        // Kafka headers and (for payments) the ledger entry's memo.
        let span = tracing::info_span!(
            "message",
            consumer = %self.service,
            message_type = envelope.message_type(),
            message_id = %envelope.message_id.to_hex(),
            order_id = %envelope.order_id,
            correlation_id = %envelope.correlation_id,
            traceparent = %envelope.traceparent.as_str(),
        );
        self.decide_and_commit(message, envelope)
            .instrument(span)
            .await
    }

    async fn decide_and_commit(
        &self,
        message: &BorrowedMessage<'_>,
        envelope: Envelope,
    ) -> Handled {
        let read_set = message_read_set(self.service, &envelope);
        let mut backoff = BACKOFF_INITIAL;
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS_MAX {
            let now = wall_clock();
            let result = self
                .store
                .execute(&read_set, now, |snapshot| {
                    decide_message(&self.rules, self.service, snapshot, &envelope, now)
                })
                .await;
            match result {
                Ok(outcome) => {
                    metrics::counter!("saldo_messages_handled_total", "service" => self.service.name(), "outcome" => outcome_name(&outcome)).increment(1);
                    tracing::debug!(outcome = outcome_name(&outcome), "handled");
                    return Handled::Done(outcome);
                }
                // A refusal is deterministic: retrying cannot help.
                Err(PgExecuteError::Rejected(refusal)) => {
                    return self
                        .dead_letter(message, Some(&envelope), refusal.to_string())
                        .await;
                }
                Err(error) => last_error = format!("attempt {attempt}: {error}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        self.dead_letter(message, Some(&envelope), last_error).await
    }

    /// Sends a message to the dead-letter topic and records it in the
    /// service's dead-letter table; retried until both succeed, so nothing
    /// is lost.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        envelope: Option<&Envelope>,
        error: String,
    ) -> Handled {
        let payload = message.payload().unwrap_or_default();
        let key = message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default();
        let origin = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let consumer = self.service.name();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "saldo-error",
                    value: Some(error.as_str()),
                })
                .insert(Header {
                    key: "saldo-consumer",
                    value: Some(consumer),
                })
                .insert(Header {
                    key: "saldo-origin",
                    value: Some(origin.as_str()),
                });
            let record = FutureRecord::to(topics::DEAD_LETTERS)
                .key(key.as_str())
                .payload(payload)
                .headers(headers);
            let sent = self
                .producer
                .send(record, crate::producer::DELIVERY_TIMEOUT)
                .await
                .map_err(|(error, _)| error.to_string());
            let schema = saldo_postgres::schema(self.service);
            let sql = format!(
                "INSERT INTO {schema}.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ($1, $2, $3, $4, $5, now())"
            );
            let recorded = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(envelope.map(|envelope| envelope.message_id.to_hex()))
                .bind(envelope.map(|envelope| envelope.message_type()))
                .bind(envelope.map(|envelope| envelope.order_id.as_str().to_owned()))
                .bind(&error)
                .bind(payload)
                .execute(self.store.pool())
                .await
                .map_err(|error| error.to_string());
            match (sent, recorded) {
                (Ok(_), Ok(_)) => {
                    metrics::counter!("saldo_dead_letters_total", "service" => consumer)
                        .increment(1);
                    tracing::error!(alert = true, consumer, origin, error, "dead-lettered");
                    return Handled::DeadLettered(error);
                }
                (sent, recorded) => {
                    tracing::warn!(
                        consumer,
                        origin,
                        ?sent,
                        ?recorded,
                        "dead-lettering failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

fn outcome_name(outcome: &MessageOutcome) -> &'static str {
    match outcome {
        MessageOutcome::Applied => "applied",
        MessageOutcome::Duplicate => "duplicate",
        MessageOutcome::Ignored(_) => "ignored",
    }
}

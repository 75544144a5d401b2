//! The consumer runner: at-least-once delivery, exactly-once effects.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use saldo_domain::Rules;
use saldo_domain::messages::Service;
use saldo_engine::{
    BACKOFF_INITIAL, DeadLetter, DeadLetterSink, Deliverer, DeliveryError, Handled, Incoming, Store,
};

use crate::connection::{Connection, set_default};
use crate::topics;

/// The most messages taken from one poll and decided as one batch.
pub const POLL_BATCH_MAX: usize = 128;
/// How long a poll waits for more messages once it has one: a batch closes
/// after this even when it is not full, so a lone message waits at most this.
pub const POLL_LINGER: Duration = Duration::from_millis(2);

/// How often librdkafka hands a consumer its statistics, from which the
/// lag gauge is set, unless the passthrough sets `statistics.interval.ms`.
/// The statistics come from the fetches the consumer makes anyway: no
/// request is added.
pub const LAG_INTERVAL: Duration = Duration::from_secs(10);

/// The consumer configuration Saldo relies on: offsets are stored by hand
/// after the database commit and committed by librdkafka in the background
/// (and synchronously on shutdown and on partition revocation). The
/// connection's passed-through properties come first; Saldo's tuning
/// defaults fill what they leave unset; its correctness settings
/// (refused in a passthrough) are set last.
pub fn config(connection: &Connection, group: &str) -> ClientConfig {
    let mut config = connection.client_config();
    set_default(&mut config, "auto.commit.interval.ms", "200");
    set_default(&mut config, "session.timeout.ms", "6000");
    // A fetch with no new data waits at most this long. librdkafka's
    // default (500 ms) held every message for half a second against the
    // mock broker (measured: 2 ms to acknowledge, 500 ms to arrive);
    // 10 ms keeps end-to-end latency within the saga's budget at the
    // price of more fetch requests while idle.
    set_default(&mut config, "fetch.wait.max.ms", "10");
    set_default(&mut config, "allow.auto.create.topics", "true");
    set_default(
        &mut config,
        "statistics.interval.ms",
        &LAG_INTERVAL.as_millis().to_string(),
    );
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    config
}

/// The lag of each partition of `topic` in `statistics`, by partition: the
/// messages after the group's committed offset. A partition this consumer
/// does not fetch is 0 here (its owner reports it); one fetched before the
/// group committed anything counts from the log's start (the group starts
/// from the earliest message); one whose end is not known yet is left out.
pub fn partition_lags(statistics: &Statistics, topic: &str) -> Vec<(i32, i64)> {
    let Some(topic) = statistics.topics.get(topic) else {
        return Vec::new();
    };
    let mut lags: Vec<(i32, i64)> = topic
        .partitions
        .values()
        // librdkafka's internal "unassigned" partition is -1.
        .filter(|partition| partition.partition >= 0)
        .filter_map(|partition| {
            if partition.fetch_state != "active" {
                return Some((partition.partition, 0));
            }
            if partition.consumer_lag >= 0 {
                return Some((partition.partition, partition.consumer_lag));
            }
            // read_committed: the end is the last stable offset.
            let end = if partition.ls_offset >= 0 {
                partition.ls_offset
            } else {
                partition.hi_offset
            };
            (end >= 0).then(|| (partition.partition, end - partition.lo_offset.max(0)))
        })
        .collect();
    lags.sort_unstable();
    debug_assert!(lags.iter().all(|(_, lag)| *lag >= 0), "lags are counts");
    lags
}

/// A consumer's context: librdkafka's statistics (every
/// `statistics.interval.ms`) set the gauge `saldo_consumer_lag_messages`
/// for each partition of the consumed topic.
pub struct LagContext {
    group: String,
    topic: &'static str,
}

impl LagContext {
    /// Reports the lag of `group` on `topic`.
    pub fn new(group: &str, topic: &'static str) -> LagContext {
        LagContext {
            group: group.to_owned(),
            topic,
        }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (partition, lag) in partition_lags(&statistics, self.topic) {
            metrics::gauge!("saldo_consumer_lag_messages", "group" => self.group.clone(), "topic" => self.topic, "partition" => partition.to_string())
            .set(lag as f64);
        }
    }
}

impl ConsumerContext for LagContext {}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Kafka failed in a way the runner cannot carry on from.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A delivery could not finish (a dead letter could not be recorded).
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Dead letters go to the dead-letter topic, with why in a header.
pub struct DeadLetterTopic {
    producer: FutureProducer,
}

impl DeadLetterTopic {
    /// Dead letters through `producer`.
    pub fn new(producer: FutureProducer) -> DeadLetterTopic {
        DeadLetterTopic { producer }
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterTopic {
    async fn publish(&self, consumer: Service, letter: &DeadLetter) -> Result<(), String> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "saldo-error",
                value: Some(letter.error.as_str()),
            })
            .insert(Header {
                key: "saldo-consumer",
                value: Some(consumer.name()),
            })
            .insert(Header {
                key: "saldo-origin",
                value: Some(letter.origin.as_str()),
            });
        let record = FutureRecord::to(topics::DEAD_LETTERS)
            .key(letter.key.as_str())
            .payload(letter.payload.as_slice())
            .headers(headers);
        self.producer
            .send(record, crate::producer::DELIVERY_TIMEOUT)
            .await
            .map(drop)
            .map_err(|(error, _)| error.to_string())
    }
}

/// Consumes one service's topic in batches through the engine.
pub struct ConsumerRunner {
    consumer: StreamConsumer<LagContext>,
    deliverer: Deliverer,
}

impl ConsumerRunner {
    /// A runner for `service` in consumer group `group`; it stops waiting
    /// for the store once `stop` turns true.
    pub fn new(
        connection: &Connection,
        group: &str,
        service: Service,
        store: Arc<dyn Store>,
        rules: Arc<Rules>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<ConsumerRunner, RunnerError> {
        let topic = topics::consumed_by(service);
        let consumer: StreamConsumer<LagContext> =
            config(connection, group).create_with_context(LagContext::new(group, topic))?;
        consumer.subscribe(&[topic])?;
        let sink = Arc::new(DeadLetterTopic::new(crate::producer::create(connection)?));
        Ok(ConsumerRunner {
            consumer,
            deliverer: Deliverer::new(service, store, rules, sink, stop),
        })
    }

    /// Consumes until `stop` turns true, then commits the stored offsets.
    /// Each poll takes up to [`POLL_BATCH_MAX`] messages, lingering at most
    /// [`POLL_LINGER`] for more; their offsets are stored only after the
    /// engine committed (or dead-lettered) every one of them.
    pub async fn run(
        self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        let service = self.deliverer.service();
        loop {
            let first = tokio::select! {
                message = self.consumer.recv() => message,
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            let first = match first {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%service, %error, "receive failed");
                    tokio::time::sleep(BACKOFF_INITIAL).await;
                    continue;
                }
            };
            let mut messages = vec![first];
            let linger = tokio::time::Instant::now() + POLL_LINGER;
            while messages.len() < POLL_BATCH_MAX {
                match tokio::time::timeout_at(linger, self.consumer.recv()).await {
                    Ok(Ok(message)) => messages.push(message),
                    Ok(Err(error)) => {
                        tracing::warn!(%service, %error, "receive failed");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let incoming: Vec<Incoming> = messages.iter().map(incoming).collect();
            match self.deliverer.handle(&incoming).await {
                Ok(_) => {
                    // Only now, after the database commit (or the dead
                    // letter), may the offsets move past these messages.
                    for message in &messages {
                        // A rebalance during the batch may have given the
                        // partition to another member: it will deliver the
                        // message again and its inbox absorbs it.
                        if let Err(error) = self.consumer.store_offset_from_message(message) {
                            tracing::warn!(%service, %error, topic = message.topic(), partition = message.partition(), "offset not stored; the partition's new owner redelivers");
                        }
                    }
                }
                Err(DeliveryError::Stopped) => break,
                Err(error) => return Err(error.into()),
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
                %service,
                %error,
                "final offset commit failed; messages since the last commit will be redelivered"
            ),
        }
        Ok(())
    }

    /// Handles one message (decode, decide, commit or dead-letter) without
    /// storing its offset; for tests and tools.
    pub async fn handle(&self, message: &BorrowedMessage<'_>) -> Result<Handled, RunnerError> {
        let mut handled = self.deliverer.handle(&[incoming(message)]).await?;
        Ok(handled.pop().expect("one message, one result"))
    }
}

/// A Kafka message as the engine takes it.
fn incoming(message: &BorrowedMessage<'_>) -> Incoming {
    let origin = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let key = message
        .key()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .unwrap_or_default();
    Incoming::decode(origin, key, message.payload().unwrap_or_default().to_vec())
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Partition, Topic};

    use super::*;

    fn partition(id: i32, fetch_state: &str, consumer_lag: i64, lo: i64, hi: i64) -> Partition {
        Partition {
            partition: id,
            fetch_state: fetch_state.to_owned(),
            consumer_lag,
            lo_offset: lo,
            hi_offset: hi,
            ls_offset: hi,
            ..Partition::default()
        }
    }

    /// Collects what a test's subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn librdkafkas_own_log_reaches_the_processs_log() {
        // Proves librdkafka's messages (here: a broker that refuses the
        // connection) are logged through tracing under the target
        // `librdkafka` instead of being dropped. (nextest runs each test in
        // a process of its own, so the global subscriber is this test's.)
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
        let connection =
            Connection::with_properties("127.0.0.1:9", crate::connection::Properties::new());
        let consumer: rdkafka::consumer::BaseConsumer<LagContext> =
            config(&connection, "saldo-log")
                .create_with_context(LagContext::new("saldo-log", "saldo.log"))
                .expect("a consumer");
        consumer.subscribe(&["saldo.log"]).expect("subscribed");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let logged = loop {
            let _ = consumer.poll(Duration::from_millis(100));
            let text =
                String::from_utf8_lossy(&captured.0.lock().expect("not poisoned")).into_owned();
            if text.contains("librdkafka") && text.contains("127.0.0.1:9") {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no librdkafka line within 20 s:\n{text}"
            );
        };
        assert!(logged.contains("librdkafka"), "{logged}");
    }

    #[test]
    fn a_consumer_takes_the_passthrough_and_keeps_saldos_offset_handling() {
        // Proves the consumer and producer configurations carry the passed
        // properties over Saldo's tuning defaults and set Saldo's
        // correctness settings whatever the passthrough holds.
        let mut properties = crate::connection::Properties::new();
        properties.insert("fetch.wait.max.ms", "100").expect("ok");
        properties.insert("client.id", "inventory-1").expect("ok");
        let connection = Connection::with_properties("127.0.0.1:9092", properties);
        let consumer = config(&connection, "saldo-inventory");
        for (name, value) in [
            ("fetch.wait.max.ms", "100"),
            ("client.id", "inventory-1"),
            ("statistics.interval.ms", "10000"),
            ("group.id", "saldo-inventory"),
            ("enable.auto.offset.store", "false"),
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
        ] {
            assert_eq!(consumer.get(name), Some(value), "{name}");
        }
        let producer = crate::producer::config(&connection);
        for (name, value) in [
            ("client.id", "inventory-1"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "2"),
        ] {
            assert_eq!(producer.get(name), Some(value), "{name}");
        }
    }

    #[test]
    fn the_lag_counts_what_the_group_has_not_committed_on_the_partitions_it_fetches() {
        // Proves the lag is librdkafka's committed lag where known, the whole
        // log before a first commit, 0 on partitions another member owns, and
        // that librdkafka's internal partition -1 and other topics are left out.
        let mut topic = Topic::default();
        for partition in [
            partition(0, "active", 7, 0, 20),
            partition(1, "active", -1, 5, 12),
            partition(2, "none", -1, 0, 30),
            partition(3, "active", -1, -1, -1),
            partition(-1, "none", -1, -1, -1),
        ] {
            topic.partitions.insert(partition.partition, partition);
        }
        let mut statistics = Statistics::default();
        statistics
            .topics
            .insert("saldo.order.replies".to_owned(), topic.clone());
        statistics.topics.insert("saldo.other".to_owned(), topic);
        assert_eq!(
            partition_lags(&statistics, "saldo.order.replies"),
            vec![(0, 7), (1, 7), (2, 0)]
        );
        assert!(partition_lags(&statistics, "saldo.payment.commands").is_empty());
    }
}

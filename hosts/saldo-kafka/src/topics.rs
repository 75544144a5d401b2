//! Topic names and shapes.
//!
//! | topic | carries | consumer | key |
//! | --- | --- | --- | --- |
//! | `saldo.inventory.commands` | ReserveStock, ReleaseStock, CommitStock | inventory | order id |
//! | `saldo.payment.commands` | ChargePayment, RefundPayment | payment | order id |
//! | `saldo.order.replies` | Stock*/Payment* replies | order | order id |
//! | `saldo.order.events` | OrderConfirmed, OrderCancelled | downstream systems | order id |
//! | `saldo.dead-letters` | anything a consumer could not handle, with its error | operators | order id |
//!
//! Every message of one order has the same key, so it lands on one
//! partition and is consumed in the order it was published.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use saldo_domain::messages::{Payload, Service, UnknownMessageType, consumer_of_type};
use saldo_domain::retention::TopicRetention;

use crate::connection::Connection;

/// The longest a start-up waits for the broker to describe its topics. A
/// broker answers in milliseconds; one that does not answer in time (the
/// mock cluster never does) leaves the retention unknown, which is judged
/// against the operator's stated retention, so a short wait is safe.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Partitions per topic unless configured otherwise.
pub const PARTITIONS_DEFAULT: i32 = 8;

/// The dead-letter topic.
pub const DEAD_LETTERS: &str = "saldo.dead-letters";

/// The topic a service consumes.
pub fn consumed_by(service: Service) -> &'static str {
    match service {
        Service::Order => "saldo.order.replies",
        Service::Inventory => "saldo.inventory.commands",
        Service::Payment => "saldo.payment.commands",
    }
}

/// The topic a message is published to.
pub fn topic_of(payload: &Payload) -> &'static str {
    match payload.consumer() {
        Some(service) => consumed_by(service),
        None => "saldo.order.events",
    }
}

/// The topic of a message named by its type, as an outbox row names it.
pub fn topic_of_type(message_type: &str) -> Result<&'static str, UnknownMessageType> {
    Ok(match consumer_of_type(message_type)? {
        Some(service) => consumed_by(service),
        None => "saldo.order.events",
    })
}

/// Every topic Saldo uses.
pub const ALL: [&str; 5] = [
    "saldo.inventory.commands",
    "saldo.payment.commands",
    "saldo.order.replies",
    "saldo.order.events",
    DEAD_LETTERS,
];

/// Creates every Saldo topic that does not exist yet, with `partitions`
/// partitions and `replication` replicas; returns the topics it created.
/// Topics that already exist are left as they are.
///
/// This uses the CreateTopics admin API, which librdkafka's mock cluster does
/// not implement: `saldo broker` creates its topics through the mock's own
/// API instead, and services started against it pass `--create-topics false`.
pub async fn ensure(
    connection: &Connection,
    partitions: i32,
    replication: i32,
) -> Result<Vec<&'static str>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let new_topics: Vec<NewTopic<'_>> = ALL
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut created = Vec::new();
    for (topic, result) in ALL.iter().zip(results) {
        match result {
            Ok(_) => created.push(*topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::warn!(topic = name, %code, "cannot create topic"));
            }
        }
    }
    Ok(created)
}

/// Asks the broker for the `retention.ms` of each topic (DescribeConfigs).
/// A topic the broker cannot describe, or a broker that does not implement
/// the request (librdkafka's mock cluster), is [`TopicRetention::Unknown`]:
/// the caller decides what stands in for it. A value that does not parse is
/// an error, never a guess.
pub async fn retention_of(
    connection: &Connection,
    topics: &[&str],
) -> Result<Vec<(String, TopicRetention)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|topic| ResourceSpecifier::Topic(topic))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
    let unknown = || {
        topics
            .iter()
            .map(|topic| ((*topic).to_owned(), TopicRetention::Unknown))
            .collect()
    };
    let results = match admin.describe_configs(&resources, &options).await {
        Ok(results) => results,
        Err(error) => {
            tracing::warn!(%error, "the broker did not describe its topics");
            return Ok(unknown());
        }
    };
    if results.len() != topics.len() {
        tracing::warn!(
            asked = topics.len(),
            answered = results.len(),
            "the broker described other topics than asked"
        );
        return Ok(unknown());
    }
    let mut retentions = Vec::with_capacity(topics.len());
    for (topic, result) in topics.iter().zip(results) {
        let value = match &result {
            Ok(resource) => resource
                .get("retention.ms")
                .and_then(|entry| entry.value.clone()),
            Err(code) => {
                tracing::warn!(topic, %code, "the broker did not describe the topic");
                None
            }
        };
        let retention = match value.as_deref().map(str::parse::<i64>) {
            None => TopicRetention::Unknown,
            Some(Ok(-1)) => TopicRetention::Unlimited,
            Some(Ok(ms)) if ms >= 0 => TopicRetention::Finite {
                retention_ms: ms.unsigned_abs(),
            },
            Some(_) => {
                tracing::warn!(topic, ?value, "unreadable retention.ms");
                return Err(KafkaError::AdminOpCreation(format!(
                    "topic {topic}: unreadable retention.ms {value:?}"
                )));
            }
        };
        retentions.push(((*topic).to_owned(), retention));
    }
    Ok(retentions)
}

//! The producer: idempotent, `acks=all`, keyed by order id, envelope in headers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saldo_domain::messages::Envelope;

use crate::topics;

/// How long librdkafka keeps retrying one message before reporting failure.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the producer configuration Saldo relies on.
pub fn config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    config
}

/// Creates the producer.
pub fn create(bootstrap_servers: &str) -> Result<FutureProducer, KafkaError> {
    config(bootstrap_servers).create()
}

/// The Kafka headers of an envelope.
pub fn headers(envelope: &Envelope) -> OwnedHeaders {
    let message_id = envelope.message_id.to_hex();
    let version = envelope.schema_version.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "saldo-message-id",
            value: Some(message_id.as_str()),
        })
        .insert(Header {
            key: "saldo-message-type",
            value: Some(envelope.message_type()),
        })
        .insert(Header {
            key: "saldo-schema-version",
            value: Some(version.as_str()),
        })
        .insert(Header {
            key: "saldo-correlation-id",
            value: Some(envelope.correlation_id.as_str()),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(envelope.traceparent.as_str()),
        })
}

/// Publishes one envelope and waits for the broker's acknowledgement.
pub async fn publish(producer: &FutureProducer, envelope: &Envelope) -> Result<(), KafkaError> {
    let payload = envelope.encode();
    let record = FutureRecord::to(topics::topic_of(&envelope.payload))
        .key(envelope.order_id.as_str())
        .payload(&payload)
        .headers(headers(envelope));
    producer
        .send(record, DELIVERY_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

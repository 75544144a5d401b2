//! The producer: idempotent, `acks=all`, keyed by order id, envelope in headers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use saldo_domain::messages::{Envelope, SCHEMA_VERSION};
use saldo_engine::OutboxRecord;

use crate::connection::{Connection, set_default};
use crate::topics;

/// How long librdkafka keeps retrying one message before reporting failure.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the producer configuration Saldo relies on: the connection's
/// passed-through properties, Saldo's tuning defaults where they leave a
/// property unset, and its correctness settings over everything.
pub fn config(connection: &Connection) -> ClientConfig {
    let mut config = connection.client_config();
    set_default(&mut config, "linger.ms", "2");
    set_default(
        &mut config,
        "message.timeout.ms",
        &DELIVERY_TIMEOUT.as_millis().to_string(),
    );
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// Creates the producer.
pub fn create(connection: &Connection) -> Result<FutureProducer, KafkaError> {
    config(connection).create()
}

/// The Kafka headers of an envelope.
pub fn headers(envelope: &Envelope) -> OwnedHeaders {
    header_set(
        &envelope.message_id.to_hex(),
        envelope.message_type(),
        envelope.schema_version,
        envelope.correlation_id.as_str(),
        envelope.traceparent.as_str(),
    )
}

/// The headers every Saldo message carries, from their values.
fn header_set(
    message_id: &str,
    message_type: &str,
    schema_version: u16,
    correlation_id: &str,
    traceparent: &str,
) -> OwnedHeaders {
    let version = schema_version.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "saldo-message-id",
            value: Some(message_id),
        })
        .insert(Header {
            key: "saldo-message-type",
            value: Some(message_type),
        })
        .insert(Header {
            key: "saldo-schema-version",
            value: Some(version.as_str()),
        })
        .insert(Header {
            key: "saldo-correlation-id",
            value: Some(correlation_id),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        })
}

/// Hands one envelope to the producer's queue without waiting: the
/// returned future resolves with the broker's acknowledgement. Messages
/// enqueued one after another keep their order per partition (the producer
/// is idempotent).
pub fn enqueue(
    producer: &FutureProducer,
    envelope: &Envelope,
) -> Result<DeliveryFuture, KafkaError> {
    let encoded = envelope.encode();
    let record = FutureRecord::to(topics::topic_of(&envelope.payload))
        .key(envelope.order_id.as_str())
        .payload(encoded.as_slice())
        .headers(headers(envelope));
    producer.send_result(record).map_err(|(error, _)| error)
}

/// Hands one outbox row to the producer's queue without waiting, routed,
/// keyed and given its headers from the row's columns; the stored envelope
/// bytes go out as they are.
pub fn enqueue_record(
    producer: &FutureProducer,
    topic: &str,
    record: &OutboxRecord,
) -> Result<DeliveryFuture, KafkaError> {
    // Outbox rows hold envelopes of the schema version this build writes.
    let headers = header_set(
        &record.message_id,
        &record.message_type,
        SCHEMA_VERSION,
        &record.correlation_id,
        &record.traceparent,
    );
    let message = FutureRecord::to(topic)
        .key(record.order_id.as_str())
        .payload(record.envelope.as_slice())
        .headers(headers);
    producer.send_result(message).map_err(|(error, _)| error)
}

/// Waits for an enqueued message's acknowledgement.
pub async fn acknowledged(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// Publishes one envelope and waits for the broker's acknowledgement.
pub async fn publish(producer: &FutureProducer, envelope: &Envelope) -> Result<(), KafkaError> {
    acknowledged(enqueue(producer, envelope)?).await
}

//! Kafka for Saldo: at-least-once delivery, exactly-once effects.
//!
//! - [`topics`]: the topic of each message, partitioned by order id.
//! - [`producer`]: an idempotent (`acks=all`) producer that keys every
//!   message by its order id and carries the envelope's id, type, version,
//!   correlation id and traceparent as Kafka headers.
//! - [`publisher`]: the transactional-outbox publisher. It claims lanes of a
//!   service's outbox (an advisory lock per lane, so several publishers can
//!   run and each order's messages still leave in order), publishes, waits
//!   for the broker's acknowledgement, then marks rows published; published
//!   rows are deleted after a retention period.
//! - [`consumer`]: the consumer runner. It decides each message through the
//!   rhythm on PostgreSQL (the inbox receipt commits with the effect), stores
//!   the offset only after that commit, retries a bounded number of times
//!   with backoff, and sends what cannot be handled to the dead-letter topic
//!   and table, then carries on.
//!
//! Point it at any Kafka with `bootstrap.servers`; the tests use librdkafka's
//! mock cluster, which speaks the real protocol.

pub mod consumer;
pub mod producer;
pub mod publisher;
pub mod topics;

use saldo_types::Timestamp;

/// The wall clock, as the sdk's timestamp (hosts own the clock).
pub fn wall_clock() -> Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_ms(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

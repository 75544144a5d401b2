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
//! - [`consumer`]: the consumer runner. It takes a batch per poll (a bounded
//!   count, a linger of at most 2 ms) and hands it to the engine's
//!   `Deliverer` (decide in order, commit once, the retry and poison policy,
//!   dead letters to the topic here and the table in the store), then
//!   stores the offsets: only after that commit.
//!
//! Point it at any Kafka with `bootstrap.servers`; the tests use librdkafka's
//! mock cluster, which speaks the real protocol.

pub mod consumer;
pub mod producer;
pub mod publisher;
pub mod topics;

pub use saldo_engine::wall_clock;

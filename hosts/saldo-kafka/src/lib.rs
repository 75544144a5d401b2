//! Kafka for Saldo: at-least-once delivery, exactly-once effects.
//!
//! - [`connection`]: the bootstrap servers and the librdkafka properties
//!   passed through to every client (SASL, TLS, tuning), minus the ones
//!   Saldo's correctness rests on, which are refused.
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
//! - [`testing`]: the broker of a test, librdkafka's mock cluster or a tansu
//!   process (`SALDO_TEST_BROKER`).
//!
//! Point it at any Kafka with `bootstrap.servers`; the tests run against
//! librdkafka's mock cluster and, a second time, against tansu: two
//! independent implementations of the real protocol (ADR 0009 records how
//! they differ).

pub mod connection;
pub mod consumer;
pub mod producer;
pub mod publisher;
pub mod testing;
pub mod topics;

pub use saldo_engine::wall_clock;

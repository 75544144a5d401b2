//! The outbox port: what a publisher needs from the store that holds a
//! service's outbox. PostgreSQL implements it in `saldo-postgres`; the
//! Kafka publisher in `saldo-kafka` drives it.

use std::time::Duration;

use async_trait::async_trait;
use saldo_domain::messages::Service;

use crate::store::Unavailable;

/// An outbox row ready to publish, as its columns hold it: the publisher
/// needs no envelope decode to route it, key it and give it its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its position in the outbox; one order's rows leave in this order.
    pub sequence: i64,
    /// The message id (hex).
    pub message_id: String,
    /// The order: the Kafka key.
    pub order_id: String,
    /// The message type, which names its topic.
    pub message_type: String,
    /// The request's correlation id.
    pub correlation_id: String,
    /// The W3C trace context.
    pub traceparent: String,
    /// The envelope's wire form, sent as it is.
    pub envelope: Vec<u8>,
    /// How long ago it was committed, in milliseconds.
    pub age_ms: i64,
}

/// One service's outbox, seen by one publisher. Several publishers may run;
/// the outbox is split into lanes (by order), each held by at most one
/// publisher at a time, so each order's rows leave in order.
#[async_trait]
pub trait OutboxSource: Send {
    /// The service whose outbox it is.
    fn service(&self) -> Service;

    /// Takes every lane no other publisher holds; returns how many it holds.
    async fn claim_lanes(&mut self) -> Result<usize, Unavailable>;

    /// Up to `limit` unpublished rows of the held lanes, in outbox order,
    /// leaving out the rows `in_flight` (handed to the broker, not yet marked).
    async fn claim(
        &mut self,
        limit: usize,
        in_flight: &[i64],
    ) -> Result<Vec<OutboxRecord>, Unavailable>;

    /// Marks rows published.
    async fn mark_published(&mut self, sequences: &[i64]) -> Result<(), Unavailable>;

    /// Deletes rows published longer ago than the retention; returns how many.
    async fn apply_retention(&mut self) -> Result<u64, Unavailable>;

    /// How many rows wait to be published.
    async fn backlog(&mut self) -> Result<i64, Unavailable>;

    /// Waits until a commit may have added rows (a notification), or at most
    /// `idle`.
    async fn wait_for_rows(&mut self, idle: Duration);

    /// After a failure: replaces a dead connection. Returns true when it did;
    /// the lanes it held are then lost and must be claimed again.
    async fn recover(&mut self) -> bool;
}

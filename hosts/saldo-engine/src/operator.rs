//! The operator's read port (docs/adr/0017): what `/admin` shows, read from
//! one service's own tables. Interventions need no port of their own: they
//! are decisions, committed through [`crate::Store::commit`] like any other.

use std::sync::Arc;

use async_trait::async_trait;
use saldo_domain::decision::Versioned;
use saldo_domain::messages::{MessageId, Service};
use saldo_domain::operator::{AuditRecord, DeadLetterRow};
use saldo_domain::order::OrderRow;
use saldo_domain::story::StoryPart;
use saldo_types::{OrderId, Timestamp};

use crate::store::Unavailable;

/// The most items one page of an operator listing holds.
pub const PAGE_MAX: usize = 100;

/// Which orders to list: every filter that is set must hold. Pages are
/// keyed by order id: the next page starts after the last id shown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderQuery {
    /// `PENDING`, `CONFIRMED` or `CANCELLED` (the `orders.status` column).
    pub status: Option<&'static str>,
    /// What the saga awaits (`SagaState::name`: `action_reply`, ...).
    pub awaiting: Option<&'static str>,
    /// Only orders that last changed before this instant.
    pub updated_before: Option<Timestamp>,
    /// Only orders whose id sorts after this one (the cursor).
    pub after: Option<OrderId>,
    /// At most this many, and never more than [`PAGE_MAX`].
    pub limit: usize,
}

/// An audit record with its position in its service's audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its id (the page cursor).
    pub id: u64,
    /// The record.
    pub record: AuditRecord,
}

/// The reads behind the operator API, over one service's tables (the
/// in-memory store holds all three).
#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
    /// Orders matching `query`, by id.
    async fn orders(
        &self,
        query: &OrderQuery,
    ) -> Result<Vec<Versioned<Arc<OrderRow>>>, Unavailable>;

    /// What `service` holds about `order_id`, with the receipts of those of
    /// `received` it handled.
    async fn story_part(
        &self,
        service: Service,
        order_id: &OrderId,
        received: &[MessageId],
    ) -> Result<StoryPart, Unavailable>;

    /// `service`'s dead letters with ids after `after`, oldest first.
    async fn dead_letters(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterRow>, Unavailable>;

    /// One dead letter.
    async fn dead_letter(
        &self,
        service: Service,
        id: u64,
    ) -> Result<Option<DeadLetterRow>, Unavailable>;

    /// `service`'s audit records with ids after `after`, oldest first.
    async fn audit(
        &self,
        service: Service,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, Unavailable>;

    /// When the oldest order still `PENDING` was placed (the order
    /// service's store; `None` when no saga is running). One indexed read:
    /// the saga-age gauge asks it every [`SAGA_AGE_INTERVAL`].
    async fn oldest_pending_order(&self) -> Result<Option<Timestamp>, Unavailable>;
}

/// How often the order service reads its oldest pending order's age into
/// `saldo_saga_oldest_pending_seconds`: never per request.
pub const SAGA_AGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The age at `now` of the oldest pending order placed at `oldest`; zero
/// when none is pending (or a clock stepped back).
pub fn saga_age(now: Timestamp, oldest: Option<Timestamp>) -> std::time::Duration {
    let waited_ms = oldest.map_or(0, |oldest| now.unix_ms().saturating_sub(oldest.unix_ms()));
    std::time::Duration::from_millis(waited_ms)
}

/// Sets `saldo_saga_oldest_pending_seconds` from `store` every
/// [`SAGA_AGE_INTERVAL`], first at start, until `stop` turns true. An
/// unreachable store is logged and the gauge keeps its last value: the
/// next read corrects it.
pub async fn watch_saga_age(
    store: Arc<dyn OperatorStore>,
    clock: fn() -> Timestamp,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match store.oldest_pending_order().await {
            Ok(oldest) => metrics::gauge!("saldo_saga_oldest_pending_seconds")
                .set(saga_age(clock(), oldest).as_secs_f64()),
            Err(error) => {
                tracing::warn!(%error, "cannot read the oldest pending order; trying again later")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SAGA_AGE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case(10_000, None, 0)]
    #[case(10_000, Some(2_500), 7_500)]
    #[case(10_000, Some(10_000), 0)]
    #[case(1_000, Some(5_000), 0)]
    fn the_saga_age_is_the_oldest_pending_orders_wait(
        #[case] now_ms: u64,
        #[case] oldest_ms: Option<u64>,
        #[case] expected_ms: u64,
    ) {
        // Proves the gauge's value: the time since the oldest pending order
        // was placed, zero with none pending and never negative.
        let age = saga_age(
            Timestamp::from_unix_ms(now_ms),
            oldest_ms.map(Timestamp::from_unix_ms),
        );
        assert_eq!(age, std::time::Duration::from_millis(expected_ms));
    }
}

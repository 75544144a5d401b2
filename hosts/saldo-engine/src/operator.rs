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
}

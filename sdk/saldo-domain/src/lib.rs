//! Saldo's services as pure decisions.
//!
//! - [`order`]: the order saga (built with `saldo-saga`) and the order
//!   service's deciders: place an order, handle a reply, handle a deadline.
//! - [`inventory`]: reserve all-or-nothing, release, commit; set stock.
//! - [`payment`]: charge exactly once, refund, top up; postings go through
//!   `saldo-ledger`.
//! - [`messages`]: the catalogue of commands and events with their envelope
//!   and versioned JSON encoding.
//! - [`batch`]: many inputs decided in order against an overlay and
//!   committed as one; the one batch decider of hosts and simulator.
//! - [`decision`]: decisions as data, read sets and snapshots: the rhythm
//!   every host follows (load, decide, commit atomically, acknowledge).
//! - [`operator`]: operators' interventions (retry now, force
//!   compensation, resolve, redrive or discard a dead letter) as deciders
//!   whose decisions carry their audit record (ADR 0017).
//! - [`story`]: one order's story merged from every service's part, in
//!   causal order (ADR 0017).
//! - [`retention`]: the horizons of inbox receipts and idempotency
//!   records, what may be purged, and the start-up check of the inbox
//!   horizon against the consumed topics' retention (ADR 0015).
//! - [`store`]: the in-memory store that commits decisions atomically with
//!   version checks, and [`store::execute`], the rhythm's driver.
//!
//! Architecture invariant: nothing here does I/O, reads a clock or draws a
//! random number. Time, ids and seeds are parameters; effects are data.
//!
//! # Example
//!
//! A wallet top-up through the rhythm on the in-memory store; the same
//! request again replays its answer and moves no money.
//!
//! ```
//! use saldo_domain::messages::Traceparent;
//! use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
//! use saldo_domain::store::execute;
//! use saldo_domain::{MemoryStore, Rules};
//! use saldo_idempotency::IdempotencyKey;
//! use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, Timestamp};
//!
//! let rules = Rules::default();
//! let mut store = MemoryStore::new();
//! let now = Timestamp::from_unix_ms(1_764_000_000_000);
//! let top_up = TopUp {
//!     customer: CustomerId::new("ada").expect("valid id"),
//!     amount: Money::parse("30", Currency::EUR).expect("amount"),
//!     idempotency_key: IdempotencyKey::new("top-up-1").expect("valid key"),
//!     principal: None,
//!     correlation_id: CorrelationId::new("request-1").expect("valid id"),
//!     traceparent: Traceparent::root(Id128::derive("example", &[b"trace"])),
//! };
//! let mut run = |store: &mut MemoryStore| {
//!     execute(store, &top_up_read_set(&top_up), now, |snapshot| {
//!         decide_top_up(&rules.payment, snapshot, &top_up, now)
//!     })
//!     .expect("a top-up")
//! };
//! let first = run(&mut store);
//! let again = run(&mut store);
//! assert!(!first.replayed && again.replayed);
//! assert_eq!(again.posting_id, first.posting_id);
//! assert_eq!(store.entries().len(), 1, "one posting, however often it is asked");
//! ```

pub mod batch;
pub mod decision;
pub mod inbox;
pub mod inventory;
pub mod messages;
pub mod operator;
pub mod order;
pub mod payment;
pub mod retention;
pub mod store;
pub mod story;

use saldo_ledger::Rejection;
use saldo_saga::{Definition, Ignored};
use saldo_types::{OrderId, Timestamp};

use crate::decision::{Decided, ReadSet, Snapshot};
use crate::messages::{Envelope, MessageId, Service};
use crate::order::{OrderCommand, SagaTimings};
use crate::payment::PaymentPolicy;

pub use crate::decision::Decision;
pub use crate::store::MemoryStore;

/// What handling a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// It took effect.
    Applied,
    /// It was handled before (the inbox knew it); no effect.
    Duplicate,
    /// It was recorded but changed nothing, for this reason (a late or
    /// out-of-order reply, a stale timer).
    Ignored(Ignored),
}

/// A command a participant cannot carry out. It goes to the dead-letter
/// topic with this reason; it never happens in a correct run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    /// Release arrived for a reservation already committed.
    #[error("release after the reservation was committed")]
    ReleaseAfterCommit,
    /// Commit arrived without a held reservation.
    #[error("commit without a held reservation")]
    CommitWithoutReservation,
    /// The command's lines name SKUs the reservation does not.
    #[error("the command's lines differ from the reservation's")]
    ReservationLinesDiffer,
    /// A charge for the order exists with another customer or amount.
    #[error("a different charge is recorded for this order")]
    ChargeDiffersFromRecorded,
    /// The ledger refused the posting.
    #[error("the ledger refused: {0}")]
    Ledger(Rejection),
}

/// Why a message could not be handled. Every variant is a poison message
/// for the consumer that got it: it is dead-lettered, never retried forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// The message is not for this consumer.
    #[error("{consumer} does not consume {message_type}")]
    WrongConsumer {
        /// The message type.
        message_type: &'static str,
        /// The consumer that got it.
        consumer: Service,
    },
    /// A reply names an order the order service does not have.
    #[error("order {0} does not exist")]
    OrderNotFound(OrderId),
    /// A message id was seen before with different content.
    #[error("message id {0} was reused for different content")]
    MessageIdReused(MessageId),
    /// The participant cannot carry out the command.
    #[error(transparent)]
    Refused(#[from] CommandRefused),
}

/// The configuration every decider reads: the saga's timings and the
/// payment limits. Shared by hosts, the simulator and the harness.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The order saga's definition.
    pub order_saga: Definition<OrderCommand>,
    /// The payment service's limits.
    pub payment: PaymentPolicy,
}

impl Rules {
    /// Rules with the given saga timings and payment policy.
    pub fn new(timings: &SagaTimings, payment: PaymentPolicy) -> Rules {
        Rules {
            order_saga: order::order_saga(timings),
            payment,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new(&SagaTimings::default(), PaymentPolicy::default())
    }
}

/// What `consumer` needs loaded to decide `envelope`.
pub fn message_read_set(consumer: Service, envelope: &Envelope) -> ReadSet {
    match consumer {
        Service::Order => order::reply_read_set(envelope),
        Service::Inventory => inventory::message_read_set(envelope),
        Service::Payment => payment::message_read_set(envelope),
    }
}

/// Decides a message for `consumer`: the one entry point every consumer
/// (Kafka runner, simulator, dev mode) goes through.
pub fn decide_message(
    rules: &Rules,
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    match consumer {
        Service::Order => order::decide_reply(&rules.order_saga, snapshot, envelope, now),
        Service::Inventory => inventory::decide_message(snapshot, envelope, now),
        Service::Payment => payment::decide_message(snapshot, envelope, now),
    }
}

#[cfg(test)]
mod mutants_tests;
#[cfg(test)]
mod tests;

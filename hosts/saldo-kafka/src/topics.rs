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

use saldo_domain::messages::{Payload, Service};

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

/// Every topic Saldo uses.
pub const ALL: [&str; 5] = [
    "saldo.inventory.commands",
    "saldo.payment.commands",
    "saldo.order.replies",
    "saldo.order.events",
    DEAD_LETTERS,
];

//! The message catalogue: every command and event that crosses Kafka, with
//! its envelope and its versioned JSON encoding.
//!
//! The wire form is one JSON object:
//! `{"message_id", "schema_version", "order_id", "correlation_id",
//!   "causation_id", "occurred_at", "traceparent", "payload": {"type", "data"}}`.
//! Kafka headers repeat the id, type, version, correlation id and
//! traceparent so brokers and tools can route without parsing the body; the
//! order id is the Kafka key, so everything about one order stays in order.

use std::fmt;

use saldo_types::{CorrelationId, CustomerId, Id128, Money, OrderId, Sku};
use serde::{Deserialize, Serialize};

use crate::order::CancelReason;

/// Identifies a message; derived from its cause so a retried decision
/// produces the same id and inboxes recognise the redelivery.
pub type MessageId = Id128;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u16 = 1;

/// The largest encoded message accepted, in bytes. Anything larger is
/// malformed by definition and goes to the dead-letter topic.
pub const MESSAGE_SIZE_MAX: usize = 64 * 1024;

/// One line of an order: a SKU and how many units.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// What.
    pub sku: Sku,
    /// How many; positive.
    pub quantity: u32,
}

/// Why inventory refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockRejection {
    /// Not enough units available for some line.
    OutOfStock,
    /// Some SKU is not stocked at all.
    UnknownSku,
    /// Some SKU is priced in another currency than the order.
    PriceCurrencyMismatch,
    /// The order's total overflows.
    AmountOverflow,
    /// The order was already cancelled (released) before this reservation arrived.
    OrderCancelled,
}

/// Why the payment service refused a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentFailure {
    /// The wallet has less available than the amount.
    InsufficientFunds,
    /// The customer has no wallet.
    UnknownWallet,
    /// The wallet holds another currency.
    CurrencyMismatch,
    /// The amount is above the wallet's per-payment limit.
    AmountOverLimit,
    /// The amount is zero or negative.
    AmountMustBePositive,
    /// The order was already refunded or cancelled before this charge arrived.
    OrderCancelled,
}

/// The body of a message. Commands go from the order service to a
/// participant; replies come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", deny_unknown_fields)]
pub enum Payload {
    /// Command to inventory: reserve every line or none.
    ReserveStock {
        /// The order's lines.
        lines: Vec<OrderLine>,
        /// The order's currency; prices must match it.
        currency: saldo_types::Currency,
    },
    /// Command to inventory: give back what the order holds (compensation).
    /// The lines name the rows to load; the reservation is the truth.
    ReleaseStock {
        /// The order's lines.
        lines: Vec<OrderLine>,
    },
    /// Command to inventory: the order is confirmed, the units are sold.
    CommitStock {
        /// The order's lines.
        lines: Vec<OrderLine>,
    },
    /// Command to payment: take `amount` from the customer's wallet.
    ChargePayment {
        /// Whose wallet.
        customer: CustomerId,
        /// How much.
        amount: Money,
    },
    /// Command to payment: undo the charge, if there was one (compensation).
    RefundPayment {
        /// Whose wallet.
        customer: CustomerId,
        /// The amount that was (or may have been) charged.
        amount: Money,
    },
    /// Reply: every line is reserved; the priced total is `amount`.
    StockReserved {
        /// The order's total at the reserved prices.
        amount: Money,
    },
    /// Reply: nothing was reserved.
    StockRejected {
        /// Why.
        reason: StockRejection,
    },
    /// Reply: the reservation is released (or there was none).
    StockReleased,
    /// Reply: the reserved units are sold.
    StockCommitted,
    /// Reply: the wallet was charged.
    PaymentSucceeded {
        /// The amount charged.
        amount: Money,
    },
    /// Reply: the wallet was not charged.
    PaymentFailed {
        /// Why.
        reason: PaymentFailure,
    },
    /// Reply: the charge is refunded (or there was none).
    PaymentRefunded,
    /// Event: the order reached its terminal state (for downstream consumers).
    OrderConfirmed,
    /// Event: the order was cancelled and fully compensated.
    OrderCancelled {
        /// Why.
        reason: CancelReason,
    },
}

/// Which service a message is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// The order service, the saga orchestrator.
    Order,
    /// The inventory service.
    Inventory,
    /// The payment service.
    Payment,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    /// The name used for schemas, topics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Payload {
    /// The type name, as in the `type` field and the Kafka header.
    pub fn message_type(&self) -> &'static str {
        match self {
            Payload::ReserveStock { .. } => "ReserveStock",
            Payload::ReleaseStock { .. } => "ReleaseStock",
            Payload::CommitStock { .. } => "CommitStock",
            Payload::ChargePayment { .. } => "ChargePayment",
            Payload::RefundPayment { .. } => "RefundPayment",
            Payload::StockReserved { .. } => "StockReserved",
            Payload::StockRejected { .. } => "StockRejected",
            Payload::StockReleased => "StockReleased",
            Payload::StockCommitted => "StockCommitted",
            Payload::PaymentSucceeded { .. } => "PaymentSucceeded",
            Payload::PaymentFailed { .. } => "PaymentFailed",
            Payload::PaymentRefunded => "PaymentRefunded",
            Payload::OrderConfirmed => "OrderConfirmed",
            Payload::OrderCancelled { .. } => "OrderCancelled",
        }
    }

    /// The service that consumes this message, or `None` for events that
    /// only leave the platform.
    pub fn consumer(&self) -> Option<Service> {
        match self {
            Payload::ReserveStock { .. }
            | Payload::ReleaseStock { .. }
            | Payload::CommitStock { .. } => Some(Service::Inventory),
            Payload::ChargePayment { .. } | Payload::RefundPayment { .. } => Some(Service::Payment),
            Payload::StockReserved { .. }
            | Payload::StockRejected { .. }
            | Payload::StockReleased
            | Payload::StockCommitted
            | Payload::PaymentSucceeded { .. }
            | Payload::PaymentFailed { .. }
            | Payload::PaymentRefunded => Some(Service::Order),
            Payload::OrderConfirmed | Payload::OrderCancelled { .. } => None,
        }
    }
}

/// A message type name that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a message type")]
pub struct UnknownMessageType(pub String);

/// The consumer of messages of the type named `message_type` (as
/// [`Payload::message_type`] names it), or `None` for events that only
/// leave the platform: how a publisher routes a row without decoding it.
pub fn consumer_of_type(message_type: &str) -> Result<Option<Service>, UnknownMessageType> {
    match message_type {
        "ReserveStock" | "ReleaseStock" | "CommitStock" => Ok(Some(Service::Inventory)),
        "ChargePayment" | "RefundPayment" => Ok(Some(Service::Payment)),
        "StockReserved" | "StockRejected" | "StockReleased" | "StockCommitted"
        | "PaymentSucceeded" | "PaymentFailed" | "PaymentRefunded" => Ok(Some(Service::Order)),
        "OrderConfirmed" | "OrderCancelled" => Ok(None),
        other => Err(UnknownMessageType(other.to_owned())),
    }
}

impl Payload {
    /// Appends the payload's canonical binary form (type tag, then fields in
    /// declaration order; strings length-prefixed, numbers big-endian). The
    /// inbox fingerprints it to recognise a reused message id.
    pub fn canonical_bytes(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, value: &str) {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        fn money(out: &mut Vec<u8>, amount: &Money) {
            out.extend_from_slice(&amount.amount_minor().to_be_bytes());
            out.extend_from_slice(amount.currency().code().as_bytes());
        }
        fn lines(out: &mut Vec<u8>, lines: &[OrderLine]) {
            out.extend_from_slice(&(lines.len() as u32).to_be_bytes());
            for line in lines {
                text(out, line.sku.as_str());
                out.extend_from_slice(&line.quantity.to_be_bytes());
            }
        }
        text(out, self.message_type());
        match self {
            Payload::ReserveStock {
                lines: order_lines,
                currency,
            } => {
                lines(out, order_lines);
                out.extend_from_slice(currency.code().as_bytes());
            }
            Payload::ReleaseStock { lines: order_lines }
            | Payload::CommitStock { lines: order_lines } => lines(out, order_lines),
            Payload::ChargePayment { customer, amount }
            | Payload::RefundPayment { customer, amount } => {
                text(out, customer.as_str());
                money(out, amount);
            }
            Payload::StockReserved { amount } | Payload::PaymentSucceeded { amount } => {
                money(out, amount)
            }
            Payload::StockRejected { reason } => out.push(*reason as u8),
            Payload::PaymentFailed { reason } => out.push(*reason as u8),
            Payload::OrderCancelled { reason } => out.push(*reason as u8),
            Payload::StockReleased
            | Payload::StockCommitted
            | Payload::PaymentRefunded
            | Payload::OrderConfirmed => {}
        }
    }
}

/// Every message type this schema version knows.
pub const MESSAGE_TYPES: [&str; 14] = [
    "ReserveStock",
    "ReleaseStock",
    "CommitStock",
    "ChargePayment",
    "RefundPayment",
    "StockReserved",
    "StockRejected",
    "StockReleased",
    "StockCommitted",
    "PaymentSucceeded",
    "PaymentFailed",
    "PaymentRefunded",
    "OrderConfirmed",
    "OrderCancelled",
];

/// A W3C trace context header value (`00-<trace id>-<parent id>-<flags>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Traceparent(String);

/// Why a traceparent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")]
pub struct TraceparentError(pub String);

impl Traceparent {
    /// Validates a header value.
    pub fn parse(text: &str) -> Result<Traceparent, TraceparentError> {
        let error = || TraceparentError(text.to_owned());
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1] != "0".repeat(32)
            && parts[2] != "0".repeat(16);
        if valid {
            Ok(Traceparent(text.to_owned()))
        } else {
            Err(error())
        }
    }

    /// A new trace rooted at `seed` (hosts pass random bytes, the simulator
    /// passes derived ones).
    pub fn root(seed: Id128) -> Traceparent {
        let span = Id128::derive("span", &[seed.as_bytes()]);
        let trace = seed.to_hex();
        let trace = if trace == "0".repeat(32) {
            "1".repeat(32)
        } else {
            trace
        };
        Traceparent(format!("00-{trace}-{}-01", &span.to_hex()[..16]))
    }

    /// The same trace with a new parent span taken from `span_seed` (a
    /// derived id, so already uniformly distributed), as a message caused
    /// by this one carries.
    pub fn child(&self, span_seed: Id128) -> Traceparent {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut span = [0u8; 8];
        span.copy_from_slice(&span_seed.as_bytes()[..8]);
        if span == [0; 8] {
            // An all-zero parent id is invalid in W3C trace context.
            span = [1; 8];
        }
        let mut text = String::with_capacity(55);
        text.push_str(&self.0[..36]);
        for byte in span {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        text.push_str(&self.0[52..55]);
        Traceparent(text)
    }

    /// The 32-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Traceparent {
    type Error = TraceparentError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Traceparent::parse(&text)
    }
}

impl From<Traceparent> for String {
    fn from(traceparent: Traceparent) -> String {
        traceparent.0
    }
}

/// A message with its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Derived from the cause.
    pub message_id: MessageId,
    /// The schema version of the payload.
    pub schema_version: u16,
    /// The order the message is about; the Kafka key.
    pub order_id: OrderId,
    /// The client request that started it all.
    pub correlation_id: CorrelationId,
    /// The message (or request) that directly caused this one.
    pub causation_id: Option<MessageId>,
    /// When the decision that produced it was made (the caller's clock).
    pub occurred_at: saldo_types::Timestamp,
    /// The trace context to continue.
    pub traceparent: Traceparent,
    /// The body.
    pub payload: Payload,
}

impl Envelope {
    /// A message caused by `cause`: same order, correlation and trace, with
    /// the id derived from the cause's id and `discriminator`.
    pub fn caused_by(
        cause: &Envelope,
        discriminator: &[&[u8]],
        occurred_at: saldo_types::Timestamp,
        payload: Payload,
    ) -> Envelope {
        let mut parts: Vec<&[u8]> = vec![cause.message_id.as_bytes()];
        parts.extend_from_slice(discriminator);
        let message_id = Id128::derive("message", &parts);
        Envelope {
            message_id,
            schema_version: SCHEMA_VERSION,
            order_id: cause.order_id.clone(),
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.message_id),
            occurred_at,
            traceparent: cause.traceparent.child(message_id),
            payload,
        }
    }

    /// The type name.
    pub fn message_type(&self) -> &'static str {
        self.payload.message_type()
    }

    /// Encodes to the wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialise")
    }

    /// Decodes the wire form. Never panics: anything unreadable is a typed
    /// [`DecodeError`], which the consumer sends to the dead-letter topic.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MESSAGE_SIZE_MAX {
            return Err(DecodeError::TooLarge { size: bytes.len() });
        }
        // Read the version and type first, so an unknown version or type is
        // reported as such rather than as a generic parse error.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<u16>,
            payload: Option<ProbePayload>,
        }
        #[derive(Deserialize)]
        struct ProbePayload {
            #[serde(rename = "type")]
            message_type: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|error| DecodeError::Malformed(error.to_string()))?;
        match probe.schema_version {
            Some(SCHEMA_VERSION) => {}
            Some(version) => return Err(DecodeError::VersionUnsupported { version }),
            None => {
                return Err(DecodeError::Malformed(
                    "missing field `schema_version`".to_owned(),
                ));
            }
        }
        let message_type = probe
            .payload
            .and_then(|payload| payload.message_type)
            .ok_or_else(|| DecodeError::Malformed("missing field `payload.type`".to_owned()))?;
        if !MESSAGE_TYPES.contains(&message_type.as_str()) {
            return Err(DecodeError::TypeUnknown { message_type });
        }
        serde_json::from_slice(bytes).map_err(|error| DecodeError::Malformed(error.to_string()))
    }
}

/// Why bytes did not decode to an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MESSAGE_SIZE_MAX`].
    #[error("message of {size} bytes exceeds the {MESSAGE_SIZE_MAX}-byte limit")]
    TooLarge {
        /// The size.
        size: usize,
    },
    /// A schema version this code does not read.
    #[error("schema version {version} is not supported (this build reads {SCHEMA_VERSION})")]
    VersionUnsupported {
        /// The version found.
        version: u16,
    },
    /// A message type not in the catalogue.
    #[error("message type {message_type:?} is unknown")]
    TypeUnknown {
        /// The type found.
        message_type: String,
    },
    /// Not valid JSON, or fields missing, extra or invalid.
    #[error("malformed message: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod routing_tests {
    use saldo_types::{Currency, CustomerId, Money};

    use super::*;
    use crate::order::CancelReason;

    #[test]
    fn every_payload_is_routed_by_its_type_name_as_by_itself() {
        // Proves a publisher routing a row by its message_type column sends
        // it where the decoded payload would go, for every message type.
        let money = Money::from_minor(100, Currency::EUR);
        let customer = CustomerId::new("c").expect("valid");
        let payloads = [
            Payload::ReserveStock {
                lines: Vec::new(),
                currency: Currency::EUR,
            },
            Payload::ReleaseStock { lines: Vec::new() },
            Payload::CommitStock { lines: Vec::new() },
            Payload::ChargePayment {
                customer: customer.clone(),
                amount: money,
            },
            Payload::RefundPayment {
                customer,
                amount: money,
            },
            Payload::StockReserved { amount: money },
            Payload::StockRejected {
                reason: StockRejection::OutOfStock,
            },
            Payload::StockReleased,
            Payload::StockCommitted,
            Payload::PaymentSucceeded { amount: money },
            Payload::PaymentFailed {
                reason: PaymentFailure::InsufficientFunds,
            },
            Payload::PaymentRefunded,
            Payload::OrderConfirmed,
            Payload::OrderCancelled {
                reason: CancelReason::OutOfStock,
            },
        ];
        for payload in payloads {
            assert_eq!(
                consumer_of_type(payload.message_type()),
                Ok(payload.consumer()),
                "{}",
                payload.message_type()
            );
        }
        assert!(consumer_of_type("Teleport").is_err());
    }
}

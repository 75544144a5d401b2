//! The inventory service: reserves a multi-line order all or nothing,
//! releases on compensation, commits on confirmation.
//!
//! Invariants: `reserved <= on_hand` for every SKU (stock never negative),
//! and the units reserved on a SKU equal the sum over its held reservations.
//! A reservation is keyed by order, so every command is idempotent per order:
//! a repeated command answers with the stored outcome and changes nothing.

use std::collections::BTreeMap;

use saldo_types::{Currency, Money, OrderId, Sku, Timestamp};
use serde::{Deserialize, Serialize};

use crate::decision::{Decided, Decision, ReadSet, Row, RowKey, Snapshot, Version, Versioned};
use crate::inbox;
use crate::messages::{Envelope, OrderLine, Payload, Service, StockRejection};
use crate::{CommandRefused, ConsumeError, MessageOutcome};

/// The most units one SKU may have on hand.
pub const ON_HAND_MAX: u64 = 1_000_000_000;

/// One SKU's stock and price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRow {
    /// The SKU.
    pub sku: Sku,
    /// Units physically there (sold units are gone).
    pub on_hand: u64,
    /// Units promised to held reservations; never above `on_hand`.
    pub reserved: u64,
    /// The price of one unit.
    pub unit_price: Money,
}

impl StockRow {
    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        assert!(
            self.reserved <= self.on_hand,
            "sku {}: reserved {} above on hand {}",
            self.sku,
            self.reserved,
            self.on_hand
        );
        self.on_hand - self.reserved
    }
}

/// Where an order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReservationState {
    /// Units are promised to the order.
    Held,
    /// The units were sold.
    Committed,
    /// The units were given back.
    Released,
    /// Nothing was reserved, for this reason.
    Rejected {
        /// Why.
        reason: StockRejection,
    },
    /// Released before any reservation arrived: a later reservation for
    /// this order is refused, so a late command cannot hold stock forever.
    Cancelled,
}

/// An order's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRow {
    /// The order.
    pub order_id: OrderId,
    /// The reserved lines.
    pub lines: Vec<OrderLine>,
    /// The priced total, when reserved.
    pub amount: Option<Money>,
    /// Where it stands.
    pub state: ReservationState,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// What [`decide_message`] needs loaded.
pub fn message_read_set(envelope: &Envelope) -> ReadSet {
    let lines: &[OrderLine] = match &envelope.payload {
        Payload::ReserveStock { lines, .. }
        | Payload::ReleaseStock { lines }
        | Payload::CommitStock { lines } => lines,
        _ => &[],
    };
    let mut rows = vec![RowKey::Reservation(envelope.order_id.clone())];
    rows.extend(lines.iter().map(|line| RowKey::Stock(line.sku.clone())));
    ReadSet {
        rows,
        inbox: Some((Service::Inventory, envelope.message_id)),
        ..ReadSet::default()
    }
}

/// Decides a command addressed to inventory.
pub fn decide_message(
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    inbox::participant(Service::Inventory, snapshot, envelope, now, |decision| {
        let (reservation_version, reservation) = snapshot.reservation(&envelope.order_id);
        match &envelope.payload {
            Payload::ReserveStock { lines, currency } => Ok(match reservation {
                Some(existing) => replay_reservation(existing),
                None => reserve(decision, snapshot, envelope, lines, *currency, now),
            }),
            Payload::ReleaseStock { .. } => release(
                decision,
                snapshot,
                envelope,
                reservation_version,
                reservation,
                now,
            ),
            Payload::CommitStock { .. } => {
                commit(decision, snapshot, reservation_version, reservation, now)
            }
            _ => unreachable!("participant() admits only inventory commands"),
        }
    })
}

fn replay_reservation(existing: &ReservationRow) -> Payload {
    match existing.state {
        // Released: only a held reservation is released, and every reserve
        // command of the order was handled before the release that follows
        // it on the same partition, each answered "reserved". A redelivery
        // after its receipt was purged gets that answer again, so the reply
        // (whose id derives from the command) keeps its content.
        ReservationState::Held | ReservationState::Committed | ReservationState::Released => {
            Payload::StockReserved {
                amount: existing
                    .amount
                    .expect("held, committed and released reservations are priced"),
            }
        }
        ReservationState::Rejected { reason } => Payload::StockRejected { reason },
        ReservationState::Cancelled => Payload::StockRejected {
            reason: StockRejection::OrderCancelled,
        },
    }
}

/// Sums quantities per SKU, so a SKU named twice is reserved once for the total.
fn merged(lines: &[OrderLine]) -> BTreeMap<Sku, u64> {
    let mut merged = BTreeMap::new();
    for line in lines {
        *merged.entry(line.sku.clone()).or_insert(0u64) += u64::from(line.quantity);
    }
    merged
}

/// Checks every line, in precedence: unknown SKU, then price currency, then
/// availability, then the total's range. Returns the priced total.
fn check_reservation(
    snapshot: &Snapshot,
    lines: &BTreeMap<Sku, u64>,
    currency: Currency,
) -> Result<Money, StockRejection> {
    let mut rows = Vec::with_capacity(lines.len());
    for (sku, quantity) in lines {
        match snapshot.stock(sku).1 {
            Some(row) => rows.push((row, *quantity)),
            None => return Err(StockRejection::UnknownSku),
        }
    }
    if rows
        .iter()
        .any(|(row, _)| row.unit_price.currency() != currency)
    {
        return Err(StockRejection::PriceCurrencyMismatch);
    }
    if rows
        .iter()
        .any(|(row, quantity)| row.available() < *quantity)
    {
        return Err(StockRejection::OutOfStock);
    }
    let mut amount = Money::zero(currency);
    for (row, quantity) in rows {
        let factor = i64::try_from(quantity).map_err(|_| StockRejection::AmountOverflow)?;
        let line_total = row
            .unit_price
            .checked_mul(factor)
            .map_err(|_| StockRejection::AmountOverflow)?;
        amount = amount
            .checked_add(line_total)
            .map_err(|_| StockRejection::AmountOverflow)?;
    }
    Ok(amount)
}

fn reserve(
    decision: &mut Decision,
    snapshot: &Snapshot,
    envelope: &Envelope,
    lines: &[OrderLine],
    currency: Currency,
    now: Timestamp,
) -> Payload {
    let quantities = merged(lines);
    let (state, amount, reply) = match check_reservation(snapshot, &quantities, currency) {
        Ok(amount) => {
            for (sku, quantity) in &quantities {
                let (version, row) = snapshot.stock(sku);
                let mut row = row.expect("checked above").clone();
                row.reserved += quantity;
                assert!(
                    row.reserved <= row.on_hand,
                    "the availability check keeps stock non-negative"
                );
                decision.write(version, Row::Stock(row));
            }
            (
                ReservationState::Held,
                Some(amount),
                Payload::StockReserved { amount },
            )
        }
        Err(reason) => (
            ReservationState::Rejected { reason },
            None,
            Payload::StockRejected { reason },
        ),
    };
    decision.write(
        0,
        Row::Reservation(ReservationRow {
            order_id: envelope.order_id.clone(),
            lines: lines.to_vec(),
            amount,
            state,
            updated_at: now,
        }),
    );
    reply
}

/// Applies `change` to the stock of every line of a held reservation.
fn move_stock(
    decision: &mut Decision,
    snapshot: &Snapshot,
    reservation: &ReservationRow,
    change: impl Fn(&mut StockRow, u64),
) -> Result<(), ConsumeError> {
    for (sku, quantity) in merged(&reservation.lines) {
        let (version, row) = snapshot.stock(&sku);
        let mut row = row
            .ok_or(ConsumeError::Refused(
                CommandRefused::ReservationLinesDiffer,
            ))?
            .clone();
        assert!(
            row.reserved >= quantity,
            "sku {sku}: held reservations are counted in reserved"
        );
        change(&mut row, quantity);
        assert!(
            row.reserved <= row.on_hand,
            "sku {sku}: stock stays non-negative"
        );
        decision.write(version, Row::Stock(row));
    }
    Ok(())
}

fn release(
    decision: &mut Decision,
    snapshot: &Snapshot,
    envelope: &Envelope,
    version: Version,
    reservation: Option<&ReservationRow>,
    now: Timestamp,
) -> Result<Payload, ConsumeError> {
    match reservation {
        None => {
            let lines = match &envelope.payload {
                Payload::ReleaseStock { lines } => lines.clone(),
                _ => unreachable!("only called for ReleaseStock"),
            };
            decision.write(
                0,
                Row::Reservation(ReservationRow {
                    order_id: envelope.order_id.clone(),
                    lines,
                    amount: None,
                    state: ReservationState::Cancelled,
                    updated_at: now,
                }),
            );
        }
        Some(held) if held.state == ReservationState::Held => {
            move_stock(decision, snapshot, held, |row, quantity| {
                row.reserved -= quantity
            })?;
            let mut released = held.clone();
            released.state = ReservationState::Released;
            released.updated_at = now;
            decision.write(version, Row::Reservation(released));
        }
        Some(committed) if committed.state == ReservationState::Committed => {
            return Err(ConsumeError::Refused(CommandRefused::ReleaseAfterCommit));
        }
        // Rejected, released or cancelled: nothing is held, nothing to do.
        Some(_) => {}
    }
    Ok(Payload::StockReleased)
}

fn commit(
    decision: &mut Decision,
    snapshot: &Snapshot,
    version: Version,
    reservation: Option<&ReservationRow>,
    now: Timestamp,
) -> Result<Payload, ConsumeError> {
    match reservation {
        Some(held) if held.state == ReservationState::Held => {
            move_stock(decision, snapshot, held, |row, quantity| {
                row.reserved -= quantity;
                row.on_hand -= quantity;
            })?;
            let mut committed = held.clone();
            committed.state = ReservationState::Committed;
            committed.updated_at = now;
            decision.write(version, Row::Reservation(committed));
            Ok(Payload::StockCommitted)
        }
        Some(committed) if committed.state == ReservationState::Committed => {
            Ok(Payload::StockCommitted)
        }
        _ => Err(ConsumeError::Refused(
            CommandRefused::CommitWithoutReservation,
        )),
    }
}

/// A request to set a SKU's stock level and price (`PUT /stock/{sku}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStock {
    /// The SKU.
    pub sku: Sku,
    /// Units on hand.
    pub on_hand: u64,
    /// The price of one unit.
    pub unit_price: Money,
}

/// Why setting stock was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetStockError {
    /// More than [`ON_HAND_MAX`] units.
    #[error("on_hand is above {ON_HAND_MAX}")]
    OnHandTooLarge,
    /// The price is zero or negative.
    #[error("unit_price must be positive")]
    PriceMustBePositive,
    /// Fewer units than are already promised to held reservations.
    #[error("on_hand {on_hand} is below the {reserved} units reserved")]
    OnHandBelowReserved {
        /// Requested.
        on_hand: u64,
        /// Already reserved.
        reserved: u64,
    },
}

/// What [`decide_set_stock`] needs loaded.
pub fn set_stock_read_set(request: &SetStock) -> ReadSet {
    ReadSet {
        rows: vec![RowKey::Stock(request.sku.clone())],
        ..ReadSet::default()
    }
}

/// Decides a stock level: `PUT` semantics, so repeating it is harmless.
pub fn decide_set_stock(
    snapshot: &Snapshot,
    request: &SetStock,
) -> Result<Decided<StockRow>, SetStockError> {
    if request.on_hand > ON_HAND_MAX {
        return Err(SetStockError::OnHandTooLarge);
    }
    if !request.unit_price.is_positive() {
        return Err(SetStockError::PriceMustBePositive);
    }
    let (version, existing) = snapshot.stock(&request.sku);
    let reserved = existing.map_or(0, |row| row.reserved);
    if request.on_hand < reserved {
        return Err(SetStockError::OnHandBelowReserved {
            on_hand: request.on_hand,
            reserved,
        });
    }
    let row = StockRow {
        sku: request.sku.clone(),
        on_hand: request.on_hand,
        reserved,
        unit_price: request.unit_price,
    };
    let mut decision = Decision::default();
    decision.write(version, Row::Stock(row.clone()));
    Ok(Decided {
        decision,
        reply: row,
    })
}

/// A client's precondition on a stock row's version (HTTP `If-Match`; the
/// row's version is its entity tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IfMatch {
    /// `*`: the row must exist, at any version.
    Any,
    /// The row must exist at one of these versions. An empty list never
    /// matches (a client that named only tags this service never issues).
    Versions(Vec<Version>),
}

impl IfMatch {
    fn admits(&self, version: Version) -> bool {
        // Version 0 is "absent": no precondition names an absent row.
        version != 0
            && match self {
                IfMatch::Any => true,
                IfMatch::Versions(versions) => versions.contains(&version),
            }
    }
}

/// `PUT /stock/{sku}`: a stock level written only over the version the
/// writer saw, so that a stale writer cannot overwrite sales it never saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutStock {
    /// The level and price to write.
    pub set: SetStock,
    /// The writer's precondition; `None` may only create a new SKU.
    pub if_match: Option<IfMatch>,
}

/// Why a `PUT /stock/{sku}` was refused, in precedence order: the
/// precondition first (a stale writer learns that before anything else),
/// then [`SetStockError`]'s refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutStockError {
    /// The SKU exists and the writer named no version: it may be about to
    /// overwrite changes it never saw (HTTP 428).
    #[error("the SKU exists at version {current}; send If-Match with the version you read")]
    PreconditionRequired {
        /// The stored version.
        current: Version,
    },
    /// The stored version is not one the writer named (HTTP 412).
    #[error("the SKU is at version {current}, not one named in If-Match")]
    PreconditionFailed {
        /// The stored version (0: the SKU does not exist).
        current: Version,
    },
    /// The level itself was refused.
    #[error(transparent)]
    Set(#[from] SetStockError),
}

/// What [`decide_put_stock`] needs loaded.
pub fn put_stock_read_set(request: &PutStock) -> ReadSet {
    set_stock_read_set(&request.set)
}

/// Decides a `PUT /stock/{sku}`: without a precondition only a new SKU is
/// written; with one, only the version it names is overwritten. The reply
/// is the row as written with its new version (the next entity tag).
pub fn decide_put_stock(
    snapshot: &Snapshot,
    request: &PutStock,
) -> Result<Decided<Versioned<StockRow>>, PutStockError> {
    let (current, _) = snapshot.stock(&request.set.sku);
    match &request.if_match {
        None if current != 0 => return Err(PutStockError::PreconditionRequired { current }),
        None => {}
        Some(if_match) if !if_match.admits(current) => {
            return Err(PutStockError::PreconditionFailed { current });
        }
        Some(_) => {}
    }
    let decided = decide_set_stock(snapshot, &request.set)?;
    let version = current + 1;
    assert!(
        decided
            .decision
            .writes
            .iter()
            .all(|write| write.expected == current),
        "a stock write expects the version its precondition was checked against"
    );
    Ok(Decided {
        decision: decided.decision,
        reply: Versioned {
            version,
            value: decided.reply,
        },
    })
}

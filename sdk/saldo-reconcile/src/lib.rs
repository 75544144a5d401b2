//! Reconciliation: pure rules that find silent failures.
//!
//! Real-time systems are eventually consistent and can fail silently (seed
//! section 3.8). A reader (the PostgreSQL host, or [`memory`] over the
//! in-memory store) gathers *facts* (one [`OrderFacts`] per order, and
//! per-SKU, per-account, per-entry, per-outbox-row facts) and these rules
//! turn them into typed [`Finding`]s, each with a severity and the ids
//! involved. The rules read nothing and write nothing.
//!
//! Eventual consistency is allowed for: an order younger than
//! [`Settings::grace_ms`] that has not ended is in flight, not a finding;
//! outbox rows are only reported once older than
//! [`Settings::outbox_age_max_ms`].
//!
//! The facts are designed to be streamed: an order's facts are everything
//! needed to judge it, so a reader can merge tables sorted by order id and
//! keep one order in memory at a time.
//!
//! # Example
//!
//! ```
//! use saldo_domain::MemoryStore;
//! use saldo_domain::messages::Service;
//! use saldo_reconcile::{FindingKind, Settings, Severity, check_dead_letters, memory};
//! use saldo_types::Timestamp;
//!
//! let now = Timestamp::from_unix_ms(0);
//! // An empty platform is clean.
//! assert!(memory::reconcile(&MemoryStore::new(), now, &Settings::default()).is_empty());
//!
//! // Two dead letters in the inventory service are a finding to look at today.
//! let finding = check_dead_letters(Service::Inventory, 2).expect("a finding");
//! assert_eq!(finding.kind, FindingKind::DeadLettersPresent);
//! assert_eq!(finding.kind.severity(), Severity::Warning);
//! assert_eq!(finding.kind.name(), "dead_letters_present");
//! ```

pub mod memory;
pub mod story;

use saldo_domain::inventory::ReservationState;
use saldo_domain::messages::Service;
use saldo_domain::order::OrderStatus;
use saldo_domain::payment::PaymentState;
use saldo_ledger::{ChainError, ChainHash, Checkpoint, Entry, StoredEntry};
use saldo_types::{Currency, Money, OrderId, Timestamp};
use serde::Serialize;

/// How tolerant reconciliation is of work in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// An unfinished order younger than this is in flight, not a finding.
    pub grace_ms: u64,
    /// An unpublished outbox row older than this is a finding.
    pub outbox_age_max_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace_ms: 5 * 60_000,
            outbox_age_max_ms: 60_000,
        }
    }
}

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Money or stock is wrong: page someone.
    Critical,
    /// Something is stuck or late: look today.
    Warning,
}

/// What is wrong. Each kind has one stable name (its serde form), used in
/// reports, metrics labels and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A confirmed order without exactly one captured, unrefunded payment.
    ConfirmedWithoutCapturedPayment,
    /// A payment whose ledger entries are missing or do not match it.
    PaymentWithoutBalancedEntries,
    /// Ledger entries for an order that has no payment.
    EntriesWithoutPayment,
    /// A ledger entry whose debits and credits differ.
    UnbalancedEntry,
    /// The hash chain does not verify at this entry.
    ChainBroken,
    /// An entry's stored legs or columns differ from its hashed posting.
    EntryRowsDisagreeWithPosting,
    /// An entry the operator (a checkpoint) or an earlier run (the verified
    /// watermark) saw with one hash now has another, or is gone: the chain
    /// was rewritten behind them.
    ChainRewritten,
    /// More money taken from the wallet than one charge.
    DoubleCharge,
    /// A cancelled order that still has money charged.
    CancelledWithNetCharge,
    /// A cancelled order that still holds stock.
    CancelledWithHeldStock,
    /// A SKU's reserved count differs from its held reservations.
    StockDisagreesWithReservations,
    /// A reservation still held for a confirmed order, or for no order at all.
    ReservationHeldForFinishedOrder,
    /// A confirmed order whose stock was released, rejected or never reserved.
    ConfirmedWithoutCommittedStock,
    /// A cancelled order whose stock was sold.
    CancelledWithCommittedStock,
    /// A captured payment for an order that does not exist.
    PaymentWithoutOrder,
    /// Stock sold for an order that does not exist.
    StockCommittedWithoutOrder,
    /// An order's priced total differs from the total its reservation was
    /// priced at: the customer is charged for something inventory did not price.
    OrderAmountDisagreesWithReservation,
    /// A saga not ended long after its deadline.
    SagaStuck,
    /// An account's balance differs from the sum of its ledger legs.
    AccountDisagreesWithEntries,
    /// An outbox row unpublished for too long.
    OutboxUnpublished,
    /// Messages sit in a dead-letter table.
    DeadLettersPresent,
}

impl FindingKind {
    /// Every kind, for metrics that report zero as well.
    pub const ALL: [FindingKind; 21] = [
        FindingKind::ConfirmedWithoutCapturedPayment,
        FindingKind::PaymentWithoutBalancedEntries,
        FindingKind::EntriesWithoutPayment,
        FindingKind::UnbalancedEntry,
        FindingKind::ChainBroken,
        FindingKind::EntryRowsDisagreeWithPosting,
        FindingKind::ChainRewritten,
        FindingKind::DoubleCharge,
        FindingKind::CancelledWithNetCharge,
        FindingKind::CancelledWithHeldStock,
        FindingKind::StockDisagreesWithReservations,
        FindingKind::ReservationHeldForFinishedOrder,
        FindingKind::ConfirmedWithoutCommittedStock,
        FindingKind::CancelledWithCommittedStock,
        FindingKind::PaymentWithoutOrder,
        FindingKind::StockCommittedWithoutOrder,
        FindingKind::OrderAmountDisagreesWithReservation,
        FindingKind::SagaStuck,
        FindingKind::AccountDisagreesWithEntries,
        FindingKind::OutboxUnpublished,
        FindingKind::DeadLettersPresent,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::ConfirmedWithoutCapturedPayment => "confirmed_without_captured_payment",
            FindingKind::PaymentWithoutBalancedEntries => "payment_without_balanced_entries",
            FindingKind::EntriesWithoutPayment => "entries_without_payment",
            FindingKind::UnbalancedEntry => "unbalanced_entry",
            FindingKind::ChainBroken => "chain_broken",
            FindingKind::EntryRowsDisagreeWithPosting => "entry_rows_disagree_with_posting",
            FindingKind::ChainRewritten => "chain_rewritten",
            FindingKind::DoubleCharge => "double_charge",
            FindingKind::CancelledWithNetCharge => "cancelled_with_net_charge",
            FindingKind::CancelledWithHeldStock => "cancelled_with_held_stock",
            FindingKind::StockDisagreesWithReservations => "stock_disagrees_with_reservations",
            FindingKind::ReservationHeldForFinishedOrder => "reservation_held_for_finished_order",
            FindingKind::ConfirmedWithoutCommittedStock => "confirmed_without_committed_stock",
            FindingKind::CancelledWithCommittedStock => "cancelled_with_committed_stock",
            FindingKind::OrderAmountDisagreesWithReservation => {
                "order_amount_disagrees_with_reservation"
            }
            FindingKind::PaymentWithoutOrder => "payment_without_order",
            FindingKind::StockCommittedWithoutOrder => "stock_committed_without_order",
            FindingKind::SagaStuck => "saga_stuck",
            FindingKind::AccountDisagreesWithEntries => "account_disagrees_with_entries",
            FindingKind::OutboxUnpublished => "outbox_unpublished",
            FindingKind::DeadLettersPresent => "dead_letters_present",
        }
    }

    /// How urgent this kind is.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::SagaStuck
            | FindingKind::OutboxUnpublished
            | FindingKind::DeadLettersPresent => Severity::Warning,
            _ => Severity::Critical,
        }
    }
}

/// One silent failure, with the ids it involves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// How urgent.
    pub severity: Severity,
    /// The ids involved, as `kind:id` (`order:o1`, `sku:apple`,
    /// `posting:...`, `account:wallet:alice:EUR`, `entry:12`, `outbox:payment:7`).
    pub ids: Vec<String>,
    /// A sentence for a person.
    pub detail: String,
}

impl Finding {
    fn new(kind: FindingKind, ids: Vec<String>, detail: String) -> Finding {
        Finding {
            kind,
            severity: kind.severity(),
            ids,
            detail,
        }
    }

    /// A stable identity for "have I alerted on this before?": kind and ids.
    pub fn identity(&self) -> String {
        format!("{}|{}", self.kind.name(), self.ids.join(","))
    }
}

/// The order service's facts about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFact {
    /// What the user sees.
    pub status: OrderStatus,
    /// The priced total, once known.
    pub amount_minor: Option<i64>,
    /// The order's currency.
    pub currency: Currency,
    /// When it was placed.
    pub created_at: Timestamp,
    /// The saga's next deadline, while it runs.
    pub deadline: Option<Timestamp>,
}

impl OrderFact {
    /// The facts of an order row.
    pub fn of(order: &saldo_domain::order::OrderRow) -> OrderFact {
        OrderFact {
            status: order.status(),
            amount_minor: order.amount.map(|amount| amount.amount_minor()),
            currency: order.currency,
            created_at: order.created_at,
            deadline: order.deadline(),
        }
    }
}

/// Where a payment stands, without the posting ids (`payments.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    /// Charged.
    Captured,
    /// Refused; no money moved.
    Failed,
    /// Charged, then refunded.
    Refunded,
    /// Refunded before any charge; a later charge is refused.
    CancelledBeforeCharge,
}

impl PaymentKind {
    /// The kind of a payment state.
    pub fn of(state: &PaymentState) -> PaymentKind {
        match state {
            PaymentState::Captured { .. } => PaymentKind::Captured,
            PaymentState::Failed { .. } => PaymentKind::Failed,
            PaymentState::Refunded { .. } => PaymentKind::Refunded,
            PaymentState::CancelledBeforeCharge => PaymentKind::CancelledBeforeCharge,
        }
    }

    /// The kind named by the `payments.state` column.
    pub fn from_name(name: &str) -> Option<PaymentKind> {
        match name {
            "captured" => Some(PaymentKind::Captured),
            "failed" => Some(PaymentKind::Failed),
            "refunded" => Some(PaymentKind::Refunded),
            "cancelled_before_charge" => Some(PaymentKind::CancelledBeforeCharge),
            _ => None,
        }
    }
}

/// Where a reservation stands, without its reason (`reservations.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationKind {
    /// Units are promised to the order.
    Held,
    /// The units were sold.
    Committed,
    /// The units were given back.
    Released,
    /// Nothing was reserved.
    Rejected,
    /// Released before any reservation arrived.
    Cancelled,
}

impl ReservationKind {
    /// The kind of a reservation state.
    pub fn of(state: &ReservationState) -> ReservationKind {
        match state {
            ReservationState::Held => ReservationKind::Held,
            ReservationState::Committed => ReservationKind::Committed,
            ReservationState::Released => ReservationKind::Released,
            ReservationState::Rejected { .. } => ReservationKind::Rejected,
            ReservationState::Cancelled => ReservationKind::Cancelled,
        }
    }

    /// The kind named by the `reservations.state` column.
    pub fn from_name(name: &str) -> Option<ReservationKind> {
        match name {
            "held" => Some(ReservationKind::Held),
            "committed" => Some(ReservationKind::Committed),
            "released" => Some(ReservationKind::Released),
            "rejected" => Some(ReservationKind::Rejected),
            "cancelled" => Some(ReservationKind::Cancelled),
            _ => None,
        }
    }
}

/// The inventory service's facts about one order's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationFact {
    /// Where it stands.
    pub state: ReservationKind,
    /// The total it was priced at, once reserved.
    pub priced: Option<Money>,
}

impl ReservationFact {
    /// The facts of a reservation row.
    pub fn of(reservation: &saldo_domain::inventory::ReservationRow) -> ReservationFact {
        ReservationFact {
            state: ReservationKind::of(&reservation.state),
            priced: reservation.amount,
        }
    }
}

/// The payment service's facts about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentFact {
    /// Where the payment stands.
    pub state: PaymentKind,
    /// The amount.
    pub amount_minor: i64,
}

impl PaymentFact {
    /// The facts of a payment row.
    pub fn of(payment: &saldo_domain::payment::PaymentRow) -> PaymentFact {
        PaymentFact {
            state: PaymentKind::of(&payment.state),
            amount_minor: payment.amount.amount_minor(),
        }
    }
}

/// The ledger's facts about one order: its entries, aggregated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFact {
    /// Entries with purpose `charge`.
    pub charges: u32,
    /// Entries with purpose `refund`.
    pub refunds: u32,
    /// Money taken from wallets for the order, net of refunds.
    pub net_charged_minor: i128,
    /// The largest single amount taken from a wallet by one entry.
    pub largest_charge_minor: i128,
}

impl LedgerFact {
    /// Adds one entry of the order's: a `charge` or `refund` is counted, and
    /// the money its legs take from wallets (net) is added.
    pub fn add(&mut self, posting: &saldo_ledger::Posting) {
        let mut wallet_debit: i128 = 0;
        for leg in &posting.legs {
            if matches!(leg.account, saldo_ledger::AccountId::Wallet { .. }) {
                let signed = i128::from(leg.amount.amount_minor());
                wallet_debit += match leg.side {
                    saldo_ledger::Side::Debit => signed,
                    saldo_ledger::Side::Credit => -signed,
                };
            }
        }
        match posting.memo.purpose.as_str() {
            "charge" => self.charges += 1,
            "refund" => self.refunds += 1,
            _ => {}
        }
        self.net_charged_minor += wallet_debit;
        self.largest_charge_minor = self.largest_charge_minor.max(wallet_debit);
    }
}

/// Everything known about one order, from every service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    /// The order.
    pub order_id: OrderId,
    /// The order service's row, if any.
    pub order: Option<OrderFact>,
    /// The payment service's row, if any.
    pub payment: Option<PaymentFact>,
    /// The inventory service's reservation, if any.
    pub reservation: Option<ReservationFact>,
    /// The ledger's entries for it.
    pub ledger: LedgerFact,
}

/// Judges one order. A fresh unfinished order (younger than the grace
/// period) is in flight and yields nothing.
pub fn check_order(facts: &OrderFacts, now: Timestamp, settings: &Settings) -> Vec<Finding> {
    let mut findings = Vec::new();
    let id = vec![format!("order:{}", facts.order_id)];
    let finding = |kind, detail: String| Finding::new(kind, id.clone(), detail);
    let ledger = &facts.ledger;
    if let Some(order) = &facts.order {
        let age_ms = now.ms_since(order.created_at);
        if order.status == OrderStatus::Pending {
            if let Some(deadline) = order.deadline
                && now.ms_since(deadline) > settings.grace_ms
            {
                findings.push(finding(
                    FindingKind::SagaStuck,
                    format!("pending {} ms past its deadline", now.ms_since(deadline)),
                ));
            }
            if age_ms <= settings.grace_ms {
                return findings;
            }
        }
    }
    if ledger.net_charged_minor > ledger.largest_charge_minor || ledger.charges > 1 {
        findings.push(finding(
            FindingKind::DoubleCharge,
            format!(
                "{} charges, {} net taken, largest single charge {}",
                ledger.charges, ledger.net_charged_minor, ledger.largest_charge_minor
            ),
        ));
    }
    match (&facts.payment, ledger.charges + ledger.refunds) {
        (None, 0) => {}
        (None, entries) => findings.push(finding(
            FindingKind::EntriesWithoutPayment,
            format!("{entries} ledger entries and no payment"),
        )),
        (Some(payment), _) => {
            let expected = match payment.state {
                PaymentKind::Captured => (1, 0, i128::from(payment.amount_minor)),
                PaymentKind::Refunded => (1, 1, 0),
                PaymentKind::Failed | PaymentKind::CancelledBeforeCharge => (0, 0, 0),
            };
            if (ledger.charges, ledger.refunds, ledger.net_charged_minor) != expected {
                findings.push(finding(
                    FindingKind::PaymentWithoutBalancedEntries,
                    format!(
                        "payment {:?} of {} has {} charges, {} refunds, {} net in the ledger",
                        payment.state,
                        payment.amount_minor,
                        ledger.charges,
                        ledger.refunds,
                        ledger.net_charged_minor
                    ),
                ));
            }
        }
    }
    if let (Some(order), Some(reservation)) = (&facts.order, &facts.reservation)
        && order.amount_minor.is_some()
        && matches!(
            reservation.state,
            ReservationKind::Held | ReservationKind::Committed
        )
        && reservation.priced
            != order
                .amount_minor
                .map(|minor| Money::from_minor(minor, order.currency))
    {
        findings.push(finding(
            FindingKind::OrderAmountDisagreesWithReservation,
            format!(
                "the order's total is {:?} {}, its reservation was priced at {:?}",
                order.amount_minor,
                order.currency.code(),
                reservation.priced.map(|priced| priced.to_string())
            ),
        ));
    }
    let reservation = facts.reservation.map(|reservation| reservation.state);
    match facts.order.as_ref().map(|order| order.status) {
        Some(OrderStatus::Confirmed) => {
            let captured =
                facts.payment.as_ref().map(|payment| payment.state) == Some(PaymentKind::Captured);
            let amount = facts
                .order
                .as_ref()
                .and_then(|order| order.amount_minor)
                .map(i128::from);
            if !captured || ledger.charges != 1 || Some(ledger.net_charged_minor) != amount {
                findings.push(finding(
                    FindingKind::ConfirmedWithoutCapturedPayment,
                    format!(
                        "confirmed with payment {:?} and {} net charged of {amount:?}",
                        facts.payment.as_ref().map(|p| p.state),
                        ledger.net_charged_minor
                    ),
                ));
            }
            match reservation {
                Some(ReservationKind::Committed) => {}
                Some(ReservationKind::Held) => findings.push(finding(
                    FindingKind::ReservationHeldForFinishedOrder,
                    "confirmed but its stock is still only reserved".to_owned(),
                )),
                other => findings.push(finding(
                    FindingKind::ConfirmedWithoutCommittedStock,
                    format!("confirmed but its reservation is {other:?}"),
                )),
            }
        }
        Some(OrderStatus::Cancelled(_)) => {
            if ledger.net_charged_minor != 0 {
                findings.push(finding(
                    FindingKind::CancelledWithNetCharge,
                    format!("cancelled with {} still charged", ledger.net_charged_minor),
                ));
            }
            match reservation {
                Some(ReservationKind::Held) => findings.push(finding(
                    FindingKind::CancelledWithHeldStock,
                    "cancelled but its stock is still reserved".to_owned(),
                )),
                Some(ReservationKind::Committed) => findings.push(finding(
                    FindingKind::CancelledWithCommittedStock,
                    "cancelled but its stock was sold".to_owned(),
                )),
                _ => {}
            }
        }
        Some(OrderStatus::Pending) => {}
        None => {
            match reservation {
                Some(ReservationKind::Held) => findings.push(finding(
                    FindingKind::ReservationHeldForFinishedOrder,
                    "stock is reserved for an order that does not exist".to_owned(),
                )),
                Some(ReservationKind::Committed) => findings.push(finding(
                    FindingKind::StockCommittedWithoutOrder,
                    "stock was sold for an order that does not exist".to_owned(),
                )),
                _ => {}
            }
            if let Some(payment) = &facts.payment
                && payment.state == PaymentKind::Captured
            {
                findings.push(finding(
                    FindingKind::PaymentWithoutOrder,
                    format!(
                        "{} captured for an order that does not exist",
                        payment.amount_minor
                    ),
                ));
            }
        }
    }
    findings
}

/// Judges one SKU: its reserved count against the units its held
/// reservations hold.
pub fn check_stock(
    sku: &str,
    on_hand: u64,
    reserved: u64,
    held_by_reservations: u64,
) -> Option<Finding> {
    (reserved != held_by_reservations || reserved > on_hand).then(|| {
        Finding::new(
            FindingKind::StockDisagreesWithReservations,
            vec![format!("sku:{sku}")],
            format!("{reserved} reserved of {on_hand} on hand, held reservations hold {held_by_reservations}"),
        )
    })
}

/// Judges one account: its balance against the sum of its ledger legs.
pub fn check_account(
    account: &str,
    balance_minor: i64,
    sum_of_legs_minor: i128,
) -> Option<Finding> {
    (i128::from(balance_minor) != sum_of_legs_minor).then(|| {
        Finding::new(
            FindingKind::AccountDisagreesWithEntries,
            vec![format!("account:{account}")],
            format!("balance {balance_minor}, entries sum to {sum_of_legs_minor}"),
        )
    })
}

/// Judges one entry by how much its legs fail to balance (per currency,
/// debits minus credits; zero when balanced). Readers that keep legs apart
/// from the hashed posting check the legs with this too.
pub fn check_entry_balance(
    sequence: u64,
    posting_id: &str,
    imbalance_minor: i128,
) -> Option<Finding> {
    (imbalance_minor != 0).then(|| {
        Finding::new(
            FindingKind::UnbalancedEntry,
            vec![format!("entry:{sequence}"), format!("posting:{posting_id}")],
            format!("debits and credits differ by {imbalance_minor}"),
        )
    })
}

/// Judges the rows an entry is stored as against its hashed posting: every
/// column a reader queries and every leg must be what the hash covers.
pub fn check_stored_entry(entry: &Entry, stored: &StoredEntry) -> Option<Finding> {
    stored.difference(&entry.posting).map(|difference| {
        Finding::new(
            FindingKind::EntryRowsDisagreeWithPosting,
            vec![
                format!("entry:{}", entry.sequence),
                format!("posting:{}", entry.posting.id),
            ],
            difference,
        )
    })
}

/// Judges the entry at a checkpoint: `stored` is the hash the ledger holds
/// now at `checkpoint.sequence` (`None`: no such entry). `source` names who
/// saw it (`checkpoint`, `verified watermark`).
pub fn check_checkpoint(
    checkpoint: Checkpoint,
    stored: Option<ChainHash>,
    source: &str,
) -> Option<Finding> {
    let detail = match stored {
        Some(hash) if hash == checkpoint.hash => return None,
        Some(hash) => format!(
            "entry {} has hash {}, the {source} says {}",
            checkpoint.sequence,
            hash.to_hex(),
            checkpoint.hash.to_hex()
        ),
        None => format!(
            "entry {} of the {source} ({}) is gone",
            checkpoint.sequence,
            checkpoint.hash.to_hex()
        ),
    };
    Some(Finding::new(
        FindingKind::ChainRewritten,
        vec![format!("entry:{}", checkpoint.sequence)],
        detail,
    ))
}

/// A digest of the rows of entries `1..=through`, the entries' own and their
/// legs: how many, and the sum of a hash of each row (the store computes it;
/// any inserted, deleted or changed row moves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowsDigest {
    /// The last entry covered.
    pub through: u64,
    /// Leg rows.
    pub count: u64,
    /// The sum of the rows' hashes.
    pub sum: i128,
}

/// Judges the rows of entries already verified (their columns, postings and
/// legs): the digest recorded when they were verified against the digest of
/// the same rows now.
pub fn check_verified_rows(recorded: RowsDigest, now: RowsDigest) -> Option<Finding> {
    (recorded != now).then(|| {
        Finding::new(
            FindingKind::EntryRowsDisagreeWithPosting,
            vec![format!("entries_through:{}", recorded.through)],
            format!(
                "the rows of entries 1 to {} changed after they were verified ({} rows then, {} now)",
                recorded.through, recorded.count, now.count
            ),
        )
    })
}

/// Judges one unpublished outbox row by its age.
pub fn check_outbox_row(
    service: Service,
    sequence: i64,
    created_at: Timestamp,
    now: Timestamp,
    settings: &Settings,
) -> Option<Finding> {
    let age_ms = now.ms_since(created_at);
    (age_ms > settings.outbox_age_max_ms).then(|| {
        Finding::new(
            FindingKind::OutboxUnpublished,
            vec![format!("outbox:{service}:{sequence}")],
            format!("unpublished for {age_ms} ms"),
        )
    })
}

/// Judges a dead-letter table by its size.
pub fn check_dead_letters(service: Service, count: u64) -> Option<Finding> {
    (count > 0).then(|| {
        Finding::new(
            FindingKind::DeadLettersPresent,
            vec![format!("dead_letters:{service}")],
            format!("{count} messages in the dead-letter table"),
        )
    })
}

/// Verifies the ledger's hash chain incrementally: feed entries in sequence
/// order; the watermark is the last entry verified, so the next pass starts
/// there instead of at the beginning.
///
/// Findings are levels, not edges: a break stops the pass (later entries are
/// not judged) but not the next one, which starts again at the watermark,
/// before the break, and so reports the break again for as long as it holds.
/// Call [`ChainVerifier::begin_pass`] at the start of each pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainVerifier {
    watermark: Option<(u64, ChainHash)>,
    broken: bool,
}

impl ChainVerifier {
    /// A verifier that resumes after the entry `sequence` whose hash is `hash`.
    pub fn resume_after(sequence: u64, hash: ChainHash) -> ChainVerifier {
        ChainVerifier {
            watermark: Some((sequence, hash)),
            broken: false,
        }
    }

    /// The last entry verified, if any.
    pub fn watermark(&self) -> Option<(u64, ChainHash)> {
        self.watermark
    }

    /// The last entry verified as a checkpoint: the next pass checks that
    /// the ledger still holds it (the chain did not change behind it).
    pub fn watermark_checkpoint(&self) -> Option<Checkpoint> {
        self.watermark
            .map(|(sequence, hash)| Checkpoint { sequence, hash })
    }

    /// Starts a pass from the watermark: a break found by the last pass is
    /// judged again.
    pub fn begin_pass(&mut self) {
        self.broken = false;
    }

    /// Checks the next entry as [`ChainVerifier::feed`] does, then the rows
    /// it is stored as (its columns and legs) against its hashed posting. An
    /// entry whose rows disagree is a break: the watermark stays before it.
    pub fn feed_stored(&mut self, entry: &Entry, stored: &StoredEntry) -> Option<Finding> {
        let before = self.watermark;
        if let Some(finding) = self.feed(entry) {
            return Some(finding);
        }
        if self.broken {
            return None;
        }
        let finding = check_stored_entry(entry, stored)?;
        self.watermark = before;
        self.broken = true;
        Some(finding)
    }

    /// Checks the next entry. After a break, later entries are not judged
    /// (the break is the finding; the watermark stays before it).
    pub fn feed(&mut self, entry: &Entry) -> Option<Finding> {
        if self.broken {
            return None;
        }
        if let Some(finding) = check_entry_balance(
            entry.sequence,
            &entry.posting.id.to_hex(),
            entry.posting.unbalanced_currency().map_or(0, |_| 1),
        ) {
            self.broken = true;
            return Some(finding);
        }
        let previous = self.watermark.map(|(sequence, hash)| Entry {
            sequence,
            hash,
            ..entry.clone()
        });
        let result = saldo_ledger::verify_chain(previous.as_ref(), std::iter::once(entry));
        let ids = vec![
            format!("entry:{}", entry.sequence),
            format!("posting:{}", entry.posting.id),
        ];
        match result {
            Ok(_) => {
                self.watermark = Some((entry.sequence, entry.hash));
                None
            }
            Err(ChainError::Unbalanced { sequence }) => {
                self.broken = true;
                Some(Finding::new(
                    FindingKind::UnbalancedEntry,
                    ids,
                    format!("entry {sequence} does not balance"),
                ))
            }
            Err(error) => {
                self.broken = true;
                Some(Finding::new(
                    FindingKind::ChainBroken,
                    ids,
                    error.to_string(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mutants_tests;

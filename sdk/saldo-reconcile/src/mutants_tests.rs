//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): the stable names reports, metrics and stores rely on, and
//! the exact edge of the stuck-saga rule. See `docs/testing.md`.

use rstest::rstest;
use saldo_domain::order::OrderStatus;
use saldo_types::{OrderId, Timestamp};

use crate::*;

const NOW: Timestamp = Timestamp::from_unix_ms(10_000_000);

#[test]
fn every_finding_kind_has_its_stable_name() {
    // Proves the names alerts and metric labels are keyed by: one per kind,
    // as documented, in `ALL`'s order.
    let names = FindingKind::ALL.map(FindingKind::name);
    assert_eq!(
        names,
        [
            "confirmed_without_captured_payment",
            "payment_without_balanced_entries",
            "entries_without_payment",
            "unbalanced_entry",
            "chain_broken",
            "entry_rows_disagree_with_posting",
            "chain_rewritten",
            "double_charge",
            "cancelled_with_net_charge",
            "cancelled_with_held_stock",
            "stock_disagrees_with_reservations",
            "reservation_held_for_finished_order",
            "confirmed_without_committed_stock",
            "cancelled_with_committed_stock",
            "payment_without_order",
            "stock_committed_without_order",
            "order_amount_disagrees_with_reservation",
            "saga_stuck",
            "account_disagrees_with_entries",
            "outbox_unpublished",
            "dead_letters_present",
        ]
    );
}

#[test]
fn a_finding_identity_is_its_kind_and_ids() {
    // Proves "have I alerted on this before?" keys on the kind's name and
    // every id, so the same failure keeps one identity and others differ.
    let finding = check_checkpoint(
        saldo_ledger::Checkpoint {
            sequence: 3,
            hash: saldo_ledger::ChainHash([1; 32]),
        },
        None,
        "checkpoint",
    )
    .expect("a gone entry is a finding");
    assert_eq!(finding.identity(), "chain_rewritten|entry:3");
    let entry = check_entry_balance(4, "ab", 1).expect("unbalanced");
    assert_eq!(entry.identity(), "unbalanced_entry|entry:4,posting:ab");
}

#[rstest]
#[case("captured", Some(PaymentKind::Captured))]
#[case("failed", Some(PaymentKind::Failed))]
#[case("refunded", Some(PaymentKind::Refunded))]
#[case("cancelled_before_charge", Some(PaymentKind::CancelledBeforeCharge))]
#[case("Captured", None)]
#[case("", None)]
fn payment_states_are_read_from_their_column_names(
    #[case] name: &str,
    #[case] expected: Option<PaymentKind>,
) {
    // Proves each `payments.state` value a store writes reads back as its
    // kind, and nothing else is taken for one.
    assert_eq!(PaymentKind::from_name(name), expected);
}

#[rstest]
#[case("held", Some(ReservationKind::Held))]
#[case("committed", Some(ReservationKind::Committed))]
#[case("released", Some(ReservationKind::Released))]
#[case("rejected", Some(ReservationKind::Rejected))]
#[case("cancelled", Some(ReservationKind::Cancelled))]
#[case("held ", None)]
#[case("", None)]
fn reservation_states_are_read_from_their_column_names(
    #[case] name: &str,
    #[case] expected: Option<ReservationKind>,
) {
    // Proves each `reservations.state` value a store writes reads back as
    // its kind, and nothing else is taken for one.
    assert_eq!(ReservationKind::from_name(name), expected);
}

#[rstest]
#[case::exactly_the_grace_period_past(60_000, vec![])]
#[case::one_ms_more(60_001, vec![FindingKind::SagaStuck])]
fn a_saga_is_stuck_only_once_more_than_the_grace_period_past_its_deadline(
    #[case] past_deadline_ms: u64,
    #[case] expected: Vec<FindingKind>,
) {
    // Proves the grace period is inclusive: a pending order exactly that
    // long past its deadline is still in flight.
    let settings = Settings {
        grace_ms: 60_000,
        outbox_age_max_ms: 60_000,
    };
    let deadline = Timestamp::from_unix_ms(NOW.unix_ms() - past_deadline_ms);
    let facts = OrderFacts {
        order_id: OrderId::new("o1").expect("valid"),
        order: Some(OrderFact {
            status: OrderStatus::Pending,
            amount_minor: Some(500),
            currency: saldo_types::Currency::EUR,
            created_at: Timestamp::from_unix_ms(deadline.unix_ms() - 10_000),
            deadline: Some(deadline),
        }),
        payment: None,
        reservation: None,
        ledger: LedgerFact::default(),
    };
    let kinds: Vec<FindingKind> = check_order(&facts, NOW, &settings)
        .into_iter()
        .map(|finding| finding.kind)
        .collect();
    assert_eq!(kinds, expected);
}

fn order_facts(
    payment: Option<PaymentKind>,
    status: OrderStatus,
    ledger: (u32, u32, i128),
) -> OrderFacts {
    OrderFacts {
        order_id: OrderId::new("o1").expect("valid"),
        order: Some(OrderFact {
            status,
            amount_minor: Some(500),
            currency: saldo_types::Currency::EUR,
            created_at: Timestamp::from_unix_ms(1_000_000),
            deadline: None,
        }),
        payment: payment.map(|state| PaymentFact {
            state,
            amount_minor: 500,
        }),
        reservation: Some(ReservationFact {
            state: if status == OrderStatus::Confirmed {
                ReservationKind::Committed
            } else {
                ReservationKind::Released
            },
            priced: Some(saldo_types::Money::from_minor(
                500,
                saldo_types::Currency::EUR,
            )),
        }),
        ledger: LedgerFact {
            charges: ledger.0,
            refunds: ledger.1,
            net_charged_minor: ledger.2,
            largest_charge_minor: 500,
        },
    }
}

const CONFIRMED: OrderStatus = OrderStatus::Confirmed;
const CANCELLED: OrderStatus =
    OrderStatus::Cancelled(saldo_domain::order::CancelReason::InsufficientFunds);

#[rstest]
#[case::one_charge_taking_more_than_its_largest(order_facts(Some(PaymentKind::Captured), CONFIRMED, (1, 0, 1_000)), vec![FindingKind::DoubleCharge, FindingKind::PaymentWithoutBalancedEntries, FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::two_charges_netting_one(order_facts(Some(PaymentKind::Refunded), CANCELLED, (2, 1, 500)), vec![FindingKind::DoubleCharge, FindingKind::PaymentWithoutBalancedEntries, FindingKind::CancelledWithNetCharge])]
#[case::a_refund_entry_without_payment(order_facts(None, CANCELLED, (0, 1, 0)), vec![FindingKind::EntriesWithoutPayment])]
#[case::confirmed_charged_the_wrong_amount(order_facts(Some(PaymentKind::Captured), CONFIRMED, (1, 0, 400)), vec![FindingKind::PaymentWithoutBalancedEntries, FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::confirmed_charged_but_payment_failed(order_facts(Some(PaymentKind::Failed), CONFIRMED, (1, 0, 500)), vec![FindingKind::PaymentWithoutBalancedEntries, FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::confirmed_and_clean(order_facts(Some(PaymentKind::Captured), CONFIRMED, (1, 0, 500)), vec![])]
fn each_condition_of_a_money_rule_fires_on_its_own(
    #[case] facts: OrderFacts,
    #[case] expected: Vec<FindingKind>,
) {
    // Proves the double-charge, entries-without-payment and confirmed-order
    // rules fire when any one of their conditions holds, not only all.
    let kinds: Vec<FindingKind> = check_order(&facts, NOW, &Settings::default())
        .into_iter()
        .map(|finding| finding.kind)
        .collect();
    assert_eq!(kinds, expected);
}

#[rstest]
#[case::fresh(0, vec![])]
#[case::exactly_the_grace_period_old(60_000, vec![])]
#[case::one_ms_older(60_001, vec![FindingKind::PaymentWithoutBalancedEntries])]
fn a_pending_order_within_the_grace_period_is_in_flight(
    #[case] age_ms: u64,
    #[case] expected: Vec<FindingKind>,
) {
    // Proves an unfinished order up to the grace period old yields nothing,
    // even with a captured payment whose entries are not written yet, and
    // is judged once older.
    let settings = Settings {
        grace_ms: 60_000,
        outbox_age_max_ms: 60_000,
    };
    let mut facts = order_facts(Some(PaymentKind::Captured), OrderStatus::Pending, (0, 0, 0));
    if let Some(order) = facts.order.as_mut() {
        order.created_at = Timestamp::from_unix_ms(NOW.unix_ms() - age_ms);
    }
    let kinds: Vec<FindingKind> = check_order(&facts, NOW, &settings)
        .into_iter()
        .map(|finding| finding.kind)
        .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn limits_of_stock_and_outbox_rules_are_inclusive() {
    // Proves a SKU reserving exactly its stock and an outbox row exactly the
    // allowed age are not findings.
    assert_eq!(check_stock("apple", 3, 3, 3), None);
    let settings = Settings::default();
    let created_at = Timestamp::from_unix_ms(NOW.unix_ms() - settings.outbox_age_max_ms);
    assert_eq!(
        check_outbox_row(
            saldo_domain::messages::Service::Order,
            1,
            created_at,
            NOW,
            &settings
        ),
        None
    );
}

#[test]
fn the_watermark_is_the_last_verified_entry_as_a_checkpoint() {
    // Proves the next pass is handed the entry it verified last, so it can
    // check that the ledger still holds it.
    let eur = saldo_types::Currency::EUR;
    let posting = saldo_ledger::Posting::transfer(
        saldo_types::Id128::derive("test", &[b"top-up"]),
        saldo_ledger::AccountId::Funding { currency: eur },
        saldo_ledger::AccountId::MerchantRevenue { currency: eur },
        saldo_types::Money::from_minor(500, eur),
        saldo_ledger::Memo::default(),
    );
    let entry = saldo_ledger::Entry::seal(None, posting, NOW);
    let mut verifier = ChainVerifier::default();
    assert_eq!(verifier.watermark_checkpoint(), None);
    assert_eq!(verifier.feed(&entry), None);
    assert_eq!(verifier.watermark_checkpoint(), Some(entry.checkpoint()));
}

/// A store whose ledger agrees with its accounts, with planted failures: a
/// captured payment of 300 whose order does not exist and whose entries
/// (a charge of 400, a refund of 100) do not match it, and two held
/// reservations for orders that do not exist. An entry of another purpose
/// for o2 is neither a charge nor a refund and is no finding.
fn planted_store() -> saldo_domain::MemoryStore {
    use saldo_domain::batch::Commit;
    use saldo_domain::decision::{Row, Write};
    use saldo_domain::inventory::{ReservationRow, ReservationState, StockRow};
    use saldo_domain::messages::OrderLine;
    use saldo_domain::payment::{PaymentRow, PaymentState};
    use saldo_ledger::{Account, AccountId, Memo, Posting};
    use saldo_types::{Currency, CustomerId, Id128, Money, Sku};

    let eur = Currency::EUR;
    let money = |minor| Money::from_minor(minor, eur);
    let alice = AccountId::wallet(CustomerId::new("alice").expect("valid"), eur);
    let revenue = AccountId::MerchantRevenue { currency: eur };
    let funding = AccountId::Funding { currency: eur };
    let order = |name: &str| OrderId::new(name).expect("valid");
    let memo = |purpose: &str, order_id: Option<&str>| Memo {
        purpose: purpose.to_owned(),
        order_id: order_id.map(order),
        ..Memo::default()
    };
    let posting = |name: &str, from: &AccountId, to: &AccountId, minor, memo| {
        Posting::transfer(
            Id128::derive("test", &[name.as_bytes()]),
            from.clone(),
            to.clone(),
            money(minor),
            memo,
        )
    };
    let account = |id: &AccountId, balance| Account {
        balance: money(balance),
        ..Account::open(id.clone())
    };
    let apple = |quantity| OrderLine {
        sku: Sku::new("apple").expect("valid"),
        quantity,
    };
    let reservation = |name: &str, quantity, state| ReservationRow {
        order_id: order(name),
        lines: vec![apple(quantity)],
        amount: None,
        state,
        updated_at: NOW,
    };
    let rows = vec![
        Row::Account(account(&funding, -1_000)),
        Row::Account(account(&alice, 500)),
        Row::Account(account(&revenue, 500)),
        Row::Stock(StockRow {
            sku: Sku::new("apple").expect("valid"),
            on_hand: 10,
            reserved: 5,
            unit_price: money(100),
        }),
        Row::Reservation(reservation("o3", 2, ReservationState::Held)),
        Row::Reservation(reservation("o4", 3, ReservationState::Held)),
        Row::Reservation(reservation("o5", 4, ReservationState::Released)),
        Row::Payment(PaymentRow {
            order_id: order("o1"),
            customer: CustomerId::new("alice").expect("valid"),
            amount: money(300),
            fingerprint: saldo_idempotency::Fingerprint::of_parts(&[b"o1"]),
            state: PaymentState::Captured {
                charge_id: Id128::derive("test", &[b"charge"]),
            },
            updated_at: NOW,
        }),
    ];
    let commit = Commit {
        writes: rows
            .into_iter()
            .map(|row| Write { expected: 0, row })
            .collect(),
        postings: vec![
            posting("top-up", &funding, &alice, 1_000, memo("top_up", None)),
            posting("charge", &alice, &revenue, 400, memo("charge", Some("o1"))),
            posting("refund", &revenue, &alice, 100, memo("refund", Some("o1"))),
            posting("gift", &alice, &revenue, 200, memo("gift", Some("o2"))),
        ],
        ..Commit::default()
    };
    let mut store = saldo_domain::MemoryStore::new();
    store
        .commit(commit, NOW)
        .expect("a fresh store takes every row");
    store
}

#[test]
fn reconciling_the_memory_store_finds_exactly_the_planted_failures() {
    // Proves the in-memory reader aggregates the store into the right facts:
    // legs summed with their sign per account, held units per SKU, charges,
    // refunds and net money taken per order; only planted failures show.
    let findings = memory::reconcile(&planted_store(), NOW, &Settings::default());
    let found: Vec<(FindingKind, Vec<String>)> = findings
        .iter()
        .map(|finding| (finding.kind, finding.ids.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                FindingKind::PaymentWithoutBalancedEntries,
                vec!["order:o1".to_owned()]
            ),
            (
                FindingKind::ReservationHeldForFinishedOrder,
                vec!["order:o3".to_owned()]
            ),
            (
                FindingKind::ReservationHeldForFinishedOrder,
                vec!["order:o4".to_owned()]
            ),
            (
                FindingKind::PaymentWithoutOrder,
                vec!["order:o1".to_owned()]
            ),
        ]
    );
    let o1 = findings
        .iter()
        .find(|finding| finding.kind == FindingKind::PaymentWithoutBalancedEntries)
        .expect("found above");
    assert_eq!(
        o1.detail,
        "payment Captured of 300 has 1 charges, 1 refunds, 300 net in the ledger"
    );
}

//! Each rule, on hand-built facts.

use rstest::rstest;
use saldo_domain::inventory::ReservationState;
use saldo_domain::messages::{PaymentFailure, Service};
use saldo_domain::order::{CancelReason, OrderStatus};
use saldo_domain::payment::PaymentState;
use saldo_ledger::{AccountId, ChainHash, Entry, Leg, Memo, Posting, Side};
use saldo_types::{Currency, Id128, Money, OrderId, Timestamp};

use crate::*;

const NOW: Timestamp = Timestamp::from_unix_ms(10_000_000);
const OLD: Timestamp = Timestamp::from_unix_ms(1_000_000);

fn id() -> Id128 {
    Id128::derive("test", &[b"x"])
}

fn facts(
    order: Option<(OrderStatus, Timestamp)>,
    payment: Option<PaymentState>,
    reservation: Option<ReservationState>,
    ledger: (u32, u32, i128),
) -> OrderFacts {
    OrderFacts {
        order_id: OrderId::new("o1").expect("valid"),
        order: order.map(|(status, created_at)| OrderFact {
            status,
            amount_minor: Some(500),
            currency: Currency::EUR,
            created_at,
            deadline: (status == OrderStatus::Pending).then_some(created_at.plus_ms(10_000)),
        }),
        payment: payment.map(|state| PaymentFact {
            state: PaymentKind::of(&state),
            amount_minor: 500,
        }),
        reservation: reservation.as_ref().map(|state| ReservationFact {
            state: ReservationKind::of(state),
            priced: Some(Money::from_minor(500, Currency::EUR)),
        }),
        ledger: LedgerFact {
            charges: ledger.0,
            refunds: ledger.1,
            net_charged_minor: ledger.2,
            largest_charge_minor: if ledger.0 > 0 { 500 } else { 0 },
        },
    }
}

fn captured() -> Option<PaymentState> {
    Some(PaymentState::Captured { charge_id: id() })
}

fn refunded() -> Option<PaymentState> {
    Some(PaymentState::Refunded {
        charge_id: id(),
        refund_id: id(),
    })
}

/// `facts` with its reservation priced at `priced` (the order's total is 500 EUR).
fn priced(mut facts: OrderFacts, priced: Option<Money>) -> OrderFacts {
    if let Some(reservation) = facts.reservation.as_mut() {
        reservation.priced = priced;
    }
    facts
}

const CONFIRMED: OrderStatus = OrderStatus::Confirmed;
const CANCELLED: OrderStatus = OrderStatus::Cancelled(CancelReason::InsufficientFunds);

#[rstest]
#[case::clean_confirmed(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Committed), (1, 0, 500)), vec![])]
#[case::clean_cancelled_after_refund(facts(Some((CANCELLED, OLD)), refunded(), Some(ReservationState::Released), (1, 1, 0)), vec![])]
#[case::clean_cancelled_declined(facts(Some((CANCELLED, OLD)), Some(PaymentState::Failed { reason: PaymentFailure::InsufficientFunds }), Some(ReservationState::Released), (0, 0, 0)), vec![])]
#[case::fresh_pending_is_in_flight(facts(Some((OrderStatus::Pending, NOW)), None, Some(ReservationState::Held), (0, 0, 0)), vec![])]
#[case::confirmed_without_payment(facts(Some((CONFIRMED, OLD)), None, Some(ReservationState::Committed), (0, 0, 0)), vec![FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::captured_without_entries(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Committed), (0, 0, 0)), vec![FindingKind::PaymentWithoutBalancedEntries, FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::entries_without_payment(facts(Some((CANCELLED, OLD)), None, Some(ReservationState::Released), (1, 1, 0)), vec![FindingKind::EntriesWithoutPayment])]
#[case::double_charge(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Committed), (2, 0, 1_000)), vec![FindingKind::DoubleCharge, FindingKind::PaymentWithoutBalancedEntries, FindingKind::ConfirmedWithoutCapturedPayment])]
#[case::cancelled_with_charge(facts(Some((CANCELLED, OLD)), captured(), Some(ReservationState::Released), (1, 0, 500)), vec![FindingKind::CancelledWithNetCharge])]
#[case::cancelled_with_held_stock(facts(Some((CANCELLED, OLD)), refunded(), Some(ReservationState::Held), (1, 1, 0)), vec![FindingKind::CancelledWithHeldStock])]
#[case::confirmed_with_held_stock(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Held), (1, 0, 500)), vec![FindingKind::ReservationHeldForFinishedOrder])]
#[case::held_for_no_order(facts(None, None, Some(ReservationState::Held), (0, 0, 0)), vec![FindingKind::ReservationHeldForFinishedOrder])]
#[case::stuck_saga(facts(Some((OrderStatus::Pending, OLD)), None, Some(ReservationState::Held), (0, 0, 0)), vec![FindingKind::SagaStuck])]
#[case::confirmed_with_released_stock(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Released), (1, 0, 500)), vec![FindingKind::ConfirmedWithoutCommittedStock])]
#[case::confirmed_without_reservation(facts(Some((CONFIRMED, OLD)), captured(), None, (1, 0, 500)), vec![FindingKind::ConfirmedWithoutCommittedStock])]
#[case::cancelled_with_committed_stock(facts(Some((CANCELLED, OLD)), refunded(), Some(ReservationState::Committed), (1, 1, 0)), vec![FindingKind::CancelledWithCommittedStock])]
#[case::captured_for_no_order(facts(None, captured(), None, (1, 0, 500)), vec![FindingKind::PaymentWithoutOrder])]
#[case::refunded_for_no_order(facts(None, refunded(), None, (1, 1, 0)), vec![])]
#[case::committed_for_no_order(facts(None, None, Some(ReservationState::Committed), (0, 0, 0)), vec![FindingKind::StockCommittedWithoutOrder])]
#[case::order_priced_above_its_reservation(priced(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Committed), (1, 0, 500)), Some(Money::from_minor(400, Currency::EUR))), vec![FindingKind::OrderAmountDisagreesWithReservation])]
#[case::reservation_priced_in_another_currency(priced(facts(Some((CONFIRMED, OLD)), captured(), Some(ReservationState::Committed), (1, 0, 500)), Some(Money::from_minor(500, Currency::from_code("USD").expect("a currency")))), vec![FindingKind::OrderAmountDisagreesWithReservation])]
#[case::held_reservation_never_priced(priced(facts(Some((OrderStatus::Pending, OLD)), None, Some(ReservationState::Held), (0, 0, 0)), None), vec![FindingKind::SagaStuck, FindingKind::OrderAmountDisagreesWithReservation])]
#[case::released_reservation_is_not_compared(priced(facts(Some((CANCELLED, OLD)), refunded(), Some(ReservationState::Released), (1, 1, 0)), Some(Money::from_minor(1, Currency::EUR))), vec![])]
fn orders_are_judged_by_their_facts(#[case] facts: OrderFacts, #[case] expected: Vec<FindingKind>) {
    // Proves each per-order rule fires on exactly its failure, with the order's id.
    let settings = Settings {
        grace_ms: 60_000,
        outbox_age_max_ms: 60_000,
    };
    let findings = check_order(&facts, NOW, &settings);
    assert_eq!(
        findings
            .iter()
            .map(|finding| finding.kind)
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        findings
            .iter()
            .all(|finding| finding.ids == vec!["order:o1".to_owned()])
    );
}

#[rstest]
#[case(10, 3, 3, None)]
#[case(10, 3, 2, Some(FindingKind::StockDisagreesWithReservations))]
#[case(2, 3, 3, Some(FindingKind::StockDisagreesWithReservations))]
fn stock_is_judged_against_held_reservations(
    #[case] on_hand: u64,
    #[case] reserved: u64,
    #[case] held: u64,
    #[case] expected: Option<FindingKind>,
) {
    // Proves a SKU is reported exactly when its count and its reservations disagree.
    assert_eq!(
        check_stock("apple", on_hand, reserved, held).map(|finding| finding.kind),
        expected
    );
}

#[test]
fn accounts_outbox_and_dead_letters_are_judged() {
    // Proves the remaining single-fact rules fire only on their failure.
    assert_eq!(check_account("wallet:alice:EUR", 100, 100), None);
    assert_eq!(
        check_account("wallet:alice:EUR", 100, 90).map(|f| f.ids),
        Some(vec!["account:wallet:alice:EUR".to_owned()])
    );
    let settings = Settings::default();
    assert_eq!(
        check_outbox_row(Service::Order, 7, NOW, NOW, &settings),
        None
    );
    assert_eq!(
        check_outbox_row(Service::Order, 7, OLD, NOW, &settings).map(|f| f.ids),
        Some(vec!["outbox:order:7".to_owned()])
    );
    assert_eq!(check_dead_letters(Service::Payment, 0), None);
    assert_eq!(
        check_dead_letters(Service::Payment, 2).map(|f| (f.kind, f.severity)),
        Some((FindingKind::DeadLettersPresent, Severity::Warning))
    );
}

fn sealed_chain() -> Vec<Entry> {
    let eur = |minor| Money::from_minor(minor, Currency::EUR);
    let wallet = AccountId::wallet(
        saldo_types::CustomerId::new("alice").expect("valid"),
        Currency::EUR,
    );
    let mut entries: Vec<Entry> = Vec::new();
    for index in 0..4u8 {
        let posting = Posting::transfer(
            Id128::derive("p", &[&[index]]),
            AccountId::Funding {
                currency: Currency::EUR,
            },
            wallet.clone(),
            eur(100),
            Memo::default(),
        );
        let entry = Entry::seal(entries.last(), posting, NOW);
        entries.push(entry);
    }
    entries
}

#[test]
fn the_chain_is_verified_incrementally_from_a_watermark() {
    // Proves the verifier resumes after its watermark and reports a changed
    // or unbalanced entry once, at that entry.
    let entries = sealed_chain();
    let mut verifier = ChainVerifier::default();
    assert!(
        entries[..2]
            .iter()
            .all(|entry| verifier.feed(entry).is_none())
    );
    let (sequence, hash) = verifier.watermark().expect("advanced");
    assert_eq!(sequence, 2);
    let mut resumed = ChainVerifier::resume_after(sequence, hash);
    assert!(
        entries[2..]
            .iter()
            .all(|entry| resumed.feed(entry).is_none())
    );

    let mut tampered = entries.clone();
    tampered[2].posting.legs[0].amount = Money::from_minor(1, Currency::EUR);
    tampered[2].posting.legs[1].amount = Money::from_minor(1, Currency::EUR);
    let mut verifier = ChainVerifier::default();
    let found: Vec<Finding> = tampered
        .iter()
        .filter_map(|entry| verifier.feed(entry))
        .collect();
    assert_eq!(
        found.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FindingKind::ChainBroken]
    );
    assert_eq!(found[0].ids[0], "entry:3");
    assert_eq!(
        verifier.watermark().map(|(sequence, _)| sequence),
        Some(2),
        "the watermark stays before the break"
    );

    let mut unbalanced = entries.clone();
    unbalanced[1].posting.legs.push(Leg {
        account: AccountId::MerchantRevenue {
            currency: Currency::EUR,
        },
        side: Side::Credit,
        amount: Money::from_minor(5, Currency::EUR),
    });
    let mut verifier = ChainVerifier::resume_after(1, entries[0].hash);
    assert_eq!(
        verifier.feed(&unbalanced[1]).map(|f| f.kind),
        Some(FindingKind::UnbalancedEntry)
    );
    let _ = ChainHash::GENESIS;
}

#[test]
fn stored_rows_checkpoints_and_verified_legs_are_judged() {
    // Proves an entry's rows must be what its hash covers (each column and
    // leg), a checkpoint must match the ledger's hash at its sequence, and
    // the legs of verified entries must not change.
    let eur = Currency::EUR;
    let posting = Posting::transfer(
        id(),
        AccountId::Funding { currency: eur },
        AccountId::MerchantRevenue { currency: eur },
        Money::from_minor(500, eur),
        Memo {
            purpose: "top_up".to_owned(),
            ..Memo::default()
        },
    );
    let entry = Entry::seal(None, posting, OLD);
    let stored = saldo_ledger::StoredEntry::of(&entry.posting);
    assert_eq!(check_stored_entry(&entry, &stored), None);
    let mut verifier = ChainVerifier::default();
    assert_eq!(verifier.feed_stored(&entry, &stored), None);
    assert_eq!(verifier.watermark(), Some((1, entry.hash)));
    let tampered: [fn(&mut saldo_ledger::StoredEntry); 5] = [
        |rows| rows.purpose = "refund".to_owned(),
        |rows| rows.order_id = Some("o1".to_owned()),
        |rows| rows.legs[1].amount_minor += 1,
        |rows| rows.legs[0].account = "wallet:mallory:EUR".to_owned(),
        |rows| {
            let mut extra = rows.legs[1].clone();
            extra.leg = 2;
            rows.legs.push(extra);
        },
    ];
    for tamper in tampered {
        let mut rows = stored.clone();
        tamper(&mut rows);
        let finding = check_stored_entry(&entry, &rows).expect("found");
        assert_eq!(finding.kind, FindingKind::EntryRowsDisagreeWithPosting);
        assert_eq!(finding.ids[0], "entry:1");
        let mut verifier = ChainVerifier::default();
        assert!(verifier.feed_stored(&entry, &rows).is_some());
        assert_eq!(verifier.watermark(), None, "the watermark stays before it");
        verifier.begin_pass();
        assert!(
            verifier.feed_stored(&entry, &rows).is_some(),
            "and it is found again"
        );
    }
    let checkpoint = entry.checkpoint();
    assert_eq!(
        check_checkpoint(checkpoint, Some(entry.hash), "checkpoint"),
        None
    );
    assert_eq!(
        check_checkpoint(checkpoint, Some(ChainHash::GENESIS), "checkpoint").map(|f| f.kind),
        Some(FindingKind::ChainRewritten)
    );
    assert_eq!(
        check_checkpoint(checkpoint, None, "checkpoint").map(|f| f.ids),
        Some(vec!["entry:1".to_owned()])
    );
    assert_eq!("1:zz".parse::<saldo_ledger::Checkpoint>().ok(), None);
    assert_eq!("0:".parse::<saldo_ledger::Checkpoint>().ok(), None);
    assert_eq!(checkpoint.to_string().parse(), Ok(checkpoint));
    let digest = RowsDigest {
        through: 4,
        count: 8,
        sum: 12,
    };
    assert_eq!(check_verified_rows(digest, digest), None);
    assert_eq!(
        check_verified_rows(digest, RowsDigest { count: 9, ..digest }).map(|f| f.kind),
        Some(FindingKind::EntryRowsDisagreeWithPosting)
    );
}

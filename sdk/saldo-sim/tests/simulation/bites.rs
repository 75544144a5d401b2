//! Proof that the simulator bites: each deliberately broken variant of a
//! handler, which lives only here, is caught within a bounded number of seeds.

use saldo_domain::batch::Commit;
use saldo_domain::decision::{Decided, Row, Snapshot};
use saldo_domain::messages::{Envelope, Payload, Service};
use saldo_domain::payment::PaymentState;
use saldo_domain::{ConsumeError, MessageOutcome, Rules, decide_message};
use saldo_ledger::{AccountId, Book, Memo, Posting};
use saldo_sim::{Handlers, Profile, SimConfig, Simulation};
use saldo_types::{Id128, Timestamp};

/// A broken variant must be caught within this many seeds.
const SEEDS_MAX: u64 = 200;

/// Runs seeds until one breaks an invariant; returns the invariant's name.
fn first_violation(handlers: Handlers, profile: Profile) -> Option<(u64, &'static str)> {
    let caught = (0..SEEDS_MAX).find_map(|seed| {
        let report = Simulation::new(SimConfig::new(seed, 20, profile), handlers, false).run();
        report
            .violation
            .map(|violation| (seed, violation.violation.invariant))
    });
    println!("caught: {caught:?}");
    caught
}

/// A payment consumer without dedupe: no inbox, no look at the payment row,
/// a posting id taken from the message instead of the order.
fn payment_without_dedupe(
    rules: &Rules,
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    if consumer != Service::Payment || !matches!(envelope.payload, Payload::ChargePayment { .. }) {
        return decide_message(rules, consumer, snapshot, envelope, now);
    }
    let mut forgetful = snapshot.clone();
    forgetful.inbox = None;
    let payment_version = snapshot.payment(&envelope.order_id).0;
    forgetful
        .rows
        .remove(&saldo_domain::decision::RowKey::Payment(
            envelope.order_id.clone(),
        ));
    let mut decided = decide_message(rules, consumer, &forgetful, envelope, now)?;
    decided.decision.inbox = None;
    for write in &mut decided.decision.writes {
        if let Row::Payment(_) = write.row {
            write.expected = payment_version;
        }
    }
    for posting in &mut decided.decision.postings {
        // A fresh id per handling, as a handler that mints random ids would.
        posting.id = Id128::derive(
            "naive",
            &[
                envelope.message_id.as_bytes(),
                &payment_version.to_be_bytes(),
            ],
        );
    }
    Ok(decided)
}

/// An inventory consumer that answers StockReleased without releasing.
fn release_skipped(
    rules: &Rules,
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    let mut decided = decide_message(rules, consumer, snapshot, envelope, now)?;
    if matches!(envelope.payload, Payload::ReleaseStock { .. }) {
        decided.decision.writes.clear();
    }
    Ok(decided)
}

/// An inventory consumer that reserves without checking availability.
fn stock_check_removed(
    rules: &Rules,
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    const PLENTY: u64 = 1_000_000;
    if !matches!(envelope.payload, Payload::ReserveStock { .. }) {
        return decide_message(rules, consumer, snapshot, envelope, now);
    }
    let mut blind = snapshot.clone();
    for versioned in blind.rows.values_mut() {
        if let Row::Stock(row) = &mut versioned.value {
            row.on_hand += PLENTY;
        }
    }
    let mut decided = decide_message(rules, consumer, &blind, envelope, now)?;
    for write in &mut decided.decision.writes {
        if let Row::Stock(row) = &mut write.row {
            row.on_hand -= PLENTY;
        }
    }
    Ok(decided)
}

/// A payment consumer that refunds every refund command, even for a
/// payment already refunded, and does not consult the inbox.
fn refund_twice(
    rules: &Rules,
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    let Payload::RefundPayment { customer, amount } = &envelope.payload else {
        return decide_message(rules, consumer, snapshot, envelope, now);
    };
    let refunded = matches!(
        snapshot.payment(&envelope.order_id).1.map(|row| row.state),
        Some(PaymentState::Refunded { .. })
    );
    let mut forgetful = snapshot.clone();
    forgetful.inbox = None;
    let mut decided = decide_message(rules, consumer, &forgetful, envelope, now)?;
    decided.decision.inbox = None;
    if refunded {
        let mut book = Book::from_parts(snapshot.accounts().cloned(), [], []);
        let wallet = AccountId::wallet(customer.clone(), amount.currency());
        let revenue = AccountId::MerchantRevenue {
            currency: amount.currency(),
        };
        let memo = Memo {
            purpose: "refund".to_owned(),
            order_id: Some(envelope.order_id.clone()),
            ..Memo::default()
        };
        let again = Posting::transfer(
            Id128::derive("refund-again", &[envelope.message_id.as_bytes()]),
            revenue,
            wallet,
            *amount,
            memo,
        );
        if book.post(again).is_ok() {
            let changes = book.take_changes();
            for account in changes.accounts {
                let version = snapshot.account(&account.id).0;
                decided.decision.write(version, Row::Account(account));
            }
            decided.decision.postings.extend(changes.postings);
        }
    }
    Ok(decided)
}

/// Writes the outbox in its own transaction, before the business change.
fn outbox_outside_transaction(mut commit: Commit) -> Vec<Commit> {
    let outbox = Commit {
        outbox: std::mem::take(&mut commit.outbox),
        ..Commit::default()
    };
    vec![outbox, commit]
}

fn broken(decide_message: saldo_sim::sim::DecideMessage) -> Handlers {
    Handlers {
        decide_message,
        ..Handlers::REAL
    }
}

#[test]
fn inbox_dedupe_removed_is_caught() {
    // Proves a payment consumer without dedupe is caught charging an order twice.
    let caught = first_violation(broken(payment_without_dedupe), Profile::Chaos);
    assert!(
        matches!(caught, Some((_, "no_double_charge"))),
        "{caught:?}"
    );
}

#[test]
fn a_skipped_compensation_is_caught() {
    // Proves a release that does not release leaves held stock that is caught.
    let caught = first_violation(broken(release_skipped), Profile::None);
    assert!(
        matches!(
            caught,
            Some((
                _,
                "no_held_stock_at_rest" | "reserved_equals_open_reservations"
            ))
        ),
        "{caught:?}"
    );
}

#[test]
fn the_outbox_written_outside_the_transaction_is_caught() {
    // Proves a message committed apart from its change is caught once a crash
    // separates the two.
    let handlers = Handlers {
        split_commit: outbox_outside_transaction,
        ..Handlers::REAL
    };
    let caught = first_violation(handlers, Profile::Heavy);
    assert!(
        matches!(
            caught,
            Some((
                _,
                "nothing_dead_lettered" | "no_held_stock_at_rest" | "every_order_terminal"
            ))
        ),
        "{caught:?}"
    );
}

#[test]
fn a_removed_stock_check_is_caught() {
    // Proves reserving beyond what is on hand is caught.
    let caught = first_violation(broken(stock_check_removed), Profile::None);
    assert!(
        matches!(caught, Some((_, "stock_never_negative"))),
        "{caught:?}"
    );
}

#[test]
fn a_refund_issued_twice_is_caught() {
    // Proves a second refund of the same charge is caught.
    let caught = first_violation(broken(refund_twice), Profile::Chaos);
    assert!(
        matches!(
            caught,
            Some((_, "no_double_charge" | "wallet_never_negative"))
        ),
        "{caught:?}"
    );
}

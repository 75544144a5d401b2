//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): the inventory and payment rules at their edges, the inbox
//! fingerprint, trace context, and what the store and a batch hand back to
//! the hosts that read them. See `docs/testing.md`.

use std::hash::Hasher;

use rstest::rstest;
use saldo_idempotency::{Fingerprint, IdempotencyRecord, Namespace, ScopedKey};
use saldo_ledger::{AccountId, Posting};
use saldo_types::{Currency, Id128, Money, OrderId};
use serde_json::json;

use crate::batch::{Batch, BatchReadSet, Commit, Increment};
use crate::decision::{
    Decided, Decision, IdempotencyWrite, InboxReceipt, ReadSet, Row, RowKey, RowSet, Versioned,
    Write,
};
use crate::inventory::{ON_HAND_MAX, ReservationState, SetStock, StockRow, decide_set_stock};
use crate::messages::{
    Envelope, MESSAGE_SIZE_MAX, OrderLine, Payload, PaymentFailure, Service, StockRejection,
    Traceparent,
};
use crate::order::{
    CancelReason, IDEMPOTENCY_RETENTION_MS, LINE_QUANTITY_MAX, ORDER_LINES_MAX, OrderStatus,
    PlaceOrder, PlaceOrderError, decide_place_order, place_order_read_set,
};
use crate::store::{ExecuteError, FixedHasher, MemoryStore, execute};
use crate::tests::{
    EUR, NOW, World, customer, eur, key, line, sample_envelope, sku, stocked_world,
};
use crate::{CommandRefused, ConsumeError, message_read_set};

fn stock_row(name: &str, on_hand: u64) -> Row {
    Row::Stock(StockRow {
        sku: sku(name),
        on_hand,
        reserved: 0,
        unit_price: eur(100),
    })
}

fn receipt(name: &str) -> InboxReceipt {
    InboxReceipt {
        consumer: Service::Inventory,
        message_id: Id128::derive("mutants-test", &[name.as_bytes()]),
        fingerprint: Fingerprint::of_parts(&[name.as_bytes()]),
        received_at: NOW,
    }
}

fn idempotency_write(expected: u64, outcome: u64) -> IdempotencyWrite {
    IdempotencyWrite {
        service: Service::Payment,
        key: ScopedKey::new(Namespace::Customer(customer("alice")), key("k")),
        expected,
        record: IdempotencyRecord::completed(
            Fingerprint::of_parts(&[b"request"]),
            json!(outcome),
            NOW,
            1_000,
        ),
    }
}

fn posting() -> Posting {
    Posting::transfer(
        Id128::derive("mutants-test", &[b"posting"]),
        AccountId::Funding { currency: EUR },
        AccountId::wallet(customer("alice"), EUR),
        eur(1),
        saldo_ledger::Memo::default(),
    )
}

#[rstest]
#[case::nothing(Decision::default(), true)]
#[case::a_write(Decision { writes: vec![Write { expected: 0, row: stock_row("apple", 1) }], ..Decision::default() }, false)]
#[case::a_posting(Decision { postings: vec![posting()], ..Decision::default() }, false)]
#[case::a_receipt(Decision { inbox: Some(receipt("r")), ..Decision::default() }, false)]
#[case::a_message(Decision { outbox: vec![sample_envelope(Payload::StockReleased)], ..Decision::default() }, false)]
#[case::a_record(Decision { idempotency: Some(idempotency_write(0, 1)), ..Decision::default() }, false)]
fn a_decision_is_empty_only_when_it_commits_nothing(
    #[case] decision: Decision,
    #[case] empty: bool,
) {
    // Proves each part of a decision on its own makes it non-empty (hosts
    // skip the transaction of an empty one).
    assert_eq!(decision.is_empty(), empty);
}

#[rstest]
#[case::nothing(Commit::default(), true)]
#[case::a_write(Commit { writes: vec![Write { expected: 0, row: stock_row("apple", 1) }], ..Commit::default() }, false)]
#[case::an_increment(Commit { increments: vec![Increment { account: AccountId::Funding { currency: EUR }, balance_minor: 1, held_minor: 0 }], ..Commit::default() }, false)]
#[case::a_posting(Commit { postings: vec![posting()], ..Commit::default() }, false)]
#[case::a_receipt(Commit { inbox: vec![receipt("r")], ..Commit::default() }, false)]
#[case::a_message(Commit { outbox: vec![(Service::Order, sample_envelope(Payload::StockReleased))], ..Commit::default() }, false)]
#[case::a_record(Commit { idempotency: vec![idempotency_write(0, 1)], ..Commit::default() }, false)]
fn a_commit_is_empty_only_when_it_changes_nothing(#[case] commit: Commit, #[case] empty: bool) {
    // Proves each part of a commit on its own makes it non-empty.
    assert_eq!(commit.is_empty(), empty);
}

#[test]
fn a_row_set_finds_replaces_and_removes_rows_by_key() {
    // Proves the snapshot's small map: one row per key, the last insert
    // wins, removal hands the row back, and every row can be reached.
    let apple = RowKey::Stock(sku("apple"));
    let pear = RowKey::Stock(sku("pear"));
    let versioned = |version, on_hand| Versioned {
        version,
        value: stock_row("apple", on_hand),
    };
    let mut rows: RowSet = [
        (apple.clone(), versioned(1, 1)),
        (pear.clone(), versioned(1, 2)),
        (apple.clone(), versioned(2, 3)),
    ]
    .into_iter()
    .collect();
    assert_eq!((rows.len(), rows.is_empty()), (2, false));
    assert_eq!(
        rows.get(&apple),
        Some(&versioned(2, 3)),
        "the last insert wins"
    );
    assert_eq!(rows.get(&pear), Some(&versioned(1, 2)));
    for row in rows.values_mut() {
        row.version += 10;
    }
    let versions: Vec<u64> = rows.values().map(|row| row.version).collect();
    assert_eq!(versions, vec![12, 11]);
    assert_eq!(rows.remove(&apple), Some(versioned(12, 3)));
    assert_eq!(rows.remove(&apple), None);
    assert_eq!(rows.get(&apple), None);
    assert_eq!(rows.len(), 1);
    rows.remove(&pear);
    assert!(rows.is_empty());
    assert!(RowSet::default().is_empty());
}

#[test]
fn services_have_stable_names() {
    // Proves the names schemas, topics and logs use, in `name` and `Display`.
    let names: Vec<(&str, String)> = Service::ALL
        .iter()
        .map(|service| (service.name(), service.to_string()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("order", "order".to_owned()),
            ("inventory", "inventory".to_owned()),
            ("payment", "payment".to_owned()),
        ]
    );
}

#[test]
fn a_traceparent_carries_its_seed_as_trace_id_and_span() {
    // Proves a root's trace id is its seed in hex (all ones for a zero
    // seed, which W3C forbids), and a child's parent span is the first
    // eight bytes of its seed in hex (ones for zeros), trace kept.
    let seed = Id128::from_bytes([
        0xab, 0x0c, 0xf1, 0x2e, 0x00, 0x9d, 0x47, 0x80, 1, 2, 3, 4, 5, 6, 7, 8,
    ]);
    let root = Traceparent::root(seed);
    assert_eq!(root.trace_id(), seed.to_hex());
    assert_eq!(&root.as_str()[..3], "00-");
    assert_eq!(
        Traceparent::root(Id128::from_bytes([0; 16])).trace_id(),
        "1".repeat(32)
    );
    let child = root.child(seed);
    assert_eq!(
        child.as_str(),
        format!("00-{}-ab0cf12e009d4780-01", seed.to_hex())
    );
    let zero = root.child(Id128::from_bytes([0; 16]));
    assert_eq!(&zero.as_str()[36..52], "0101010101010101");
    assert_eq!(String::from(child.clone()), child.as_str());
}

#[rstest]
#[case::version("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
#[case::upper_case_hex("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01")]
#[case::not_hex("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01")]
#[case::short_trace("00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01")]
#[case::short_span("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01")]
#[case::long_flags("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011")]
#[case::zero_trace("00-00000000000000000000000000000000-b7ad6b7169203331-01")]
#[case::zero_span("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01")]
#[case::five_parts("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-00")]
fn malformed_traceparents_are_refused(#[case] text: &str) {
    // Proves each rule of the W3C shape on its own refuses a header.
    assert!(Traceparent::parse(text).is_err(), "{text}");
    assert!(Traceparent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
}

#[test]
fn a_message_of_exactly_the_size_limit_decodes() {
    // Proves the size limit is inclusive and 64 KiB: a valid envelope
    // padded to exactly `MESSAGE_SIZE_MAX` bytes decodes.
    let envelope = sample_envelope(Payload::StockReleased);
    let mut bytes = envelope.encode();
    bytes.resize(MESSAGE_SIZE_MAX, b' ');
    assert_eq!(MESSAGE_SIZE_MAX, 65_536);
    assert_eq!(Envelope::decode(&bytes), Ok(envelope));
}

#[rstest]
#[case::type_alone(Payload::StockReleased, Payload::StockCommitted)]
#[case::type_with_fields(Payload::ChargePayment { customer: customer("alice"), amount: eur(5) }, Payload::RefundPayment { customer: customer("alice"), amount: eur(5) })]
#[case::sku(Payload::CommitStock { lines: vec![line("apple", 2)] }, Payload::CommitStock { lines: vec![line("pear", 2)] })]
#[case::quantity(Payload::ReleaseStock { lines: vec![line("apple", 2)] }, Payload::ReleaseStock { lines: vec![line("apple", 3)] })]
#[case::line_count(Payload::ReleaseStock { lines: vec![line("apple", 2)] }, Payload::ReleaseStock { lines: vec![line("apple", 2), line("pear", 1)] })]
#[case::currency(Payload::ReserveStock { lines: vec![line("apple", 2)], currency: EUR }, Payload::ReserveStock { lines: vec![line("apple", 2)], currency: Currency::USD })]
#[case::customer(Payload::ChargePayment { customer: customer("alice"), amount: eur(5) }, Payload::ChargePayment { customer: customer("bob"), amount: eur(5) })]
#[case::amount(Payload::PaymentSucceeded { amount: eur(5) }, Payload::PaymentSucceeded { amount: eur(6) })]
#[case::amount_currency(Payload::StockReserved { amount: eur(5) }, Payload::StockReserved { amount: Money::from_minor(5, Currency::USD) })]
#[case::stock_reason(Payload::StockRejected { reason: StockRejection::OutOfStock }, Payload::StockRejected { reason: StockRejection::UnknownSku })]
#[case::payment_reason(Payload::PaymentFailed { reason: PaymentFailure::InsufficientFunds }, Payload::PaymentFailed { reason: PaymentFailure::UnknownWallet })]
#[case::cancel_reason(Payload::OrderCancelled { reason: CancelReason::OutOfStock }, Payload::OrderCancelled { reason: CancelReason::StockTimedOut })]
fn the_inbox_fingerprint_covers_the_type_and_every_field(
    #[case] first: Payload,
    #[case] second: Payload,
) {
    // Proves a message id reused for content differing in one field (or
    // only in its type) is recognised as reused, not as a duplicate.
    let first = sample_envelope(first);
    let second = sample_envelope(second);
    assert_ne!(
        crate::inbox::fingerprint(&first),
        crate::inbox::fingerprint(&second)
    );
    assert_eq!(
        crate::inbox::fingerprint(&first),
        crate::inbox::fingerprint(&first.clone())
    );
}

#[test]
fn the_fixed_hasher_is_the_same_everywhere_and_spreads_keys() {
    // Proves the row table's hasher gives these exact values (so its order
    // is the same natively and in WebAssembly, release after release) and
    // distinct keys distinct hashes.
    let hash = |bytes: &[u8]| {
        let mut hasher = FixedHasher::default();
        hasher.write(bytes);
        hasher.finish()
    };
    assert_eq!(hash(b"saldo"), 0x1cc1_d034_2529_35ef);
    assert_eq!(hash(b"order-1"), 0x40e1_2caa_0bac_f09b);
    assert_eq!(hash(b"0123456789abcdef-x"), 0xd479_46cb_706a_933c);
}

#[test]
fn the_store_lists_every_row_it_holds_once() {
    // Proves `rows` (what reconciliation, views and invariant checks walk)
    // yields each stored row once, as `row` finds it under its key.
    let world = stocked_world();
    let mut keys: Vec<RowKey> = world
        .store
        .rows()
        .map(|(key, row)| {
            assert_eq!(world.store.row(key), Some(row));
            key.clone()
        })
        .collect();
    keys.sort();
    let mut expected = vec![
        RowKey::Stock(sku("apple")),
        RowKey::Stock(sku("pear")),
        RowKey::Wallet(customer("alice")),
        RowKey::Account(AccountId::wallet(customer("alice"), EUR)),
        RowKey::Account(AccountId::Funding { currency: EUR }),
    ];
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn a_purge_deletes_only_its_own_services_records() {
    // Proves a service's purge leaves the expired records of the others,
    // and that a record is purgeable from the instant it expires.
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 1)], "k")
        .expect("placed");
    let expired = NOW.plus_ms(IDEMPOTENCY_RETENTION_MS);
    let purged = world.store.purge(
        Service::Order,
        &crate::retention::Horizons::default(),
        expired,
        usize::MAX,
    );
    assert_eq!(purged.idempotency, 1);
    let left: Vec<Service> = world
        .store
        .idempotency_records()
        .map(|(service, _, _)| service)
        .collect();
    assert_eq!(left, vec![Service::Payment], "the top-up's record stays");
}

#[test]
fn the_store_reports_receipts_records_and_account_versions() {
    // Proves what the store hands back to its readers: each inbox receipt
    // as written, each idempotency record at version 1 with its 24-hour
    // expiry, and an increment that moves a shared account's version.
    let mut world = stocked_world();
    let accepted = world
        .place("alice", vec![line("apple", 1)], "k")
        .expect("placed");
    let reserve = world.drain_outboxes().remove(0);
    world.deliver(&reserve).expect("reserved");
    let receipts: Vec<&InboxReceipt> = world.store.inbox_receipts().collect();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (
            receipts[0].consumer,
            receipts[0].message_id,
            receipts[0].received_at
        ),
        (Service::Inventory, reserve.message_id, NOW)
    );
    let records: Vec<_> = world
        .store
        .idempotency_records()
        .filter(|(service, _, _)| *service == Service::Order)
        .collect();
    assert_eq!(records.len(), 1);
    let (_, scoped, record) = records[0];
    assert_eq!(scoped.key(), &key("k"));
    assert_eq!(record.version, 1);
    assert_eq!(
        record.value.expires_at,
        NOW.plus_ms(IDEMPOTENCY_RETENTION_MS)
    );
    assert_eq!(IDEMPOTENCY_RETENTION_MS, 86_400_000);
    assert!(!accepted.replayed);

    let funding = RowKey::Account(AccountId::Funding { currency: EUR });
    assert_eq!(world.store.row(&funding).map(|row| row.version), Some(1));
    world.top_up("bob", eur(100), "bob-1").expect("top-up");
    assert_eq!(
        world.store.row(&funding).map(|row| row.version),
        Some(2),
        "an increment moves the version a versioned writer checks"
    );
}

#[test]
fn a_batch_counts_its_inputs_and_coalesces_many_writes_of_one_row() {
    // Proves a batch counts what it decided (not what it refused) and that
    // three writes of one wallet in one batch commit as one write, as
    // three commits would.
    let requests = [("a", 100), ("b", 0), ("c", 200), ("d", 300)];
    let mut batched = World::new();
    let mut sequential = World::new();
    let top_ups: Vec<_> = requests
        .iter()
        .map(|(name, amount)| crate::payment::TopUp {
            customer: customer("alice"),
            amount: eur(*amount),
            idempotency_key: key(name),
            principal: None,
            correlation_id: saldo_types::CorrelationId::new(*name).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("mutants-test", &[name.as_bytes()])),
        })
        .collect();
    let read_sets: Vec<ReadSet> = top_ups
        .iter()
        .map(crate::payment::top_up_read_set)
        .collect();
    let mut batch = Batch::new(batched.store.load_batch(&BatchReadSet::of(&read_sets)));
    assert!(batch.is_empty());
    assert_eq!(batch.len(), 0);
    let policy = batched.rules.payment;
    for (request, read_set) in top_ups.iter().zip(&read_sets) {
        let _ = batch.decide(read_set, |snapshot| {
            crate::payment::decide_top_up(&policy, snapshot, request, NOW)
        });
        let _ = execute(&mut sequential.store, read_set, NOW, |snapshot| {
            crate::payment::decide_top_up(&policy, snapshot, request, NOW)
        });
    }
    assert_eq!((batch.len(), batch.is_empty()), (3, false));
    let commit = batch.finish();
    let wallet = RowKey::Account(AccountId::wallet(customer("alice"), EUR));
    assert_eq!(
        commit
            .writes
            .iter()
            .filter(|write| write.row.key() == wallet)
            .count(),
        1
    );
    batched.store.commit(commit, NOW).expect("commits");
    assert_eq!(batched.balance("alice"), eur(600));
    assert_eq!(batched.balance("alice"), sequential.balance("alice"));
}

#[test]
fn a_key_written_twice_in_a_batch_is_seen_and_committed_as_in_separate_commits() {
    // Proves the second input sees the first one's record at the version a
    // commit would have given it, and the batch writes the key once,
    // expecting the version the batch loaded.
    let store = MemoryStore::new();
    let write = idempotency_write(0, 0);
    let read_set = ReadSet {
        idempotency: Some((write.service, write.key.clone())),
        ..ReadSet::default()
    };
    let mut batch = Batch::new(store.load_batch(&BatchReadSet::of([&read_set])));
    let mut seen = Vec::new();
    for outcome in 0..2 {
        batch
            .decide(&read_set, |snapshot| {
                let expected = snapshot
                    .idempotency
                    .as_ref()
                    .map_or(0, |record| record.version);
                seen.push(expected);
                Ok::<_, ()>(Decided {
                    decision: Decision {
                        idempotency: Some(idempotency_write(expected, outcome)),
                        ..Decision::default()
                    },
                    reply: (),
                })
            })
            .expect("decided");
    }
    assert_eq!(seen, vec![0, 1]);
    let commit = batch.finish();
    assert_eq!(commit.idempotency.len(), 1);
    assert_eq!(commit.idempotency[0].expected, 0);
    assert_eq!(
        commit.idempotency[0].record.state,
        saldo_idempotency::RecordState::Completed { outcome: json!(1) }
    );
    let mut store = store;
    store.commit(commit, NOW).expect("commits");
}

/// What `consumer` commits for `messages` decided as one batch.
fn decided_in_one_batch(world: &World, consumer: Service, messages: &[Envelope]) -> Commit {
    let read_sets: Vec<ReadSet> = messages
        .iter()
        .map(|envelope| message_read_set(consumer, envelope))
        .collect();
    let mut batch = Batch::new(world.store.load_batch(&BatchReadSet::of(&read_sets)));
    for (envelope, read_set) in messages.iter().zip(&read_sets) {
        batch
            .decide(read_set, |snapshot| {
                crate::decide_message(&world.rules, consumer, snapshot, envelope, NOW)
            })
            .expect("decided");
    }
    batch.finish()
}

#[test]
fn a_batch_of_messages_commits_every_receipt_and_reply() {
    // Proves a consumer's batch commit holds the inbox receipt and the
    // reply of each message it decided.
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 1)], "k1")
        .expect("placed");
    world
        .place("alice", vec![line("pear", 1)], "k2")
        .expect("placed");
    let commands = world.drain_outboxes();
    assert_eq!(commands.len(), 2);
    let commit = decided_in_one_batch(&world, Service::Inventory, &commands);
    let received: Vec<_> = commit
        .inbox
        .iter()
        .map(|receipt| receipt.message_id)
        .collect();
    assert_eq!(
        received,
        commands
            .iter()
            .map(|envelope| envelope.message_id)
            .collect::<Vec<_>>()
    );
    assert_eq!(commit.outbox.len(), 2);
    assert!(
        commit
            .outbox
            .iter()
            .all(|(service, reply)| *service == Service::Inventory
                && matches!(reply.payload, Payload::StockReserved { .. }))
    );
}

#[test]
fn a_charge_and_its_refund_in_one_batch_leave_an_open_revenue_account_alone() {
    // Proves an account that exists and nets to zero in a batch gets no
    // increment (only an account the batch opens needs one).
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 1)], "first")
        .expect("placed");
    world.pump(|_| None);
    assert_eq!(world.order(1).status(), OrderStatus::Confirmed);
    let charge = command(
        OrderId::new("order-x").expect("valid"),
        Payload::ChargePayment {
            customer: customer("alice"),
            amount: eur(300),
        },
    );
    let refund = Envelope::caused_by(
        &charge,
        &[b"refund"],
        NOW,
        Payload::RefundPayment {
            customer: customer("alice"),
            amount: eur(300),
        },
    );
    let commit = decided_in_one_batch(&world, Service::Payment, &[charge, refund]);
    assert_eq!(commit.postings.len(), 2, "a charge and its reversal");
    assert_eq!(
        commit.increments,
        vec![],
        "revenue is open and nets to zero"
    );
}

/// Places one order of `lines` for alice and delivers its ReserveStock.
fn reserve_for_alice(world: &mut World, lines: Vec<OrderLine>, idempotency_key: &str) -> Payload {
    world
        .place("alice", lines, idempotency_key)
        .expect("placed");
    let reserve = world.drain_outboxes().remove(0);
    world.deliver(&reserve).expect("answered");
    world.drain_outboxes().remove(0).payload
}

#[test]
fn held_units_are_not_available_to_the_next_order() {
    // Proves availability is on hand minus reserved: with 8 of 10 apples
    // held, an order for 3 is out of stock and one for 2 is not.
    let mut world = stocked_world();
    assert!(matches!(
        reserve_for_alice(&mut world, vec![line("apple", 8)], "k1"),
        Payload::StockReserved { .. }
    ));
    assert_eq!(
        reserve_for_alice(&mut world, vec![line("apple", 3)], "k2"),
        Payload::StockRejected {
            reason: StockRejection::OutOfStock
        }
    );
    assert_eq!(
        reserve_for_alice(&mut world, vec![line("apple", 2)], "k3"),
        Payload::StockReserved { amount: eur(300) }
    );
    assert_eq!(world.stock("apple"), (10, 10));
}

/// A command about order `order_id`, with an id no earlier message has.
fn command(order_id: OrderId, payload: Payload) -> Envelope {
    Envelope {
        message_id: Id128::derive("mutants-test", &[payload.message_type().as_bytes()]),
        order_id,
        ..sample_envelope(payload)
    }
}

#[rstest]
#[case::release_after_commit(vec![line("apple", 2)], true, Err(CommandRefused::ReleaseAfterCommit), (8, 0))]
#[case::commit_again(vec![line("apple", 2)], false, Ok(Payload::StockCommitted), (8, 0))]
#[case::release_again(vec![line("apple", 10), line("pear", 2)], true, Ok(Payload::StockReleased), (10, 0))]
#[case::commit_after_release(vec![line("apple", 10), line("pear", 2)], false, Err(CommandRefused::CommitWithoutReservation), (10, 0))]
fn a_late_inventory_command_never_moves_stock_twice(
    #[case] lines: Vec<OrderLine>,
    #[case] release: bool,
    #[case] expected: Result<Payload, CommandRefused>,
    #[case] apple: (u64, u64),
) {
    // Proves a release or commit arriving after the reservation was
    // committed (or released) answers from the reservation's state and
    // leaves the stock as it is.
    let mut world = stocked_world();
    world.place("alice", lines.clone(), "k").expect("placed");
    world.pump(|_| None);
    let payload = if release {
        Payload::ReleaseStock { lines }
    } else {
        Payload::CommitStock { lines }
    };
    let command = command(world.order(1).order_id, payload);
    let answer = world.deliver(&command).map(|_| {
        world
            .drain_outboxes()
            .pop()
            .map(|reply| reply.payload)
            .expect("a reply")
    });
    assert_eq!(
        answer,
        expected.map_err(|refused| ExecuteError::Rejected(ConsumeError::Refused(refused)))
    );
    assert_eq!(world.stock("apple"), apple);
    world.check_invariants();
}

#[rstest]
#[case::at_the_limit(ON_HAND_MAX, 0, true)]
#[case::equal_to_reserved(3, 3, true)]
#[case::below_reserved(2, 3, false)]
fn stock_may_be_set_to_its_inclusive_bounds(
    #[case] on_hand: u64,
    #[case] reserved: u64,
    #[case] accepted: bool,
) {
    // Proves `ON_HAND_MAX` itself and exactly the reserved units are allowed.
    let mut world = stocked_world();
    if reserved > 0 {
        let reply = reserve_for_alice(&mut world, vec![line("apple", reserved as u32)], "k");
        assert!(matches!(reply, Payload::StockReserved { .. }));
    }
    let request = SetStock {
        sku: sku("apple"),
        on_hand,
        unit_price: eur(150),
    };
    let result = execute(
        &mut world.store,
        &crate::inventory::set_stock_read_set(&request),
        NOW,
        |snapshot| decide_set_stock(snapshot, &request),
    );
    assert_eq!(result.is_ok(), accepted, "{result:?}");
}

#[test]
fn an_order_at_the_line_and_quantity_limits_is_valid() {
    // Proves `ORDER_LINES_MAX` lines and `LINE_QUANTITY_MAX` units are allowed.
    let mut world = stocked_world();
    let lines: Vec<OrderLine> = (0..ORDER_LINES_MAX)
        .map(|index| line(&format!("sku-{index}"), LINE_QUANTITY_MAX))
        .collect();
    assert!(world.place("alice", lines, "k").is_ok());
}

#[test]
fn an_order_id_that_is_taken_is_refused() {
    // Proves a new request whose generated id already names an order is
    // refused, and writes nothing.
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 1)], "k1")
        .expect("placed");
    let taken = world.order(1).order_id;
    let request = PlaceOrder {
        order_id: taken.clone(),
        customer: customer("alice"),
        lines: vec![line("apple", 1)],
        currency: EUR,
        idempotency_key: key("k2"),
        principal: None,
        correlation_id: saldo_types::CorrelationId::new("k2").expect("valid"),
        traceparent: Traceparent::root(Id128::derive("mutants-test", &[b"k2"])),
    };
    let definition = world.rules.order_saga.clone();
    assert_eq!(
        execute(
            &mut world.store,
            &place_order_read_set(&request),
            NOW,
            |snapshot| decide_place_order(&definition, snapshot, &request, NOW),
        ),
        Err(ExecuteError::Rejected(PlaceOrderError::OrderIdTaken(taken)))
    );
    assert_eq!(world.store.outbox_backlog(Service::Order), 1);
}

#[test]
fn a_payment_nobody_answered_times_out_refunds_and_cancels() {
    // Proves the take-payment deadline: three lost charges, then the saga
    // refunds and releases, the order is cancelled as payment_timed_out,
    // and the late charges take nothing.
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 2)], "k")
        .expect("placed");
    let mut lost = Vec::new();
    for _ in 0..100 {
        let messages = world.drain_outboxes();
        if messages.is_empty() && !world.fire_next_timers() {
            break;
        }
        for envelope in messages {
            if matches!(envelope.payload, Payload::ChargePayment { .. }) {
                lost.push(envelope);
            } else {
                world.deliver(&envelope).expect("delivered");
            }
        }
    }
    assert_eq!(lost.len(), 3, "one send and two retries");
    assert_eq!(
        world.order(1).status(),
        OrderStatus::Cancelled(CancelReason::PaymentTimedOut)
    );
    for late in &lost {
        world.deliver(late).expect("late charge answered");
    }
    world.pump(|_| None);
    assert_eq!(world.balance("alice"), eur(2_000));
    assert_eq!(world.stock("apple"), (10, 0));
    world.check_invariants();
}

#[rstest]
#[case::at_the_limit(1_200, OrderStatus::Confirmed)]
#[case::over_the_limit(1_199, OrderStatus::Cancelled(CancelReason::AmountOverLimit))]
fn a_charge_of_exactly_the_wallet_limit_is_taken(
    #[case] charge_limit_minor: i64,
    #[case] status: OrderStatus,
) {
    // Proves the per-payment limit is inclusive.
    let mut world = World::new();
    world.rules.payment.charge_limit_minor = charge_limit_minor;
    world
        .top_up("alice", eur(5_000), "alice-1")
        .expect("top-up");
    world.set_stock("apple", 10, eur(600)).expect("stock");
    world
        .place("alice", vec![line("apple", 2)], "k")
        .expect("placed");
    world.pump(|_| None);
    assert_eq!(world.order(1).status(), status);
}

#[test]
fn a_top_up_of_exactly_the_limit_is_accepted() {
    // Proves the single top-up limit is inclusive.
    let mut world = World::new();
    let limit = world.rules.payment.top_up_max_minor;
    world.top_up("alice", eur(limit), "k").expect("accepted");
    assert_eq!(world.balance("alice"), eur(limit));
}

#[test]
fn each_posting_carries_the_cause_it_was_made_for() {
    // Proves the ledger memo of a top-up and of a charge: the purpose, the
    // order (none for a top-up), and the request's correlation and trace.
    let mut world = stocked_world();
    world
        .place("alice", vec![line("apple", 1)], "k")
        .expect("placed");
    let mut charge = None;
    loop {
        let messages = world.drain_outboxes();
        if messages.is_empty() {
            break;
        }
        for envelope in messages {
            if matches!(envelope.payload, Payload::ChargePayment { .. }) {
                charge = Some(envelope.clone());
            }
            world.deliver(&envelope).expect("delivered");
        }
    }
    let charge = charge.expect("a charge was sent");
    let memos: Vec<_> = world
        .store
        .entries()
        .iter()
        .map(|entry| entry.posting.memo.clone())
        .collect();
    assert_eq!(memos.len(), 2);
    assert_eq!(memos[0].purpose, "top_up");
    assert_eq!(memos[0].order_id, None);
    assert_eq!(
        memos[0].correlation_id.as_ref().map(|id| id.as_str()),
        Some("top-up-alice-1")
    );
    assert_eq!(memos[1].purpose, "charge");
    assert_eq!(memos[1].order_id, Some(charge.order_id.clone()));
    assert_eq!(memos[1].correlation_id, Some(charge.correlation_id.clone()));
    assert_eq!(
        memos[1].traceparent.as_deref(),
        Some(charge.traceparent.as_str())
    );
    assert_eq!(
        world
            .store
            .row(&RowKey::Reservation(charge.order_id.clone()))
            .map(|row| match &row.value {
                Row::Reservation(reservation) => reservation.state,
                other => panic!("{other:?}"),
            }),
        Some(ReservationState::Committed)
    );
    assert_eq!(world.order(1).status(), OrderStatus::Confirmed);
}

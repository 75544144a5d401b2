//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): runs reproduce their recorded hashes release after release,
//! each invariant reports what breaks it, and the broker, faults, trace,
//! replay and scenario rules hold at their edges. See `docs/testing.md`.

use std::sync::Arc;

use rstest::rstest;
use saldo_domain::MemoryStore;
use saldo_domain::batch::Commit;
use saldo_domain::decision::{Decision, Row, RowKey, Write};
use saldo_domain::inventory::{ReservationRow, ReservationState, StockRow};
use saldo_domain::messages::{OrderLine, Payload, Service};
use saldo_ledger::{Account, AccountId, Memo, Posting};
use saldo_types::{CustomerId, Id128, Money, OrderId, Sku, Timestamp};

use crate::broker::Broker;
use crate::config::{Faults, Profile, SimConfig};
use crate::fault::{Armed, FAULT_MS_MAX, Fault, FaultError};
use crate::invariants::{Checker, status};
use crate::replay::{Player, ReplayError, Source, TraceFile};
use crate::scenario::{
    CURRENCY, SCENARIO_ORDERS_MAX, Scenario, ScenarioError, ending, walkthrough,
};
use crate::sim::{START, Stats, StepOutcome, run};
use crate::trace::{RECENT_EVENTS_MAX, Trace, TraceEvent, TraceRecord};

/// The trace hashes the browser harness checks (`harness/tests/seed_hashes.rs`
/// rewrites the file after a deliberate change to the trace).
const COMMITTED_SEED_HASHES: &str = include_str!("../../../harness/tests/seed_hashes.json");

#[test]
fn seeded_runs_reproduce_the_committed_trace_hashes() {
    // Proves a seed still gives the very run it gave when its hash was
    // recorded: the generator, the drawn world, the broker's choices, the
    // loop and the trace encoding are all unchanged.
    let committed: serde_json::Value =
        serde_json::from_str(COMMITTED_SEED_HASHES).expect("the file is JSON");
    let runs = committed.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 16);
    for expected in runs {
        let seed: u64 = expected["seed"]
            .as_str()
            .expect("text")
            .parse()
            .expect("a seed");
        let orders = u32::try_from(expected["orders"].as_u64().expect("a count")).expect("fits");
        let profile =
            Profile::from_name(expected["faults"].as_str().expect("a name")).expect("a profile");
        let report = run(SimConfig::new(seed, orders, profile), false);
        assert!(report.violation.is_none(), "seed {seed} {profile:?}");
        assert_eq!(
            report.trace_hash, expected["trace_hash"],
            "seed {seed} {profile:?}"
        );
    }
}

fn eur(minor: i64) -> Money {
    Money::from_minor(minor, CURRENCY)
}

fn sku(name: &str) -> Sku {
    Sku::new(name).expect("valid")
}

fn order_id(name: &str) -> OrderId {
    OrderId::new(name).expect("valid")
}

fn wallet(name: &str) -> AccountId {
    AccountId::wallet(CustomerId::new(name).expect("valid"), CURRENCY)
}

const FUNDING: AccountId = AccountId::Funding { currency: CURRENCY };

fn account(id: AccountId, balance_minor: i64) -> Row {
    Row::Account(Account {
        id,
        balance: eur(balance_minor),
        held: eur(0),
    })
}

fn stock(name: &str, on_hand: u64, reserved: u64) -> Row {
    Row::Stock(StockRow {
        sku: sku(name),
        on_hand,
        reserved,
        unit_price: eur(100),
    })
}

fn reservation(order: &str, name: &str, quantity: u32, state: ReservationState) -> Row {
    Row::Reservation(ReservationRow {
        order_id: order_id(order),
        lines: vec![OrderLine {
            sku: sku(name),
            quantity,
        }],
        amount: Some(eur(100)),
        state,
        updated_at: START,
    })
}

/// A posting for `order` moving `minor` between alice's wallet and revenue:
/// a charge when `charge`, a refund otherwise.
fn charge_posting(order: &str, index: u8, minor: i64, charge: bool) -> Posting {
    let revenue = AccountId::MerchantRevenue { currency: CURRENCY };
    let (from, to) = if charge {
        (wallet("alice"), revenue)
    } else {
        (revenue, wallet("alice"))
    };
    Posting::transfer(
        Id128::derive("mutants-test", &[order.as_bytes(), &[index]]),
        from,
        to,
        eur(minor),
        Memo {
            purpose: "charge".to_owned(),
            order_id: Some(order_id(order)),
            ..Memo::default()
        },
    )
}

/// Commits `rows` over whatever versions `store` holds, and `postings`.
fn commit_of(store: &MemoryStore, rows: Vec<Row>, postings: Vec<Posting>) -> Commit {
    let writes = rows
        .into_iter()
        .map(|row| Write {
            expected: store.row(&row.key()).map_or(0, |stored| stored.version),
            row,
        })
        .collect();
    Commit::from(Decision {
        writes,
        postings,
        ..Decision::default()
    })
}

/// Commits each step on one store and checks it as the simulator does;
/// returns the invariant the last step broke, if any.
fn after_each_commit(steps: Vec<(Vec<Row>, Vec<Posting>)>) -> Result<u64, &'static str> {
    let mut store = MemoryStore::new();
    let mut checker = Checker::default();
    for (rows, postings) in steps {
        let commit = commit_of(&store, rows, postings);
        let before = checker.before(&store, &commit);
        let postings = commit.postings.clone();
        store.commit(commit, START).expect("planted rows commit");
        checker
            .after_commit(&store, before, &postings)
            .map_err(|violation| violation.invariant)?;
    }
    Ok(checker.checks())
}

#[rstest]
#[case::balanced(vec![(vec![account(FUNDING, -500), account(wallet("alice"), 500)], vec![])], Ok(1))]
#[case::money_made(vec![(vec![account(wallet("alice"), 500)], vec![])], Err("money_conserved"))]
#[case::money_made_later(vec![(vec![account(FUNDING, -500), account(wallet("alice"), 500)], vec![]), (vec![account(wallet("alice"), 600)], vec![])], Err("money_conserved"))]
#[case::money_moved_later(vec![(vec![account(FUNDING, -500), account(wallet("alice"), 500)], vec![]), (vec![account(FUNDING, -700), account(wallet("alice"), 700)], vec![])], Ok(2))]
#[case::wallet_negative(vec![(vec![account(FUNDING, 500), account(wallet("alice"), -500)], vec![])], Err("wallet_never_negative"))]
#[case::held_as_reserved(vec![(vec![stock("s", 5, 2), reservation("o1", "s", 2, ReservationState::Held)], vec![])], Ok(1))]
#[case::released_with_its_units(vec![(vec![stock("s", 5, 2), reservation("o1", "s", 2, ReservationState::Held)], vec![]), (vec![stock("s", 5, 0), reservation("o1", "s", 2, ReservationState::Released)], vec![])], Ok(2))]
#[case::released_keeping_its_units(vec![(vec![stock("s", 5, 2), reservation("o1", "s", 2, ReservationState::Held)], vec![]), (vec![reservation("o1", "s", 2, ReservationState::Released)], vec![])], Err("reserved_equals_open_reservations"))]
#[case::reserved_without_a_reservation(vec![(vec![stock("s", 5, 2)], vec![])], Err("reserved_equals_open_reservations"))]
#[case::rejected_holds_nothing(vec![(vec![stock("s", 5, 0), reservation("o1", "s", 2, ReservationState::Rejected { reason: saldo_domain::messages::StockRejection::OutOfStock })], vec![])], Ok(1))]
#[case::held_without_stock(vec![(vec![reservation("o1", "s", 2, ReservationState::Held)], vec![])], Err("reserved_equals_open_reservations"))]
#[case::over_reserved(vec![(vec![stock("s", 1, 2), reservation("o1", "s", 2, ReservationState::Held)], vec![])], Err("stock_never_negative"))]
#[case::reserved_to_the_last_unit(vec![(vec![stock("s", 2, 2), reservation("o1", "s", 2, ReservationState::Held)], vec![])], Ok(1))]
#[case::charged_once(vec![(vec![], vec![charge_posting("o1", 1, 300, true)])], Ok(1))]
#[case::charged_and_refunded(vec![(vec![], vec![charge_posting("o1", 1, 300, true)]), (vec![], vec![charge_posting("o1", 2, 300, false)])], Ok(2))]
#[case::charged_twice(vec![(vec![], vec![charge_posting("o1", 1, 300, true)]), (vec![], vec![charge_posting("o1", 2, 300, true)])], Err("no_double_charge"))]
#[case::refunded_more(vec![(vec![], vec![charge_posting("o1", 1, 300, true)]), (vec![], vec![charge_posting("o1", 2, 301, false)])], Err("no_double_charge"))]
#[case::refunded_without_a_charge(vec![(vec![], vec![charge_posting("o1", 1, 300, false)])], Err("no_double_charge"))]
#[case::two_orders_charged_once_each(vec![(vec![], vec![charge_posting("o1", 1, 300, true)]), (vec![], vec![charge_posting("o2", 2, 300, true)])], Ok(2))]
fn each_per_commit_invariant_reports_what_breaks_it(
    #[case] steps: Vec<(Vec<Row>, Vec<Posting>)>,
    #[case] expected: Result<u64, &'static str>,
) {
    // Proves the incremental checks: each planted commit that breaks an
    // invariant is reported under its name, and the allowed ones (at
    // their edges) pass, counted once per commit.
    assert_eq!(after_each_commit(steps), expected);
}

/// A finished walkthrough's store.
fn settled(name: &str) -> MemoryStore {
    let scenario = walkthrough(name).expect("built in").scenario;
    let mut player = Player::new(Source::Scenario(scenario)).expect("valid");
    assert_eq!(player.run_to_end().expect("runs"), StepOutcome::Quiescent);
    player.simulation().store().clone()
}

/// Overwrites `row` in `store` at its stored version.
fn tamper(store: &mut MemoryStore, row: Row) {
    let commit = commit_of(store, vec![row], vec![]);
    store.commit(commit, START).expect("commits");
}

fn the_row(store: &MemoryStore, key: &RowKey) -> Row {
    store.row(key).expect("present").value.clone()
}

fn first_order(store: &MemoryStore) -> OrderId {
    store
        .rows()
        .find_map(|(_, versioned)| match &versioned.value {
            Row::Order(order) => Some(order.order_id.clone()),
            _ => None,
        })
        .expect("an order")
}

#[test]
fn each_at_rest_invariant_reports_what_breaks_it() {
    // Proves the checks at quiescence: a settled run is clean, and each
    // tampering of it is reported under its own invariant.
    let at_rest = |store: &MemoryStore| {
        let mut checker = Checker::default();
        let result = checker.at_quiescence(store).map_err(|v| v.invariant);
        assert_eq!(checker.checks(), 1);
        result
    };
    let confirmed = settled("happy_path");
    assert_eq!(at_rest(&confirmed), Ok(()));
    let order = first_order(&confirmed);

    let mut unpaid = confirmed.clone();
    let Row::Payment(mut payment) = the_row(&unpaid, &RowKey::Payment(order.clone())) else {
        panic!("a payment row");
    };
    payment.state = saldo_domain::payment::PaymentState::Failed {
        reason: saldo_domain::messages::PaymentFailure::InsufficientFunds,
    };
    tamper(&mut unpaid, Row::Payment(payment));
    assert_eq!(at_rest(&unpaid), Err("confirmed_order_paid_once"));

    let mut overcharged = confirmed.clone();
    let extra = charge_posting(order.as_str(), 9, 1, true);
    overcharged
        .commit(commit_of(&overcharged, vec![], vec![extra]), START)
        .expect("commits");
    assert_eq!(at_rest(&overcharged), Err("no_double_charge"));

    let mut unsold = confirmed.clone();
    let Row::Reservation(mut held) = the_row(&unsold, &RowKey::Reservation(order.clone())) else {
        panic!("a reservation row");
    };
    held.state = ReservationState::Released;
    tamper(&mut unsold, Row::Reservation(held.clone()));
    assert_eq!(at_rest(&unsold), Err("confirmed_order_stock_committed"));

    // A held reservation of no units breaks no count, only the rest rule.
    let mut holding = confirmed.clone();
    held.state = ReservationState::Held;
    let mut empty = held.clone();
    empty.lines[0].quantity = 0;
    tamper(&mut holding, Row::Reservation(empty));
    assert_eq!(at_rest(&holding), Err("no_held_stock_at_rest"));

    // Held units counted on both sides: the stock row is found first.
    let mut reserved = confirmed.clone();
    let line = held.lines[0].clone();
    tamper(&mut reserved, Row::Reservation(held));
    let Row::Stock(mut row) = the_row(&reserved, &RowKey::Stock(line.sku.clone())) else {
        panic!("a stock row");
    };
    row.reserved = u64::from(line.quantity);
    tamper(&mut reserved, Row::Stock(row));
    assert_eq!(at_rest(&reserved), Err("reserved_equals_open_reservations"));

    let cancelled = settled("insufficient_funds");
    assert_eq!(at_rest(&cancelled), Ok(()));
    let order = first_order(&cancelled);
    let mut charged = cancelled.clone();
    let charge = charge_posting(order.as_str(), 9, 1, true);
    charged
        .commit(commit_of(&charged, vec![], vec![charge]), START)
        .expect("commits");
    assert_eq!(at_rest(&charged), Err("cancelled_order_not_charged"));

    let mut overstocked = cancelled.clone();
    tamper(&mut overstocked, stock("book", 10, 1));
    assert_eq!(
        at_rest(&overstocked),
        Err("reserved_equals_open_reservations")
    );
}

#[test]
fn a_pending_order_at_rest_is_reported() {
    // Proves quiescence with an order still in flight breaks
    // every_order_terminal.
    let scenario = walkthrough("happy_path").expect("built in").scenario;
    let mut player = Player::new(Source::Scenario(scenario)).expect("valid");
    while player
        .simulation()
        .store()
        .rows()
        .all(|(key, _)| !matches!(key, RowKey::Order(_)))
    {
        player.step().expect("steps");
    }
    let mut checker = Checker::default();
    assert_eq!(
        checker
            .at_quiescence(player.simulation().store())
            .map_err(|violation| violation.invariant),
        Err("every_order_terminal")
    );
}

#[test]
fn the_invariants_panel_judges_each_invariant_from_scratch() {
    // Proves `status`: on a settled run every invariant holds with what
    // was found; before rest the at-rest ones are not judged; a broken
    // store or a reported violation shows under its name.
    let store = settled("happy_path");
    let statuses = status(&store, true, None);
    assert_eq!(statuses.len(), 12);
    assert!(
        statuses.iter().all(|status| status.holds == Some(true)),
        "{statuses:?}"
    );
    let detail = |statuses: &[crate::invariants::InvariantStatus], name: &str| {
        statuses
            .iter()
            .find(|status| status.name == name)
            .map(|status| (status.holds, status.detail.clone()))
            .expect("listed")
    };
    assert_eq!(
        detail(&statuses, "money_conserved"),
        (Some(true), "5 accounts sum to zero".to_owned())
    );
    assert_eq!(
        detail(&statuses, "stock_never_negative"),
        (Some(true), "2 SKUs".to_owned())
    );
    assert_eq!(
        detail(&statuses, "entries_balanced"),
        (
            Some(true),
            format!("{} entries, chain intact", store.entries().len())
        )
    );
    assert_eq!(
        detail(&statuses, "no_double_charge"),
        (Some(true), "1 orders with money movements".to_owned())
    );
    assert_eq!(
        detail(&status(&store, false, None), "every_order_terminal").0,
        None
    );

    let mut broken = store.clone();
    tamper(&mut broken, account(wallet("alice"), -1));
    let statuses = status(&broken, true, None);
    for name in ["money_conserved", "wallet_never_negative"] {
        assert_eq!(detail(&statuses, name).0, Some(false), "{name}");
    }
    assert_eq!(detail(&statuses, "stock_never_negative").0, Some(true));

    let mut over = store.clone();
    tamper(&mut over, stock("lamp", 1, 2));
    let statuses = status(&over, false, None);
    assert_eq!(detail(&statuses, "stock_never_negative").0, Some(false));
    assert_eq!(
        detail(&statuses, "reserved_equals_open_reservations").0,
        Some(false)
    );

    let mut unheld = store.clone();
    tamper(
        &mut unheld,
        reservation("ghost", "nothing", 1, ReservationState::Held),
    );
    assert_eq!(
        detail(
            &status(&unheld, false, None),
            "reserved_equals_open_reservations"
        )
        .0,
        Some(false)
    );

    let mut doubled = store.clone();
    let order = first_order(&doubled);
    let extra = charge_posting(order.as_str(), 9, 1, true);
    doubled
        .commit(commit_of(&doubled, vec![], vec![extra]), START)
        .expect("commits");
    assert_eq!(
        detail(&status(&doubled, false, None), "no_double_charge").0,
        Some(false)
    );

    let mut unpaid = store.clone();
    let Row::Payment(mut payment) = the_row(&unpaid, &RowKey::Payment(order.clone())) else {
        panic!("a payment row");
    };
    payment.state = saldo_domain::payment::PaymentState::CancelledBeforeCharge;
    tamper(&mut unpaid, Row::Payment(payment));
    let statuses = status(&unpaid, true, None);
    assert_eq!(
        detail(&statuses, "confirmed_order_paid_once").0,
        Some(false)
    );
    assert_eq!(
        detail(&statuses, "cancelled_order_not_charged").0,
        Some(true)
    );

    let violation = crate::invariants::Violation {
        invariant: "nothing_dead_lettered",
        detail: "refused".to_owned(),
    };
    let statuses = status(&store, false, Some(&violation));
    assert_eq!(statuses.len(), 13);
    assert_eq!(
        detail(&statuses, "nothing_dead_lettered"),
        (Some(false), "refused".to_owned())
    );
}

#[test]
fn stats_absorb_every_counter() {
    // Proves summing runs adds each counter of the other run to its own.
    let other = Stats {
        steps: 1,
        orders_confirmed: 2,
        orders_cancelled: 3,
        messages_published: 4,
        messages_delivered: 5,
        duplicates_absorbed: 6,
        duplicates_injected: 7,
        crashes_injected: 8,
        client_retries: 9,
        timers_fired: 10,
        invariant_checks: 11,
        simulated_ms: 12,
    };
    let mut total = other.clone();
    total.absorb(&other);
    total.absorb(&other);
    assert_eq!(
        total,
        Stats {
            steps: 3,
            orders_confirmed: 6,
            orders_cancelled: 9,
            messages_published: 12,
            messages_delivered: 15,
            duplicates_absorbed: 18,
            duplicates_injected: 21,
            crashes_injected: 24,
            client_retries: 27,
            timers_fired: 30,
            invariant_checks: 33,
            simulated_ms: 36,
        }
    );
}

#[test]
fn names_are_stable() {
    // Proves the names the CLI, the page and trace files use.
    let outcomes: Vec<&str> = [
        StepOutcome::Running,
        StepOutcome::Quiescent,
        StepOutcome::Violated,
    ]
    .iter()
    .map(StepOutcome::name)
    .collect();
    assert_eq!(outcomes, ["running", "quiescent", "violated"]);
    let profiles: Vec<&str> = Profile::ALL.iter().map(|profile| profile.name()).collect();
    assert_eq!(profiles, ["none", "light", "heavy", "chaos"]);
    for profile in Profile::ALL {
        assert_eq!(Profile::from_name(profile.name()), Some(profile));
    }
    assert_eq!(Profile::from_name("storm"), None);
    assert_eq!(Profile::Chaos.faults(), Faults::CHAOS);
}

#[rstest]
#[case::duplicate(Fault::Duplicate { service: Service::Order }, "duplicate", true, vec![1, 0])]
#[case::crash_before_commit(Fault::CrashBeforeCommit { service: Service::Inventory }, "crash_before_commit", true, vec![2, 1])]
#[case::crash_before_ack(Fault::CrashBeforeAck { service: Service::Payment }, "crash_before_ack", true, vec![3, 2])]
#[case::crash_before_publish(Fault::CrashBeforePublish { service: Service::Order }, "crash_before_publish", true, vec![4, 0])]
#[case::crash_after_publish(Fault::CrashAfterPublish { service: Service::Payment }, "crash_after_publish", true, vec![5, 2])]
#[case::stall(Fault::Stall { consumer: Service::Inventory, ms: 258 }, "stall", false, vec![6, 1])]
#[case::clock_jump(Fault::ClockJump { ms: 258 }, "clock_jump", false, vec![7, 255])]
#[case::client_retry(Fault::ClientRetry, "client_retry", true, vec![8, 255])]
fn each_fault_has_its_kind_timing_and_encoding(
    #[case] fault: Fault,
    #[case] kind: &str,
    #[case] armed: bool,
    #[case] head: Vec<u8>,
) {
    // Proves a fault's stable kind, whether it waits for its moment, and
    // its bytes in the trace hash: tag, service, then milliseconds.
    assert_eq!(fault.kind(), kind);
    assert_eq!(fault.is_armed(), armed);
    let ms: u64 = match fault {
        Fault::Stall { ms, .. } | Fault::ClockJump { ms } => ms,
        _ => 0,
    };
    let mut bytes = Vec::new();
    fault.encode_into(&mut bytes);
    let mut expected = head;
    expected.extend_from_slice(&ms.to_be_bytes());
    assert_eq!(bytes, expected);
    assert_eq!(
        serde_json::to_value(fault).expect("serialises")["kind"],
        kind
    );
}

#[rstest]
#[case(0, Err(FaultError::Duration(0)))]
#[case(1, Ok(()))]
#[case(FAULT_MS_MAX, Ok(()))]
#[case(FAULT_MS_MAX + 1, Err(FaultError::Duration(FAULT_MS_MAX + 1)))]
fn fault_durations_are_bounded_both_ways(
    #[case] ms: u64,
    #[case] expected: Result<(), FaultError>,
) {
    // Proves stalls and clock jumps last from 1 ms to `FAULT_MS_MAX`,
    // and faults without a duration are always valid.
    assert_eq!(Fault::ClockJump { ms }.validate(), expected);
    let stall = Fault::Stall {
        consumer: Service::Order,
        ms,
    };
    assert_eq!(stall.validate(), expected);
    assert_eq!(Fault::ClientRetry.validate(), Ok(()));
}

#[test]
fn armed_faults_hit_once_each_in_order() {
    // Proves an armed fault is taken exactly once, and only the one named.
    let mut armed = Armed::default();
    let crash = Fault::CrashBeforeAck {
        service: Service::Payment,
    };
    armed.push(Fault::ClientRetry);
    armed.push(crash);
    assert_eq!(armed.faults(), [Fault::ClientRetry, crash]);
    assert!(!armed.take(Fault::Duplicate {
        service: Service::Payment
    }));
    assert!(armed.take(crash));
    assert!(!armed.take(crash));
    assert_eq!(armed.faults(), [Fault::ClientRetry]);
}

fn record(step: u64) -> TraceRecord {
    TraceRecord {
        step,
        now_ms: 7,
        event: TraceEvent::FaultsStopped,
    }
}

#[test]
fn a_trace_counts_its_events_and_keeps_the_recent_ones() {
    // Proves the trace keeps every record only when asked, always the last
    // `RECENT_EVENTS_MAX` for a violation report, and counts them all.
    let mut kept = Trace::new(true);
    let mut hashed = Trace::new(false);
    let total = RECENT_EVENTS_MAX as u64 + 3;
    for step in 0..total {
        kept.record(record(step));
        hashed.record(record(step));
    }
    assert_eq!(kept.events(), total);
    assert_eq!(
        kept.records().map(<[TraceRecord]>::len),
        Some(total as usize)
    );
    assert_eq!(hashed.records(), None);
    let recent = hashed.recent();
    assert_eq!(recent.len(), RECENT_EVENTS_MAX);
    assert_eq!(recent.first().map(|record| record.step), Some(3));
    assert_eq!(recent.last().map(|record| record.step), Some(total - 1));
    assert_eq!(kept.hash_hex(), hashed.hash_hex());
    assert_eq!(kept.hash_hex().len(), 32);
    assert_ne!(kept.hash_hex(), Trace::new(false).hash_hex());
}

fn envelope(order: &str) -> Arc<saldo_domain::messages::Envelope> {
    Arc::new(saldo_domain::messages::Envelope {
        message_id: Id128::derive("mutants-test", &[order.as_bytes()]),
        schema_version: saldo_domain::messages::SCHEMA_VERSION,
        order_id: order_id(order),
        correlation_id: saldo_types::CorrelationId::new("c").expect("valid"),
        causation_id: None,
        occurred_at: START,
        traceparent: saldo_domain::messages::Traceparent::root(Id128::derive(
            "mutants-test",
            &[b"trace"],
        )),
        payload: Payload::StockReleased,
    })
}

#[test]
fn the_broker_delivers_commits_rewinds_and_stalls_per_partition() {
    // Proves the simulated Kafka's bookkeeping: offsets within a
    // partition, what is in flight and uncommitted, redelivery from the
    // committed offset after a rewind, and stalls that end on time.
    let mut broker = Broker::new(1);
    let mut rng = crate::rng::Rng::new(1);
    let now = START;
    assert!(!broker.has_deliverable(Service::Order, now));
    assert!(!broker.has_uncommitted(Service::Order));
    for order in ["o1", "o2", "o3"] {
        assert_eq!(broker.publish(Service::Order, envelope(order)), 0);
    }
    assert_eq!(broker.backlog(), 3);
    assert!(broker.has_deliverable(Service::Order, now));
    assert!(!broker.has_deliverable(Service::Payment, now));
    let first = broker.take(Service::Order, now, &mut rng).expect("one");
    let second = broker.take(Service::Order, now, &mut rng).expect("two");
    assert_eq!((first.offset, second.offset), (0, 1));
    assert_eq!(second.envelope.order_id, order_id("o2"));
    broker.commit_offset(Service::Order, 0, first.offset);
    assert_eq!(broker.backlog(), 2);
    let in_flight = broker.in_flight(Service::Order);
    let seen: Vec<(u64, bool)> = in_flight
        .iter()
        .map(|message| (message.offset, message.read))
        .collect();
    assert_eq!(seen, vec![(1, true), (2, false)]);
    broker.rewind(Service::Order);
    let again = broker
        .take(Service::Order, now, &mut rng)
        .expect("redelivered");
    assert_eq!(
        again.offset, 1,
        "a crash redelivers from the committed offset"
    );
    let third = broker.take(Service::Order, now, &mut rng).expect("three");
    broker.commit_offset(Service::Order, 0, third.offset);
    assert_eq!(broker.backlog(), 0);
    assert!(!broker.has_uncommitted(Service::Order));
    assert!(broker.in_flight(Service::Order).is_empty());

    broker.publish(Service::Order, envelope("o4"));
    assert!(broker.has_uncommitted(Service::Order));
    let until = now.plus_ms(1_000);
    broker.stall(Service::Order, 5, until);
    assert!(!broker.has_deliverable(Service::Order, now));
    assert_eq!(broker.next_unstall(now), Some(until));
    assert_eq!(broker.in_flight(Service::Order)[0].stalled_until, until);
    assert_eq!(broker.next_unstall(until), None, "over at its end");
    assert!(broker.has_deliverable(Service::Order, until));
    assert!(broker.take(Service::Order, now, &mut rng).is_none());
    assert_eq!(
        broker
            .take(Service::Order, until, &mut rng)
            .map(|delivery| delivery.offset),
        Some(3)
    );
    assert_eq!(
        broker.next_unstall(now),
        None,
        "nothing waits behind the stall"
    );
}

#[test]
fn messages_spread_over_partitions_by_order() {
    // Proves the partition of a key is FNV-1a modulo the partition count,
    // as recorded runs depend on.
    assert_eq!(crate::broker::partition_of("", 1_000), 0x811c_9dc5 % 1_000);
    assert_eq!(crate::broker::partition_of("a", 7), 0xe40c_292c % 7);
    let mut broker = Broker::new(4);
    let partitions: Vec<u32> = ["o1", "o2", "o3", "o4", "o5"]
        .iter()
        .map(|order| broker.publish(Service::Payment, envelope(order)))
        .collect();
    let expected: Vec<u32> = ["o1", "o2", "o3", "o4", "o5"]
        .iter()
        .map(|order| crate::broker::partition_of(order, 4))
        .collect();
    assert_eq!(partitions, expected);
    assert!(
        partitions
            .iter()
            .any(|partition| *partition != partitions[0])
    );
}

#[rstest]
#[case::no_orders(0, 4, 16, false)]
#[case::one_order(1, 4, 16, true)]
#[case::most_orders(crate::replay::REPLAY_ORDERS_MAX, 4, 16, true)]
#[case::too_many_orders(crate::replay::REPLAY_ORDERS_MAX + 1, 4, 16, false)]
#[case::no_partition(1, 0, 16, false)]
#[case::most_partitions(1, 64, 16, true)]
#[case::too_many_partitions(1, 65, 16, false)]
#[case::no_batch(1, 4, 0, false)]
#[case::largest_batch(1, 4, 1_000, true)]
#[case::too_large_a_batch(1, 4, 1_001, false)]
fn a_replayed_run_is_bounded(
    #[case] orders: u32,
    #[case] partitions: u32,
    #[case] publish_batch_max: u32,
    #[case] accepted: bool,
) {
    // Proves the player's bounds on a seeded run, each edge inclusive.
    let mut config = SimConfig::new(3, 1, Profile::None);
    config.orders = orders;
    config.partitions = partitions;
    config.publish_batch_max = publish_batch_max;
    let player = Player::new(Source::Seeded(config));
    assert_eq!(player.is_ok(), accepted, "{:?}", player.err());
}

#[test]
fn a_trace_file_names_the_line_that_is_wrong() {
    // Proves parsing skips blank lines, refuses another format, and
    // reports a bad record with its line number counted from 1.
    let report = run(SimConfig::new(2, 2, Profile::None), true);
    let text = String::from_utf8(report.trace_json_lines.expect("kept")).expect("utf-8");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let records = lines.len() - 1;
    lines.insert(1, "   ".to_owned());
    let parsed = TraceFile::parse(&lines.join("\n")).expect("parses");
    assert_eq!(parsed.records.len(), records);
    lines[3] = "{\"step\":".to_owned();
    assert!(matches!(
        TraceFile::parse(&lines.join("\n")),
        Err(ReplayError::Line { line: 4, .. })
    ));
    let other = text.replacen("\"saldo_trace\":1", "\"saldo_trace\":2", 1);
    assert_eq!(TraceFile::parse(&other), Err(ReplayError::Format(2)));
}

#[test]
fn a_replay_that_stops_short_is_not_exact() {
    // Proves a recording with an event missing or an extra event fails
    // verification even when every compared event matches.
    let report = run(SimConfig::new(4, 3, Profile::Light), true);
    let text = String::from_utf8(report.trace_json_lines.expect("kept")).expect("utf-8");
    let exact = Player::import(&text).expect("imports");
    let verification = exact.verification().expect("verified");
    assert!(verification.exact());
    assert_eq!(verification.recorded, verification.replayed);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    let short = Player::import(&lines.join("\n")).expect("imports");
    let verification = short.verification().expect("verified");
    assert!(!verification.exact());
    assert_eq!(verification.first_difference, None);
    assert_eq!(verification.identical + 1, verification.replayed);
}

#[test]
fn a_player_seeks_both_ways_and_injects_where_it_stands() {
    // Proves a player's position after seeking forwards and back, that an
    // injection is recorded at the step it was made and replayed there,
    // and that export carries it.
    let scenario = walkthrough("happy_path").expect("built in").scenario;
    let mut player = Player::new(Source::Scenario(scenario)).expect("valid");
    assert_eq!(player.position(), 0);
    player.seek(6).expect("seeks");
    assert_eq!(player.position(), 6);
    player
        .inject(Fault::ClockJump { ms: 1_000 })
        .expect("injects");
    player
        .inject(Fault::ClockJump { ms: 2_000 })
        .expect("injects");
    let at_six = player.simulation().now();
    player.seek(9).expect("seeks");
    player.seek(6).expect("seeks back");
    assert_eq!(player.position(), 6);
    assert_eq!(
        player.simulation().now(),
        at_six,
        "both injections replayed at step 6"
    );
    assert_eq!(player.header().injections.len(), 2);
    assert!(
        player
            .header()
            .injections
            .iter()
            .all(|injection| injection.step == 6)
    );
    player.seek(2).expect("seeks back");
    assert_eq!(player.position(), 2);
    player.run_to_end().expect("runs");
    let exported = player.export();
    assert!(
        exported
            .lines()
            .next()
            .expect("a header")
            .contains("clock_jump")
    );
    assert!(
        Player::import(&exported)
            .expect("imports")
            .verification()
            .expect("verified")
            .exact()
    );
}

#[test]
fn a_simulation_reports_its_state_and_refuses_injections_once_over() {
    // Proves what the page reads between steps: the client's backlog, who
    // is down, the trace file, and that a finished run takes no fault.
    let scenario = walkthrough("payment_crash").expect("built in").scenario;
    let mut simulation = crate::Simulation::from_scenario(&scenario, true).expect("valid");
    assert_eq!(simulation.client_backlog(), (1, 0));
    assert_eq!(simulation.armed().len(), 1);
    let before = simulation.now();
    simulation
        .inject(Fault::ClockJump { ms: 500 })
        .expect("injects");
    assert_eq!(simulation.now(), before.plus_ms(500));
    simulation
        .inject(Fault::Stall {
            consumer: Service::Payment,
            ms: 100,
        })
        .expect("injects");
    assert_eq!(
        simulation.broker().next_unstall(simulation.now()),
        None,
        "nothing waits on payment yet"
    );
    assert_eq!(
        simulation.inject(Fault::ClockJump { ms: 0 }),
        Err(FaultError::Duration(0))
    );
    assert_eq!(simulation.injections().len(), 2);
    let mut crashed = false;
    while simulation.step() == StepOutcome::Running {
        if simulation.down_until(Service::Payment).is_some() {
            crashed = true;
        }
        assert_eq!(simulation.publisher_down_until(Service::Payment), None);
    }
    assert!(crashed, "the injected crash took payment down");
    assert_eq!(simulation.client_backlog(), (0, 0));
    assert!(simulation.violation().is_none());
    assert_eq!(
        simulation.inject(Fault::ClientRetry),
        Err(FaultError::Ended)
    );
    let file = String::from_utf8(simulation.trace_file().expect("kept")).expect("utf-8");
    assert_eq!(
        file.lines().count() as u64,
        simulation.trace().events() + 1,
        "a header, then one line per event"
    );
    assert!(Timestamp::from_unix_ms(0) < simulation.now());
}

#[test]
fn a_publisher_crash_takes_the_publisher_down_only() {
    // Proves a crash after publishing stops that service's publisher, not
    // the service, until it restarts.
    let scenario = walkthrough("publisher_crash").expect("built in").scenario;
    let mut simulation = crate::Simulation::from_scenario(&scenario, false).expect("valid");
    let mut publisher_down = false;
    while simulation.step() == StepOutcome::Running {
        if simulation.publisher_down_until(Service::Order).is_some() {
            publisher_down = true;
            assert_eq!(simulation.down_until(Service::Order), None);
        }
    }
    assert!(publisher_down);
}

#[rstest]
#[case::no_orders(0, 1, Some(ScenarioError::OrderCount(0)))]
#[case::most_orders(SCENARIO_ORDERS_MAX, 1, None)]
#[case::too_many_orders(SCENARIO_ORDERS_MAX + 1, 1, Some(ScenarioError::OrderCount(SCENARIO_ORDERS_MAX + 1)))]
#[case::zero_units(1, 0, Some(ScenarioError::OrderLines { index: 0 }))]
fn a_scenario_is_validated_before_it_runs(
    #[case] orders: usize,
    #[case] quantity: u32,
    #[case] expected: Option<ScenarioError>,
) {
    // Proves a scenario's order count is bounded (inclusively) and each
    // line orders at least one unit.
    let mut scenario = walkthrough("happy_path").expect("built in").scenario;
    let order = scenario.orders[0].clone();
    scenario.orders = vec![order; orders];
    if let Some(first) = scenario.orders.first_mut() {
        first.lines[0].quantity = quantity;
    }
    assert_eq!(scenario.validate().err(), expected);
}

#[test]
fn a_scenario_refuses_empty_orders_and_other_currencies() {
    // Proves an order without lines and a price in another currency are
    // refused with their reasons, and a well-formed order passes.
    let happy = walkthrough("happy_path").expect("built in").scenario;
    let mut no_lines = happy.clone();
    no_lines.orders.push(no_lines.orders[0].clone());
    no_lines.orders[1].lines.clear();
    assert_eq!(
        no_lines.validate(),
        Err(ScenarioError::OrderLines { index: 1 })
    );
    let mut dollars: Scenario = happy.clone();
    dollars.stock[1].unit_price = Money::from_minor(100, saldo_types::Currency::USD);
    assert!(matches!(
        dollars.validate(),
        Err(ScenarioError::Currency {
            found: saldo_types::Currency::USD,
            ..
        })
    ));
    assert_eq!(happy.validate(), Ok(()));
}

#[test]
fn endings_and_walkthroughs_have_stable_names() {
    // Proves the words the walkthroughs check, and lookup by name.
    use saldo_domain::order::{CancelReason, OrderStatus};
    assert_eq!(ending(&OrderStatus::Pending), "pending");
    assert_eq!(ending(&OrderStatus::Confirmed), "confirmed");
    assert_eq!(
        ending(&OrderStatus::Cancelled(CancelReason::PaymentTimedOut)),
        "cancelled:payment_timed_out"
    );
    assert_eq!(
        walkthrough("deadline_fires").map(|walkthrough| walkthrough.scenario.name),
        Some("deadline_fires".to_owned())
    );
    assert!(walkthrough("moon_landing").is_none());
}

//! Walkthroughs, hand-injected faults and exact replay.

use saldo_domain::decision::Row;
use saldo_domain::messages::Service;
use saldo_sim::replay::{ReplayError, Source};
use saldo_sim::scenario::{ScenarioError, ending};
use saldo_sim::sim::StepOutcome;
use saldo_sim::trace::{DeliveryOutcome, TraceEvent, TraceRecord};
use saldo_sim::{
    Fault, Player, Profile, Scenario, SimConfig, Simulation, walkthrough, walkthroughs,
};

fn endings(simulation: &Simulation) -> Vec<String> {
    let mut endings: Vec<String> = simulation
        .store()
        .rows()
        .filter_map(|(_, versioned)| match &versioned.value {
            Row::Order(order) => Some(ending(&order.status())),
            _ => None,
        })
        .collect();
    endings.sort();
    endings
}

fn records(player: &Player) -> Vec<TraceRecord> {
    player
        .simulation()
        .trace()
        .records()
        .expect("a player keeps its trace")
        .to_vec()
}

fn has(records: &[TraceRecord], wanted: impl Fn(&TraceEvent) -> bool) -> bool {
    records.iter().any(|record| wanted(&record.event))
}

#[test]
fn every_walkthrough_ends_as_it_says_with_every_invariant_holding() {
    // Proves each built-in walkthrough reaches quiescence, ends its orders as
    // documented, and that its fault really happened.
    let walkthroughs = walkthroughs();
    assert_eq!(walkthroughs.len(), 8);
    for walkthrough in walkthroughs {
        let name = walkthrough.scenario.name.clone();
        let mut player = Player::new(Source::Scenario(walkthrough.scenario)).expect("valid");
        assert_eq!(
            player.run_to_end().expect("runs"),
            StepOutcome::Quiescent,
            "{name}: {:?}",
            player.simulation().violation()
        );
        assert_eq!(
            endings(player.simulation()),
            walkthrough.endings_sorted,
            "{name}"
        );
        let records = records(&player);
        let fault_hit = match name.as_str() {
            "duplicate_delivery" | "payment_crash" | "publisher_crash" => has(&records, |event| {
                matches!(
                    event,
                    TraceEvent::Delivered {
                        outcome: DeliveryOutcome::Duplicate,
                        ..
                    }
                )
            }),
            "deadline_fires" => has(&records, |event| {
                matches!(
                    event,
                    TraceEvent::TimerFired {
                        outcome: DeliveryOutcome::Applied,
                        ..
                    }
                )
            }),
            _ => !has(&records, |event| {
                matches!(event, TraceEvent::Crashed { .. })
            }),
        };
        assert!(fault_hit, "{name}: the walkthrough's point was not shown");
        let snapshot = saldo_sim::view::snapshot(player.simulation());
        let invariants = snapshot["invariants"].as_array().expect("a list");
        assert!(
            invariants.iter().all(|status| status["holds"] == true),
            "{name}: {invariants:?}"
        );
    }
}

#[test]
fn the_race_for_the_last_lamp_leaves_none_and_charges_one_customer() {
    // Proves the race walkthrough's final tables: stock zero, one reservation committed.
    let race = walkthrough("last_unit_race").expect("built in");
    let mut player = Player::new(Source::Scenario(race.scenario)).expect("valid");
    player.run_to_end().expect("runs");
    let snapshot = saldo_sim::view::snapshot(player.simulation());
    let lamp = snapshot["stock"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|row| row["sku"] == "lamp")
        .expect("stocked")
        .clone();
    assert_eq!(
        (lamp["on_hand"].as_u64(), lamp["reserved"].as_u64()),
        (Some(0), Some(0))
    );
    let captured = snapshot["payments"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|payment| payment["state"]["state"] == "captured")
        .count();
    assert_eq!(captured, 1);
}

#[test]
fn stepping_back_replays_the_same_moment() {
    // Proves seek backwards rebuilds exactly the state reached going forwards.
    let scenario = walkthrough("payment_crash").expect("built in").scenario;
    let mut player = Player::new(Source::Scenario(scenario)).expect("valid");
    player.seek(25).expect("seeks");
    let at_25 = saldo_sim::view::snapshot(player.simulation());
    player.run_to_end().expect("runs");
    let end = saldo_sim::view::snapshot(player.simulation());
    player.seek(25).expect("seeks back");
    assert_eq!(saldo_sim::view::snapshot(player.simulation()), at_25);
    player.run_to_end().expect("runs");
    assert_eq!(saldo_sim::view::snapshot(player.simulation()), end);
}

#[test]
fn an_exported_trace_with_injections_imports_and_replays_exactly() {
    // Proves export then import reproduces a run with hand-injected faults,
    // event for event, and that going back and injecting forks the future.
    let scenario = walkthrough("happy_path").expect("built in").scenario;
    let mut player = Player::new(Source::Scenario(scenario)).expect("valid");
    player.seek(3).expect("seeks");
    player
        .inject(Fault::CrashBeforeAck {
            service: Service::Inventory,
        })
        .expect("injects");
    player.seek(12).expect("seeks");
    player
        .inject(Fault::ClockJump { ms: 5_000 })
        .expect("injects");
    player.run_to_end().expect("runs");
    let exported = player.export();
    let hash = player.simulation().trace().hash_hex();

    let imported = Player::import(&exported).expect("imports");
    let verification = imported.verification().expect("verified");
    assert!(verification.exact(), "{verification:?}");
    assert_eq!(verification.trace_hash, hash);
    assert_eq!(imported.position(), 0, "an import starts at the beginning");

    let mut forked = Player::import(&exported).expect("imports");
    forked.seek(3).expect("seeks");
    forked.inject(Fault::ClientRetry).expect("injects");
    assert!(
        forked.verification().is_none(),
        "a new future is not the recording"
    );
    assert_eq!(
        forked.header().injections.len(),
        2,
        "later injections are dropped"
    );
    forked.run_to_end().expect("runs");
    assert_ne!(forked.simulation().trace().hash_hex(), hash);
}

#[test]
fn a_saldo_sim_trace_replays_to_the_same_hash() {
    // Proves a seeded run's trace file (what `saldo sim --trace` writes)
    // reproduces its run, and that a tampered trace is caught.
    let config = SimConfig::new(5, 40, Profile::Chaos);
    let report = saldo_sim::run(config, true);
    let text = String::from_utf8(report.trace_json_lines.expect("kept")).expect("utf-8");
    let player = Player::import(&text).expect("imports");
    let verification = player.verification().expect("verified");
    assert!(verification.exact());
    assert_eq!(verification.trace_hash, report.trace_hash);

    let mut lines: Vec<&str> = text.lines().collect();
    let tampered = lines[5].replace("\"now_ms\":", "\"now_ms\":1");
    lines[5] = &tampered;
    let player = Player::import(&lines.join("\n")).expect("still imports");
    let verification = player.verification().expect("verified");
    assert!(!verification.exact());
    assert_eq!(verification.identical, 4, "the first difference is found");
}

#[test]
fn a_header_alone_starts_a_hand_written_scenario() {
    // Proves a learner's own scenario, written as a one-line header, loads
    // and runs without a recording to compare against.
    let header = r#"{"saldo_trace":1,"source":{"scenario":{"name":"mine","seed":9,
        "wallets":[{"customer":"dora","amount":{"amount_minor":2000,"currency":"EUR"}}],
        "stock":[{"sku":"mug","on_hand":3,"unit_price":{"amount_minor":700,"currency":"EUR"}}],
        "orders":[{"customer":"dora","lines":[{"sku":"mug","quantity":2}]}],
        "faults":[{"kind":"duplicate","service":"payment"}]}}}"#
        .replace('\n', "");
    let mut player = Player::import(&header).expect("imports");
    assert!(player.verification().is_none());
    assert_eq!(player.run_to_end().expect("runs"), StepOutcome::Quiescent);
    assert_eq!(endings(player.simulation()), ["confirmed"]);
}

#[test]
fn bad_traces_and_scenarios_are_refused_with_a_reason() {
    // Proves imports fail with typed errors instead of running something else.
    assert!(matches!(Player::import(""), Err(ReplayError::Empty)));
    assert!(matches!(
        Player::import("{\"not\":\"a header\"}"),
        Err(ReplayError::Line { line: 1, .. })
    ));
    let mut scenario = walkthrough("happy_path").expect("built in").scenario;
    scenario.orders.clear();
    assert!(matches!(
        Player::new(Source::Scenario(scenario.clone())),
        Err(ReplayError::Scenario(ScenarioError::OrderCount(0)))
    ));
    let mut scenario: Scenario = walkthrough("happy_path").expect("built in").scenario;
    scenario.faults.push(Fault::Stall {
        consumer: Service::Payment,
        ms: 0,
    });
    assert!(matches!(
        Player::new(Source::Scenario(scenario)),
        Err(ReplayError::Scenario(ScenarioError::Fault { index: 0, .. }))
    ));
    let too_big = SimConfig::new(1, 1_000_000, Profile::Light);
    assert!(matches!(
        Player::new(Source::Seeded(too_big)),
        Err(ReplayError::Config(_))
    ));
}

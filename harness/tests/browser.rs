//! The bindings, in headless Chromium (`cargo test --target
//! wasm32-unknown-unknown -p saldo-harness`, run by `tests/run.sh`).
#![cfg(target_arch = "wasm32")]

use saldo_harness::{Harness, seeded_trace_hash, walkthroughs};
use serde_json::Value;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("the binding returns JSON")
}

#[wasm_bindgen_test]
fn the_browser_reproduces_the_native_trace_hashes() {
    // Proves the WebAssembly build computes, seed for seed, the hashes the
    // native simulator computes (tests/seed_hashes.rs checks the same file natively).
    let runs = json(include_str!("seed_hashes.json"));
    let runs = runs.as_array().expect("a list");
    assert_eq!(runs.len(), 16);
    for run in runs {
        let seed: u64 = run["seed"]
            .as_str()
            .expect("text")
            .parse()
            .expect("a number");
        let orders = u32::try_from(run["orders"].as_u64().expect("a number")).expect("fits");
        let faults = run["faults"].as_str().expect("text");
        let hash = seeded_trace_hash(seed, orders, faults).expect("runs");
        assert_eq!(hash, run["trace_hash"].as_str().expect("text"), "{run}");
        let mut kept = Harness::seeded(seed, orders, faults).expect("starts");
        kept.run_to_end().expect("runs");
        assert_eq!(kept.trace_hash(), hash, "keeping the trace changes nothing");
    }
}

#[wasm_bindgen_test]
fn every_walkthrough_runs_to_its_documented_ending() {
    // Proves each walkthrough ends quiescent with its documented endings and
    // every invariant holding, as the page will show it.
    let list = json(&walkthroughs());
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 8);
    for walkthrough in list {
        let name = walkthrough["scenario"]["name"].as_str().expect("named");
        let mut harness = Harness::walkthrough(name).expect("loads");
        assert_eq!(harness.run_to_end().expect("runs"), "quiescent", "{name}");
        let snapshot = json(&harness.snapshot());
        let mut endings: Vec<&str> = snapshot["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|order| order["ending"].as_str().expect("an ending"))
            .collect();
        endings.sort_unstable();
        let expected: Vec<&str> = walkthrough["endings_sorted"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|ending| ending.as_str().expect("text"))
            .collect();
        assert_eq!(endings, expected, "{name}");
        assert!(
            snapshot["invariants"]
                .as_array()
                .expect("a list")
                .iter()
                .all(|status| status["holds"] == true),
            "{name}"
        );
    }
}

#[wasm_bindgen_test]
fn next_back_and_seek_move_through_the_same_run() {
    // Proves stepping forwards, back and forwards again shows identical states.
    let mut harness = Harness::walkthrough("payment_crash").expect("loads");
    let start = harness.snapshot();
    harness.next_event().expect("steps");
    harness.next_event().expect("steps");
    let second = (harness.position(), harness.snapshot());
    harness.next_event().expect("steps");
    let third = harness.position();
    let back = harness.back().expect("goes back");
    assert_eq!(back, second.0);
    assert_eq!(harness.snapshot(), second.1);
    harness.seek(0).expect("seeks");
    assert_eq!(harness.snapshot(), start);
    harness.seek(third).expect("seeks");
    assert_eq!(harness.position(), third);
    let events = json(&harness.events(0));
    assert!(
        events
            .as_array()
            .expect("a list")
            .iter()
            .all(|event| event["what"].is_string() && event["why"].is_string())
    );
}

#[wasm_bindgen_test]
fn play_and_pause_advance_only_while_playing() {
    // Proves the play loop's binding: ticks advance while playing, never after pause.
    let mut harness = Harness::walkthrough("happy_path").expect("loads");
    assert!(!harness.tick().expect("ticks"));
    assert_eq!(harness.position(), 0);
    harness.play();
    assert!(harness.tick().expect("ticks"));
    let played = harness.position();
    assert!(played > 0);
    harness.pause();
    harness.tick().expect("ticks");
    assert_eq!(harness.position(), played);
    harness.play();
    while harness.tick().expect("ticks") {}
    assert_eq!(harness.state(), "quiescent");
}

#[wasm_bindgen_test]
fn an_injected_fault_is_exported_and_replays_exactly() {
    // Proves inject, export and import round-trip in the browser, and that
    // bad input is refused with an error instead of a panic.
    let mut harness = Harness::walkthrough("happy_path").expect("loads");
    harness.next_event().expect("steps");
    harness
        .inject(r#"{"kind":"crash_before_commit","service":"inventory"}"#)
        .expect("injects");
    assert!(harness.inject(r#"{"kind":"meteor"}"#).is_err());
    assert!(
        harness
            .inject(r#"{"kind":"stall","consumer":"payment","ms":0}"#)
            .is_err()
    );
    let armed = json(&harness.snapshot())["armed"].clone();
    assert_eq!(armed[0]["kind"], "crash_before_commit");
    harness.run_to_end().expect("runs");
    let trace = harness.export_trace();
    let imported = Harness::import_trace(&trace).expect("imports");
    let verification = json(&imported.verification());
    assert_eq!(verification["exact"], true, "{verification}");
    assert_eq!(verification["trace_hash"], harness.trace_hash().as_str());
    assert!(Harness::import_trace("not a trace").is_err());
    assert!(Harness::walkthrough("no_such_walkthrough").is_err());
    assert!(Harness::seeded(1, 10, "apocalyptic").is_err());
    assert!(Harness::seeded(1, 0, "none").is_err());
    assert!(Harness::seeded(1, 5_001, "none").is_err());
}

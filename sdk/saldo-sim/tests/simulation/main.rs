//! The simulator's own tests: many seeds stay clean, runs are deterministic,
//! and deliberately broken handlers are caught.

mod bites;
mod replay;

use saldo_sim::{Handlers, Profile, SimConfig, Simulation, run};

/// Seeds per profile in the sweep: 4 profiles x 2,500 = 10,000 seeds.
const SEEDS_PER_PROFILE: u64 = 2_500;
/// Orders per seed in the sweep.
const ORDERS_PER_SEED: u32 = 12;

#[test]
fn ten_thousand_seeds_across_the_profiles_hold_every_invariant() {
    // Proves the production handlers keep every invariant under every fault
    // profile, for 10,000 seeds, and that the faults really happened.
    let mut crashes = 0;
    let mut duplicates = 0;
    let mut timers = 0;
    let mut confirmed = 0;
    let mut cancelled = 0;
    for profile in Profile::ALL {
        for seed in 0..SEEDS_PER_PROFILE {
            let report = run(SimConfig::new(seed, ORDERS_PER_SEED, profile), false);
            if let Some(violation) = report.violation {
                panic!(
                    "seed {seed} ({}) broke {}: {}\nrecent events: {:#?}",
                    profile.name(),
                    violation.violation.invariant,
                    violation.violation.detail,
                    violation.recent
                );
            }
            crashes += report.stats.crashes_injected;
            duplicates += report.stats.duplicates_injected;
            timers += report.stats.timers_fired;
            confirmed += report.stats.orders_confirmed;
            cancelled += report.stats.orders_cancelled;
        }
    }
    assert_eq!(
        confirmed + cancelled,
        4 * SEEDS_PER_PROFILE * u64::from(ORDERS_PER_SEED),
        "every order ended"
    );
    assert!(
        confirmed > 0 && cancelled > 0,
        "both endings happen ({confirmed} / {cancelled})"
    );
    assert!(
        crashes > 1_000 && duplicates > 1_000 && timers > 1_000,
        "faults were injected: {crashes} crashes, {duplicates} duplicates, {timers} timers"
    );
}

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    // Proves determinism: 400 seeds, each run twice, give identical trace hashes
    // and counters, and different seeds give different hashes.
    let mut hashes = std::collections::BTreeSet::new();
    for profile in Profile::ALL {
        for seed in 0..100 {
            let config = SimConfig::new(seed, 15, profile);
            let first = run(config.clone(), false);
            let second = run(config, false);
            assert_eq!(
                first.trace_hash, second.trace_hash,
                "seed {seed} {profile:?}"
            );
            assert_eq!(first.stats, second.stats);
            hashes.insert(first.trace_hash);
        }
    }
    assert_eq!(
        hashes.len(),
        400,
        "every seed and profile gives its own trace"
    );
}

#[test]
fn the_trace_file_is_identical_byte_for_byte() {
    // Proves the JSON-lines trace is reproducible and agrees with the hash-only run.
    let config = SimConfig::new(7, 20, Profile::Chaos);
    let first = run(config.clone(), true);
    let second = run(config.clone(), true);
    let lines = first.trace_json_lines.expect("kept");
    assert_eq!(Some(&lines), second.trace_json_lines.as_ref());
    assert_eq!(
        first.trace_hash,
        run(config, false).trace_hash,
        "keeping the trace does not change the run"
    );
    let text = String::from_utf8(lines).expect("utf-8");
    assert!(
        text.lines()
            .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|line| line.contains("\"quiescent\""))
    );
}

#[test]
fn stepping_by_hand_equals_running() {
    // Proves `step` (used by the browser harness) and `run` walk the same path.
    let config = SimConfig::new(11, 10, Profile::Heavy);
    let mut simulation = Simulation::new(config.clone(), Handlers::REAL, false);
    let mut steps = 0;
    while simulation.step() == saldo_sim::StepOutcome::Running {
        steps += 1;
    }
    assert!(steps > 10);
    assert_eq!(
        simulation.report().trace_hash,
        run(config, false).trace_hash
    );
}

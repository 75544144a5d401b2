//! Simulated orders per second on one core, natively.
//!
//! `cargo bench -p saldo --bench simulator`. Runs each profile's workload
//! several times, interleaved so noise hits all of them alike, and prints the
//! median. One thread: the figure is per core.

use std::time::Instant;

use saldo_sim::{Profile, SimConfig, run};

const REPETITIONS: usize = 7;
const SEEDS: u64 = 40;
const ORDERS_PER_SEED: u32 = 250;

fn main() {
    let profiles = [Profile::None, Profile::Chaos];
    let mut rates: Vec<Vec<u128>> = vec![Vec::new(); profiles.len()];
    for _ in 0..REPETITIONS {
        for (index, profile) in profiles.iter().enumerate() {
            let started = Instant::now();
            let mut orders = 0;
            for seed in 0..SEEDS {
                let report = run(SimConfig::new(seed, ORDERS_PER_SEED, *profile), false);
                assert!(report.violation.is_none(), "seed {seed} broke an invariant");
                orders += report.stats.orders_confirmed + report.stats.orders_cancelled;
            }
            rates[index]
                .push(u128::from(orders) * 1_000_000 / started.elapsed().as_micros().max(1));
        }
    }
    println!(
        "simulated orders per second, one core, median of {REPETITIONS} ({SEEDS} seeds x {ORDERS_PER_SEED} orders each):"
    );
    for (profile, mut samples) in profiles.iter().zip(rates) {
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        println!(
            "  {:<6} {:>10} orders/s   (min {}, max {})",
            profile.name(),
            median,
            samples[0],
            samples[samples.len() - 1]
        );
    }
}

//! The trace hashes the browser must reproduce, checked against the native
//! simulator. `tests/browser.rs` compares the same file with the hashes the
//! WebAssembly build computes in headless Chromium, so together they prove
//! native and browser runs agree seed for seed.
//!
//! After a deliberate change to the trace, rewrite the file with
//! `SALDO_BLESS=1 cargo test -p saldo-harness --test seed_hashes`.
#![cfg(not(target_arch = "wasm32"))]

use saldo_sim::{Profile, SimConfig};
use serde_json::{Value, json};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/seed_hashes.json");

fn native() -> Value {
    let mut runs = Vec::new();
    for profile in Profile::ALL {
        for seed in [0_u64, 1, 42, 9_999_999_999] {
            let orders = 30;
            let report = saldo_sim::run(SimConfig::new(seed, orders, profile), false);
            runs.push(json!({
                "seed": seed.to_string(),
                "orders": orders,
                "faults": profile.name(),
                "trace_hash": report.trace_hash,
            }));
        }
    }
    Value::Array(runs)
}

#[test]
fn the_committed_seed_hashes_are_the_native_simulators() {
    // Proves the file the browser test checks against is what native runs produce now.
    let native = native();
    if std::env::var_os("SALDO_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&native).expect("serialises") + "\n";
        std::fs::write(FILE, text).expect("writes the file");
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(FILE).expect("the file exists"))
            .expect("the file is JSON");
    assert_eq!(
        committed, native,
        "the native trace hashes changed; if that is intended, rerun with SALDO_BLESS=1"
    );
}

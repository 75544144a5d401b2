#!/usr/bin/env bash
# Runs every Saldo test. On a fresh machine of the supported kind (Debian 12,
# rustup) it first installs what the tests need; each step checks before it
# installs, so a second run goes straight to the tests.
#
#   bash tests/run.sh
#
# Steps: toolchain (pinned in rust-toolchain.toml, with the wasm32 target),
# cargo-nextest, formatting and lints, the sdk built for wasm32, the examples,
# then every test under nextest with per-test timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup is required (https://rustup.rs); this machine kind ships it" >&2
    exit 1
fi
# Reading the toolchain file installs the pinned toolchain, its components
# and the wasm32 target when they are missing.
rustup show active-toolchain
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

step "cargo-nextest"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "sdk for wasm32-unknown-unknown"
sdk_packages=()
for manifest in sdk/*/Cargo.toml; do
    sdk_packages+=(-p "$(basename "$(dirname "$manifest")")")
done
cargo build --locked --target wasm32-unknown-unknown "${sdk_packages[@]}"

step "examples"
cargo run --locked -q -p saldo-examples --example wallet_ledger
cargo run --locked -q -p saldo-examples --example order_flow

step "tests"
cargo nextest run --workspace --locked --profile ci

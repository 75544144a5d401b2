#!/usr/bin/env bash
# Builds the browser harness: the simulator compiled to WebAssembly and its
# JavaScript bindings, into harness/web/pkg/. Only the package registries are
# used: the wasm32 target from rustup, the wasm-bindgen CLI from crates.io at
# exactly the version Cargo.toml pins (installed once, checked before).
#
#   bash harness/build.sh            # then open harness/web/ through `saldo dev`
#
# SALDO_HARNESS_PROFILE=dev builds unoptimised (faster to compile).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^wasm-bindgen = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
if [ -z "$version" ]; then
    echo "harness/build.sh: cannot find the pinned wasm-bindgen version in Cargo.toml" >&2
    exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
    # Not --locked: the CLI's lockfile names a crate version the registry
    # mirror does not carry; the resolver picks compatible ones.
    cargo install wasm-bindgen-cli --version "$version"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

profile=${SALDO_HARNESS_PROFILE:-wasm}
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --locked --profile "$profile" --target wasm32-unknown-unknown -p saldo-harness
[ "$profile" = dev ] && out=debug || out=$profile
wasm-bindgen --target web --no-typescript --out-dir harness/web/pkg \
    "$target_dir/wasm32-unknown-unknown/$out/saldo_harness.wasm"
echo "harness built: harness/web/pkg ($(du -k harness/web/pkg/saldo_harness_bg.wasm | cut -f1) KiB of wasm)"

// The simulator natively and as WebAssembly, side by side in one run.
//
//   cargo build --release -p saldo && bash harness/build.sh && node harness/bench.mjs
//
// Both sides run the same workload on one core, 7 times interleaved: 40 seeds
// of 250 orders for each profile. Native is `saldo sim --threads 1` (release);
// WebAssembly is the page's module (harness/web/pkg, release) in Node's V8,
// the engine Chromium uses. Prints medians and the WebAssembly/native ratio.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initSync, seeded_trace_hash } from './web/pkg/saldo_harness.js';

// Not import.meta.dirname: Debian 12's Node 18 lacks it.
const here = dirname(fileURLToPath(import.meta.url));

const root = resolve(here, '..');
const saldo = resolve(root, process.env.SALDO_BIN ?? 'target/release/saldo');
initSync({ module: readFileSync(resolve(here, 'web/pkg/saldo_harness_bg.wasm')) });

const REPETITIONS = 7;
const SEEDS = 40;
const ORDERS = 250;

function native(profile) {
  const output = execFileSync(saldo, ['sim', '--seeds', String(SEEDS), '--orders', String(ORDERS), '--faults', profile, '--threads', '1'], { encoding: 'utf8' });
  const found = output.match(/\((\d+) orders\/s on 1 thread/);
  if (!found) throw new Error(`no rate in:\n${output}`);
  return Number(found[1]);
}

function wasm(profile) {
  const started = process.hrtime.bigint();
  for (let seed = 0n; seed < BigInt(SEEDS); seed += 1n) seeded_trace_hash(seed, ORDERS, profile);
  const micros = Number((process.hrtime.bigint() - started) / 1000n);
  return Math.floor((SEEDS * ORDERS * 1_000_000) / Math.max(micros, 1));
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.log(`simulated orders/s, one core, median of ${REPETITIONS} (${SEEDS} seeds x ${ORDERS} orders), node ${process.version}`);
for (const profile of ['none', 'chaos']) {
  const rates = { native: [], wasm: [] };
  for (let repetition = 0; repetition < REPETITIONS; repetition += 1) {
    rates.native.push(native(profile));
    rates.wasm.push(wasm(profile));
  }
  const [n, w] = [median(rates.native), median(rates.wasm)];
  console.log(`  ${profile.padEnd(6)} native ${String(n).padStart(8)}  wasm ${String(w).padStart(8)}  wasm/native ${(w / n).toFixed(2)}`);
}

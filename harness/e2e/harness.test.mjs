// The browser harness end to end: `saldo dev` serves the built page, Debian's
// Chromium opens it (driven by playwright-core, never a downloaded browser),
// and every walkthrough runs to its end. Run by tests/run.sh after
// `bash harness/build.sh`:
//
//   SALDO_BIN=target/debug/saldo node --test harness/e2e/
//
// Screenshots go to $SALDO_SCREENSHOTS (default target/harness-screenshots).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '..', '..');
const saldo = resolve(root, process.env.SALDO_BIN ?? 'target/debug/saldo');
const screenshots = resolve(root, process.env.SALDO_SCREENSHOTS ?? 'target/harness-screenshots');
const chromiumPath = process.env.SALDO_CHROMIUM ?? '/usr/bin/chromium';
// Production orders exported from PostgreSQL by the Rust stuck-sagas test
// (hosts/saldo/tests/cli.rs), each beside the trace hash its native replay gave.
const recordings = resolve(root, process.env.SALDO_RECORDINGS ?? 'target/recordings');

// What each walkthrough must end in, written down independently of the
// simulator's own list: order endings (sorted) and a wallet balance.
const WALKTHROUGHS = {
  happy_path: { endings: ['confirmed'], wallet: ['alice', '70.00 EUR'] },
  insufficient_funds: { endings: ['cancelled:insufficient_funds'], wallet: ['bob', '5.00 EUR'] },
  out_of_stock: { endings: ['cancelled:out_of_stock'], wallet: ['alice', '100.00 EUR'] },
  duplicate_delivery: { endings: ['confirmed'], wallet: ['alice', '85.00 EUR'], shows: '· duplicate' },
  payment_crash: { endings: ['confirmed'], wallet: ['alice', '85.00 EUR'], shows: '✖ crash (before ack)' },
  publisher_crash: { endings: ['confirmed'], wallet: ['alice', '85.00 EUR'], shows: '✖ crash (after publish)' },
  deadline_fires: { endings: ['cancelled:payment_timed_out'], wallet: ['alice', '100.00 EUR'], shows: 'deadline' },
  last_unit_race: { endings: ['cancelled:out_of_stock', 'confirmed'], lampsLeft: '0' },
};

let server;
let browser;
let page;
let base;
let scratch;

function nativeHash(args) {
  const output = execFileSync(saldo, ['sim', ...args], { encoding: 'utf8' });
  const line = output.split('\n').find((text) => text.trim().startsWith('trace hash'));
  assert.ok(line, `saldo sim printed no trace hash:\n${output}`);
  return line.trim().split(/\s+/).pop();
}

async function state() {
  return page.locator('#state').textContent();
}

async function position() {
  return Number(await page.locator('#position').textContent());
}

async function runToEnd() {
  await page.click('#end');
  await page.waitForFunction(() => document.body.dataset.state !== 'running', null, { timeout: 60_000 });
}

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  scratch = mkdtempSync(join(tmpdir(), 'saldo-harness-'));
  server = spawn(saldo, ['dev', '--listen', '127.0.0.1:0', '--no-seed'], { stdio: ['ignore', 'pipe', 'inherit'] });
  base = await new Promise((resolveUrl, reject) => {
    let text = '';
    server.stdout.on('data', (chunk) => {
      text += chunk;
      const found = text.match(/running at (http:\/\/[0-9.:]+)/);
      if (found) resolveUrl(found[1]);
    });
    server.on('exit', (code) => reject(new Error(`saldo dev exited with ${code}`)));
  });
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error));
  page.on('console', (message) => { if (message.type() === 'error') problems.push(message.text()); });
  await page.goto(`${base}/harness`);
  await page.waitForFunction(() => document.body.dataset.ready !== undefined);
  assert.equal(await page.evaluate(() => document.body.dataset.ready), 'true', String(problems));
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test('the page lists every walkthrough', async () => {
  const names = await page.locator('#walkthroughs button').evaluateAll((buttons) => buttons.map((button) => button.dataset.walkthrough));
  assert.deepEqual(names.sort(), Object.keys(WALKTHROUGHS).sort());
});

for (const [name, expected] of Object.entries(WALKTHROUGHS)) {
  test(`walkthrough ${name} explains each step and ends as expected`, async () => {
    await page.click(`[data-walkthrough="${name}"]`);
    assert.equal(await position(), 0);
    assert.equal(await state(), 'running');
    // Step forwards: each step says what happened and why it is safe.
    const said = [];
    for (let step = 0; step < 4; step += 1) {
      await page.click('#next');
      const what = await page.locator('#moment li .what').allTextContents();
      const why = await page.locator('#moment li .why').allTextContents();
      assert.ok(what.length > 0 && what.every((text) => text.length > 10), `${name}: no narration at step ${step}`);
      assert.ok(why.every((text) => text.startsWith('Why it is safe:')));
      said.push(`${await position()}: ${what.join(' ')}`);
    }
    // And backwards (with the keyboard): the previous moment, exactly.
    const fourth = await position();
    await page.keyboard.press('ArrowLeft');
    const third = await position();
    assert.ok(third < fourth, `${name}: back went from ${fourth} to ${third}`);
    assert.equal(`${third}: ${(await page.locator('#moment li .what').allTextContents()).join(' ')}`, said[2]);

    await runToEnd();
    assert.equal(await state(), 'quiescent');
    const endings = await page.locator('tr[data-ending]').evaluateAll((rows) => rows.map((row) => row.dataset.ending));
    assert.deepEqual(endings.sort(), expected.endings);
    const invariants = await page.locator('#invariants li').evaluateAll((items) => items.map((item) => `${item.dataset.invariant}=${item.dataset.holds}`));
    assert.equal(invariants.length, 12);
    assert.ok(invariants.every((entry) => entry.endsWith('=true')), invariants.join(', '));
    if (expected.wallet) {
      const [customer, balance] = expected.wallet;
      assert.equal(await page.locator(`[data-balance="wallet:${customer}:EUR"]`).textContent(), balance);
    }
    if (expected.lampsLeft) {
      assert.equal(await page.locator('tr[data-sku="lamp"] td').nth(1).textContent(), expected.lampsLeft);
    }
    if (expected.shows) {
      const diagram = await page.locator('#sequence').textContent();
      assert.ok(diagram.includes(expected.shows), `${name}: the diagram does not show ${expected.shows}`);
    }
    assert.ok((await page.locator('.t-account').count()) >= 3, `${name}: no T-accounts`);
    await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
  });
}

test('the browser computes the native trace hash for the same seeds', async () => {
  const runs = [['0', '20', 'light'], ['7', '30', 'chaos'], ['123', '10', 'heavy'], ['99', '40', 'none'], ['18446744073709551615', '15', 'chaos']];
  for (const [seed, orders, faults] of runs) {
    const native = nativeHash(['--seed', seed, '--orders', orders, '--faults', faults]);
    await page.fill('#seed', seed);
    await page.fill('#orders', orders);
    await page.selectOption('#faults', faults);
    await page.click('#run-seed');
    await runToEnd();
    assert.equal(await state(), 'quiescent');
    assert.equal(await page.locator('#hash').textContent(), native, `seed ${seed} ${faults}`);
  }
  await page.screenshot({ path: join(screenshots, 'seeded-run.png'), fullPage: true });
});

test('a trace from saldo sim --trace replays exactly, forwards and backwards', async () => {
  const file = join(scratch, 'run.jsonl');
  const native = nativeHash(['--seed', '3', '--orders', '25', '--faults', 'heavy', '--trace', file]);
  await page.setInputFiles('#trace-file', file);
  await page.waitForFunction(() => !document.querySelector('#verification').hidden);
  assert.equal(await page.locator('#verification').getAttribute('data-exact'), 'true');
  assert.match(await page.locator('#verification').textContent(), /reproduced exactly/);
  assert.equal(await position(), 0);
  for (let step = 0; step < 5; step += 1) await page.click('#next');
  const fifth = await position();
  await page.click('#back');
  assert.ok(await position() < fifth);
  // Jump straight to a step, and back again to an earlier one.
  await page.fill('#goto-step', '400');
  await page.click('#goto');
  assert.equal(await position(), 400);
  const at400 = await page.locator('#hash').textContent();
  await page.fill('#goto-step', '7');
  await page.click('#goto');
  assert.equal(await position(), 7);
  await page.fill('#goto-step', '400');
  await page.click('#goto');
  assert.equal(await page.locator('#hash').textContent(), at400);
  await runToEnd();
  assert.equal(await page.locator('#hash').textContent(), native);
  await page.screenshot({ path: join(screenshots, 'replay.png'), fullPage: true });
});

test('a fault injected from the page takes effect and the run stays correct', async () => {
  await page.click('[data-walkthrough="happy_path"]');
  await page.click('#next');
  await page.selectOption('#fault-kind', 'crash_before_commit');
  await page.selectOption('#fault-service', 'payment');
  await page.click('#inject');
  assert.match(await page.locator('#moment').textContent(), /Fault injected: payment crashes before its next commit/);
  // A stall of 0 ms is refused by the form before it reaches the simulator.
  await page.selectOption('#fault-kind', 'stall');
  await page.fill('#fault-ms', '0');
  await page.click('#inject');
  assert.equal(await page.locator('#fault-ms:invalid').count(), 1);
  assert.doesNotMatch(await page.locator('#moment').textContent(), /stall/);
  await runToEnd();
  assert.equal(await state(), 'quiescent');
  assert.match(await page.locator('#sequence').textContent(), /crash \(before commit\)/);
  const endings = await page.locator('tr[data-ending]').evaluateAll((rows) => rows.map((row) => row.dataset.ending));
  assert.deepEqual(endings, ['confirmed']);
  assert.equal(await page.locator('[data-balance="wallet:alice:EUR"]').textContent(), '70.00 EUR');
});

test('a file that is not a trace is refused with a reason and the current run stays', async () => {
  await page.click('[data-walkthrough="out_of_stock"]');
  await page.click('#next');
  const before = await position();
  const file = join(scratch, 'not-a-trace.jsonl');
  writeFileSync(file, '{"orders": 3}\n');
  await page.setInputFiles('#trace-file', file);
  await page.waitForFunction(() => !document.querySelector('#error').hidden);
  assert.match(await page.locator('#error').textContent(), /line 1: not a trace header/);
  assert.equal(await page.locator('#title').textContent(), 'Out of stock');
  assert.equal(await position(), before);
});

test('a scenario written by hand loads from its header line and runs', async () => {
  const file = join(scratch, 'mine.jsonl');
  const eur = (minor) => ({ amount_minor: minor, currency: 'EUR' });
  writeFileSync(file, `${JSON.stringify({
    saldo_trace: 1,
    source: {
      scenario: {
        name: 'mine',
        seed: 9,
        wallets: [{ customer: 'dora', amount: eur(2000) }],
        stock: [{ sku: 'mug', on_hand: 3, unit_price: eur(700) }],
        orders: [{ customer: 'dora', lines: [{ sku: 'mug', quantity: 2 }] }, { customer: 'dora', lines: [{ sku: 'mug', quantity: 2 }] }],
      },
    },
  })}\n`);
  await page.setInputFiles('#trace-file', file);
  await page.waitForFunction(() => document.querySelector('#title').textContent.startsWith('Scenario from'));
  assert.equal(await page.locator('#verification').isHidden(), true);
  await runToEnd();
  const endings = await page.locator('tr[data-ending]').evaluateAll((rows) => rows.map((row) => row.dataset.ending));
  assert.deepEqual(endings.sort(), ['cancelled:out_of_stock', 'confirmed']);
  assert.equal(await page.locator('[data-balance="wallet:dora:EUR"]').textContent(), '6.00 EUR');
});

test('a recording the replay does not reproduce shows where it differs', async () => {
  const recorded = join(scratch, 'tampered.jsonl');
  execFileSync(saldo, ['sim', '--seed', '4', '--orders', '5', '--faults', 'none', '--trace', recorded]);
  const lines = readFileSync(recorded, 'utf8').split('\n');
  lines[3] = lines[3].replace('"now_ms":', '"now_ms":9');
  writeFileSync(recorded, lines.join('\n'));
  await page.setInputFiles('#trace-file', recorded);
  await page.waitForFunction(() => document.querySelector('#verification').dataset.exact === 'false');
  assert.match(await page.locator('#verification').textContent(), /after 2 identical events[\s\S]*recorded: [\s\S]*replayed: /);
});

function recordingFiles() {
  let files = [];
  try {
    files = readdirSync(recordings).filter((name) => name.endsWith('.jsonl')).sort();
  } catch {
    // Reported below.
  }
  assert.ok(files.length >= 3, `no recordings in ${recordings}: the Rust test stuck_sagas_of_every_kind_are_found_and_repaired_through_the_operator_api exports them (tests/run.sh runs it before this)`);
  return files;
}

test('production orders exported from PostgreSQL replay in the browser with the native hash', async () => {
  for (const file of recordingFiles()) {
    const native = readFileSync(join(recordings, file.replace(/\.jsonl$/, '.hash')), 'utf8').trim();
    await page.setInputFiles('#trace-file', join(recordings, file));
    await page.waitForFunction((name) => document.querySelector('#title').textContent === `Production order from ${name}`, file);
    const banner = page.locator('#verification');
    assert.equal(await banner.getAttribute('data-exact'), 'true', await banner.textContent());
    assert.equal(await position(), 0);
    await page.click('#next');
    const what = await page.locator('#moment li .what').allTextContents();
    assert.ok(what.some((text) => text.includes('placed order')), what.join(' '));
    assert.equal(await page.locator('#inject').isDisabled(), true, 'faults are not injected into a recording');
    await runToEnd();
    assert.equal(await state(), 'ended');
    assert.equal(await page.locator('#hash').textContent(), native, file);
    assert.equal(await page.locator('tr[data-ending]').count(), 1, file);
    // Backwards is forwards from the start: the same hash at the end again.
    await page.click('#start');
    assert.equal(await position(), 0);
    await runToEnd();
    assert.equal(await page.locator('#hash').textContent(), native, file);
  }
});

test('a production recording edited by hand shows each difference', async () => {
  const [file] = recordingFiles();
  const header = JSON.parse(readFileSync(join(recordings, file), 'utf8'));
  // The order row as if someone had changed its total in the table.
  for (const [service, stored] of header.recorded.rows) {
    if (service === 'order') stored.row.row.amount = { amount_minor: 1, currency: stored.row.row.currency };
  }
  const edited = join(scratch, `edited-${file}`);
  writeFileSync(edited, `${JSON.stringify(header)}\n`);
  await page.setInputFiles('#trace-file', edited);
  await page.waitForFunction(() => document.querySelector('#verification').dataset.exact === 'false');
  const differences = await page.locator('#verification pre[data-difference]').allTextContents();
  assert.equal(differences.length, 1, differences.join('\n'));
  assert.match(differences[0], /final row|order row/);
});

// The browser harness's page: picks a run, drives the simulator compiled to
// WebAssembly (pkg/, built by harness/build.sh) and draws what it reports.
// Every rule runs in the WebAssembly module; this file only renders.

import init, { Harness, walkthroughs } from './pkg/saldo_harness.js';

const $ = (selector) => document.querySelector(selector);
const START_MS = 1767225600000;
const LANES = ['client', 'order', 'broker', 'inventory', 'payment'];
const SEQUENCE_ROWS_MAX = 60;
const PLAY_INTERVAL_MS = 350;
const ROWS_SHOWN_MAX = 200;
const ACCOUNTS_SHOWN_MAX = 60;
const ENTRIES_PER_SIDE_MAX = 12;

let harness = null;
let events = [];
let player = null;
const catalogue = [];

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Times are shown from the run's start: the simulator's epoch, or a
// recording's placement (its snapshot's origin_ms).
let originMs = START_MS;

function clock(ms) {
  const elapsed = Math.max(0, ms - originMs);
  return `t+${Math.floor(elapsed / 1000)}.${String(elapsed % 1000).padStart(3, '0')}s`;
}

function since(rfc3339) {
  return rfc3339 ? clock(Date.parse(rfc3339)) : '';
}

function showError(error) {
  const box = $('#error');
  box.textContent = error ? String(error.message ?? error) : '';
  box.hidden = !error;
}

function guarded(action) {
  return (...args) => {
    try {
      showError(null);
      action(...args);
    } catch (error) {
      showError(error);
    }
    render();
  };
}

function stopPlaying() {
  if (player !== null) clearInterval(player);
  player = null;
  if (harness) harness.pause();
  $('#play').textContent = 'Play';
}

function load(next, title, summary) {
  stopPlaying();
  if (harness) harness.free();
  harness = next;
  events = [];
  $('#title').textContent = title;
  $('#summary').textContent = summary;
  const verification = JSON.parse(harness.verification());
  const banner = $('#verification');
  banner.hidden = verification === null;
  if (verification !== null) {
    banner.dataset.exact = String(verification.exact);
    if (verification.order_id !== undefined) {
      // A production order's recording: its messages and final row.
      banner.textContent = verification.exact
        ? `Production order ${verification.order_id} replayed exactly: the deciders gave every one of its ${verification.recorded - 1} outbox messages byte for byte, and its final row (trace ${verification.trace_hash.slice(0, 16)}…).`
        : `Production order ${verification.order_id} replays differently after ${verification.identical} identical messages: ${verification.differences.length} difference(s).`;
      for (const difference of verification.differences) {
        banner.append(element('pre', { 'data-difference': String(difference.step),
          text: `step ${difference.step}: ${difference.what}\nrecorded: ${JSON.stringify(difference.recorded)}\nreplayed: ${JSON.stringify(difference.replayed)}` }));
      }
    } else {
      banner.textContent = verification.exact
        ? `Replay verified: all ${verification.recorded} recorded events were reproduced exactly (trace ${verification.trace_hash.slice(0, 16)}…).`
        : `Replay differs from the recording after ${verification.identical} identical events (recorded ${verification.recorded}, replayed ${verification.replayed}).`;
    }
    if (verification.first_difference && verification.order_id === undefined) {
      const [recorded, replayed] = verification.first_difference;
      banner.append(element('pre', { text: `recorded: ${JSON.stringify(recorded)}\nreplayed: ${JSON.stringify(replayed)}` }));
    }
  }
}

// ---------------------------------------------------------------- rendering

function refreshEvents() {
  const count = harness.event_count();
  if (count < events.length) events = [];
  if (count > events.length) events = events.concat(JSON.parse(harness.events(events.length)));
}

function renderStatus(snapshot) {
  $('#position').textContent = snapshot.step;
  $('#clock').textContent = `t+${(snapshot.elapsed_ms / 1000).toFixed(3)}s`;
  const state = $('#state');
  state.textContent = snapshot.state;
  state.dataset.state = snapshot.state;
  $('#hash').textContent = snapshot.trace_hash;
  document.body.dataset.state = snapshot.state;
}

function renderMoment(snapshot) {
  const list = $('#moment');
  list.replaceChildren();
  const now = events.filter((event) => event.step === snapshot.step);
  if (now.length === 0) {
    list.append(element('li', { class: 'quiet' },
      snapshot.step === 0 ? 'Nothing has happened yet. Press Next.' : 'Time passed; no service had anything to do at this step.'));
  }
  for (const event of now) {
    list.append(element('li', { 'data-event': event.event },
      element('p', { class: 'what', text: event.what }),
      element('p', { class: 'why' }, element('b', { text: 'Why it is safe: ' }), event.why)));
  }
  if (snapshot.violation) {
    list.append(element('li', { class: 'broken' },
      `Invariant broken: ${snapshot.violation.violation.invariant}: ${snapshot.violation.violation.detail}`));
  }
}

function arrow(event) {
  switch (event.event) {
    case 'order_requested':
      return { from: 'client', to: 'order', label: `POST /orders ${event.idempotency_key} → ${event.outcome}`, kind: event.outcome };
    case 'published':
      return { from: event.service, to: 'broker', label: `${event.message_type} ${event.order_id}${event.duplicated ? ' ×2' : ''}`, kind: event.duplicated ? 'duplicate' : 'published' };
    case 'delivered':
      return { from: 'broker', to: event.consumer, label: `${event.message_type} ${event.order_id} · ${event.outcome}`, kind: event.outcome };
    case 'timer_fired':
      return { from: 'order', to: 'order', label: `deadline ${event.order_id} · ${event.outcome}`, kind: 'timer' };
    case 'crashed':
      return { from: event.service, to: event.service, label: `✖ crash (${event.point.replaceAll('_', ' ')})`, kind: 'crashed' };
    case 'restarted':
      return { from: event.service, to: event.service, label: '↻ restarted', kind: 'restarted' };
    case 'stalled':
      return { from: 'broker', to: event.consumer, label: `partition ${event.partition} stalls`, kind: 'crashed' };
    case 'fault_injected':
      return { note: `⚡ injected: ${event.fault.kind.replaceAll('_', ' ')}`, kind: 'fault' };
    case 'clock_jumped':
      return { note: `clock +${event.ms} ms`, kind: 'fault' };
    case 'faults_stopped':
      return { note: 'faults stop', kind: 'quiet' };
    case 'emitted':
      return { from: 'order', to: 'broker', label: `${event.message_type} ${event.order_id}${event.as_recorded ? '' : ' ≠ production'}`, kind: event.as_recorded ? 'published' : 'crashed' };
    case 'intervened':
      return { from: 'client', to: 'order', label: `operator: ${event.action.replaceAll('_', ' ')} · ${event.outcome}`, kind: 'fault' };
    default:
      return { note: event.event.replaceAll('_', ' '), kind: 'quiet' };
  }
}

function renderSequence(snapshot) {
  const svg = $('#sequence');
  const ns = 'http://www.w3.org/2000/svg';
  const shown = events.filter((event) => event.step <= snapshot.step).slice(-SEQUENCE_ROWS_MAX);
  const laneWidth = 130;
  const rowHeight = 26;
  const top = 34;
  const width = laneWidth * LANES.length;
  const height = top + rowHeight * (shown.length + 1);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const make = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const x = (lane) => laneWidth * LANES.indexOf(lane) + laneWidth / 2;
  const defs = make('defs', {});
  const marker = document.createElementNS(ns, 'marker');
  for (const [name, value] of Object.entries({ id: 'head', viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' })) marker.setAttribute(name, value);
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M 0 0 L 10 5 L 0 10 z');
  path.setAttribute('class', 'head');
  marker.append(path);
  defs.append(marker);
  for (const lane of LANES) {
    make('text', { x: x(lane), y: 18, class: 'lane-name', 'text-anchor': 'middle' }, lane);
    make('line', { x1: x(lane), x2: x(lane), y1: 24, y2: height, class: 'lane' });
  }
  shown.forEach((event, index) => {
    const y = top + rowHeight * index + rowHeight / 2;
    const drawn = arrow(event);
    const current = event.step === snapshot.step;
    const group = `${drawn.kind}${current ? ' current' : ''}`;
    if (drawn.note) {
      make('text', { x: width / 2, y: y + 4, 'text-anchor': 'middle', class: `note ${group}` }, drawn.note);
    } else if (drawn.from === drawn.to) {
      const cx = x(drawn.from);
      make('path', { d: `M ${cx} ${y - 7} h 18 v 12 h -16`, class: `arrow ${group}`, 'marker-end': 'url(#head)' });
      make('text', { x: cx + 24, y: y + 4, class: `label ${group}` }, drawn.label);
    } else {
      const x1 = x(drawn.from);
      const x2 = x(drawn.to);
      make('line', { x1, x2: x2 + (x2 > x1 ? -3 : 3), y1: y, y2: y, class: `arrow ${group}`, 'marker-end': 'url(#head)' });
      make('text', { x: (x1 + x2) / 2, y: y - 4, 'text-anchor': 'middle', class: `label ${group}` }, drawn.label);
    }
  });
  const scroller = svg.parentElement;
  scroller.scrollTop = scroller.scrollHeight;
}

function renderInvariants(snapshot) {
  const list = $('#invariants');
  list.replaceChildren();
  if (snapshot.recorded) {
    list.append(element('li', { class: 'quiet' },
      'A recording holds one order, so the platform-wide invariants are not judged here; saldo admin story shows reconciliation\'s findings for it.'));
    return;
  }
  for (const status of snapshot.invariants) {
    const holds = status.holds === null ? 'pending' : String(status.holds);
    const mark = status.holds === null ? '…' : status.holds ? '✔' : '✖';
    list.append(element('li', { 'data-invariant': status.name, 'data-holds': holds, title: status.promise },
      element('span', { class: 'mark', text: mark }),
      element('span', { class: 'name', text: status.name.replaceAll('_', ' ') }),
      element('span', { class: 'detail', text: status.detail })));
  }
}

function table(caption, columns, allRows, rowAttributes = () => ({})) {
  // Large seeded runs have thousands of rows; the page shows the first ones.
  const rows = allRows.slice(0, ROWS_SHOWN_MAX);
  if (allRows.length > rows.length) caption = `${caption}: first ${rows.length} of ${allRows.length}`;
  const head = element('tr', {}, columns.map(([title]) => element('th', { text: title })));
  const body = rows.length === 0
    ? [element('tr', {}, element('td', { class: 'empty', colspan: columns.length, text: 'empty' }))]
    : rows.map((row) => element('tr', rowAttributes(row), columns.map(([, cell]) => {
      const value = cell(row);
      return element('td', {}, value instanceof Node ? value : String(value ?? ''));
    })));
  return element('table', {}, element('caption', { text: caption }), element('thead', {}, head), element('tbody', {}, body));
}

const lines = (list) => list.map((line) => `${line.quantity}× ${line.sku}`).join(', ');
const short = (id) => (id ? `${id.slice(0, 8)}…` : '');
const stateName = (state) => (state ? (state.state ?? state).toString().replaceAll('_', ' ') + (state.reason ? ` (${state.reason.replaceAll('_', ' ')})` : '') : '');

function sagaHistory(order) {
  return element('details', {},
    element('summary', { text: `${order.history.length} saga events` }),
    element('ol', { class: 'history' }, order.history.map((record) => element('li', {
      text: `${since(record.at)} ${record.event}${record.step_name ? ` ${record.step_name}` : ''}${record.phase ? ` (${record.phase})` : ''}${record.attempt ? ` attempt ${record.attempt}` : ''}${record.ending ? ` ${record.ending}` : ''}${record.reason ? ` (${String(record.reason).replaceAll('_', ' ')})` : ''}`,
    }))));
}

function messages(caption, rows, extra = []) {
  return table(caption, [
    ['message', (row) => short(row.message_id)],
    ['type', (row) => row.type],
    ['order', (row) => row.order_id],
    ...extra,
  ], rows);
}

function renderTables(snapshot) {
  const service = (name) => snapshot.services.find((entry) => entry.service === name);
  const status = (name) => {
    const entry = service(name);
    const parts = [];
    if (entry.down_until) parts.push(`down until ${since(entry.down_until)}`);
    if (entry.publisher_down_until) parts.push(`publisher down until ${since(entry.publisher_down_until)}`);
    return element('p', { class: parts.length ? 'down' : 'up', 'data-service-status': name, text: parts.length ? parts.join('; ') : 'running' });
  };
  const topic = (name) => messages(`topic ${name} (not yet acknowledged)`, service(name).topic, [
    ['partition', (row) => `${row.partition}@${row.offset}`],
    ['read', (row) => (row.read ? 'read, not acked' : 'waiting')],
    ['stall', (row) => (row.stalled_until ? `until ${since(row.stalled_until)}` : '')],
  ]);
  const inbox = (name) => table(`inbox (${service(name).inbox.length} message ids)`, [
    ['message', (row) => short(row.message_id)],
    ['received', (row) => since(row.received_at)],
  ], service(name).inbox);
  const outbox = (name) => messages('outbox (committed, not yet published)', service(name).outbox, [['seq', (row) => row.sequence]]);
  const column = (name, ...parts) => element('div', { class: 'service', 'data-service': name },
    element('h4', { text: `${name} service` }), status(name), ...parts);
  $('#service-tables').replaceChildren(
    element('div', { class: 'client' },
      element('p', { text: `Client: ${snapshot.client.unsent} orders still to send, ${snapshot.client.retries} retries waiting.${snapshot.armed.length ? ` Armed faults: ${snapshot.armed.map((fault) => fault.kind.replaceAll('_', ' ') + (fault.service ? ` (${fault.service})` : '')).join(', ')}.` : ''}` })),
    column('order',
      table('orders and saga state', [
        ['order', (row) => row.order_id],
        ['customer', (row) => row.customer],
        ['lines', (row) => lines(row.lines)],
        ['amount', (row) => row.amount?.text ?? ''],
        ['status', (row) => row.ending.replace(':', ': ').replaceAll('_', ' ')],
        ['deadline', (row) => since(row.deadline)],
        ['v', (row) => row.version],
        ["history", (row) => sagaHistory(row)],
      ], snapshot.orders, (row) => ({ 'data-order': row.order_id, 'data-ending': row.ending })),
      table('idempotency keys', [
        ['service', (row) => row.service],
        ['key', (row) => row.key],
        ['state', (row) => row.state.replaceAll('_', ' ')],
      ], snapshot.idempotency),
      outbox('order'), inbox('order'), topic('order')),
    column('inventory',
      table('stock', [
        ['sku', (row) => row.sku],
        ['on hand', (row) => row.on_hand],
        ['reserved', (row) => row.reserved],
        ['available', (row) => row.available],
        ['price', (row) => row.unit_price.text],
        ['v', (row) => row.version],
      ], snapshot.stock, (row) => ({ 'data-sku': row.sku })),
      table('reservations', [
        ['order', (row) => row.order_id],
        ['lines', (row) => lines(row.lines)],
        ['amount', (row) => row.amount?.text ?? ''],
        ['state', (row) => stateName(row.state)],
      ], snapshot.reservations),
      outbox('inventory'), inbox('inventory'), topic('inventory')),
    column('payment',
      table('payments', [
        ['order', (row) => row.order_id],
        ['customer', (row) => row.customer],
        ['amount', (row) => row.amount.text],
        ['state', (row) => stateName(row.state)],
      ], snapshot.payments, (row) => ({ 'data-payment': row.order_id, 'data-state': row.state.state })),
      outbox('payment'), inbox('payment'), topic('payment')),
  );
}

function renderLedger(snapshot) {
  const accounts = snapshot.accounts.slice(0, ACCOUNTS_SHOWN_MAX);
  const hidden = snapshot.accounts.length - accounts.length;
  $('#t-accounts').replaceChildren(...accounts.map((account) => {
    const side = (title, all) => {
      const entries = all.slice(-ENTRIES_PER_SIDE_MAX);
      return element('div', { class: 'side' },
      element('h5', { text: all.length > entries.length ? `${title} (last ${entries.length} of ${all.length})` : title }),
      element('ul', {}, entries.map((entry) => element('li', { title: `${entry.purpose} ${entry.order_id ?? ''}` },
        element('span', { class: 'seq', text: `#${entry.sequence}` }),
        element('span', { class: 'purpose', text: `${entry.purpose}${entry.order_id ? ` ${entry.order_id}` : ''}` }),
        element('span', { class: 'amount', text: entry.amount.text })))));
    };
    return element('div', { class: 't-account', 'data-account': account.account },
      element('h4', { text: account.account }),
      element('div', { class: 'sides' }, side('Debit', account.debits), side('Credit', account.credits)),
      element('p', { class: 'balance' }, 'balance ', element('b', { 'data-balance': account.account, text: account.balance.text }),
        account.held.minor !== 0 ? ` (held ${account.held.text})` : ''));
  }), ...(hidden > 0 ? [element('p', { class: 'more', text: `and ${hidden} more accounts` })] : []));
  $('#entries').replaceChildren(table('ledger entries', [
    ['#', (row) => row.sequence],
    ['at', (row) => since(row.recorded_at)],
    ['purpose', (row) => row.purpose],
    ['order', (row) => row.order_id ?? ''],
    ['legs', (row) => row.legs.map((leg) => `${leg.side} ${leg.account} ${leg.amount.text}`).join('; ')],
    ['reverses', (row) => short(row.reverses)],
    ['hash', (row) => short(row.hash)],
  ], snapshot.ledger));
}

function render() {
  const ready = harness !== null;
  for (const id of ['#start', '#back', '#next', '#play', '#end', '#export', '#inject', '#goto']) $(id).disabled = !ready;
  if (!ready) return;
  refreshEvents();
  const snapshot = JSON.parse(harness.snapshot());
  originMs = snapshot.origin_ms ?? START_MS;
  renderStatus(snapshot);
  renderMoment(snapshot);
  renderSequence(snapshot);
  renderInvariants(snapshot);
  renderTables(snapshot);
  renderLedger(snapshot);
  const finished = snapshot.state !== 'running';
  $('#next').disabled = finished;
  $('#end').disabled = finished;
  $('#play').disabled = finished;
  $('#inject').disabled = finished || harness.recorded();
  $('#back').disabled = snapshot.step === 0;
  $('#start').disabled = snapshot.step === 0;
  if (finished) stopPlaying();
}

// ---------------------------------------------------------------- wiring

function pickWalkthrough(name) {
  const walkthrough = catalogue.find((entry) => entry.scenario.name === name);
  if (!walkthrough) throw new Error(`no walkthrough is called ${name}`);
  load(Harness.walkthrough(name), walkthrough.title, walkthrough.summary);
  for (const item of document.querySelectorAll('#walkthroughs button')) {
    item.setAttribute('aria-current', String(item.dataset.walkthrough === name));
  }
  history.replaceState(null, '', `#${name}`);
}

function faultFromForm() {
  const kind = $('#fault-kind').value;
  const service = $('#fault-service').value;
  const ms = Number($('#fault-ms').value);
  if (kind === 'stall') return { kind, consumer: service, ms };
  if (kind === 'clock_jump') return { kind, ms };
  if (kind === 'client_retry') return { kind };
  return { kind, service };
}

async function main() {
  await init();
  catalogue.push(...JSON.parse(walkthroughs()));
  $('#walkthroughs').replaceChildren(...catalogue.map((walkthrough) => element('li', {},
    element('button', { type: 'button', 'data-walkthrough': walkthrough.scenario.name, title: walkthrough.summary, text: walkthrough.title }))));
  $('#walkthroughs').addEventListener('click', guarded((event) => {
    const button = event.target.closest('button[data-walkthrough]');
    if (button) pickWalkthrough(button.dataset.walkthrough);
  }));
  $('#next').addEventListener('click', guarded(() => harness.next_event()));
  $('#back').addEventListener('click', guarded(() => { stopPlaying(); harness.back(); }));
  $('#start').addEventListener('click', guarded(() => { stopPlaying(); harness.seek(0n); }));
  $('#end').addEventListener('click', guarded(() => { stopPlaying(); harness.run_to_end(); }));
  $('#goto-form').addEventListener('submit', guarded((event) => {
    event.preventDefault();
    stopPlaying();
    harness.seek(BigInt($('#goto-step').value));
  }));
  $('#play').addEventListener('click', guarded(() => {
    if (player !== null) {
      stopPlaying();
      return;
    }
    harness.play();
    $('#play').textContent = 'Pause';
    player = setInterval(guarded(() => {
      if (!harness.tick()) stopPlaying();
    }), PLAY_INTERVAL_MS);
  }));
  $('#seeded-form').addEventListener('submit', guarded((event) => {
    event.preventDefault();
    const seed = BigInt($('#seed').value);
    const orders = Number($('#orders').value);
    const faults = $('#faults').value;
    load(Harness.seeded(seed, orders, faults), `Seed ${seed}: ${orders} orders, ${faults} faults`,
      `The run saldo sim --seed ${seed} --orders ${orders} --faults ${faults} makes natively; the trace hash is the same.`);
  }));
  $('#trace-file').addEventListener('change', async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const text = await file.text();
    guarded(() => {
      const imported = Harness.import_trace(text);
      const recorded = imported.verification() !== 'null';
      if (imported.recorded()) {
        load(imported, `Production order from ${file.name}`,
          'Recorded by saldo admin export: each step feeds the order service one input production fed it (the placement, a participant\'s reply, a deadline, an operator\'s action) at its instant, through the same deciders, and compares each message with production\'s. The participants are shown as they recorded themselves.');
        return;
      }
      load(imported, recorded ? `Replay of ${file.name}` : `Scenario from ${file.name}`, recorded
        ? 'Re-run from the trace header and compared with the recording event by event. Step forwards and backwards through it.'
        : 'The run the file\'s header describes (no recorded events to compare). Step through it, inject faults, export it.');
    })();
  });
  $('#export').addEventListener('click', guarded(() => {
    const blob = new Blob([harness.export_trace()], { type: 'application/x-ndjson' });
    const link = element('a', { href: URL.createObjectURL(blob), download: `saldo-trace-${harness.position()}.jsonl` });
    link.click();
    URL.revokeObjectURL(link.href);
  }));
  $('#inject-form').addEventListener('submit', guarded((event) => {
    event.preventDefault();
    harness.inject(JSON.stringify(faultFromForm()));
  }));
  // Keys: → next, ← back, space play/pause, Home start, End to the end.
  document.addEventListener('keydown', (event) => {
    if (event.target.closest('input, select, textarea') || event.ctrlKey || event.metaKey || event.altKey) return;
    // Space on a focused button presses that button, as browsers do.
    if (event.key === ' ' && event.target.closest('button')) return;
    const button = { ArrowRight: '#next', ArrowLeft: '#back', ' ': '#play', Home: '#start', End: '#end' }[event.key];
    if (button && !$(button).disabled) {
      event.preventDefault();
      $(button).click();
    }
  });
  const wanted = decodeURIComponent(location.hash.slice(1));
  guarded(() => pickWalkthrough(catalogue.some((entry) => entry.scenario.name === wanted) ? wanted : catalogue[0].scenario.name))();
  document.body.dataset.ready = 'true';
}

main().catch((error) => {
  showError(error);
  document.body.dataset.ready = 'failed';
});

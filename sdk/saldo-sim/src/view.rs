//! A snapshot of the whole simulated platform, as the browser harness shows
//! it: every service's tables, the broker, the ledger as T-accounts, and the
//! invariants. Plain JSON, sorted by key, so two snapshots of the same
//! moment are identical.

use std::collections::BTreeMap;

use saldo_domain::MemoryStore;
use saldo_domain::Rules;
use saldo_domain::decision::{Row, Version};
use saldo_domain::messages::{Envelope, Service};
use saldo_idempotency::RecordState;
use saldo_ledger::{Entry, Side};
use saldo_types::Money;
use serde_json::{Value, json};

use crate::invariants;
use crate::recorded::RecordedPlayer;
use crate::scenario::ending;
use crate::sim::{START, Simulation, StepOutcome};

fn money(amount: Money) -> Value {
    json!({ "minor": amount.amount_minor(), "currency": amount.currency().code(), "text": amount.to_string() })
}

fn message(envelope: &Envelope) -> Value {
    json!({
        "message_id": envelope.message_id.to_string(),
        "type": envelope.message_type(),
        "order_id": envelope.order_id,
        "consumer": envelope.payload.consumer(),
        "causation_id": envelope.causation_id.map(|id| id.to_string()),
    })
}

/// The rows and the ledger as the page's tables show them.
#[derive(Default)]
struct Tables {
    orders: BTreeMap<String, Value>,
    stock: BTreeMap<String, Value>,
    reservations: BTreeMap<String, Value>,
    payments: BTreeMap<String, Value>,
    accounts: BTreeMap<String, Value>,
    entries: Vec<Value>,
}

impl Tables {
    fn of<'a>(
        rules: &Rules,
        rows: impl IntoIterator<Item = (Version, &'a Row)>,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Tables {
        let mut orders = BTreeMap::new();
        let mut stock = BTreeMap::new();
        let mut reservations = BTreeMap::new();
        let mut payments = BTreeMap::new();
        let mut accounts = BTreeMap::new();
        for (version, row) in rows {
            match row {
                Row::Order(order) => {
                    let mut view = saldo_domain::order::view(&rules.order_saga, order);
                    view["ending"] = json!(ending(&order.status()));
                    view["version"] = json!(version);
                    view["deadline"] = json!(order.deadline().map(|at| at.to_string()));
                    view["amount"] = order.amount.map_or(Value::Null, money);
                    orders.insert(order.order_id.to_string(), view);
                }
                Row::Stock(row) => {
                    stock.insert(
                        row.sku.to_string(),
                        json!({
                            "sku": row.sku,
                            "on_hand": row.on_hand,
                            "reserved": row.reserved,
                            "available": row.on_hand.saturating_sub(row.reserved),
                            "unit_price": money(row.unit_price),
                            "version": version,
                        }),
                    );
                }
                Row::Reservation(row) => {
                    reservations.insert(
                        row.order_id.to_string(),
                        json!({
                            "order_id": row.order_id,
                            "lines": row.lines,
                            "amount": row.amount.map_or(Value::Null, money),
                            "state": row.state,
                            "version": version,
                        }),
                    );
                }
                Row::Payment(row) => {
                    payments.insert(
                        row.order_id.to_string(),
                        json!({
                            "order_id": row.order_id,
                            "customer": row.customer,
                            "amount": money(row.amount),
                            "state": row.state,
                            "version": version,
                        }),
                    );
                }
                Row::Wallet(_) => {}
                Row::Account(account) => {
                    accounts.insert(
                        account.id.to_string(),
                        json!({
                            "account": account.id.to_string(),
                            "balance": money(account.balance),
                            "held": money(account.held),
                            "debits": [],
                            "credits": [],
                        }),
                    );
                }
            }
        }
        let mut views = Vec::new();
        for entry in entries {
            let posting = &entry.posting;
            for leg in &posting.legs {
                let column = match leg.side {
                    Side::Debit => "debits",
                    Side::Credit => "credits",
                };
                if let Some(account) = accounts.get_mut(&leg.account.to_string())
                    && let Some(list) = account[column].as_array_mut()
                {
                    list.push(json!({
                        "sequence": entry.sequence,
                        "amount": money(leg.amount),
                        "purpose": posting.memo.purpose,
                        "order_id": posting.memo.order_id,
                    }));
                }
            }
            views.push(json!({
                "sequence": entry.sequence,
                "recorded_at": entry.recorded_at.to_string(),
                "posting_id": posting.id.to_string(),
                "purpose": posting.memo.purpose,
                "order_id": posting.memo.order_id,
                "reverses": posting.reverses.map(|id| id.to_string()),
                "legs": posting.legs.iter().map(|leg| json!({
                    "account": leg.account.to_string(),
                    "side": leg.side,
                    "amount": money(leg.amount),
                })).collect::<Vec<_>>(),
                "hash": entry.hash.to_hex(),
            }));
        }
        Tables {
            orders,
            stock,
            reservations,
            payments,
            accounts,
            entries: views,
        }
    }
}

/// The snapshot of `simulation` as it stands.
pub fn snapshot(simulation: &Simulation) -> Value {
    let store = simulation.store();
    let Tables {
        orders,
        stock,
        reservations,
        payments,
        accounts,
        entries,
    } = Tables::of(
        simulation.rules(),
        store
            .rows()
            .map(|(_, versioned)| (versioned.version, &versioned.value)),
        store.entries(),
    );
    let mut inbox = inbox_by_service(store);
    let idempotency = idempotency_view(store);
    let services: Vec<Value> = Service::ALL
        .iter()
        .map(|service| {
            let service = *service;
            json!({
                "service": service,
                "down_until": simulation.down_until(service).map(|at| at.to_string()),
                "publisher_down_until": simulation.publisher_down_until(service).map(|at| at.to_string()),
                "outbox": outbox_view(store, service),
                "inbox": inbox.remove(&service.to_string()).unwrap_or_default(),
                "topic": simulation
                    .broker()
                    .in_flight(service)
                    .iter()
                    .map(|queued| {
                        let mut view = message(&queued.envelope);
                        view["partition"] = json!(queued.partition);
                        view["offset"] = json!(queued.offset);
                        view["read"] = json!(queued.read);
                        view["stalled_until"] = json!((queued.stalled_until > simulation.now())
                            .then(|| queued.stalled_until.to_string()));
                        view
                    })
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let violation = simulation.violation();
    let outcome = simulation.outcome();
    let (unsent, retries) = simulation.client_backlog();
    json!({
        "step": simulation.stats().steps,
        "now": simulation.now().to_string(),
        "elapsed_ms": simulation.now().ms_since(START),
        "state": outcome.name(),
        "trace_hash": simulation.trace().hash_hex(),
        "events": simulation.trace().events(),
        "stats": simulation.stats(),
        "armed": simulation.armed(),
        "client": { "unsent": unsent, "retries": retries },
        "services": services,
        "orders": orders.into_values().collect::<Vec<_>>(),
        "idempotency": idempotency,
        "stock": stock.into_values().collect::<Vec<_>>(),
        "reservations": reservations.into_values().collect::<Vec<_>>(),
        "payments": payments.into_values().collect::<Vec<_>>(),
        "accounts": accounts.into_values().collect::<Vec<_>>(),
        "ledger": entries,
        "invariants": invariants::status(
            store,
            outcome == StepOutcome::Quiescent,
            violation.map(|report| &report.violation),
        ),
        "violation": violation,
    })
}

fn inbox_by_service(store: &MemoryStore) -> BTreeMap<String, Vec<Value>> {
    let mut inbox: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut receipts: Vec<_> = store.inbox_receipts().collect();
    receipts.sort_by_key(|receipt| (receipt.received_at, receipt.message_id));
    for receipt in receipts {
        inbox
            .entry(receipt.consumer.to_string())
            .or_default()
            .push(json!({
                "message_id": receipt.message_id.to_string(),
                "received_at": receipt.received_at.to_string(),
            }));
    }
    inbox
}

fn idempotency_view(store: &MemoryStore) -> Vec<Value> {
    store
        .idempotency_records()
        .map(|(service, key, record)| {
            let state = match &record.value.state {
                RecordState::InFlight { .. } => "in_flight",
                RecordState::Completed { .. } => "completed",
            };
            json!({ "service": service, "key": key, "state": state })
        })
        .collect()
}

fn outbox_view(store: &MemoryStore, service: Service) -> Vec<Value> {
    store
        .outbox_pending(service, usize::MAX)
        .iter()
        .map(|row| {
            let mut view = message(&row.envelope);
            view["sequence"] = json!(row.sequence);
            view
        })
        .collect()
}

/// The snapshot of a recorded production order's replay, in the shape of
/// [`snapshot`]: the order service's rows, outbox and inbox as the replay
/// made them; the participants' final rows as production stored them, once
/// the order service has handled their last reply, and the ledger entries
/// as recorded, from their instants.
pub fn recorded_snapshot(player: &RecordedPlayer) -> Value {
    let store = player.store();
    let story = player.story();
    let now = player.now();
    let started = player.position() > 0;
    // A participant's row is its final one: shown once the order service
    // has handled the participant's last reply (or at the end).
    let last_heard = |service: Service| {
        story
            .messages
            .iter()
            .filter(|message| message.sender == service)
            .flat_map(|message| message.received.iter())
            .filter(|(consumer, _)| *consumer == Service::Order)
            .map(|(_, at)| *at)
            .max()
    };
    let participants = story
        .rows
        .iter()
        .filter(|(service, _)| {
            *service != Service::Order
                && started
                && (player.finished() || last_heard(*service).is_some_and(|at| at <= now))
        })
        .map(|(_, stored)| (stored.version, &stored.row));
    let Tables {
        orders,
        stock,
        reservations,
        payments,
        accounts,
        entries,
    } = Tables::of(
        player.rules(),
        store
            .rows()
            .map(|(_, versioned)| (versioned.version, &versioned.value))
            .chain(participants),
        story
            .entries
            .iter()
            .filter(|entry| started && entry.recorded_at <= now),
    );
    let mut inbox = inbox_by_service(store);
    let services: Vec<Value> = Service::ALL
        .iter()
        .map(|service| {
            json!({
                "service": service,
                "down_until": null,
                "publisher_down_until": null,
                "outbox": outbox_view(store, *service),
                "inbox": inbox.remove(&service.to_string()).unwrap_or_default(),
                "topic": [],
            })
        })
        .collect();
    let first = story
        .rows
        .iter()
        .find_map(|(_, stored)| match &stored.row {
            Row::Order(order) => Some(order.created_at),
            _ => None,
        })
        .unwrap_or(now);
    json!({
        "step": player.position(),
        "now": now.to_string(),
        "elapsed_ms": if started { now.ms_since(first) } else { 0 },
        "origin_ms": first.unix_ms(),
        "state": if player.finished() { "ended" } else { "running" },
        "trace_hash": player.trace().hash_hex(),
        "events": player.trace().events(),
        "armed": [],
        "client": { "unsent": 0, "retries": 0 },
        "services": services,
        "orders": orders.into_values().collect::<Vec<_>>(),
        "idempotency": idempotency_view(store),
        "stock": stock.into_values().collect::<Vec<_>>(),
        "reservations": reservations.into_values().collect::<Vec<_>>(),
        "payments": payments.into_values().collect::<Vec<_>>(),
        "accounts": accounts.into_values().collect::<Vec<_>>(),
        "ledger": entries,
        "invariants": [],
        "violation": null,
        "differences": player.differences(),
        "recorded": true,
    })
}

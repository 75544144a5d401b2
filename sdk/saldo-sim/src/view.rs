//! A snapshot of the whole simulated platform, as the browser harness shows
//! it: every service's tables, the broker, the ledger as T-accounts, and the
//! invariants. Plain JSON, sorted by key, so two snapshots of the same
//! moment are identical.

use std::collections::BTreeMap;

use saldo_domain::decision::Row;
use saldo_domain::messages::{Envelope, Service};
use saldo_idempotency::RecordState;
use saldo_ledger::Side;
use saldo_types::Money;
use serde_json::{Value, json};

use crate::invariants;
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

/// The snapshot of `simulation` as it stands.
pub fn snapshot(simulation: &Simulation) -> Value {
    let store = simulation.store();
    let mut orders = BTreeMap::new();
    let mut stock = BTreeMap::new();
    let mut reservations = BTreeMap::new();
    let mut payments = BTreeMap::new();
    let mut accounts = BTreeMap::new();
    for (_, versioned) in store.rows() {
        let version = versioned.version;
        match &versioned.value {
            Row::Order(order) => {
                let mut view = saldo_domain::order::view(&simulation.rules().order_saga, order);
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
    let mut entries = Vec::with_capacity(store.entries().len());
    for entry in store.entries() {
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
        entries.push(json!({
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
    let idempotency: Vec<Value> = store
        .idempotency_records()
        .map(|(service, key, record)| {
            let state = match &record.value.state {
                RecordState::InFlight { .. } => "in_flight",
                RecordState::Completed { .. } => "completed",
            };
            json!({ "service": service, "key": key, "state": state })
        })
        .collect();
    let services: Vec<Value> = Service::ALL
        .iter()
        .map(|service| {
            let service = *service;
            json!({
                "service": service,
                "down_until": simulation.down_until(service).map(|at| at.to_string()),
                "publisher_down_until": simulation.publisher_down_until(service).map(|at| at.to_string()),
                "outbox": store
                    .outbox_pending(service, usize::MAX)
                    .iter()
                    .map(|row| {
                        let mut view = message(&row.envelope);
                        view["sequence"] = json!(row.sequence);
                        view
                    })
                    .collect::<Vec<_>>(),
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

//! The invariants, checked after every commit (incrementally, on what the
//! commit touched) and at quiescence (from scratch, over everything).

use std::collections::BTreeMap;

use saldo_domain::MemoryStore;
use saldo_domain::batch::Commit;
use saldo_domain::decision::{Row, RowKey};
use saldo_domain::inventory::ReservationState;
use saldo_domain::order::OrderStatus;
use saldo_domain::payment::PaymentState;
use saldo_ledger::{AccountId, Posting, Side};
use saldo_saga::HistoryEvent;
use saldo_types::{Currency, OrderId, Sku};
use serde::Serialize;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant (a stable name).
    pub invariant: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Rows a decision is about to overwrite, captured before the commit.
#[derive(Debug, Default)]
pub struct Before {
    rows: Vec<(RowKey, Option<Row>)>,
}

/// Running totals that make the per-commit checks cheap.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    balance_totals: BTreeMap<Currency, i128>,
    net_charged: BTreeMap<OrderId, i128>,
    largest_charge: BTreeMap<OrderId, i128>,
    held_by_sku: BTreeMap<Sku, i64>,
    checks: u64,
}

/// The money a posting takes from wallets (positive) or gives back (negative).
fn wallet_debit(posting: &Posting) -> i128 {
    posting
        .legs
        .iter()
        .filter(|leg| matches!(leg.account, AccountId::Wallet { .. }))
        .map(|leg| match leg.side {
            Side::Debit => i128::from(leg.amount.amount_minor()),
            Side::Credit => -i128::from(leg.amount.amount_minor()),
        })
        .sum()
}

fn held_lines(row: Option<&Row>) -> Vec<(Sku, i64)> {
    match row {
        Some(Row::Reservation(reservation)) if reservation.state == ReservationState::Held => {
            reservation
                .lines
                .iter()
                .map(|line| (line.sku.clone(), i64::from(line.quantity)))
                .collect()
        }
        _ => Vec::new(),
    }
}

impl Checker {
    /// How many invariant checks have run.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// Captures the rows the commit will change that the checks need.
    pub fn before(&self, store: &MemoryStore, commit: &Commit) -> Before {
        let written = commit
            .writes
            .iter()
            .filter(|write| {
                matches!(
                    write.row,
                    Row::Account(_) | Row::Reservation(_) | Row::Stock(_)
                )
            })
            .map(|write| write.row.key());
        let incremented = commit
            .increments
            .iter()
            .map(|increment| RowKey::Account(increment.account.clone()));
        let rows = written
            .chain(incremented)
            .map(|key| {
                let old = store.row(&key).map(|versioned| versioned.value.clone());
                (key, old)
            })
            .collect();
        Before { rows }
    }

    /// Checks what a commit changed: money conserved, rules kept, stock
    /// consistent, no order charged twice.
    pub fn after_commit(
        &mut self,
        store: &MemoryStore,
        before: Before,
        postings: &[Posting],
    ) -> Result<(), Violation> {
        self.checks += 1;
        let mut touched_skus = Vec::new();
        for (key, old) in before.rows {
            let new = store.row(&key).map(|versioned| &versioned.value);
            match (old.as_ref(), new) {
                (old, Some(Row::Account(account))) => {
                    let previous = match old {
                        Some(Row::Account(previous)) => i128::from(previous.balance.amount_minor()),
                        _ => 0,
                    };
                    *self
                        .balance_totals
                        .entry(account.id.currency())
                        .or_default() += i128::from(account.balance.amount_minor()) - previous;
                    if !account.within_rule() {
                        return Err(violation(
                            "wallet_never_negative",
                            format!(
                                "account {} has {} with {} held",
                                account.id, account.balance, account.held
                            ),
                        ));
                    }
                }
                (old, new @ Some(Row::Reservation(_))) => {
                    for (sku, quantity) in held_lines(old) {
                        *self.held_by_sku.entry(sku.clone()).or_default() -= quantity;
                        touched_skus.push(sku);
                    }
                    for (sku, quantity) in held_lines(new) {
                        *self.held_by_sku.entry(sku.clone()).or_default() += quantity;
                        touched_skus.push(sku);
                    }
                }
                (_, Some(Row::Stock(row))) => touched_skus.push(row.sku.clone()),
                _ => {}
            }
        }
        for (currency, total) in &self.balance_totals {
            if *total != 0 {
                return Err(violation(
                    "money_conserved",
                    format!("balances in {currency} sum to {total}, not 0"),
                ));
            }
        }
        for sku in touched_skus {
            let Some(Row::Stock(row)) = store
                .row(&RowKey::Stock(sku.clone()))
                .map(|versioned| &versioned.value)
            else {
                return Err(violation(
                    "reserved_equals_open_reservations",
                    format!("sku {sku} is reserved but has no stock row"),
                ));
            };
            if row.reserved > row.on_hand {
                return Err(violation(
                    "stock_never_negative",
                    format!(
                        "sku {sku}: {} reserved of {} on hand",
                        row.reserved, row.on_hand
                    ),
                ));
            }
            let held = self.held_by_sku.get(&sku).copied().unwrap_or(0);
            if i64::try_from(row.reserved).ok() != Some(held) {
                return Err(violation(
                    "reserved_equals_open_reservations",
                    format!(
                        "sku {sku}: stock says {} reserved, reservations hold {held}",
                        row.reserved
                    ),
                ));
            }
        }
        for posting in postings {
            if !posting.is_balanced() {
                return Err(violation(
                    "entries_balanced",
                    format!("posting {} does not balance", posting.id),
                ));
            }
            let Some(order_id) = &posting.memo.order_id else {
                continue;
            };
            let debit = wallet_debit(posting);
            let net = self.net_charged.entry(order_id.clone()).or_default();
            *net += debit;
            let largest = self.largest_charge.entry(order_id.clone()).or_default();
            *largest = (*largest).max(debit);
            if *net > *largest {
                return Err(violation(
                    "no_double_charge",
                    format!(
                        "order {order_id} is charged {net} net, more than one charge of {largest}"
                    ),
                ));
            }
            if *net < 0 {
                return Err(violation(
                    "no_double_charge",
                    format!(
                        "order {order_id} is refunded {} more than it was charged",
                        -*net
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks everything from scratch once nothing is left to do.
    pub fn at_quiescence(&mut self, store: &MemoryStore) -> Result<(), Violation> {
        self.checks += 1;
        // What must hold at every moment, from scratch (the per-commit
        // checks were incremental).
        if let Some((name, Err(detail))) = anytime(store)
            .into_iter()
            .find(|(_, result)| result.is_err())
        {
            return Err(violation(name, detail));
        }
        // At rest nothing is held, so nothing is reserved.
        for (_, versioned) in store.rows() {
            match &versioned.value {
                Row::Reservation(reservation) if reservation.state == ReservationState::Held => {
                    return Err(violation(
                        "no_held_stock_at_rest",
                        format!(
                            "order {} still holds a reservation once everything settled",
                            reservation.order_id
                        ),
                    ));
                }
                Row::Stock(row) if row.reserved != 0 => {
                    return Err(violation(
                        "reserved_equals_open_reservations",
                        format!(
                            "sku {}: {} reserved with no open reservation",
                            row.sku, row.reserved
                        ),
                    ));
                }
                _ => {}
            }
        }
        let net = net_by_order(store);
        for (_, versioned) in store.rows() {
            let Row::Order(order) = &versioned.value else {
                continue;
            };
            let endings = order
                .history()
                .iter()
                .filter(|record| matches!(record.event, HistoryEvent::Ended { .. }))
                .count();
            let charged = net.get(&order.order_id).map_or(0, |(total, _)| *total);
            let payment = store
                .row(&RowKey::Payment(order.order_id.clone()))
                .map(|versioned| &versioned.value);
            let reservation = store
                .row(&RowKey::Reservation(order.order_id.clone()))
                .map(|versioned| &versioned.value);
            match order.status() {
                OrderStatus::Pending => {
                    return Err(violation(
                        "every_order_terminal",
                        format!(
                            "order {} is still pending: {:?}",
                            order.order_id,
                            order.saga.awaiting()
                        ),
                    ));
                }
                _ if endings != 1 => {
                    return Err(violation(
                        "every_order_terminal",
                        format!("order {} ended {endings} times", order.order_id),
                    ));
                }
                OrderStatus::Confirmed => {
                    let amount = order
                        .amount
                        .map_or(0, |amount| i128::from(amount.amount_minor()));
                    let captured = matches!(payment, Some(Row::Payment(row)) if matches!(row.state, PaymentState::Captured { .. }));
                    if !captured || charged != amount {
                        return Err(violation(
                            "confirmed_order_paid_once",
                            format!(
                                "order {} is confirmed with payment {payment:?} and {charged} charged of {amount}",
                                order.order_id
                            ),
                        ));
                    }
                    if !matches!(reservation, Some(Row::Reservation(row)) if row.state == ReservationState::Committed)
                    {
                        return Err(violation(
                            "confirmed_order_stock_committed",
                            format!(
                                "order {} is confirmed with reservation {reservation:?}",
                                order.order_id
                            ),
                        ));
                    }
                }
                OrderStatus::Cancelled(_) => {
                    if charged != 0 {
                        return Err(violation(
                            "cancelled_order_not_charged",
                            format!(
                                "order {} is cancelled with {charged} charged",
                                order.order_id
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One invariant as the invariants panel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantStatus {
    /// The stable name.
    pub name: &'static str,
    /// What it promises, in plain words.
    pub promise: &'static str,
    /// True while it must hold at every moment; false when it is judged at rest.
    pub always: bool,
    /// `Some(true)` holds, `Some(false)` broken, `None` not judged yet (an
    /// at-rest invariant while work is still in flight).
    pub holds: Option<bool>,
    /// What was found.
    pub detail: String,
}

const ALWAYS: [(&str, &str); 6] = [
    (
        "money_conserved",
        "Every account's balance sums to zero: money moves, it is never made or lost.",
    ),
    (
        "wallet_never_negative",
        "No wallet pays out more than it holds.",
    ),
    (
        "stock_never_negative",
        "No SKU has more units reserved than on hand.",
    ),
    (
        "reserved_equals_open_reservations",
        "Each SKU's reserved count equals the units its open reservations hold.",
    ),
    (
        "entries_balanced",
        "Every ledger entry balances, and the entries form one unbroken hash chain.",
    ),
    (
        "no_double_charge",
        "No order is charged more than once, or refunded more than it paid.",
    ),
];

const AT_REST: [(&str, &str); 6] = [
    (
        "every_order_terminal",
        "Once nothing is in flight, every order is confirmed or cancelled, once.",
    ),
    (
        "no_held_stock_at_rest",
        "At rest, no reservation is left holding stock.",
    ),
    (
        "confirmed_order_paid_once",
        "A confirmed order was charged exactly its amount.",
    ),
    (
        "confirmed_order_stock_committed",
        "A confirmed order's stock is committed (sold).",
    ),
    (
        "cancelled_order_not_charged",
        "A cancelled order costs its customer nothing in the end.",
    ),
    (
        "reconciliation_clean",
        "Reconciliation, run as an operator would, finds nothing.",
    ),
];

/// Every invariant that holds at any moment, judged from scratch over the
/// whole store, in [`ALWAYS`] order: `Ok` with what was found, or `Err`
/// with what is wrong.
fn anytime(store: &MemoryStore) -> Vec<(&'static str, Result<String, String>)> {
    let mut found = Vec::with_capacity(ALWAYS.len());
    let mut totals: BTreeMap<Currency, i128> = BTreeMap::new();
    let mut accounts = 0;
    let mut negative = Vec::new();
    let mut over_reserved = Vec::new();
    let mut held: BTreeMap<Sku, u64> = BTreeMap::new();
    let mut reserved: BTreeMap<Sku, u64> = BTreeMap::new();
    for (_, versioned) in store.rows() {
        match &versioned.value {
            Row::Account(account) => {
                accounts += 1;
                *totals.entry(account.id.currency()).or_default() +=
                    i128::from(account.balance.amount_minor());
                if !account.within_rule() {
                    negative.push(account.id.to_string());
                }
            }
            Row::Stock(row) => {
                reserved.insert(row.sku.clone(), row.reserved);
                if row.reserved > row.on_hand {
                    over_reserved.push(row.sku.to_string());
                }
            }
            Row::Reservation(reservation) if reservation.state == ReservationState::Held => {
                for line in &reservation.lines {
                    *held.entry(line.sku.clone()).or_default() += u64::from(line.quantity);
                }
            }
            _ => {}
        }
    }
    found.push((
        "money_conserved",
        match totals.iter().find(|(_, total)| **total != 0) {
            None => Ok(format!("{accounts} accounts sum to zero")),
            Some((currency, total)) => Err(format!("balances in {currency} sum to {total}")),
        },
    ));
    found.push((
        "wallet_never_negative",
        if negative.is_empty() {
            Ok(format!("{accounts} accounts within their rules"))
        } else {
            Err(format!("below zero: {}", negative.join(", ")))
        },
    ));
    found.push((
        "stock_never_negative",
        if over_reserved.is_empty() {
            Ok(format!("{} SKUs", reserved.len()))
        } else {
            Err(format!("over-reserved: {}", over_reserved.join(", ")))
        },
    ));
    let mismatched: Vec<String> = reserved
        .iter()
        .filter(|(sku, count)| held.get(*sku).copied().unwrap_or(0) != **count)
        .map(|(sku, count)| format!("{sku} says {count}"))
        .chain(
            held.keys()
                .filter(|sku| !reserved.contains_key(*sku))
                .map(|sku| format!("{sku} has no stock row")),
        )
        .collect();
    found.push((
        "reserved_equals_open_reservations",
        if mismatched.is_empty() {
            Ok(format!("{} units held", held.values().sum::<u64>()))
        } else {
            Err(mismatched.join(", "))
        },
    ));
    found.push((
        "entries_balanced",
        match saldo_ledger::verify_chain(None, store.entries()) {
            Ok(_) => Ok(format!("{} entries, chain intact", store.entries().len())),
            Err(error) => Err(error.to_string()),
        },
    ));
    let net = net_by_order(store);
    let doubled: Vec<String> = net
        .iter()
        .filter(|(_, (total, largest))| *total > *largest || *total < 0)
        .map(|(order_id, (total, _))| format!("{order_id} net {total}"))
        .collect();
    found.push((
        "no_double_charge",
        if doubled.is_empty() {
            Ok(format!("{} orders with money movements", net.len()))
        } else {
            Err(doubled.join(", "))
        },
    ));
    found
}

/// Per order: the net money taken from wallets, and the largest single charge.
fn net_by_order(store: &MemoryStore) -> BTreeMap<&OrderId, (i128, i128)> {
    let mut net: BTreeMap<&OrderId, (i128, i128)> = BTreeMap::new();
    for entry in store.entries() {
        if let Some(order_id) = &entry.posting.memo.order_id {
            let debit = wallet_debit(&entry.posting);
            let (total, largest) = net.entry(order_id).or_default();
            *total += debit;
            *largest = (*largest).max(debit);
        }
    }
    net
}

/// Judges every invariant on `store` from scratch. The always-invariants
/// are judged at any moment; the at-rest ones only when `at_rest`.
/// `violation` is a failure the simulator already stopped on.
pub fn status(
    store: &MemoryStore,
    at_rest: bool,
    violation: Option<&Violation>,
) -> Vec<InvariantStatus> {
    let mut found: BTreeMap<&'static str, Result<String, String>> =
        anytime(store).into_iter().collect();
    if at_rest {
        let broken = Checker::default().at_quiescence(store).err();
        for (name, _) in AT_REST {
            found.insert(
                name,
                match &broken {
                    Some(broken) if broken.invariant == name => Err(broken.detail.clone()),
                    _ => Ok("checked at rest".to_owned()),
                },
            );
        }
    }
    if let Some(violation) = violation {
        found.insert(violation.invariant, Err(violation.detail.clone()));
    }
    let mut judged = |name: &'static str, promise: &'static str, always: bool| {
        let (holds, detail) = match found.remove(name) {
            Some(Ok(detail)) => (Some(true), detail),
            Some(Err(detail)) => (Some(false), detail),
            None => (None, "judged once nothing is in flight".to_owned()),
        };
        InvariantStatus {
            name,
            promise,
            always,
            holds,
            detail,
        }
    };
    let mut statuses = Vec::with_capacity(ALWAYS.len() + AT_REST.len() + 1);
    for (name, promise) in ALWAYS {
        statuses.push(judged(name, promise, true));
    }
    for (name, promise) in AT_REST {
        statuses.push(judged(name, promise, false));
    }
    // A check of the simulator's own (a refused request, a dead letter).
    statuses.extend(found.into_iter().map(|(name, result)| InvariantStatus {
        name,
        promise: "A check the simulator makes on every step.",
        always: true,
        holds: Some(result.is_ok()),
        detail: result.unwrap_or_else(|detail| detail),
    }));
    statuses
}

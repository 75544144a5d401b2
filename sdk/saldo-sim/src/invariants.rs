//! The invariants, checked after every commit (incrementally, on what the
//! commit touched) and at quiescence (from scratch, over everything).

use std::collections::BTreeMap;

use saldo_domain::MemoryStore;
use saldo_domain::decision::{Decision, Row, RowKey};
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

    /// Captures the rows the decision will overwrite that the checks need.
    pub fn before(&self, store: &MemoryStore, decision: &Decision) -> Before {
        let rows = decision
            .writes
            .iter()
            .filter(|write| {
                matches!(
                    write.row,
                    Row::Account(_) | Row::Reservation(_) | Row::Stock(_)
                )
            })
            .map(|write| {
                let key = write.row.key();
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
        let mut totals: BTreeMap<Currency, i128> = BTreeMap::new();
        for (_, versioned) in store.rows() {
            match &versioned.value {
                Row::Account(account) => {
                    *totals.entry(account.id.currency()).or_default() +=
                        i128::from(account.balance.amount_minor());
                    if !account.within_rule() {
                        return Err(violation(
                            "wallet_never_negative",
                            format!("account {} has {}", account.id, account.balance),
                        ));
                    }
                }
                Row::Reservation(reservation) if reservation.state == ReservationState::Held => {
                    return Err(violation(
                        "no_held_stock_at_rest",
                        format!(
                            "order {} still holds a reservation once everything settled",
                            reservation.order_id
                        ),
                    ));
                }
                Row::Stock(row) if row.reserved > row.on_hand => {
                    return Err(violation(
                        "stock_never_negative",
                        format!(
                            "sku {}: {} reserved of {}",
                            row.sku, row.reserved, row.on_hand
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some((currency, total)) = totals.iter().find(|(_, total)| **total != 0) {
            return Err(violation(
                "money_conserved",
                format!("balances in {currency} sum to {total}"),
            ));
        }
        for (_, versioned) in store.rows() {
            if let Row::Stock(row) = &versioned.value
                && row.reserved != 0
            {
                return Err(violation(
                    "reserved_equals_open_reservations",
                    format!(
                        "sku {}: {} reserved with no open reservation",
                        row.sku, row.reserved
                    ),
                ));
            }
        }
        if let Err(error) = saldo_ledger::verify_chain(None, store.entries()) {
            return Err(violation(
                "entries_balanced",
                format!("ledger chain: {error}"),
            ));
        }
        let mut net: BTreeMap<&OrderId, i128> = BTreeMap::new();
        for entry in store.entries() {
            if let Some(order_id) = &entry.posting.memo.order_id {
                *net.entry(order_id).or_default() += wallet_debit(&entry.posting);
            }
        }
        for (_, versioned) in store.rows() {
            let Row::Order(order) = &versioned.value else {
                continue;
            };
            let endings = order
                .history()
                .iter()
                .filter(|record| matches!(record.event, HistoryEvent::Ended { .. }))
                .count();
            let charged = net.get(&order.order_id).copied().unwrap_or(0);
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

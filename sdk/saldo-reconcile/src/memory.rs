//! Reconciliation over the in-memory store: the simulator runs it at
//! quiescence and expects nothing.

use std::collections::BTreeMap;

use saldo_domain::MemoryStore;
use saldo_domain::decision::Row;
use saldo_domain::inventory::ReservationState;
use saldo_domain::messages::Service;
use saldo_ledger::{AccountId, Side};
use saldo_types::{OrderId, Timestamp};

use crate::{
    ChainVerifier, Finding, LedgerFact, OrderFact, OrderFacts, PaymentFact, ReservationFact,
    Settings, check_account, check_order, check_outbox_row, check_stock,
};

/// Every finding in the store, sorted.
pub fn reconcile(store: &MemoryStore, now: Timestamp, settings: &Settings) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut orders: BTreeMap<OrderId, OrderFacts> = BTreeMap::new();
    let mut held_by_sku: BTreeMap<String, u64> = BTreeMap::new();
    let mut stock = Vec::new();
    let mut balances = Vec::new();
    for (_, versioned) in store.rows() {
        match &versioned.value {
            Row::Order(order) => {
                entry(&mut orders, &order.order_id).order = Some(OrderFact::of(order));
            }
            Row::Payment(payment) => {
                entry(&mut orders, &payment.order_id).payment = Some(PaymentFact::of(payment));
            }
            Row::Reservation(reservation) => {
                entry(&mut orders, &reservation.order_id).reservation =
                    Some(ReservationFact::of(reservation));
                if reservation.state == ReservationState::Held {
                    for line in &reservation.lines {
                        *held_by_sku.entry(line.sku.as_str().to_owned()).or_default() +=
                            u64::from(line.quantity);
                    }
                }
            }
            Row::Stock(row) => stock.push((row.sku.as_str().to_owned(), row.on_hand, row.reserved)),
            Row::Account(account) => {
                balances.push((account.id.clone(), account.balance.amount_minor()))
            }
            Row::Wallet(_) => {}
        }
    }
    let mut legs: BTreeMap<AccountId, i128> = BTreeMap::new();
    let mut chain = ChainVerifier::default();
    for ledger_entry in store.entries() {
        findings.extend(chain.feed(ledger_entry));
        let posting = &ledger_entry.posting;
        for leg in &posting.legs {
            let signed = match leg.side {
                Side::Credit => i128::from(leg.amount.amount_minor()),
                Side::Debit => -i128::from(leg.amount.amount_minor()),
            };
            *legs.entry(leg.account.clone()).or_default() += signed;
        }
        if let Some(order_id) = &posting.memo.order_id {
            entry(&mut orders, order_id).ledger.add(posting);
        }
    }
    for facts in orders.values() {
        findings.extend(check_order(facts, now, settings));
    }
    for (sku, on_hand, reserved) in stock {
        findings.extend(check_stock(
            &sku,
            on_hand,
            reserved,
            held_by_sku.get(&sku).copied().unwrap_or(0),
        ));
    }
    for (account, balance) in balances {
        findings.extend(check_account(
            &account.to_string(),
            balance,
            legs.get(&account).copied().unwrap_or(0),
        ));
    }
    for service in Service::ALL {
        for row in store.outbox_pending(service, usize::MAX) {
            findings.extend(check_outbox_row(
                service,
                row.sequence as i64,
                row.envelope.occurred_at,
                now,
                settings,
            ));
        }
    }
    findings.sort();
    findings
}

fn entry<'a>(
    orders: &'a mut BTreeMap<OrderId, OrderFacts>,
    order_id: &OrderId,
) -> &'a mut OrderFacts {
    orders
        .entry(order_id.clone())
        .or_insert_with(|| OrderFacts {
            order_id: order_id.clone(),
            order: None,
            payment: None,
            reservation: None,
            ledger: LedgerFact::default(),
        })
}

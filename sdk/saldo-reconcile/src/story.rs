//! Reconciliation of one order from its story (`saldo_domain::story`): the
//! same [`check_order`] the reconciler runs, over facts built from the rows
//! and entries the services reported, plus the order's dead letters.
//!
//! Operators' actions need no exemption here (docs/adr/0017): a forced
//! compensation runs the saga's real compensations and ends as any
//! cancellation does, and a redriven or discarded dead letter is deleted in
//! the commit that settles it. What an operator *states* (a resolution) is
//! checked like everything else: a wrong statement is what reconciliation
//! is for, and the story shows the audit record beside the finding.

use saldo_domain::decision::Row;
use saldo_domain::story::Story;
use saldo_types::Timestamp;

use crate::{
    Finding, FindingKind, LedgerFact, OrderFact, OrderFacts, PaymentFact, ReservationFact,
    Settings, check_order,
};

/// The facts reconciliation judges, from a story.
pub fn order_facts(story: &Story) -> OrderFacts {
    let mut facts = OrderFacts {
        order_id: story.order_id.clone(),
        order: None,
        payment: None,
        reservation: None,
        ledger: LedgerFact::default(),
    };
    for (_, stored) in &story.rows {
        match &stored.row {
            Row::Order(order) if order.order_id == story.order_id => {
                facts.order = Some(OrderFact::of(order));
            }
            Row::Payment(payment) if payment.order_id == story.order_id => {
                facts.payment = Some(PaymentFact::of(payment));
            }
            Row::Reservation(reservation) if reservation.order_id == story.order_id => {
                facts.reservation = Some(ReservationFact::of(reservation));
            }
            _ => {}
        }
    }
    for entry in &story.entries {
        if entry.posting.memo.order_id.as_ref() == Some(&story.order_id) {
            facts.ledger.add(&entry.posting);
        }
    }
    facts
}

/// The findings about the order at `now`, sorted: [`check_order`]'s, and
/// one per service that holds dead letters about it.
pub fn findings(story: &Story, now: Timestamp, settings: &Settings) -> Vec<Finding> {
    let mut findings = check_order(&order_facts(story), now, settings);
    let mut services: Vec<_> = story
        .dead_letters
        .iter()
        .map(|letter| letter.service)
        .collect();
    services.dedup();
    for service in services {
        let count = story
            .dead_letters
            .iter()
            .filter(|letter| letter.service == service)
            .count();
        findings.push(Finding::new(
            FindingKind::DeadLettersPresent,
            vec![
                format!("dead_letters:{service}"),
                format!("order:{}", story.order_id),
            ],
            format!("{count} messages about this order in the dead-letter table"),
        ));
    }
    findings.sort();
    findings
}

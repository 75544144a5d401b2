//! Operators' interventions as decisions (docs/adr/0017).
//!
//! An intervention is a command to a decider, like any other input: the
//! host loads the live rows, the decider here computes a [`Decision`] (the
//! rows, messages and postings it would commit, plus the [`AuditRecord`]
//! that says who did it), and the host either shows that decision as data
//! (a dry run, which writes nothing) or commits it through the engine with
//! the usual version checks. The audit record is part of the decision, so it
//! is written in the same transaction as the intervention's effect, or not
//! at all.
//!
//! Refusals are values, checked in a documented precedence
//! ([`OrderInterventionRefused`], [`DeadLetterRefused`]). The saga's own
//! rules (what may be retried, compensated or resolved) are the saga's
//! ([`saldo_saga::InterventionRefused`]).

use std::sync::Arc;

use saldo_saga::{Definition, Outcome, SagaState, Transition};
use saldo_types::{Id128, Money, OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::decision::{Decided, Decision, ReadSet, Row, RowKey, Snapshot, Version};
use crate::messages::{DecodeError, Envelope, Service};
use crate::order::{CancelReason, OrderCommand, OrderRow, STEP_RESERVE_STOCK, publish_transition};

/// The most orders or dead letters one bulk intervention may name; a larger
/// selection is refused before anything is decided.
pub const BULK_SELECTION_MAX: usize = 100;

/// Who asked for an intervention: the gateway's principal and the key it
/// presented (its name, never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The principal, as the gateway forwarded it.
    pub principal: String,
    /// The key's name.
    pub key: String,
}

/// One line of a service's append-only audit table: who did what to which
/// target, the decision it committed (what its dry run showed), and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The service whose schema holds the record (the one whose rows changed).
    pub service: Service,
    /// Who.
    pub actor: Actor,
    /// What: the action's stable name (`retry_now`, `redrive`, ...).
    pub action: String,
    /// Which: `order:ID` or `dead_letter:SERVICE:ID`.
    pub target: String,
    /// The decision committed with it, as its dry run showed it.
    pub dry_run: Value,
    /// When.
    pub at: Timestamp,
}

/// A dead letter settled by an intervention: deleted in the same commit as
/// its redrive or discard. The commit fails as a conflict when it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetterRef {
    /// The consumer that dead-lettered it.
    pub service: Service,
    /// Its id in that service's dead-letter table.
    pub id: u64,
}

/// What an operator does to one order's saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OrderAction {
    /// Send the awaited action or compensation again now.
    RetryNow,
    /// Turn the saga back: the compensations of a timeout, in reverse, once each.
    ForceCompensation,
    /// State the awaited step's outcome for a participant that cannot answer.
    Resolve {
        /// What happened.
        outcome: Resolution,
    },
}

impl OrderAction {
    /// The action's stable name (audit records, CLI, problems).
    pub fn name(&self) -> &'static str {
        match self {
            OrderAction::RetryNow => "retry_now",
            OrderAction::ForceCompensation => "force_compensation",
            OrderAction::Resolve { .. } => "resolve",
        }
    }
}

/// The outcome an operator states for an awaited step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Resolution {
    /// The step took effect. Resolving `reserve_stock` so must name the
    /// priced total, which the reservation's reply would have carried.
    Succeeded {
        /// The order's total in minor units (only for `reserve_stock`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount_minor: Option<i64>,
    },
    /// The step's action had no effect (only for actions).
    Failed,
}

/// An intervention on one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderIntervention {
    /// The order.
    pub order_id: OrderId,
    /// What to do.
    pub action: OrderAction,
    /// The order row's version the operator saw (its dry run's); `None`
    /// decides against whatever is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<Version>,
}

/// Why an intervention on an order was refused; nothing was decided.
/// Checked in this order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderInterventionRefused {
    /// No such order (HTTP 404 `order_not_found`).
    #[error("order {0} does not exist")]
    OrderNotFound(OrderId),
    /// The order changed since the operator's dry run (HTTP 409
    /// `version_changed`): dry-run again.
    #[error("order changed since it was read: expected version {expected}, found {found}")]
    VersionChanged {
        /// The version the operator saw.
        expected: Version,
        /// The live version.
        found: Version,
    },
    /// The saga's rules refuse it (HTTP 409 with the saga's code).
    #[error(transparent)]
    Saga(#[from] saldo_saga::InterventionRefused),
    /// Resolving `reserve_stock` as succeeded needs the priced total (HTTP
    /// 422 `amount_required`).
    #[error("resolving reserve_stock as succeeded needs the order's amount")]
    AmountRequired,
}

impl OrderInterventionRefused {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            OrderInterventionRefused::OrderNotFound(_) => "order_not_found",
            OrderInterventionRefused::VersionChanged { .. } => "version_changed",
            OrderInterventionRefused::Saga(refused) => match refused {
                saldo_saga::InterventionRefused::Finished => "saga_finished",
                saldo_saga::InterventionRefused::PastPivot { .. } => "past_pivot",
                saldo_saga::InterventionRefused::AlreadyCompensating => "already_compensating",
                saldo_saga::InterventionRefused::CompensationMustSucceed => {
                    "compensation_must_succeed"
                }
            },
            OrderInterventionRefused::AmountRequired => "amount_required",
        }
    }
}

/// What [`decide_order_intervention`] needs loaded.
pub fn order_intervention_read_set(order_id: &OrderId) -> ReadSet {
    ReadSet {
        rows: vec![RowKey::Order(order_id.clone())],
        ..ReadSet::default()
    }
}

/// What an intervention did, answered after its commit (or shown by its dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intervened {
    /// The target.
    pub target: String,
    /// The action's name.
    pub action: String,
    /// The decision, as data: what was (or would be) committed.
    pub decision: Value,
}

/// Decides an intervention on an order's saga from its live row: the new
/// row (version-checked), the commands it sends through the order outbox,
/// and the audit record.
pub fn decide_order_intervention(
    definition: &Definition<OrderCommand>,
    snapshot: &Snapshot,
    intervention: &OrderIntervention,
    actor: &Actor,
    now: Timestamp,
) -> Result<Decided<Intervened>, OrderInterventionRefused> {
    let order_id = &intervention.order_id;
    let (version, Some(row)) = snapshot.order(order_id) else {
        return Err(OrderInterventionRefused::OrderNotFound(order_id.clone()));
    };
    if let Some(expected) = intervention.expected_version
        && expected != version
    {
        return Err(OrderInterventionRefused::VersionChanged {
            expected,
            found: version,
        });
    }
    let mut row = row.clone();
    let transition = apply_action(definition, &mut row, &intervention.action, now)?;
    assert!(
        transition.ignored.is_none(),
        "an intervention either moves the saga or is refused"
    );
    let mut decision = Decision::default();
    let cause = Id128::derive(
        "intervention",
        &[
            order_id.as_str().as_bytes(),
            intervention.action.name().as_bytes(),
            &now.unix_ms().to_be_bytes(),
        ],
    );
    publish_transition(&mut decision, &mut row, transition, cause, now);
    decision.write(version, Row::Order(Arc::new(row)));
    Ok(audited(
        decision,
        Service::Order,
        actor,
        intervention.action.name(),
        format!("order:{order_id}"),
        now,
    ))
}

fn apply_action(
    definition: &Definition<OrderCommand>,
    row: &mut OrderRow,
    action: &OrderAction,
    now: Timestamp,
) -> Result<Transition<OrderCommand>, OrderInterventionRefused> {
    match action {
        OrderAction::RetryNow => Ok(row.saga.retry_now(definition, now)?),
        OrderAction::ForceCompensation => Ok(row.saga.force_compensation(definition, now)?),
        OrderAction::Resolve { outcome } => {
            let awaits_reservation = matches!(
                row.saga.awaiting(),
                SagaState::ActionReply {
                    step: STEP_RESERVE_STOCK,
                    ..
                } | SagaState::ActionRetry {
                    step: STEP_RESERVE_STOCK,
                    ..
                }
            );
            let outcome = match *outcome {
                Resolution::Succeeded { amount_minor } => {
                    if awaits_reservation {
                        let amount_minor =
                            amount_minor.ok_or(OrderInterventionRefused::AmountRequired)?;
                        row.amount = Some(Money::from_minor(amount_minor, row.currency));
                    }
                    Outcome::Succeeded
                }
                Resolution::Failed => Outcome::Failed(CancelReason::CancelledByOperator),
            };
            Ok(row.saga.resolve(definition, now, outcome)?)
        }
    }
}

/// Adds the audit record of `decision` (which shows the decision itself,
/// as its dry run does) and wraps the answer.
fn audited(
    mut decision: Decision,
    service: Service,
    actor: &Actor,
    action: &str,
    target: String,
    now: Timestamp,
) -> Decided<Intervened> {
    assert!(
        decision.audit.is_none(),
        "one audit record per intervention"
    );
    let shown = serde_json::to_value(&decision).expect("a decision serialises");
    decision.audit = Some(AuditRecord {
        service,
        actor: actor.clone(),
        action: action.to_owned(),
        target: target.clone(),
        dry_run: shown.clone(),
        at: now,
    });
    Decided {
        decision,
        reply: Intervened {
            target,
            action: action.to_owned(),
            decision: shown,
        },
    }
}

/// A dead letter as its service's table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Its id in the service's table.
    pub id: u64,
    /// The consumer that refused it.
    pub service: Service,
    /// Its message id, when it decoded.
    pub message_id: Option<String>,
    /// Its type, when it decoded.
    pub message_type: Option<String>,
    /// Its order, when it decoded.
    pub order_id: Option<String>,
    /// Why it was refused (and after how many attempts).
    pub error: String,
    /// Its bytes, as they arrived.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    /// When it was dead-lettered.
    pub received_at: Timestamp,
}

/// What an operator does to a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Publish it again through the consumer's own outbox (routed by type to
    /// the topic that consumer reads); its inbox makes a second delivery safe.
    Redrive,
    /// Drop it, for this reason.
    Discard {
        /// Why (kept in the audit record).
        reason: String,
    },
}

impl DeadLetterAction {
    /// The action's stable name.
    pub fn name(&self) -> &'static str {
        match self {
            DeadLetterAction::Redrive => "redrive",
            DeadLetterAction::Discard { .. } => "discard",
        }
    }
}

/// The most characters of a discard reason.
pub const DISCARD_REASON_LENGTH_MAX: usize = 500;

/// Why an intervention on a dead letter was refused. Checked in this order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterRefused {
    /// Its bytes are not a message (HTTP 422 `not_redrivable`): only a
    /// discard can settle it.
    #[error("the dead letter's bytes are not a message: {0}")]
    NotRedrivable(DecodeError),
    /// A discard needs a reason of 1 to [`DISCARD_REASON_LENGTH_MAX`]
    /// characters (HTTP 422 `reason_required`).
    #[error("a discard needs a reason of 1 to {DISCARD_REASON_LENGTH_MAX} characters")]
    ReasonRequired,
}

impl DeadLetterRefused {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            DeadLetterRefused::NotRedrivable(_) => "not_redrivable",
            DeadLetterRefused::ReasonRequired => "reason_required",
        }
    }
}

/// Decides a redrive or discard of `letter`: the letter is deleted (the
/// commit fails as a conflict if someone settled it first), a redriven
/// message is queued in its consumer's outbox exactly as it arrived, and the
/// audit record keeps the reason.
pub fn decide_dead_letter(
    letter: &DeadLetterRow,
    action: &DeadLetterAction,
    actor: &Actor,
    now: Timestamp,
) -> Result<Decided<Intervened>, DeadLetterRefused> {
    let mut decision = Decision {
        settle_dead_letter: Some(DeadLetterRef {
            service: letter.service,
            id: letter.id,
        }),
        ..Decision::default()
    };
    match action {
        DeadLetterAction::Redrive => {
            let envelope =
                Envelope::decode(&letter.payload).map_err(DeadLetterRefused::NotRedrivable)?;
            decision.publish(letter.service, envelope);
        }
        DeadLetterAction::Discard { reason } => {
            let length = reason.trim().chars().count();
            if length == 0 || length > DISCARD_REASON_LENGTH_MAX {
                return Err(DeadLetterRefused::ReasonRequired);
            }
        }
    }
    let mut decided = audited(
        decision,
        letter.service,
        actor,
        action.name(),
        format!("dead_letter:{}:{}", letter.service, letter.id),
        now,
    );
    if let (DeadLetterAction::Discard { reason }, Some(audit)) =
        (action, decided.decision.audit.as_mut())
    {
        audit.dry_run = json!({ "decision": audit.dry_run, "reason": reason });
    }
    Ok(decided)
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(bytes.len() * 2);
        for byte in bytes {
            text.push_str(&format!("{byte:02x}"));
        }
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..text.len())
            .step_by(2)
            .map(|index| {
                u8::from_str_radix(&text[index..index + 2], 16).map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// One line of an operator's order listing: where the order stands, what
/// its saga awaits (step, phase, attempt, until when), and its version (the
/// one an intervention's dry run is decided on).
pub fn order_summary(
    definition: &Definition<OrderCommand>,
    version: Version,
    row: &OrderRow,
) -> Value {
    let status = serde_json::to_value(row.status()).expect("a status serialises");
    let (step, attempt, phase) = match row.saga.awaiting() {
        SagaState::ActionReply { step, attempt, .. }
        | SagaState::ActionRetry { step, attempt, .. } => {
            (Some(*step), Some(*attempt), Some("action"))
        }
        SagaState::CompensationReply { step, attempt, .. }
        | SagaState::CompensationRetry { step, attempt, .. } => {
            (Some(*step), Some(*attempt), Some("compensation"))
        }
        SagaState::Nothing => (None, None, None),
    };
    json!({
        "order_id": row.order_id,
        "version": version,
        "customer": row.customer,
        "status": status["status"],
        "reason": status.get("reason").cloned().unwrap_or(Value::Null),
        "awaiting": row.saga.awaiting().name(),
        "step": step,
        "step_name": step.and_then(|step| definition.steps().get(step)).map(|step| step.name.clone()),
        "phase": phase,
        "attempt": attempt,
        "deadline": row.deadline().map(|deadline| deadline.unix_ms()),
        "amount_minor": row.amount.map(|amount| amount.amount_minor()),
        "currency": row.currency.code(),
        "created_at": row.created_at.unix_ms(),
        "updated_at": row.updated_at.unix_ms(),
    })
}

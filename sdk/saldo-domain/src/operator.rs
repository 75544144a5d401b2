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

use saldo_saga::{Definition, Outcome, Phase, SagaState, Transition};
use saldo_types::{Id128, OrderId, Timestamp};
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
    /// The order the target concerns (the order itself, or the dead
    /// letter's), so that the order's story shows every action on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
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
        /// The awaited step, by the name the listing shows (`step_name`).
        step: String,
        /// The awaited phase.
        phase: Phase,
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
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The step took effect. Never for `reserve_stock`'s action: its success
    /// carries the priced total, which only the inventory service knows.
    Succeeded,
    /// The step's action had no effect (only for actions).
    Failed,
}

/// Whether an intervention is only shown or committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Decide and show the decision; write nothing.
    DryRun,
    /// Decide and commit. Needs the version the operator saw.
    Commit,
}

/// An intervention on one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderIntervention {
    /// The order.
    pub order_id: OrderId,
    /// What to do.
    pub action: OrderAction,
    /// The order row's version the operator saw (in a listing or a dry
    /// run). A commit needs it, so that nothing the operator has not seen is
    /// overwritten; a dry run without it shows what the live row would get.
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
    /// A committed intervention must name the version the operator saw
    /// (HTTP 422 `version_required`): dry-run first.
    #[error("an intervention that is not a dry run must name the order's expected_version")]
    VersionRequired,
    /// The resolution names a step the saga does not have (HTTP 422
    /// `unknown_step`).
    #[error("the order saga has no step {0:?}")]
    UnknownStep(String),
    /// Resolving `reserve_stock`'s action as succeeded would let the saga
    /// charge an amount no service priced (HTTP 422
    /// `needs_participant_reply`): retry it, or resolve it as failed.
    #[error(
        "reserve_stock's success carries the priced total only the inventory service knows: retry_now to ask it again, or resolve it as failed"
    )]
    NeedsParticipantReply,
    /// The saga's rules refuse it (HTTP 409 with the saga's code).
    #[error(transparent)]
    Saga(#[from] saldo_saga::InterventionRefused),
}

impl OrderInterventionRefused {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            OrderInterventionRefused::OrderNotFound(_) => "order_not_found",
            OrderInterventionRefused::VersionChanged { .. } => "version_changed",
            OrderInterventionRefused::VersionRequired => "version_required",
            OrderInterventionRefused::UnknownStep(_) => "unknown_step",
            OrderInterventionRefused::NeedsParticipantReply => "needs_participant_reply",
            OrderInterventionRefused::Saga(refused) => match refused {
                saldo_saga::InterventionRefused::Finished => "saga_finished",
                saldo_saga::InterventionRefused::PastPivot { .. } => "past_pivot",
                saldo_saga::InterventionRefused::AlreadyCompensating => "already_compensating",
                saldo_saga::InterventionRefused::NotAwaited { .. } => "step_not_awaited",
                saldo_saga::InterventionRefused::CompensationMustSucceed => {
                    "compensation_must_succeed"
                }
            },
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
    /// The order row's version the decision was decided on (none for a
    /// dead letter): the `expected_version` that commits what a dry run showed.
    pub decided_on: Option<Version>,
    /// The decision, as data: what was (or would be) committed.
    pub decision: Value,
}

/// Decides an intervention on an order's saga from its live row: the new
/// row (version-checked), the commands it sends through the order outbox,
/// and the audit record. A [`Run::Commit`] needs the version the operator
/// saw.
pub fn decide_order_intervention(
    definition: &Definition<OrderCommand>,
    snapshot: &Snapshot,
    intervention: &OrderIntervention,
    run: Run,
    actor: &Actor,
    now: Timestamp,
) -> Result<Decided<Intervened>, OrderInterventionRefused> {
    let order_id = &intervention.order_id;
    let (version, Some(row)) = snapshot.order(order_id) else {
        return Err(OrderInterventionRefused::OrderNotFound(order_id.clone()));
    };
    if run == Run::Commit && intervention.expected_version.is_none() {
        return Err(OrderInterventionRefused::VersionRequired);
    }
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
    let mut decided = audited(
        decision,
        Service::Order,
        actor,
        intervention.action.name(),
        (format!("order:{order_id}"), Some(order_id.to_string())),
        now,
    );
    decided.reply.decided_on = Some(version);
    Ok(decided)
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
        OrderAction::Resolve {
            step,
            phase,
            outcome,
        } => {
            let index = definition
                .steps()
                .iter()
                .position(|candidate| candidate.name == *step)
                .ok_or_else(|| OrderInterventionRefused::UnknownStep(step.clone()))?;
            let named = (index, *phase);
            // The saga refuses a step it does not await (it moved on since
            // the operator looked); this rule is for the one it does.
            if named == (STEP_RESERVE_STOCK, Phase::Action)
                && *outcome == Resolution::Succeeded
                && row.saga.awaiting().step_and_phase() == Some(named)
            {
                return Err(OrderInterventionRefused::NeedsParticipantReply);
            }
            let outcome = match outcome {
                Resolution::Succeeded => Outcome::Succeeded,
                Resolution::Failed => Outcome::Failed(CancelReason::CancelledByOperator),
            };
            Ok(row.saga.resolve(definition, now, named, outcome)?)
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
    (target, order_id): (String, Option<String>),
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
        order_id,
        dry_run: shown.clone(),
        at: now,
    });
    Decided {
        decision,
        reply: Intervened {
            target,
            action: action.to_owned(),
            decided_on: None,
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
    /// Its message is addressed to another service than the consumer that
    /// dead-lettered it (HTTP 422 `not_for_this_consumer`): a redrive through
    /// this consumer's outbox would deliver bytes someone wrote to this
    /// consumer's topic to that other service. Only a discard settles it.
    #[error("the dead letter is a {message_type} addressed to {addressed_to:?}, not to {service}")]
    NotForThisConsumer {
        /// The message's type.
        message_type: String,
        /// The service it is addressed to (`None`: a notification nobody consumes).
        addressed_to: Option<Service>,
        /// The consumer that dead-lettered it.
        service: Service,
    },
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
            DeadLetterRefused::NotForThisConsumer { .. } => "not_for_this_consumer",
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
            let addressed_to = envelope.payload.consumer();
            if addressed_to != Some(letter.service) {
                return Err(DeadLetterRefused::NotForThisConsumer {
                    message_type: envelope.payload.message_type().to_owned(),
                    addressed_to,
                    service: letter.service,
                });
            }
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
        (
            format!("dead_letter:{}:{}", letter.service, letter.id),
            letter.order_id.clone(),
        ),
        now,
    );
    if let (DeadLetterAction::Discard { reason }, Some(audit)) =
        (action, decided.decision.audit.as_mut())
    {
        // The reason as checked: trimmed, so the bound holds for what is stored.
        audit.dry_run = json!({ "decision": audit.dry_run, "reason": reason.trim() });
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

//! Every trace event in plain words: what happened, and why it is safe.

use saldo_domain::messages::Service;
use saldo_sim::trace::{CrashPoint, DeliveryOutcome, TraceEvent, TraceRecord};
use saldo_sim::{Fault, sim::START};

/// An event put into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narration {
    /// What happened.
    pub what: String,
    /// Why the platform is still correct.
    pub why: String,
}

fn said(what: String, why: &str) -> Narration {
    Narration {
        what,
        why: why.to_owned(),
    }
}

fn name(service: Service) -> &'static str {
    match service {
        Service::Order => "The order service",
        Service::Inventory => "Inventory",
        Service::Payment => "Payment",
    }
}

fn seconds(now_ms: u64) -> String {
    let ms = now_ms.saturating_sub(START.unix_ms());
    format!("t+{}.{:03}s", ms / 1_000, ms % 1_000)
}

fn applied(consumer: Service, message_type: &str, order_id: &str) -> String {
    match message_type {
        "ReserveStock" => format!(
            "Inventory handled ReserveStock for {order_id}: it reserved every line or none, and committed the reservation, the stock counts, its inbox receipt and its reply in one transaction."
        ),
        "ReleaseStock" => format!(
            "Inventory handled ReleaseStock for {order_id}: whatever the order held is back on the shelf, and the reply StockReleased is in the outbox."
        ),
        "CommitStock" => format!(
            "Inventory handled CommitStock for {order_id}: the reserved units are sold and leave the stock."
        ),
        "ChargePayment" => format!(
            "Payment handled ChargePayment for {order_id}: it charged the wallet or declined, and committed the payment row, the ledger entry, its inbox receipt and its reply in one transaction."
        ),
        "RefundPayment" => format!(
            "Payment handled RefundPayment for {order_id}: a charge, if there was one, is reversed by a new ledger entry; nothing is edited or deleted."
        ),
        reply => format!(
            "{} took {reply} for {order_id}: the saga recorded the step's result and, in the same transaction, wrote the next command (or the order's ending) to its outbox.",
            name(consumer)
        ),
    }
}

/// Puts one trace record into words.
pub fn narrate(record: &TraceRecord) -> Narration {
    match &record.event {
        TraceEvent::OrderRequested {
            order_id,
            idempotency_key,
            outcome,
        } => match outcome.as_str() {
            "accepted" => said(
                format!(
                    "The client placed order {order_id} with idempotency key {idempotency_key}. The order service wrote the order, its saga state and the ReserveStock command to its outbox in one transaction."
                ),
                "Nothing has been sent yet. The order and its first command are on disk together or not at all; the outbox publisher sends the command afterwards.",
            ),
            "replayed" => said(
                format!(
                    "The client sent request {idempotency_key} again. The key matched a completed request, so the order service answered with the stored reply."
                ),
                "The same key never creates a second order: the stored answer is replayed, nothing runs twice.",
            ),
            _ => said(
                format!(
                    "The order service crashed while placing order {order_id}; the client got no answer."
                ),
                "Nothing was committed. The client retries with the same idempotency key, so the order is placed at most once.",
            ),
        },
        TraceEvent::Published {
            service,
            message_type,
            order_id,
            partition,
            duplicated,
            ..
        } => {
            let target = match partition {
                Some(partition) => format!("to the broker, partition {partition}"),
                None => "as an event for other systems (no Saldo service consumes it)".to_owned(),
            };
            let twice = if *duplicated {
                " The broker received it twice."
            } else {
                ""
            };
            said(
                format!(
                    "The {} outbox publisher sent {message_type} for {order_id} {target}.{twice}",
                    service.name()
                ),
                "A row leaves the outbox only after the broker has it. A second copy is harmless: every consumer records message ids in its inbox.",
            )
        }
        TraceEvent::Delivered {
            consumer,
            message_type,
            order_id,
            outcome,
            partition,
            offset,
            ..
        } => {
            let order_id = order_id.as_str();
            match outcome {
                DeliveryOutcome::Applied => said(
                    applied(*consumer, message_type, order_id),
                    "The change, the inbox receipt and any reply commit together. If the service dies before acknowledging, the redelivered copy finds the receipt and changes nothing.",
                ),
                DeliveryOutcome::Duplicate => said(
                    format!(
                        "{} received {message_type} for {order_id} again (partition {partition}, offset {offset}) and found its message id in the inbox.",
                        name(*consumer)
                    ),
                    "A duplicate is acknowledged and changes nothing: no second reservation, no second charge.",
                ),
                DeliveryOutcome::Ignored => said(
                    format!(
                        "{} noted {message_type} for {order_id} without acting on it: it arrived after the saga had moved on.",
                        name(*consumer)
                    ),
                    "A late or stale message cannot move a saga backwards; it is recorded in the inbox so it is never handled twice.",
                ),
                DeliveryOutcome::Crashed => said(
                    format!(
                        "{} crashed while handling {message_type} for {order_id}.",
                        name(*consumer)
                    ),
                    "Either its transaction committed, and the redelivery is absorbed by the inbox, or it did not, and the redelivery does the work.",
                ),
                DeliveryOutcome::DeadLettered => said(
                    format!(
                        "{} refused {message_type} for {order_id}; it went to the dead-letter topic.",
                        name(*consumer)
                    ),
                    "A message that can never be handled waits for an operator instead of blocking its partition. The simulator counts this as a failure.",
                ),
            }
        }
        TraceEvent::TimerFired { order_id, outcome } => match outcome {
            DeliveryOutcome::Applied => said(
                format!(
                    "The deadline of {order_id}'s current step passed without an answer. The order service sent the step again or, after the last attempt, began compensating."
                ),
                "Deadlines are stored in the order row, so a restarted service still finds them. An answer to an earlier attempt that arrives late is recognised and absorbed.",
            ),
            DeliveryOutcome::Crashed => said(
                format!("The order service crashed while handling {order_id}'s deadline."),
                "The deadline stays in the order row and fires again after the restart.",
            ),
            _ => said(
                format!(
                    "A deadline of {order_id} came due after the saga had already moved on; nothing changed."
                ),
                "A stale timer is checked against the saga's current state before anything is done.",
            ),
        },
        TraceEvent::Crashed {
            service,
            point,
            until_ms,
        } => {
            let back = seconds(*until_ms);
            match point {
                CrashPoint::BeforeCommit => said(
                    format!(
                        "{} crashed after deciding and before committing; it restarts at {back}.",
                        name(*service)
                    ),
                    "The decision is lost whole: nothing is half-written. The input was not acknowledged, so it is handled again after the restart.",
                ),
                CrashPoint::BeforeAck => said(
                    format!(
                        "{} crashed after committing and before acknowledging the message; it restarts at {back}.",
                        name(*service)
                    ),
                    "The broker redelivers from the last acknowledged offset. The inbox receipt was committed with the work, so the redelivery changes nothing.",
                ),
                CrashPoint::BeforePublish => said(
                    format!(
                        "{} crashed after committing, before its publisher sent the replies; it restarts at {back}.",
                        name(*service)
                    ),
                    "The replies wait in the durable outbox and are sent after the restart.",
                ),
                CrashPoint::AfterPublish => said(
                    format!(
                        "The {} outbox publisher crashed after sending a batch and before marking it published; it restarts at {back}.",
                        service.name()
                    ),
                    "On restart it sends the same rows again. Consumers find the copies in their inboxes and acknowledge them without effect.",
                ),
            }
        }
        TraceEvent::Restarted { service } => said(
            format!("{} restarted.", name(*service)),
            "It resumes from its last acknowledged offsets and its outbox: everything it committed is still there.",
        ),
        TraceEvent::Stalled {
            consumer,
            partition,
            until_ms,
        } => said(
            format!(
                "{}'s partition {partition} stalls until {}.",
                name(*consumer),
                seconds(*until_ms)
            ),
            "Messages wait in the log and are not lost. Step deadlines decide what the saga does meanwhile.",
        ),
        TraceEvent::ClockJumped { ms } => said(
            format!("The clock jumped {ms} ms forward."),
            "Deadlines compare instants, so a jump can only make one fire early: that causes a retry or a compensation, never a double charge.",
        ),
        TraceEvent::FaultsStopped => said(
            "Random faults stop here; the run continues calmly until nothing is left to do.".to_owned(),
            "The invariants are judged from scratch once the platform is at rest.",
        ),
        TraceEvent::FaultInjected { fault } => said(
            format!("Fault injected: {fault}."),
            match fault {
                Fault::Stall { .. } | Fault::ClockJump { .. } => {
                    "It takes effect now. The injection is part of the trace, so this run replays exactly."
                }
                _ => {
                    "It hits the next time the service reaches that point. The injection is part of the trace, so this run replays exactly."
                }
            },
        ),
        TraceEvent::Intervened {
            order_id,
            action,
            outcome,
        } => match outcome {
            DeliveryOutcome::Applied => said(
                format!(
                    "An operator's {action} on {order_id} was decided again, at the instant production recorded it, from the order row as the replay had it."
                ),
                "An intervention is a decision like any other: the same row and the same action give the same commands, and production wrote it to the audit table with its effect.",
            ),
            _ => said(
                format!(
                    "The saga refused the operator's recorded {action} on {order_id} this time."
                ),
                "Production accepted it, so the replay's row or rules differ from production's: the first difference below says where.",
            ),
        },
        TraceEvent::Emitted {
            message_type,
            order_id,
            as_recorded,
            ..
        } => {
            if *as_recorded {
                said(
                    format!(
                        "The decision put {message_type} for {order_id} in the order service's outbox, byte for byte the message production's outbox holds at this place."
                    ),
                    "The same inputs given to the same deciders give the same messages: a decision depends on nothing but what the service read.",
                )
            } else {
                said(
                    format!(
                        "The decision put {message_type} for {order_id} in the order service's outbox, but production's outbox holds another message here."
                    ),
                    "The replay shows where the code or the data changed since production decided: compare the two messages in the banner.",
                )
            }
        }
        TraceEvent::Quiescent => said(
            "Nothing is left to do. Every invariant was checked from scratch and reconciliation found nothing.".to_owned(),
            "Every order is confirmed or cancelled, money is conserved, and no stock is left held.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_every_walkthrough_is_put_into_words() {
        // Proves the narration covers each event the walkthroughs produce.
        for walkthrough in saldo_sim::walkthroughs() {
            let mut player =
                saldo_sim::Player::new(saldo_sim::Source::Scenario(walkthrough.scenario))
                    .expect("valid");
            player.run_to_end().expect("runs");
            for record in player.simulation().trace().records().expect("kept") {
                let narration = narrate(record);
                assert!(narration.what.ends_with('.'), "{narration:?}");
                assert!(narration.why.len() > 20, "{narration:?}");
            }
        }
    }
}

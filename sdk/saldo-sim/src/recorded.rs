//! Replaying a production order: the order's story, exported from the
//! services' tables (`saldo admin export`), fed again to the order service's
//! deciders, and compared with what production committed.
//!
//! A recording is a trace file whose header holds a [`Story`] instead of a
//! seed or a scenario (docs/adr/0019). The order service's inputs are all in
//! it: the placement (the order row keeps the request's customer, lines,
//! currency, correlation id and trace), every participant reply it handled
//! (their bytes, from the participants' outboxes, at the instant of its
//! inbox receipt), every deadline that fired (the saga history's
//! `timed_out` records) and every operator intervention (`intervened`
//! records, with the actor from the audit table). Replaying them, in the
//! order they happened and at the instants they happened, through the same
//! deciders must produce the same outbox messages, byte for byte and in the
//! same order, and the same final order row. Where it does not, the replay
//! says where (a code change that moved a decision, a row edited by hand).
//!
//! The participants are shown as recorded: their replies are inputs. Their
//! decisions read stock and wallets that other orders changed too, and a
//! story holds only this order's rows, so they are not decided again.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::convert::Infallible;

use saldo_domain::decision::{Row, RowKey, Version};
use saldo_domain::messages::{Envelope, Service};
use saldo_domain::operator::{
    Actor, OrderAction, OrderIntervention, Resolution, Run, decide_order_intervention,
    order_intervention_read_set,
};
use saldo_domain::order::{
    PlaceOrder, deadline_read_set, decide_deadline, decide_place_order, place_order_read_set,
};
use saldo_domain::store::MemoryStore;
use saldo_domain::story::Story;
use saldo_domain::{MessageOutcome, Rules, decide_message, message_read_set};
use saldo_idempotency::IdempotencyKey;
use saldo_saga::{HistoryEvent, Intervention, Phase};
use saldo_types::{Id128, OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::replay::TRACE_FORMAT;
use crate::trace::{DeliveryOutcome, Trace, TraceEvent, TraceRecord};

/// The idempotency key a replayed placement carries: a story does not hold
/// the client's key (it only namespaces the idempotency record, which the
/// replay does not compare).
pub const RECORDED_KEY: &str = "recorded";

/// The most messages and receipts together a recording may hold: what an
/// export of three services' parts can (a hand-edited file is refused
/// beyond, so that a page does not replay without end).
pub const RECORDED_ITEMS_MAX: usize = 6 * saldo_domain::story::STORY_ITEMS_MAX;

/// The first (and only) line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingHeader {
    /// The format, [`TRACE_FORMAT`].
    pub saldo_trace: u32,
    /// The order's story as the services stored it.
    pub recorded: Story,
}

/// Why a recording cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// Not JSON of a recording.
    #[error("not a recording of a production order ({0}); was it written by `saldo admin export`?")]
    Parse(String),
    /// Another format.
    #[error("recording format {0} is not {TRACE_FORMAT}, the one this build reads")]
    Format(u32),
    /// The order service's part was missing when it was exported.
    #[error("the order service did not answer when the story was exported: export it again")]
    OrderPartMissing,
    /// A list was cut at the story's bound.
    #[error("the story was cut at its bound: the order has too many messages to replay")]
    Truncated,
    /// No order row.
    #[error("the recording holds no order row")]
    NoOrderRow,
    /// The saga stopped recording history at its bound (it keeps the first
    /// records and the ending).
    #[error("the order's saga history omits {0} of its records: it cannot be replayed")]
    HistoryCut(u32),
    /// A row that is not this order's, or not of the service it is filed under.
    #[error("the story holds row {key} under {service}, which is not order {order_id}'s row there")]
    ForeignRow {
        /// The service it is filed under.
        service: Service,
        /// Its key.
        key: String,
        /// The story's order.
        order_id: OrderId,
    },
    /// More than a story's bound of messages or receipts.
    #[error("the recording holds more messages or receipts than an export can ({0})")]
    TooLong(usize),
    /// A recorded message does not decode.
    #[error("recorded message {message_id} does not decode: {reason}")]
    Undecodable {
        /// The message, in hex.
        message_id: String,
        /// Why.
        reason: String,
    },
}

/// What the order service handled, in the order it did.
#[derive(Debug, Clone)]
enum Input {
    Placed(Box<PlaceOrder>),
    Reply(Box<Envelope>),
    /// A timer; `shared` when another input has the same instant.
    Deadline {
        shared: bool,
    },
    Intervention(OrderAction, Actor),
}

#[derive(Debug, Clone)]
struct Timed {
    at: Timestamp,
    input: Input,
}

/// What production's order outbox held, in outbox order.
#[derive(Debug, Clone)]
struct RecordedMessage {
    message_id: Id128,
    message_type: String,
    bytes: Vec<u8>,
}

/// Where a replay and its recording part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The replay's step (1-based: the input whose decision differs; the
    /// last step's number for the final row).
    pub step: u64,
    /// What differs, in words.
    pub what: String,
    /// The recorded side (a message id and type, or the row), if any.
    pub recorded: Option<serde_json::Value>,
    /// The replayed side, if any.
    pub replayed: Option<serde_json::Value>,
}

/// How a whole replay compared with its recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedVerification {
    /// Messages production's order outbox held, plus the final row.
    pub recorded: u64,
    /// Messages the replay emitted, plus its final row.
    pub replayed: u64,
    /// Leading ones that are identical.
    pub identical: u64,
    /// Every difference, first first.
    pub differences: Vec<Difference>,
    /// The replay's trace hash.
    pub trace_hash: String,
}

impl RecordedVerification {
    /// True when every message and the final row are identical.
    pub fn exact(&self) -> bool {
        self.differences.is_empty() && self.recorded == self.replayed
    }
}

/// Writes `story` as a recording: one line, the header.
pub fn export(story: &Story) -> String {
    let header = RecordingHeader {
        saldo_trace: TRACE_FORMAT,
        recorded: story.clone(),
    };
    let mut text = serde_json::to_string(&header).expect("a story serialises");
    text.push('\n');
    text
}

/// True when `text`'s first line is a recording's header (and not a
/// simulator trace's).
pub fn is_recording(text: &str) -> bool {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .is_some_and(|value| value.get("recorded").is_some())
}

/// A recorded order to step through; it starts at step 0.
#[derive(Clone)]
pub struct RecordedPlayer {
    story: Story,
    rules: Rules,
    order_id: OrderId,
    inputs: Vec<Timed>,
    recorded: Vec<RecordedMessage>,
    recorded_row: Option<(Version, Row)>,
    store: MemoryStore,
    trace: Trace,
    position: u64,
    emitted: usize,
    identical: u64,
    differences: Vec<Difference>,
    verification: RecordedVerification,
}

impl std::fmt::Debug for RecordedPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedPlayer")
            .field("order_id", &self.order_id)
            .field("position", &self.position)
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

fn decoded(bytes: &[u8], message_id: &str) -> Result<Envelope, RecordingError> {
    Envelope::decode(bytes).map_err(|error| RecordingError::Undecodable {
        message_id: message_id.to_owned(),
        reason: error.to_string(),
    })
}

/// The order service's inputs, from the story, in the order it handled them.
fn inputs_of(
    story: &Story,
    row: &saldo_domain::order::OrderRow,
    saga: &saldo_saga::Definition<saldo_domain::order::OrderCommand>,
) -> Result<Vec<Timed>, RecordingError> {
    let mut inputs = vec![Timed {
        at: row.created_at,
        input: Input::Placed(Box::new(PlaceOrder {
            order_id: row.order_id.clone(),
            customer: row.customer.clone(),
            lines: row.lines.clone(),
            currency: row.currency,
            idempotency_key: IdempotencyKey::new(RECORDED_KEY).expect("a valid key"),
            principal: None,
            correlation_id: row.correlation_id.clone(),
            traceparent: row.traceparent.clone(),
        })),
    }];
    // A reply is a message for the order service, whichever outbox the
    // story kept it from: a redriven reply's copy sits in the order
    // outbox with the same id (ADR 0017) and may be the one merged.
    for message in &story.messages {
        let envelope = decoded(&message.bytes, &message.message_id)?;
        if envelope.payload.consumer() != Some(Service::Order) {
            continue;
        }
        if let Some((_, at)) = message
            .received
            .iter()
            .find(|(consumer, _)| *consumer == Service::Order)
        {
            inputs.push(Timed {
                at: *at,
                input: Input::Reply(Box::new(envelope)),
            });
        }
    }
    let history = row.history();
    for (index, record) in history.iter().enumerate() {
        if let HistoryEvent::Intervened { action } = &record.event {
            let action = match action {
                Intervention::RetriedNow => OrderAction::RetryNow,
                Intervention::CompensationForced => OrderAction::ForceCompensation,
                Intervention::Resolved => {
                    resolution(saga, history.get(index + 1).map(|next| &next.event))
                }
            };
            let actor = story
                .audit
                .iter()
                .find(|audit| {
                    audit.service == Service::Order
                        && audit.at == record.at
                        && audit.action == action.name()
                })
                .map(|audit| audit.actor.clone())
                .unwrap_or_else(|| Actor {
                    principal: "unknown".to_owned(),
                    key: "unknown".to_owned(),
                });
            inputs.push(Timed {
                at: record.at,
                input: Input::Intervention(action, actor),
            });
        }
    }
    // A timer fired at an instant the saga moved by itself: a step timed
    // out (`timed_out`) or a retry's backoff ended (`sent`). At an instant
    // another input explains, the firing is tried after it: a timer that
    // is not due changes nothing (and leaves no event), so one that fired
    // in the same millisecond as a reply is not lost.
    let caused: BTreeSet<Timestamp> = inputs.iter().map(|timed| timed.at).collect();
    let fired: BTreeSet<Timestamp> = history
        .iter()
        .filter(|record| {
            matches!(
                record.event,
                HistoryEvent::TimedOut { .. } | HistoryEvent::Sent { .. }
            )
        })
        .map(|record| record.at)
        .collect();
    inputs.extend(fired.into_iter().map(|at| Timed {
        at,
        input: Input::Deadline {
            shared: caused.contains(&at),
        },
    }));
    // One order's inputs are handled one at a time, by instant; within an
    // instant a stable sort keeps the story's causal order among replies,
    // and timers come last.
    inputs.sort_by_key(|timed| (timed.at, matches!(timed.input, Input::Deadline { .. })));
    Ok(inputs)
}

/// The resolution an operator stated, read from the record it caused, with
/// the step named as the replay's saga names it.
fn resolution(
    saga: &saldo_saga::Definition<saldo_domain::order::OrderCommand>,
    next: Option<&HistoryEvent<saldo_domain::order::CancelReason>>,
) -> OrderAction {
    let (step, phase, outcome) = match next {
        Some(HistoryEvent::Succeeded { step, phase }) => (*step, *phase, Resolution::Succeeded),
        Some(HistoryEvent::Failed { step, phase, .. }) => (*step, *phase, Resolution::Failed),
        // Nothing follows: the replay decides what the saga says to that.
        _ => (0, Phase::Action, Resolution::Failed),
    };
    OrderAction::Resolve {
        step: saga
            .steps()
            .get(step)
            .map_or_else(String::new, |named| named.name.to_string()),
        phase,
        outcome,
    }
}

fn outcome_of(outcome: &MessageOutcome) -> DeliveryOutcome {
    match outcome {
        MessageOutcome::Applied => DeliveryOutcome::Applied,
        MessageOutcome::Duplicate => DeliveryOutcome::Duplicate,
        MessageOutcome::Ignored(_) => DeliveryOutcome::Ignored,
    }
}

fn message_view(message_id: Id128, message_type: &str) -> serde_json::Value {
    serde_json::json!({ "message_id": message_id.to_string(), "type": message_type })
}

impl RecordedPlayer {
    /// Parses a recording, replays it whole once to verify it, and goes
    /// back to its start.
    pub fn import(text: &str) -> Result<RecordedPlayer, RecordingError> {
        let first = text
            .lines()
            .find(|line| !line.trim().is_empty())
            .ok_or_else(|| RecordingError::Parse("the file is empty".to_owned()))?;
        let header: RecordingHeader = serde_json::from_str(first)
            .map_err(|error| RecordingError::Parse(error.to_string()))?;
        RecordedPlayer::new(header)
    }

    /// A player for a recording's header, verified and at its start.
    pub fn new(header: RecordingHeader) -> Result<RecordedPlayer, RecordingError> {
        if header.saldo_trace != TRACE_FORMAT {
            return Err(RecordingError::Format(header.saldo_trace));
        }
        let story = header.recorded;
        if story.missing.contains(&Service::Order) {
            return Err(RecordingError::OrderPartMissing);
        }
        if story.truncated {
            return Err(RecordingError::Truncated);
        }
        for (service, stored) in &story.rows {
            let belongs = match (&stored.row, service) {
                (Row::Order(row), Service::Order) => row.order_id == story.order_id,
                (Row::Reservation(row), Service::Inventory) => row.order_id == story.order_id,
                (Row::Payment(row), Service::Payment) => row.order_id == story.order_id,
                _ => false,
            };
            if !belongs {
                return Err(RecordingError::ForeignRow {
                    service: *service,
                    key: format!("{:?}", stored.row.key()),
                    order_id: story.order_id.clone(),
                });
            }
        }
        let items = story.messages.len()
            + story
                .messages
                .iter()
                .map(|message| message.received.len())
                .sum::<usize>();
        if items > RECORDED_ITEMS_MAX {
            return Err(RecordingError::TooLong(items));
        }
        let (version, row) = story
            .rows
            .iter()
            .find_map(|(service, stored)| match (&stored.row, service) {
                (Row::Order(row), Service::Order) => Some((stored.version, row.clone())),
                _ => None,
            })
            .ok_or(RecordingError::NoOrderRow)?;
        if row.saga.history_omitted() > 0 {
            return Err(RecordingError::HistoryCut(row.saga.history_omitted()));
        }
        let rules = Rules::default();
        let inputs = inputs_of(&story, &row, &rules.order_saga)?;
        let mut recorded: Vec<_> = story
            .messages
            .iter()
            .filter(|message| message.sender == Service::Order)
            .filter_map(|message| {
                let envelope = match decoded(&message.bytes, &message.message_id) {
                    Ok(envelope) => envelope,
                    Err(error) => return Some(Err(error)),
                };
                // A redriven reply's copy is an input, not an output.
                if envelope.payload.consumer() == Some(Service::Order) {
                    return None;
                }
                Some(Ok((
                    message.sequence,
                    RecordedMessage {
                        message_id: envelope.message_id,
                        message_type: message.message_type.clone(),
                        bytes: message.bytes.clone(),
                    },
                )))
            })
            .collect::<Result<_, RecordingError>>()?;
        recorded.sort_by_key(|(sequence, _)| *sequence);
        let mut player = RecordedPlayer {
            order_id: row.order_id.clone(),
            story,
            rules,
            inputs,
            recorded: recorded.into_iter().map(|(_, message)| message).collect(),
            recorded_row: Some((version, Row::Order(row))),
            store: MemoryStore::new(),
            trace: Trace::new(true),
            position: 0,
            emitted: 0,
            identical: 0,
            differences: Vec::new(),
            verification: RecordedVerification {
                recorded: 0,
                replayed: 0,
                identical: 0,
                differences: Vec::new(),
                trace_hash: String::new(),
            },
        };
        player.run_to_end();
        player.verification = RecordedVerification {
            recorded: player.recorded.len() as u64 + 1,
            replayed: player.emitted as u64 + 1,
            identical: player.identical,
            differences: player.differences.clone(),
            trace_hash: player.trace.hash_hex(),
        };
        player.seek(0);
        Ok(player)
    }

    /// The story replayed.
    pub fn story(&self) -> &Story {
        &self.story
    }

    /// The order.
    pub fn order_id(&self) -> &OrderId {
        &self.order_id
    }

    /// The rules the replay decides with.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The replay's store: the order service's rows, outbox and inbox as
    /// the replay has made them so far.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The replay's events so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Inputs handled so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many inputs the recording holds.
    pub fn len(&self) -> u64 {
        self.inputs.len() as u64
    }

    /// True when the recording holds no input (never: the placement is one).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// True when every input was handled.
    pub fn finished(&self) -> bool {
        self.position as usize >= self.inputs.len()
    }

    /// The instant of the last input handled (the placement's before any).
    pub fn now(&self) -> Timestamp {
        let index = (self.position as usize).saturating_sub(1);
        self.inputs
            .get(index)
            .map_or(Timestamp::from_unix_ms(0), |timed| timed.at)
    }

    /// The differences found so far (up to this step).
    pub fn differences(&self) -> &[Difference] {
        &self.differences
    }

    /// How the whole replay compared with the recording (computed at import).
    pub fn verification(&self) -> &RecordedVerification {
        &self.verification
    }

    /// Handles the next input; returns false when there was none.
    pub fn step(&mut self) -> bool {
        let Some(timed) = self.inputs.get(self.position as usize).cloned() else {
            return false;
        };
        self.position += 1;
        let step = self.position;
        let at = timed.at;
        let order_id = self.order_id.clone();
        let event: Option<TraceEvent> = match &timed.input {
            Input::Placed(request) => {
                let result = saldo_domain::store::execute(
                    &mut self.store,
                    &place_order_read_set(request),
                    at,
                    |snapshot| decide_place_order(&self.rules.order_saga, snapshot, request, at),
                );
                Some(TraceEvent::OrderRequested {
                    order_id: order_id.to_string(),
                    idempotency_key: RECORDED_KEY.to_owned(),
                    outcome: if result.is_ok() {
                        "accepted"
                    } else {
                        "crashed"
                    }
                    .to_owned(),
                })
            }
            Input::Reply(envelope) => {
                let result = saldo_domain::store::execute(
                    &mut self.store,
                    &message_read_set(Service::Order, envelope),
                    at,
                    |snapshot| decide_message(&self.rules, Service::Order, snapshot, envelope, at),
                );
                Some(TraceEvent::Delivered {
                    consumer: Service::Order,
                    partition: 0,
                    offset: step,
                    message_id: envelope.message_id,
                    message_type: Cow::Borrowed(envelope.message_type()),
                    order_id: envelope.order_id.clone(),
                    outcome: result
                        .as_ref()
                        .map_or(DeliveryOutcome::DeadLettered, outcome_of),
                })
            }
            Input::Deadline { shared } => {
                let result = saldo_domain::store::execute(
                    &mut self.store,
                    &deadline_read_set(&order_id),
                    at,
                    |snapshot| {
                        Ok::<_, Infallible>(decide_deadline(
                            &self.rules.order_saga,
                            snapshot,
                            &order_id,
                            at,
                        ))
                    },
                );
                let outcome = result
                    .as_ref()
                    .map_or(DeliveryOutcome::DeadLettered, outcome_of);
                // Not due: the other input of this instant moved the saga.
                (!*shared || outcome != DeliveryOutcome::Ignored).then(|| TraceEvent::TimerFired {
                    order_id: order_id.clone(),
                    outcome,
                })
            }
            Input::Intervention(action, actor) => {
                let version = self
                    .store
                    .row(&RowKey::Order(order_id.clone()))
                    .map(|row| row.version);
                let intervention = OrderIntervention {
                    order_id: order_id.clone(),
                    action: action.clone(),
                    expected_version: version,
                };
                let result = saldo_domain::store::execute(
                    &mut self.store,
                    &order_intervention_read_set(&order_id),
                    at,
                    |snapshot| {
                        decide_order_intervention(
                            &self.rules.order_saga,
                            snapshot,
                            &intervention,
                            Run::Commit,
                            actor,
                            at,
                        )
                    },
                );
                Some(TraceEvent::Intervened {
                    order_id: order_id.clone(),
                    action: action.name().to_owned(),
                    outcome: if result.is_ok() {
                        DeliveryOutcome::Applied
                    } else {
                        DeliveryOutcome::DeadLettered
                    },
                })
            }
        };
        if let Some(event) = event {
            self.trace.record(TraceRecord {
                step,
                now_ms: at.unix_ms(),
                event,
            });
        }
        self.compare_new_messages(step, at);
        if self.finished() {
            self.compare_the_end(step);
        }
        true
    }

    /// Records the messages the last decision emitted and compares each
    /// with the message production's outbox held at the same place.
    fn compare_new_messages(&mut self, step: u64, at: Timestamp) {
        let pending = self.store.outbox_pending(Service::Order, usize::MAX);
        for row in pending.into_iter().skip(self.emitted) {
            let bytes = row.envelope.encode();
            let recorded = self.recorded.get(self.emitted);
            let as_recorded = recorded.is_some_and(|recorded| recorded.bytes == bytes);
            let envelope = &row.envelope;
            if as_recorded && self.differences.is_empty() {
                self.identical += 1;
            }
            if !as_recorded {
                self.differences.push(Difference {
                    step,
                    what: match recorded {
                        Some(recorded) if recorded.message_id == envelope.message_id => format!(
                            "the order outbox's message {} has other bytes than production's",
                            self.emitted + 1
                        ),
                        Some(_) => format!(
                            "the order outbox's message {} is another message than production's",
                            self.emitted + 1
                        ),
                        None => format!(
                            "the replay emitted a message production did not (message {})",
                            self.emitted + 1
                        ),
                    },
                    recorded: recorded
                        .map(|recorded| message_view(recorded.message_id, &recorded.message_type)),
                    replayed: Some(message_view(envelope.message_id, envelope.message_type())),
                });
            }
            self.trace.record(TraceRecord {
                step,
                now_ms: at.unix_ms(),
                event: TraceEvent::Emitted {
                    service: Service::Order,
                    message_id: envelope.message_id,
                    message_type: Cow::Borrowed(envelope.message_type()),
                    order_id: envelope.order_id.clone(),
                    digest: format!("{:016x}", xxh3_64(&bytes)),
                    as_recorded,
                },
            });
            self.emitted += 1;
        }
    }

    /// After the last input: production's messages the replay never
    /// emitted, and the final row.
    fn compare_the_end(&mut self, step: u64) {
        for (index, missing) in self.recorded.iter().enumerate().skip(self.emitted) {
            self.differences.push(Difference {
                step,
                what: format!(
                    "production's order outbox held message {} that the replay did not emit",
                    index + 1
                ),
                recorded: Some(message_view(missing.message_id, &missing.message_type)),
                replayed: None,
            });
        }
        let replayed = self
            .store
            .row(&RowKey::Order(self.order_id.clone()))
            .map(|row| (row.version, row.value.clone()));
        let same = replayed == self.recorded_row;
        if same && self.differences.is_empty() {
            self.identical += 1;
        }
        if !same {
            let view = |row: &Option<(Version, Row)>| {
                row.as_ref()
                    .map(|(version, row)| serde_json::json!({ "version": version, "row": row }))
            };
            self.differences.push(Difference {
                step,
                what: "the order row the replay ends with differs from production's".to_owned(),
                recorded: view(&self.recorded_row),
                replayed: view(&replayed),
            });
        }
    }

    /// Handles every input left.
    pub fn run_to_end(&mut self) {
        while self.step() {}
    }

    /// Moves to the point after `position` inputs, forwards by stepping,
    /// backwards by replaying from the start.
    pub fn seek(&mut self, position: u64) {
        if position < self.position {
            self.store = MemoryStore::new();
            self.trace = Trace::new(true);
            self.position = 0;
            self.emitted = 0;
            self.identical = 0;
            self.differences.clear();
        }
        while self.position < position && self.step() {}
    }
}

#[cfg(test)]
mod tests {
    use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
    use saldo_domain::messages::{OrderLine, Traceparent};
    use saldo_domain::order::OrderStatus;
    use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
    use saldo_domain::story::StoryPart;
    use saldo_types::{CorrelationId, Currency, CustomerId, Money, Sku};

    use super::*;

    const START: Timestamp = Timestamp::from_unix_ms(1_790_000_000_000);

    /// What goes wrong in the "production" run a test records.
    #[derive(Clone, Copy, PartialEq)]
    enum Trouble {
        None,
        /// Payment never answers: deadlines fire until the saga compensates.
        PaymentDown,
        /// Payment never answers and an operator forces compensation.
        PaymentDownThenOperator,
    }

    fn eur(minor: i64) -> Money {
        Money::from_minor(minor, Currency::EUR)
    }

    /// Runs one order on a memory store as the hosts do (every message
    /// handled once, deadlines fired when nothing moves) and returns its
    /// story: the recording `saldo admin export` writes from PostgreSQL.
    fn production(trouble: Trouble, funds: i64) -> Story {
        let rules = Rules::default();
        let mut store = MemoryStore::new();
        let mut now = START;
        let customer = CustomerId::new("alice").expect("valid");
        let top_up = TopUp {
            customer: customer.clone(),
            amount: eur(funds),
            idempotency_key: IdempotencyKey::new("top-up").expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new("seed").expect("valid"),
            traceparent: Traceparent::root(Id128::derive("seed", &[])),
        };
        saldo_domain::store::execute(&mut store, &top_up_read_set(&top_up), now, |s| {
            decide_top_up(&rules.payment, s, &top_up, now)
        })
        .expect("topped up");
        let stock = SetStock {
            sku: Sku::new("lamp").expect("valid"),
            on_hand: 5,
            unit_price: eur(1_500),
        };
        saldo_domain::store::execute(&mut store, &set_stock_read_set(&stock), now, |s| {
            decide_set_stock(s, &stock)
        })
        .expect("stocked");
        let order_id = OrderId::new("o-recorded").expect("valid");
        let request = PlaceOrder {
            order_id: order_id.clone(),
            customer,
            lines: vec![OrderLine {
                sku: Sku::new("lamp").expect("valid"),
                quantity: 2,
            }],
            currency: Currency::EUR,
            idempotency_key: IdempotencyKey::new("client-key").expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new("req-1").expect("valid"),
            traceparent: Traceparent::root(Id128::derive("recorded-test", &[])),
        };
        now = now.plus_ms(3);
        saldo_domain::store::execute(&mut store, &place_order_read_set(&request), now, |s| {
            decide_place_order(&rules.order_saga, s, &request, now)
        })
        .expect("placed");
        let mut handled = BTreeSet::new();
        let mut operator_acted = false;
        for _ in 0..200 {
            let mut moved = false;
            for service in Service::ALL {
                for pending in store.outbox_pending(service, usize::MAX) {
                    let envelope = pending.envelope;
                    let Some(consumer) = envelope.payload.consumer() else {
                        continue;
                    };
                    if !handled.insert(envelope.message_id) {
                        continue;
                    }
                    if trouble != Trouble::None && envelope.message_type() == "ChargePayment" {
                        continue;
                    }
                    now = now.plus_ms(7);
                    saldo_domain::store::execute(
                        &mut store,
                        &message_read_set(consumer, &envelope),
                        now,
                        |s| decide_message(&rules, consumer, s, &envelope, now),
                    )
                    .expect("handled");
                    moved = true;
                }
            }
            if moved {
                continue;
            }
            let row = store
                .row(&RowKey::Order(order_id.clone()))
                .expect("placed")
                .clone();
            let Row::Order(order) = &row.value else {
                panic!("an order row")
            };
            if order.status() != OrderStatus::Pending {
                break;
            }
            if trouble == Trouble::PaymentDownThenOperator && !operator_acted {
                operator_acted = true;
                now = now.plus_ms(1_000);
                let intervention = OrderIntervention {
                    order_id: order_id.clone(),
                    action: OrderAction::ForceCompensation,
                    expected_version: Some(row.version),
                };
                let actor = Actor {
                    principal: "ops".to_owned(),
                    key: "ops-key".to_owned(),
                };
                saldo_domain::store::execute(
                    &mut store,
                    &order_intervention_read_set(&order_id),
                    now,
                    |s| {
                        decide_order_intervention(
                            &rules.order_saga,
                            s,
                            &intervention,
                            Run::Commit,
                            &actor,
                            now,
                        )
                    },
                )
                .expect("forced");
                continue;
            }
            now = order.deadline().expect("a pending saga has a deadline");
            saldo_domain::store::execute(&mut store, &deadline_read_set(&order_id), now, |s| {
                Ok::<_, Infallible>(decide_deadline(&rules.order_saga, s, &order_id, now))
            })
            .expect("fired");
        }
        let received: Vec<_> = handled.into_iter().collect();
        let parts: Vec<StoryPart> = Service::ALL
            .into_iter()
            .map(|service| store.story_part(service, &order_id, &received))
            .collect();
        Story::merge(order_id, parts)
    }

    /// The verdict of replaying `story`.
    fn verified(story: Story) -> RecordedVerification {
        RecordedPlayer::new(RecordingHeader {
            saldo_trace: TRACE_FORMAT,
            recorded: story,
        })
        .expect("replayable")
        .verification()
        .clone()
    }

    fn ending(player: &RecordedPlayer) -> OrderStatus {
        match &player
            .store()
            .row(&RowKey::Order(player.order_id().clone()))
            .expect("replayed")
            .value
        {
            Row::Order(order) => order.status(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_recorded_order_replays_exactly_in_every_way_it_can_end() {
        // Proves that placement, replies, deadlines and an operator's
        // intervention, fed again at their instants, give production's
        // messages byte for byte and its final row.
        for (trouble, funds, expected) in [
            (Trouble::None, 10_000, "CONFIRMED"),
            (Trouble::None, 100, "CANCELLED"),
            (Trouble::PaymentDown, 10_000, "CANCELLED"),
            (Trouble::PaymentDownThenOperator, 10_000, "CANCELLED"),
        ] {
            let story = production(trouble, funds);
            let text = export(&story);
            assert!(is_recording(&text));
            let mut player = RecordedPlayer::import(&text).expect("replayable");
            let verification = player.verification().clone();
            assert!(verification.exact(), "{expected}: {verification:#?}");
            assert!(verification.recorded >= 3, "{verification:?}");
            assert_eq!(player.position(), 0, "it starts at the start");
            player.run_to_end();
            assert!(ending(&player).name().starts_with(expected));
            assert_eq!(player.trace().hash_hex(), verification.trace_hash);
            let kinds: Vec<&str> = player
                .trace()
                .records()
                .expect("kept")
                .iter()
                .map(|record| match record.event {
                    TraceEvent::TimerFired { .. } => "deadline",
                    TraceEvent::Intervened { .. } => "intervention",
                    _ => "other",
                })
                .collect();
            match trouble {
                Trouble::None => assert!(!kinds.contains(&"deadline")),
                Trouble::PaymentDown => assert!(kinds.contains(&"deadline")),
                Trouble::PaymentDownThenOperator => assert!(kinds.contains(&"intervention")),
            }
            // Backwards is forwards from the start: the same events again.
            let events = player.trace().events();
            player.seek(1);
            assert_eq!(player.position(), 1);
            player.run_to_end();
            assert_eq!(player.trace().events(), events);
            assert_eq!(player.trace().hash_hex(), verification.trace_hash);
        }
    }

    #[test]
    fn a_recording_that_production_did_not_make_shows_where_it_differs() {
        // Proves the replay finds a changed message, a missing one and a
        // row edited by hand, each at its step.
        let story = production(Trouble::None, 10_000);
        let mut edited = story.clone();
        let last = edited
            .messages
            .iter()
            .rposition(|message| message.sender == Service::Order)
            .expect("the order sent messages");
        edited.messages.remove(last);
        let verification = verified(edited);
        assert!(!verification.exact());
        assert!(
            verification.differences[0].what.contains("did not"),
            "{verification:#?}"
        );

        let mut edited = story.clone();
        for (_, stored) in &mut edited.rows {
            if let Row::Order(order) = &mut stored.row {
                let mut order = (**order).clone();
                order.amount = Some(eur(1));
                stored.row = Row::Order(std::sync::Arc::new(order));
            }
        }
        let verification = verified(edited);
        assert_eq!(verification.differences.len(), 1, "{verification:#?}");
        assert!(verification.differences[0].what.contains("order row"));
        assert_eq!(verification.identical, verification.recorded - 1);

        let mut edited = story;
        let reply = edited
            .messages
            .iter_mut()
            .find(|message| message.message_type == "StockReserved")
            .expect("inventory replied");
        let mut envelope = Envelope::decode(&reply.bytes).expect("decodes");
        envelope.payload = saldo_domain::messages::Payload::StockReserved { amount: eur(2) };
        reply.bytes = envelope.encode();
        let verification = verified(edited);
        assert!(!verification.exact());
        assert!(
            verification.differences[0].what.contains("other bytes"),
            "{verification:#?}"
        );
    }

    #[test]
    fn a_redriven_reply_kept_under_the_order_outbox_is_an_input() {
        // Proves the story's copy of a redriven reply (same id, in the
        // order outbox, which the merge may keep) is replayed as the reply
        // it is and not counted as a message the order service emitted.
        let mut story = production(Trouble::None, 10_000);
        let reply = story
            .messages
            .iter_mut()
            .find(|message| message.message_type == "StockReserved")
            .expect("inventory replied");
        reply.sender = Service::Order;
        reply.sequence = 99;
        let verification = verified(story);
        assert!(verification.exact(), "{verification:?}");
    }

    #[test]
    fn recordings_that_cannot_be_replayed_say_why() {
        // Proves each refusal names its cause.
        assert!(matches!(
            RecordedPlayer::import("{\"saldo_trace\":1}"),
            Err(RecordingError::Parse(_))
        ));
        let story = production(Trouble::None, 10_000);
        let mut header = RecordingHeader {
            saldo_trace: 7,
            recorded: story.clone(),
        };
        assert_eq!(
            RecordedPlayer::new(header.clone()).err(),
            Some(RecordingError::Format(7))
        );
        header.saldo_trace = TRACE_FORMAT;
        header.recorded.missing.push(Service::Order);
        assert_eq!(
            RecordedPlayer::new(header.clone()).err(),
            Some(RecordingError::OrderPartMissing)
        );
        header.recorded = story.clone();
        header.recorded.truncated = true;
        assert_eq!(
            RecordedPlayer::new(header.clone()).err(),
            Some(RecordingError::Truncated)
        );
        // Another order's row, or a row filed under the wrong service, would
        // be shown as this order's: refused.
        header.recorded = story.clone();
        let order_row = header.recorded.rows[0].1.clone();
        header.recorded.rows.push((Service::Inventory, order_row));
        assert!(matches!(
            RecordedPlayer::new(header.clone()),
            Err(RecordingError::ForeignRow { .. })
        ));
        header.recorded = story.clone();
        let message = header.recorded.messages[0].clone();
        header.recorded.messages = vec![message; RECORDED_ITEMS_MAX + 1];
        assert!(matches!(
            RecordedPlayer::new(header.clone()),
            Err(RecordingError::TooLong(_))
        ));
        header.recorded = story;
        header.recorded.rows.clear();
        assert_eq!(
            RecordedPlayer::new(header).err(),
            Some(RecordingError::NoOrderRow)
        );
        assert!(!is_recording("{\"saldo_trace\":1,\"source\":{}}"));
    }
}

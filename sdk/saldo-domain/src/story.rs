//! One order's story across the services, in causal order (docs/adr/0017).
//!
//! A service never reads another's schema, so each service reports its own
//! [`StoryPart`] of an order: its rows for it with their versions, the
//! messages its outbox holds for it (published or not, with their bytes),
//! the inbox receipts of the messages asked about, its ledger entries with
//! their hashes, its dead letters and its audit records. [`Story::merge`]
//! puts the parts together: every message once, each after the message that
//! caused it, with the services that received it. The shape carries every
//! message's bytes, ids and causation id so that a later replay can feed the
//! same inputs to the same deciders.

use std::collections::{BTreeMap, BTreeSet};

use saldo_ledger::Entry;
use saldo_types::{OrderId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::decision::{Row, Version};
use crate::messages::{Envelope, Service};
use crate::operator::{AuditRecord, DeadLetterRow};

/// The most outbox messages, receipts, entries, dead letters and audit
/// records one part reports per kind; a story longer than that is cut and
/// says so (`truncated`).
pub const STORY_ITEMS_MAX: usize = 256;

/// A row of the order's, as its service stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryRow {
    /// Its version.
    pub version: Version,
    /// Its content.
    pub row: Row,
}

/// A message in a service's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Its position in the outbox.
    pub sequence: u64,
    /// The envelope's bytes, exactly as published.
    #[serde(with = "crate::operator::hex_bytes")]
    pub bytes: Vec<u8>,
    /// When it was committed.
    pub created_at: Timestamp,
    /// When the publisher marked it published, if it did.
    pub published_at: Option<Timestamp>,
}

/// An inbox receipt: `consumer` handled `message_id` at `received_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSeen {
    /// The consumer.
    pub consumer: Service,
    /// The message, in hex.
    pub message_id: String,
    /// When.
    pub received_at: Timestamp,
}

/// What one service knows about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryPart {
    /// The service.
    pub service: Service,
    /// The order.
    pub order_id: OrderId,
    /// Its rows for the order (order row; reservation; payment).
    pub rows: Vec<StoryRow>,
    /// Its outbox messages for the order, in outbox order.
    pub outbox: Vec<OutboxMessage>,
    /// Receipts of the messages asked about that it handled.
    pub inbox: Vec<ReceiptSeen>,
    /// Its ledger entries for the order, in sequence (payment).
    pub entries: Vec<Entry>,
    /// Its dead letters for the order.
    pub dead_letters: Vec<DeadLetterRow>,
    /// Its audit records about the order.
    pub audit: Vec<AuditRecord>,
    /// True when a list reached [`STORY_ITEMS_MAX`] and was cut.
    pub truncated: bool,
}

impl StoryPart {
    /// An empty part of `service` for `order_id`.
    pub fn empty(service: Service, order_id: OrderId) -> StoryPart {
        StoryPart {
            service,
            order_id,
            rows: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            entries: Vec::new(),
            dead_letters: Vec::new(),
            audit: Vec::new(),
            truncated: false,
        }
    }

    /// Cuts every list at [`STORY_ITEMS_MAX`], saying so in `truncated`
    /// (a store reads one item more than the bound to know).
    pub fn bound(&mut self) {
        self.truncated |= [
            self.outbox.len(),
            self.inbox.len(),
            self.entries.len(),
            self.dead_letters.len(),
            self.audit.len(),
        ]
        .into_iter()
        .any(|length| length > STORY_ITEMS_MAX);
        self.outbox.truncate(STORY_ITEMS_MAX);
        self.inbox.truncate(STORY_ITEMS_MAX);
        self.entries.truncate(STORY_ITEMS_MAX);
        self.dead_letters.truncate(STORY_ITEMS_MAX);
        self.audit.truncate(STORY_ITEMS_MAX);
    }

    /// The ids (hex) of the messages this part's outbox holds.
    pub fn message_ids(&self) -> Vec<String> {
        self.outbox
            .iter()
            .filter_map(|message| Envelope::decode(&message.bytes).ok())
            .map(|envelope| envelope.message_id.to_hex())
            .collect()
    }
}

/// A message in the story: who sent it, what it was, who handled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryMessage {
    /// The service whose outbox sent it.
    pub sender: Service,
    /// Its position in that outbox (commit order within the sender).
    pub sequence: u64,
    /// Its id (hex).
    pub message_id: String,
    /// The message that caused it (hex), if any.
    pub causation_id: Option<String>,
    /// Its type.
    pub message_type: String,
    /// When it was decided.
    pub occurred_at: Timestamp,
    /// When it was published, if it was.
    pub published_at: Option<Timestamp>,
    /// Its bytes, exactly as published.
    #[serde(with = "crate::operator::hex_bytes")]
    pub bytes: Vec<u8>,
    /// The consumers that handled it, and when.
    pub received: Vec<(Service, Timestamp)>,
}

/// One order's whole story, merged from the services' parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Story {
    /// The order.
    pub order_id: OrderId,
    /// Every service's rows for the order.
    pub rows: Vec<(Service, StoryRow)>,
    /// Every message, each after its cause, then by time and id.
    pub messages: Vec<StoryMessage>,
    /// The ledger entries, in sequence, with their hashes.
    pub entries: Vec<Entry>,
    /// Dead letters about the order, by service and id.
    pub dead_letters: Vec<DeadLetterRow>,
    /// Operators' actions on the order, by time.
    pub audit: Vec<AuditRecord>,
    /// Services whose part was missing (unreachable), by name.
    pub missing: Vec<Service>,
    /// True when some part was cut at [`STORY_ITEMS_MAX`].
    pub truncated: bool,
}

impl Story {
    /// Merges the parts (any order, any subset) into one story.
    pub fn merge(order_id: OrderId, parts: Vec<StoryPart>) -> Story {
        let present: BTreeSet<Service> = parts.iter().map(|part| part.service).collect();
        let mut received: BTreeMap<String, Vec<(Service, Timestamp)>> = BTreeMap::new();
        let mut story = Story {
            order_id,
            rows: Vec::new(),
            messages: Vec::new(),
            entries: Vec::new(),
            dead_letters: Vec::new(),
            audit: Vec::new(),
            missing: Service::ALL
                .into_iter()
                .filter(|service| !present.contains(service))
                .collect(),
            truncated: false,
        };
        let mut messages = Vec::new();
        for part in parts {
            assert_eq!(
                part.order_id, story.order_id,
                "every part is of the same order"
            );
            story.truncated |= part.truncated;
            story
                .rows
                .extend(part.rows.into_iter().map(|row| (part.service, row)));
            for receipt in part.inbox {
                received
                    .entry(receipt.message_id)
                    .or_default()
                    .push((receipt.consumer, receipt.received_at));
            }
            for message in part.outbox {
                // Outbox bytes were encoded by the service; a row that does
                // not decode is shown by the service's own part, not here.
                if let Ok(envelope) = Envelope::decode(&message.bytes) {
                    messages.push(StoryMessage {
                        sender: part.service,
                        sequence: message.sequence,
                        message_id: envelope.message_id.to_hex(),
                        causation_id: envelope.causation_id.map(|id| id.to_hex()),
                        message_type: envelope.message_type().to_owned(),
                        occurred_at: envelope.occurred_at,
                        published_at: message.published_at,
                        bytes: message.bytes,
                        received: Vec::new(),
                    });
                }
            }
            story.entries.extend(part.entries);
            story.dead_letters.extend(part.dead_letters);
            story.audit.extend(part.audit);
        }
        for message in &mut messages {
            if let Some(mut seen) = received.remove(&message.message_id) {
                seen.sort();
                message.received = seen;
            }
        }
        story.messages = causal_order(messages);
        story.entries.sort_by_key(|entry| entry.sequence);
        story.entries.dedup_by_key(|entry| entry.sequence);
        story
            .dead_letters
            .sort_by_key(|letter| (letter.service, letter.id));
        story
            .audit
            .sort_by_key(|record| (record.at, record.service));
        story
    }
}

/// Orders messages so that each comes after its cause (when the cause is in
/// the story), and otherwise by time, then by commit order within one
/// sender's outbox, then by id. Every message appears once.
fn causal_order(mut messages: Vec<StoryMessage>) -> Vec<StoryMessage> {
    messages.sort_by(|a, b| {
        (a.occurred_at, a.sender, a.sequence, &a.message_id).cmp(&(
            b.occurred_at,
            b.sender,
            b.sequence,
            &b.message_id,
        ))
    });
    // A redriven message sits in two outboxes with one id: the first sent
    // is the story's; the copy's receipts are the same message's.
    let mut seen = BTreeSet::new();
    messages.retain(|message| seen.insert(message.message_id.clone()));
    let index: BTreeMap<String, usize> = messages
        .iter()
        .enumerate()
        .map(|(position, message)| (message.message_id.clone(), position))
        .collect();
    let mut emitted = vec![false; messages.len()];
    let mut order = Vec::with_capacity(messages.len());
    for start in 0..messages.len() {
        // Walk up the causes not yet emitted, then emit them oldest first.
        let mut chain = Vec::new();
        let mut cursor = Some(start);
        while let Some(position) = cursor {
            if emitted[position] || chain.contains(&position) {
                break;
            }
            chain.push(position);
            cursor = messages[position]
                .causation_id
                .as_ref()
                .and_then(|cause| index.get(cause).copied());
        }
        for position in chain.into_iter().rev() {
            emitted[position] = true;
            order.push(position);
        }
    }
    assert_eq!(order.len(), messages.len(), "every message is placed once");
    let mut slots: Vec<Option<StoryMessage>> = messages.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|position| slots[position].take().expect("placed once"))
        .collect()
}

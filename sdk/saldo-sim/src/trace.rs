//! The run's trace: every event, in order.
//!
//! Two forms of one sequence: JSON lines (`--trace FILE`, for the browser
//! harness and for people, after a header line that reproduces the run:
//! see [`crate::replay`]) and a SHA-256 *trace hash* over a compact binary
//! encoding of the same events, which is what determinism is checked on.
//! The binary encoding is canonical (fixed field order, length-prefixed
//! strings, big-endian numbers), so the hash is equal natively and in
//! WebAssembly.

use std::borrow::Cow;
use std::collections::VecDeque;

use saldo_domain::messages::Service;
use saldo_types::{Id128, OrderId};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::fault::Fault;

/// How many recent events a violation report shows.
pub const RECENT_EVENTS_MAX: usize = 24;

/// Where a crash hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// After deciding, before (or during) the commit: the decision is lost.
    BeforeCommit,
    /// After the commit, before the input was acknowledged: it is redelivered.
    BeforeAck,
    /// After the commit and acknowledgement, before its messages were published.
    BeforePublish,
    /// The publisher published a batch and crashed before marking it.
    AfterPublish,
}

/// What delivering a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Took effect.
    Applied,
    /// The inbox knew it: no effect.
    Duplicate,
    /// Recorded, no effect (late, out of order, stale).
    Ignored,
    /// Could not be handled: sent to the dead-letter topic.
    DeadLettered,
    /// The consumer crashed while handling it.
    Crashed,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceEvent {
    /// The client asked for an order.
    OrderRequested {
        /// The order (the id the request generated).
        order_id: String,
        /// The idempotency key.
        idempotency_key: String,
        /// `accepted`, `replayed`, `unavailable` or `crashed`.
        outcome: String,
    },
    /// A publisher put a message on the broker.
    Published {
        /// The publishing service.
        service: Service,
        /// The message.
        message_id: Id128,
        /// Its type.
        message_type: Cow<'static, str>,
        /// Its key.
        order_id: OrderId,
        /// The partition (none for events nobody consumes).
        partition: Option<u32>,
        /// True when the broker got it twice.
        duplicated: bool,
    },
    /// A consumer handled a message.
    Delivered {
        /// The consumer.
        consumer: Service,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// The message.
        message_id: Id128,
        /// Its type.
        message_type: Cow<'static, str>,
        /// Its key.
        order_id: OrderId,
        /// What happened.
        outcome: DeliveryOutcome,
    },
    /// An order's deadline was handled.
    TimerFired {
        /// The order.
        order_id: OrderId,
        /// What happened.
        outcome: DeliveryOutcome,
    },
    /// A service (or its publisher) crashed.
    Crashed {
        /// The service.
        service: Service,
        /// Where.
        point: CrashPoint,
        /// When it comes back (ms since the epoch).
        until_ms: u64,
    },
    /// A service came back.
    Restarted {
        /// The service.
        service: Service,
    },
    /// A partition stopped delivering for a while.
    Stalled {
        /// The consuming service.
        consumer: Service,
        /// The partition.
        partition: u32,
        /// Until when.
        until_ms: u64,
    },
    /// The clock jumped forward.
    ClockJumped {
        /// By how much.
        ms: u64,
    },
    /// Faults stopped; the platform runs calmly to quiescence from here.
    FaultsStopped,
    /// A fault was injected by hand (a scenario, a learner, a replay).
    FaultInjected {
        /// The fault.
        fault: Fault,
    },
    /// Nothing is left to do.
    Quiescent,
    /// A recorded operator intervention was decided again (the replay of a
    /// production order, [`crate::recorded`]).
    Intervened {
        /// The order.
        order_id: OrderId,
        /// The action's stable name (`retry_now`, `force_compensation`, `resolve`).
        action: String,
        /// Applied, or dead-lettered when the saga refused it this time.
        outcome: DeliveryOutcome,
    },
    /// A replayed decision put a message in a service's outbox
    /// ([`crate::recorded`]).
    Emitted {
        /// The service whose outbox holds it.
        service: Service,
        /// The message.
        message_id: Id128,
        /// Its type.
        message_type: Cow<'static, str>,
        /// Its key.
        order_id: OrderId,
        /// XXH3-64 of its bytes, as 16 hex digits.
        digest: String,
        /// True when production's outbox held these very bytes at this place.
        as_recorded: bool,
    },
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The step number.
    pub step: u64,
    /// The virtual time (ms since the epoch).
    pub now_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: TraceEvent,
}

fn put_str(bytes: &mut Vec<u8>, text: &str) {
    bytes.extend_from_slice(&(text.len() as u32).to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
}

pub(crate) fn service_byte(service: Service) -> u8 {
    match service {
        Service::Order => 0,
        Service::Inventory => 1,
        Service::Payment => 2,
    }
}

impl TraceRecord {
    /// Appends the canonical binary encoding of the record.
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.step.to_be_bytes());
        bytes.extend_from_slice(&self.now_ms.to_be_bytes());
        match &self.event {
            TraceEvent::OrderRequested {
                order_id,
                idempotency_key,
                outcome,
            } => {
                bytes.push(1);
                put_str(bytes, order_id);
                put_str(bytes, idempotency_key);
                put_str(bytes, outcome);
            }
            TraceEvent::Published {
                service,
                message_id,
                message_type,
                order_id,
                partition,
                duplicated,
            } => {
                bytes.push(2);
                bytes.push(service_byte(*service));
                bytes.extend_from_slice(message_id.as_bytes());
                put_str(bytes, message_type);
                put_str(bytes, order_id.as_str());
                bytes.extend_from_slice(&partition.map_or(u32::MAX, |p| p).to_be_bytes());
                bytes.push(u8::from(*duplicated));
            }
            TraceEvent::Delivered {
                consumer,
                partition,
                offset,
                message_id,
                message_type,
                order_id,
                outcome,
            } => {
                bytes.push(3);
                bytes.push(service_byte(*consumer));
                bytes.extend_from_slice(&partition.to_be_bytes());
                bytes.extend_from_slice(&offset.to_be_bytes());
                bytes.extend_from_slice(message_id.as_bytes());
                put_str(bytes, message_type);
                put_str(bytes, order_id.as_str());
                bytes.push(*outcome as u8);
            }
            TraceEvent::TimerFired { order_id, outcome } => {
                bytes.push(4);
                put_str(bytes, order_id.as_str());
                bytes.push(*outcome as u8);
            }
            TraceEvent::Crashed {
                service,
                point,
                until_ms,
            } => {
                bytes.push(5);
                bytes.push(service_byte(*service));
                bytes.push(*point as u8);
                bytes.extend_from_slice(&until_ms.to_be_bytes());
            }
            TraceEvent::Restarted { service } => {
                bytes.push(6);
                bytes.push(service_byte(*service));
            }
            TraceEvent::Stalled {
                consumer,
                partition,
                until_ms,
            } => {
                bytes.push(7);
                bytes.push(service_byte(*consumer));
                bytes.extend_from_slice(&partition.to_be_bytes());
                bytes.extend_from_slice(&until_ms.to_be_bytes());
            }
            TraceEvent::ClockJumped { ms } => {
                bytes.push(8);
                bytes.extend_from_slice(&ms.to_be_bytes());
            }
            TraceEvent::FaultsStopped => bytes.push(9),
            TraceEvent::Quiescent => bytes.push(10),
            TraceEvent::FaultInjected { fault } => {
                bytes.push(11);
                fault.encode_into(bytes);
            }
            TraceEvent::Intervened {
                order_id,
                action,
                outcome,
            } => {
                bytes.push(12);
                put_str(bytes, order_id.as_str());
                put_str(bytes, action);
                bytes.push(*outcome as u8);
            }
            TraceEvent::Emitted {
                service,
                message_id,
                message_type,
                order_id,
                digest,
                as_recorded,
            } => {
                bytes.push(13);
                bytes.push(service_byte(*service));
                bytes.extend_from_slice(message_id.as_bytes());
                put_str(bytes, message_type);
                put_str(bytes, order_id.as_str());
                put_str(bytes, digest);
                bytes.push(u8::from(*as_recorded));
            }
        }
    }
}

/// Collects the trace: always its hash and recent events; every record
/// only when asked for.
#[derive(Clone)]
pub struct Trace {
    hasher: Xxh3,
    scratch: Vec<u8>,
    recent: VecDeque<TraceRecord>,
    records: Option<Vec<TraceRecord>>,
    events: u64,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("hash", &self.hash_hex())
            .field("events", &self.events)
            .field("recent", &self.recent)
            .field("records", &self.records.as_ref().map(Vec::len))
            .finish()
    }
}

impl Trace {
    /// A trace that keeps every record when `keep_records` is true.
    pub fn new(keep_records: bool) -> Trace {
        Trace {
            hasher: Xxh3::new(),
            scratch: Vec::with_capacity(128),
            recent: VecDeque::with_capacity(RECENT_EVENTS_MAX),
            records: keep_records.then(Vec::new),
            events: 0,
        }
    }

    /// Records one event.
    pub fn record(&mut self, record: TraceRecord) {
        self.scratch.clear();
        record.encode_into(&mut self.scratch);
        self.hasher.update(&self.scratch);
        if let Some(records) = &mut self.records {
            records.push(record.clone());
        }
        if self.recent.len() == RECENT_EVENTS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(record);
        self.events += 1;
    }

    /// The hash of everything recorded so far (XXH3, 128 bits), as 32 hex
    /// digits. It tells runs apart, native or WebAssembly, seed for seed; it
    /// guards no secret, so it need not be cryptographic (ADR 0018).
    pub fn hash_hex(&self) -> String {
        format!("{:032x}", self.hasher.digest128())
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<TraceRecord> {
        self.recent.iter().cloned().collect()
    }

    /// How many events were recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Every record so far, if kept.
    pub fn records(&self) -> Option<&[TraceRecord]> {
        self.records.as_deref()
    }
}

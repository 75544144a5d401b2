//! The inbox check every consumer runs first, built on the one idempotency
//! decision: a message id seen before with the same content is a duplicate;
//! seen before with other content is a reused id, which is refused.
//!
//! A receipt is evidence for as long as it is stored: its age never turns a
//! known message into a new one. Hosts delete receipts older than their
//! inbox horizon (by default [`INBOX_RETENTION_MS`], ADR 0015); a message
//! redelivered after its receipt was purged is fresh to the inbox, and each
//! decider absorbs it because the effect it would have is already recorded
//! per order (a payment row, a reservation, a saga step that moved on).

use saldo_idempotency::{Fingerprint, IdempotencyRecord, RecordState, Verdict};
use saldo_types::Timestamp;

use crate::decision::{Decided, Decision, InboxReceipt, Snapshot};
use crate::messages::{Envelope, Payload, Service};
use crate::{ConsumeError, MessageOutcome};

/// How long hosts keep an inbox receipt unless configured otherwise (7 days,
/// Kafka's default `retention.ms`): no message older than its topic's
/// retention can be redelivered, so a horizon at least that long means a
/// redelivery always finds its receipt. Past it, the per-order idempotency
/// of each decider still absorbs a very late redelivery.
pub const INBOX_RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// What the inbox says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxVerdict {
    /// Handled before: no effect, just acknowledge.
    Duplicate,
    /// New: handle it and commit this receipt with the effect.
    Fresh(InboxReceipt),
}

/// The fingerprint of a message's meaning: its type, key and body.
pub fn fingerprint(envelope: &Envelope) -> Fingerprint {
    let mut payload = Vec::with_capacity(96);
    envelope.payload.canonical_bytes(&mut payload);
    Fingerprint::of_parts(&[envelope.order_id.as_str().as_bytes(), &payload])
}

/// Checks the loaded receipt (if any) for `envelope`.
pub fn check(
    snapshot: &Snapshot,
    consumer: Service,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<InboxVerdict, ConsumeError> {
    let fingerprint = fingerprint(envelope);
    let stored = snapshot.inbox.as_ref().map(|receipt| {
        assert_eq!(
            receipt.message_id, envelope.message_id,
            "the loaded receipt is for this message"
        );
        IdempotencyRecord {
            fingerprint: receipt.fingerprint,
            state: RecordState::Completed { outcome: () },
            created_at: receipt.received_at,
            // A stored receipt never expires in the decision: the horizon
            // only says when a host may purge it (see the module doc).
            expires_at: Timestamp::from_unix_ms(u64::MAX),
        }
    });
    match saldo_idempotency::decide(stored.as_ref(), &fingerprint, now) {
        Verdict::Replay(()) => Ok(InboxVerdict::Duplicate),
        Verdict::Mismatch => Err(ConsumeError::MessageIdReused(envelope.message_id)),
        // Receipts are written in the same transaction as the effect, so
        // none is ever in flight, and none expires (see above).
        Verdict::Expired | Verdict::InFlight { .. } => {
            unreachable!(
                "receipt of {}: a receipt is completed and never expires",
                envelope.message_id
            )
        }
        Verdict::Fresh => Ok(InboxVerdict::Fresh(InboxReceipt {
            consumer,
            message_id: envelope.message_id,
            fingerprint,
            received_at: now,
        })),
    }
}

/// The frame every participant (inventory, payment) decides a command in:
/// refuse a message that is not `consumer`'s, answer a redelivery with no
/// effect, otherwise start the decision with the inbox receipt, let `decide`
/// add the effect and return the reply, and publish that reply, caused by
/// the command, through `consumer`'s outbox.
pub fn participant(
    consumer: Service,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
    decide: impl FnOnce(&mut Decision) -> Result<Payload, ConsumeError>,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    if envelope.payload.consumer() != Some(consumer) {
        return Err(ConsumeError::WrongConsumer {
            message_type: envelope.message_type(),
            consumer,
        });
    }
    let receipt = match check(snapshot, consumer, envelope, now)? {
        InboxVerdict::Duplicate => {
            return Ok(Decided {
                decision: Decision::default(),
                reply: MessageOutcome::Duplicate,
            });
        }
        InboxVerdict::Fresh(receipt) => receipt,
    };
    let mut decision = Decision {
        inbox: Some(receipt),
        ..Decision::default()
    };
    let reply = decide(&mut decision)?;
    decision.publish(
        consumer,
        Envelope::caused_by(envelope, &[b"reply"], now, reply),
    );
    Ok(Decided {
        decision,
        reply: MessageOutcome::Applied,
    })
}

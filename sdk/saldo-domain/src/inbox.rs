//! The inbox check every consumer runs first, built on the one idempotency
//! decision: a message id seen before with the same content is a duplicate;
//! seen before with other content is a reused id, which is refused.

use saldo_idempotency::{Fingerprint, IdempotencyRecord, RecordState, Verdict};
use saldo_types::Timestamp;

use crate::ConsumeError;
use crate::decision::{InboxReceipt, Snapshot};
use crate::messages::{Envelope, Service};

/// How long an inbox receipt is kept (7 days): longer than any redelivery
/// window of the broker. Past it, the per-order idempotency of each decider
/// still makes a very late redelivery harmless.
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
            expires_at: receipt.received_at.plus_ms(INBOX_RETENTION_MS),
        }
    });
    match saldo_idempotency::decide(stored.as_ref(), &fingerprint, now) {
        Verdict::Replay(()) => Ok(InboxVerdict::Duplicate),
        Verdict::Mismatch => Err(ConsumeError::MessageIdReused(envelope.message_id)),
        // Receipts are written in the same transaction as the effect, so
        // none is ever in flight; an expired one counts as new.
        Verdict::Fresh | Verdict::Expired | Verdict::InFlight { .. } => {
            Ok(InboxVerdict::Fresh(InboxReceipt {
                consumer,
                message_id: envelope.message_id,
                fingerprint,
                received_at: now,
            }))
        }
    }
}

//! Faults injected on purpose, at a chosen step: by a walkthrough's script,
//! by a learner in the browser harness, or by a replayed trace.
//!
//! The seed's profile draws faults at random; an injected fault is the same
//! fault, placed by hand. Faults that hit at a point in the code (a crash
//! before a commit, a duplicate publish) are *armed* and hit the next time
//! their service passes that point; the others (a stall, a clock jump) take
//! effect at once. Either way the injection is recorded in the trace, so a
//! run with injections replays exactly.

use std::fmt;

use saldo_domain::messages::Service;
use serde::{Deserialize, Serialize};

/// The longest stall or clock jump one injection may cause.
pub const FAULT_MS_MAX: u64 = 3_600_000;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The next message `service`'s publisher publishes lands on the broker twice.
    Duplicate {
        /// The publishing service.
        service: Service,
    },
    /// `service` crashes after its next decision and before committing it:
    /// the decision is lost and the input comes again.
    CrashBeforeCommit {
        /// The service.
        service: Service,
    },
    /// `service` crashes after its next commit of a consumed message and
    /// before acknowledging it: the broker redelivers it.
    CrashBeforeAck {
        /// The consuming service.
        service: Service,
    },
    /// `service` crashes after its next acknowledged message, before its
    /// publisher sends the replies: they wait in the outbox.
    CrashBeforePublish {
        /// The consuming service.
        service: Service,
    },
    /// `service`'s publisher crashes after publishing its next batch and
    /// before marking it published: the batch is published again.
    CrashAfterPublish {
        /// The publishing service.
        service: Service,
    },
    /// Every partition of `consumer`'s topic stops delivering for `ms`.
    Stall {
        /// The consuming service.
        consumer: Service,
        /// For how long, in virtual milliseconds.
        ms: u64,
    },
    /// The clock jumps forward by `ms`.
    ClockJump {
        /// By how much, in milliseconds.
        ms: u64,
    },
    /// The client sends its next order request a second time, with the same
    /// idempotency key.
    ClientRetry,
}

/// Why an injection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// A duration of zero or above [`FAULT_MS_MAX`].
    #[error("a fault lasts from 1 to {FAULT_MS_MAX} ms, not {0}")]
    Duration(u64),
    /// The run is over.
    #[error("the run has ended; nothing more can happen to it")]
    Ended,
}

impl Fault {
    /// Checks the fault's own values.
    pub fn validate(&self) -> Result<(), FaultError> {
        match *self {
            Fault::Stall { ms, .. } | Fault::ClockJump { ms } if ms == 0 || ms > FAULT_MS_MAX => {
                Err(FaultError::Duration(ms))
            }
            _ => Ok(()),
        }
    }

    /// True when the fault waits for its moment rather than acting at once.
    pub fn is_armed(&self) -> bool {
        !matches!(self, Fault::Stall { .. } | Fault::ClockJump { .. })
    }

    /// The stable name of the fault's kind (as in the JSON `kind` field).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Duplicate { .. } => "duplicate",
            Fault::CrashBeforeCommit { .. } => "crash_before_commit",
            Fault::CrashBeforeAck { .. } => "crash_before_ack",
            Fault::CrashBeforePublish { .. } => "crash_before_publish",
            Fault::CrashAfterPublish { .. } => "crash_after_publish",
            Fault::Stall { .. } => "stall",
            Fault::ClockJump { .. } => "clock_jump",
            Fault::ClientRetry => "client_retry",
        }
    }

    /// Appends the canonical binary encoding (for the trace hash).
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        let (tag, service, ms) = match *self {
            Fault::Duplicate { service } => (1, Some(service), 0),
            Fault::CrashBeforeCommit { service } => (2, Some(service), 0),
            Fault::CrashBeforeAck { service } => (3, Some(service), 0),
            Fault::CrashBeforePublish { service } => (4, Some(service), 0),
            Fault::CrashAfterPublish { service } => (5, Some(service), 0),
            Fault::Stall { consumer, ms } => (6, Some(consumer), ms),
            Fault::ClockJump { ms } => (7, None, ms),
            Fault::ClientRetry => (8, None, 0),
        };
        bytes.push(tag);
        bytes.push(service.map_or(u8::MAX, crate::trace::service_byte));
        bytes.extend_from_slice(&ms.to_be_bytes());
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Duplicate { service } => {
                write!(f, "the {service} publisher's next message lands twice")
            }
            Fault::CrashBeforeCommit { service } => {
                write!(f, "{service} crashes before its next commit")
            }
            Fault::CrashBeforeAck { service } => write!(
                f,
                "{service} crashes after its next commit, before acknowledging the message"
            ),
            Fault::CrashBeforePublish { service } => write!(
                f,
                "{service} crashes after its next commit, before publishing its replies"
            ),
            Fault::CrashAfterPublish { service } => write!(
                f,
                "the {service} publisher crashes after publishing its next batch, before marking it"
            ),
            Fault::Stall { consumer, ms } => {
                write!(f, "{consumer}'s partitions stall for {ms} ms")
            }
            Fault::ClockJump { ms } => write!(f, "the clock jumps {ms} ms forward"),
            Fault::ClientRetry => write!(f, "the client sends its next order twice"),
        }
    }
}

/// Faults waiting for their moment, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Armed {
    faults: Vec<Fault>,
}

impl Armed {
    /// Arms a fault.
    pub fn push(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Disarms and returns true if `fault` was armed.
    pub fn take(&mut self, fault: Fault) -> bool {
        match self.faults.iter().position(|armed| *armed == fault) {
            Some(index) => {
                self.faults.remove(index);
                true
            }
            None => false,
        }
    }

    /// The armed faults, oldest first.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_through_json_and_refuse_bad_durations() {
        // Proves the JSON form is stable and durations are bounded.
        let fault = Fault::CrashBeforeAck {
            service: Service::Payment,
        };
        let json = serde_json::to_string(&fault).expect("serialises");
        assert_eq!(json, r#"{"kind":"crash_before_ack","service":"payment"}"#);
        assert_eq!(serde_json::from_str::<Fault>(&json).expect("parses"), fault);
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"meteor"}"#).is_err());
        assert_eq!(
            Fault::ClockJump { ms: 0 }.validate(),
            Err(FaultError::Duration(0))
        );
        assert!(
            Fault::Stall {
                consumer: Service::Payment,
                ms: FAULT_MS_MAX
            }
            .validate()
            .is_ok()
        );
    }
}

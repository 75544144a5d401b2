//! The one delivery loop: decode, decide in batches, commit, with the retry
//! and poison policy and dead letters. The caller acknowledges afterwards.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saldo_domain::messages::{Envelope, MessageId, Service};
use saldo_domain::{MessageOutcome, Rules, decide_message, message_read_set};

use crate::run::{InputFailure, execute_batch};
use crate::store::Store;
use crate::telemetry::{Parent, consume_span};
use crate::wall_clock;

/// Attempts for one message that keeps conflicting before it is
/// dead-lettered. An unreachable store does not count: a database outage
/// delays messages, it never dead-letters them.
pub const ATTEMPTS_MAX: u32 = 5;
/// Backoff before the second attempt; it doubles each time.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// The longest backoff, reached while the store stays unreachable.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts to record one dead letter (topic and table) before the
/// delivery fails, so that a supervisor restarts the process and the
/// message, never acknowledged, is delivered again.
pub const DEAD_LETTER_ATTEMPTS_MAX: u32 = 20;
/// The pause between attempts to record a dead letter.
pub const DEAD_LETTER_BACKOFF: Duration = Duration::from_millis(500);

/// A message as it arrived, decoded or not.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Where it came from (`topic/partition/offset`), for logs and dead letters.
    pub origin: String,
    /// Its key (the order id), as it arrived.
    pub key: String,
    /// Its bytes, as they arrived.
    pub payload: Vec<u8>,
    /// The decoded envelope, or why it did not decode.
    pub envelope: Result<Envelope, String>,
}

impl Incoming {
    /// A message from the wire; decoding it is the first step of delivery.
    pub fn decode(origin: String, key: String, payload: Vec<u8>) -> Incoming {
        let envelope = Envelope::decode(&payload).map_err(|error| format!("undecodable: {error}"));
        Incoming {
            origin,
            key,
            payload,
            envelope,
        }
    }

    /// A message already decoded (`saldo dev`'s bus).
    pub fn decoded(origin: String, envelope: Envelope) -> Incoming {
        Incoming {
            origin,
            key: envelope.order_id.as_str().to_owned(),
            payload: envelope.encode(),
            envelope: Ok(envelope),
        }
    }
}

/// A message a consumer could not handle, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's id, when it decoded.
    pub message_id: Option<MessageId>,
    /// Its type, when it decoded.
    pub message_type: Option<&'static str>,
    /// Its order, when it decoded.
    pub order_id: Option<String>,
    /// Why it was refused.
    pub error: String,
    /// Its key and bytes, as they arrived.
    pub key: String,
    /// Its bytes, as they arrived.
    pub payload: Vec<u8>,
    /// Where it came from.
    pub origin: String,
}

/// Where dead letters are published for operators (the dead-letter topic).
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Publishes one dead letter of `consumer`.
    async fn publish(&self, consumer: Service, letter: &DeadLetter) -> Result<(), String>;
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Decided and committed (or recognised as a duplicate).
    Done(MessageOutcome),
    /// Could not be handled; recorded as a dead letter.
    DeadLettered(String),
}

/// Why a delivery stopped before every message was handled. None of the
/// batch may be acknowledged; what was committed is absorbed by the inbox
/// when it comes again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// A dead letter could not be recorded.
    #[error("could not record a dead letter after {DEAD_LETTER_ATTEMPTS_MAX} attempts: {0}")]
    DeadLetterFailed(String),
    /// The process is stopping.
    #[error("stopped while waiting for the store")]
    Stopped,
}

/// The stable name of an outcome, for metrics and logs.
pub fn outcome_name(outcome: &MessageOutcome) -> &'static str {
    match outcome {
        MessageOutcome::Applied => "applied",
        MessageOutcome::Duplicate => "duplicate",
        MessageOutcome::Ignored(_) => "ignored",
    }
}

/// Delivers batches of messages to one service's deciders.
pub struct Deliverer {
    service: Service,
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    sink: Arc<dyn DeadLetterSink>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Deliverer {
    /// A deliverer for `service`; it gives up waiting for the store once
    /// `stop` turns true.
    pub fn new(
        service: Service,
        store: Arc<dyn Store>,
        rules: Arc<Rules>,
        sink: Arc<dyn DeadLetterSink>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Deliverer {
        Deliverer {
            service,
            store,
            rules,
            sink,
            stop,
        }
    }

    /// The service it delivers to.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Handles a batch in order: every message decided and committed (in
    /// as few transactions as contention allows) or dead-lettered. Returns
    /// one result per message; only then may the caller acknowledge them.
    pub async fn handle(&self, batch: &[Incoming]) -> Result<Vec<Handled>, DeliveryError> {
        let mut handled: Vec<Option<Handled>> = batch.iter().map(|_| None).collect();
        let mut conflicts = vec![0_u32; batch.len()];
        let mut todo = Vec::with_capacity(batch.len());
        for (index, incoming) in batch.iter().enumerate() {
            match &incoming.envelope {
                Ok(_) => todo.push(index),
                Err(error) => {
                    handled[index] = Some(self.dead_letter(incoming, error.clone()).await?);
                }
            }
        }
        let envelope = |index: &usize| {
            batch[*index]
                .envelope
                .as_ref()
                .expect("only decoded messages are decided")
        };
        // Each message's span, from now until the batch is handled; the
        // spans of what its decision emits hang from it.
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|incoming| {
                incoming
                    .envelope
                    .as_ref()
                    .map_or_else(|_| tracing::Span::none(), consume_span)
            })
            .collect();
        let mut backoff = BACKOFF_INITIAL;
        while !todo.is_empty() {
            let now = wall_clock();
            let results = execute_batch(
                self.store.as_ref(),
                &todo,
                now,
                |index| message_read_set(self.service, envelope(index)),
                |index, snapshot| {
                    decide_message(&self.rules, self.service, snapshot, envelope(index), now)
                },
                |index| Parent::Span(spans[*index].clone()),
            )
            .await;
            let mut again = Vec::new();
            for (index, result) in todo.into_iter().zip(results) {
                let incoming = &batch[index];
                let message = envelope(&index);
                match result {
                    Ok(outcome) => {
                        let name = outcome_name(&outcome);
                        metrics::counter!("saldo_messages_handled_total", "service" => self.service.name(), "outcome" => name).increment(1);
                        tracing::debug!(
                            consumer = %self.service,
                            message_type = message.message_type(),
                            message_id = %message.message_id.to_hex(),
                            order_id = %message.order_id,
                            correlation_id = %message.correlation_id,
                            traceparent = %message.traceparent.as_str(),
                            outcome = name,
                            "handled"
                        );
                        handled[index] = Some(Handled::Done(outcome));
                    }
                    // A refusal is deterministic: retrying cannot help.
                    Err(InputFailure::Rejected(refusal)) => {
                        handled[index] =
                            Some(self.dead_letter(incoming, refusal.to_string()).await?);
                    }
                    Err(InputFailure::Refused(reason)) => {
                        handled[index] = Some(self.dead_letter(incoming, reason).await?);
                    }
                    Err(InputFailure::Conflict(conflict)) => {
                        conflicts[index] += 1;
                        if conflicts[index] >= ATTEMPTS_MAX {
                            let error = format!("attempt {}: {conflict}", conflicts[index]);
                            handled[index] = Some(self.dead_letter(incoming, error).await?);
                        } else {
                            again.push(index);
                        }
                    }
                    Err(InputFailure::Unavailable(unavailable)) => {
                        tracing::warn!(consumer = %self.service, origin = incoming.origin, %unavailable, "store unavailable; keeping the message");
                        again.push(index);
                    }
                }
            }
            if !again.is_empty() {
                self.pause(backoff).await?;
                backoff = backoff.saturating_mul(2).min(BACKOFF_MAX);
            }
            todo = again;
        }
        Ok(handled
            .into_iter()
            .map(|handled| handled.expect("every message was handled"))
            .collect())
    }

    /// Sleeps, unless the process is stopping.
    async fn pause(&self, duration: Duration) -> Result<(), DeliveryError> {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return Err(DeliveryError::Stopped);
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            _ = stop.wait_for(|stopped| *stopped) => Err(DeliveryError::Stopped),
        }
    }

    /// Records a dead letter in the sink and in the store; both must
    /// succeed, each at most once.
    async fn dead_letter(
        &self,
        incoming: &Incoming,
        error: String,
    ) -> Result<Handled, DeliveryError> {
        let envelope = incoming.envelope.as_ref().ok();
        let letter = DeadLetter {
            message_id: envelope.map(|envelope| envelope.message_id),
            message_type: envelope.map(Envelope::message_type),
            order_id: envelope.map(|envelope| envelope.order_id.as_str().to_owned()),
            error,
            key: incoming.key.clone(),
            payload: incoming.payload.clone(),
            origin: incoming.origin.clone(),
        };
        let consumer = self.service;
        let (mut published, mut recorded) = (false, false);
        let mut last_error = String::new();
        for _ in 0..DEAD_LETTER_ATTEMPTS_MAX {
            if !published {
                match self.sink.publish(consumer, &letter).await {
                    Ok(()) => published = true,
                    Err(error) => last_error = error,
                }
            }
            if !recorded {
                match self.store.record_dead_letter(consumer, &letter).await {
                    Ok(()) => recorded = true,
                    Err(error) => last_error = error.to_string(),
                }
            }
            if published && recorded {
                metrics::counter!("saldo_dead_letters_total", "service" => consumer.name())
                    .increment(1);
                tracing::error!(
                    alert = true,
                    consumer = consumer.name(),
                    origin = letter.origin,
                    error = letter.error,
                    "dead-lettered"
                );
                return Ok(Handled::DeadLettered(letter.error));
            }
            tracing::warn!(
                consumer = consumer.name(),
                origin = letter.origin,
                published,
                recorded,
                error = last_error,
                "dead-lettering failed; retrying"
            );
            self.pause(DEAD_LETTER_BACKOFF).await?;
        }
        Err(DeliveryError::DeadLetterFailed(last_error))
    }
}

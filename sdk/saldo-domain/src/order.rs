//! The order service: the order saga and its three deciders (place an
//! order, handle a participant's reply, handle a due deadline).
//!
//! The saga: reserve stock (compensated by releasing it), take payment
//! (compensated by a refund), then commit the stock (retriable: past the
//! point of no return). Users see `PENDING`, `CONFIRMED` or
//! `CANCELLED(reason)`.

use saldo_idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyRecord, Namespace, ScopedKey, Verdict,
};
use saldo_saga::{
    Definition, Ending, Failure, HistoryEvent, HistoryRecord, Outcome, Phase, Reply, RetryPolicy,
    SagaCommand, SagaInput, SagaInstance, StepSpec, Transition,
};
use saldo_types::{
    CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Principal, Timestamp,
};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::decision::{Decided, Decision, IdempotencyWrite, ReadSet, Row, RowKey, Snapshot};
use crate::inbox::{self, InboxVerdict};
use crate::messages::{
    Envelope, OrderLine, Payload, PaymentFailure, SCHEMA_VERSION, Service, StockRejection,
    Traceparent,
};
use crate::{ConsumeError, MessageOutcome};

/// The most lines one order may have.
pub const ORDER_LINES_MAX: usize = 50;
/// The most units of one line.
pub const LINE_QUANTITY_MAX: u32 = 10_000;
/// How long an HTTP idempotency key is remembered (24 hours).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3_600_000;

/// Step index of `reserve_stock`.
pub const STEP_RESERVE_STOCK: usize = 0;
/// Step index of `take_payment`.
pub const STEP_TAKE_PAYMENT: usize = 1;
/// Step index of `commit_stock`.
pub const STEP_COMMIT_STOCK: usize = 2;

/// The commands the order saga sends; the order row supplies their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderCommand {
    /// Send `ReserveStock`.
    ReserveStock,
    /// Send `ReleaseStock`.
    ReleaseStock,
    /// Send `ChargePayment`.
    ChargePayment,
    /// Send `RefundPayment`.
    RefundPayment,
    /// Send `CommitStock`.
    CommitStock,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Not enough stock.
    OutOfStock,
    /// A SKU is not stocked.
    UnknownSku,
    /// A SKU is priced in another currency.
    PriceCurrencyMismatch,
    /// The total overflowed.
    AmountOverflow,
    /// The wallet could not pay.
    InsufficientFunds,
    /// The customer has no wallet.
    UnknownWallet,
    /// The wallet holds another currency.
    CurrencyMismatch,
    /// The amount is over the wallet's limit.
    AmountOverLimit,
    /// The amount was not positive.
    AmountMustBePositive,
    /// A participant had already seen the order cancelled.
    OrderCancelled,
    /// Inventory did not answer in time.
    StockTimedOut,
    /// Payment did not answer in time.
    PaymentTimedOut,
    /// An operator turned the saga back, or stated that a step failed
    /// (docs/adr/0017).
    CancelledByOperator,
}

impl From<StockRejection> for CancelReason {
    fn from(reason: StockRejection) -> Self {
        match reason {
            StockRejection::OutOfStock => CancelReason::OutOfStock,
            StockRejection::UnknownSku => CancelReason::UnknownSku,
            StockRejection::PriceCurrencyMismatch => CancelReason::PriceCurrencyMismatch,
            StockRejection::AmountOverflow => CancelReason::AmountOverflow,
            StockRejection::OrderCancelled => CancelReason::OrderCancelled,
        }
    }
}

impl From<PaymentFailure> for CancelReason {
    fn from(reason: PaymentFailure) -> Self {
        match reason {
            PaymentFailure::InsufficientFunds => CancelReason::InsufficientFunds,
            PaymentFailure::UnknownWallet => CancelReason::UnknownWallet,
            PaymentFailure::CurrencyMismatch => CancelReason::CurrencyMismatch,
            PaymentFailure::AmountOverLimit => CancelReason::AmountOverLimit,
            PaymentFailure::AmountMustBePositive => CancelReason::AmountMustBePositive,
            PaymentFailure::OrderCancelled => CancelReason::OrderCancelled,
        }
    }
}

/// What a user sees of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    content = "reason",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum OrderStatus {
    /// The saga is running (or compensating).
    Pending,
    /// Stock committed and payment captured.
    Confirmed,
    /// Fully compensated, for this reason.
    Cancelled(CancelReason),
}

impl OrderStatus {
    /// The status's name, as the `orders.status` column and the API spell it.
    pub fn name(&self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled(_) => "CANCELLED",
        }
    }

    /// Every status name.
    pub const NAMES: [&'static str; 3] = ["PENDING", "CONFIRMED", "CANCELLED"];
}

/// Deadlines and retries of the order saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaTimings {
    /// How long each step's attempt may take.
    pub step_deadline_ms: u64,
    /// Attempts for the compensable steps before the saga turns back.
    pub step_attempts_max: u32,
    /// Backoff before the second attempt.
    pub backoff_initial_ms: u64,
    /// Longest backoff.
    pub backoff_max_ms: u64,
}

impl Default for SagaTimings {
    fn default() -> Self {
        SagaTimings {
            step_deadline_ms: 10_000,
            step_attempts_max: 3,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

/// Builds the order saga's definition.
pub fn order_saga(timings: &SagaTimings) -> Definition<OrderCommand> {
    let retry = RetryPolicy::exponential(
        timings.step_attempts_max,
        timings.backoff_initial_ms,
        timings.backoff_max_ms,
    );
    Definition::builder("order")
        .step(
            StepSpec::new("reserve_stock", OrderCommand::ReserveStock)
                .compensate_with(OrderCommand::ReleaseStock)
                .deadline_ms(timings.step_deadline_ms)
                .retry(retry),
        )
        .step(
            StepSpec::new("take_payment", OrderCommand::ChargePayment)
                .compensate_with(OrderCommand::RefundPayment)
                .deadline_ms(timings.step_deadline_ms)
                .retry(retry),
        )
        .step(
            StepSpec::new("commit_stock", OrderCommand::CommitStock)
                .retriable()
                .deadline_ms(timings.step_deadline_ms)
                .retry(retry),
        )
        .compensation(timings.step_deadline_ms, retry)
        .build()
        .expect("the order saga definition is valid")
}

/// An order and its saga: the order service's one row per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    /// The order.
    pub order_id: OrderId,
    /// Who pays.
    pub customer: CustomerId,
    /// What.
    pub lines: Vec<OrderLine>,
    /// In which currency.
    pub currency: Currency,
    /// The priced total, known once inventory reserved the stock.
    pub amount: Option<Money>,
    /// The request that created it.
    pub correlation_id: CorrelationId,
    /// Its trace.
    pub traceparent: Traceparent,
    /// The saga instance.
    pub saga: SagaInstance<CancelReason>,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl OrderRow {
    /// What the user sees.
    pub fn status(&self) -> OrderStatus {
        match self.saga.ending() {
            None => OrderStatus::Pending,
            Some(Ending::Completed) => OrderStatus::Confirmed,
            Some(Ending::Compensated(failure)) => OrderStatus::Cancelled(cancel_reason(&failure)),
        }
    }

    /// When the order service must look at this order again, if ever.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.saga.deadline()
    }

    /// The saga's history, with timestamps.
    pub fn history(&self) -> &[HistoryRecord<CancelReason>] {
        self.saga.history()
    }

    /// The id of the order's root message (the placement itself).
    pub fn root_message_id(&self) -> Id128 {
        Id128::derive("placed", &[self.order_id.as_str().as_bytes()])
    }
}

fn cancel_reason(failure: &Failure<CancelReason>) -> CancelReason {
    match failure {
        Failure::Rejected { reason, .. } => *reason,
        Failure::TimedOut { step } if *step == STEP_RESERVE_STOCK => CancelReason::StockTimedOut,
        Failure::TimedOut { .. } => CancelReason::PaymentTimedOut,
        Failure::Forced { .. } => CancelReason::CancelledByOperator,
    }
}

/// A request to place an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    /// The id to give the order if it is new (the host generates it).
    pub order_id: OrderId,
    /// Who pays.
    pub customer: CustomerId,
    /// What.
    pub lines: Vec<OrderLine>,
    /// In which currency.
    pub currency: Currency,
    /// The client's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The client the gateway authenticated, if one did; it names the
    /// namespace of the idempotency key (see [`PlaceOrder::scoped_key`]).
    pub principal: Option<Principal>,
    /// The request's correlation id.
    pub correlation_id: CorrelationId,
    /// The request's trace.
    pub traceparent: Traceparent,
}

impl PlaceOrder {
    /// The idempotency key in its namespace: the principal's when the
    /// gateway authenticated one, otherwise the customer's. Two clients
    /// never see each other's answers.
    pub fn scoped_key(&self) -> ScopedKey {
        ScopedKey::new(
            Namespace::of(self.principal.as_ref(), &self.customer),
            self.idempotency_key.clone(),
        )
    }

    /// The fingerprint of what the request means (not of the generated order id).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut lines = Vec::with_capacity(self.lines.len() * 24);
        for line in &self.lines {
            lines.extend_from_slice(&(line.sku.as_str().len() as u32).to_be_bytes());
            lines.extend_from_slice(line.sku.as_str().as_bytes());
            lines.extend_from_slice(&line.quantity.to_be_bytes());
        }
        Fingerprint::of_parts(&[
            b"place_order",
            self.customer.as_str().as_bytes(),
            self.currency.code().as_bytes(),
            &lines,
        ])
    }

    /// Checks the request's shape; the first problem found is returned.
    pub fn validate(&self) -> Result<(), OrderRequestError> {
        if self.lines.is_empty() {
            return Err(OrderRequestError::LinesEmpty);
        }
        if self.lines.len() > ORDER_LINES_MAX {
            return Err(OrderRequestError::LinesTooMany);
        }
        for (index, line) in self.lines.iter().enumerate() {
            if line.quantity == 0 {
                return Err(OrderRequestError::QuantityMustBePositive { line: index });
            }
            if line.quantity > LINE_QUANTITY_MAX {
                return Err(OrderRequestError::QuantityTooLarge { line: index });
            }
            if self.lines[..index]
                .iter()
                .any(|earlier| earlier.sku == line.sku)
            {
                return Err(OrderRequestError::SkuDuplicated { line: index });
            }
        }
        Ok(())
    }
}

/// A line's quantity as a client sent it (any integer), refused as
/// [`PlaceOrder::validate`] refuses it: zero and negative quantities are
/// both [`OrderRequestError::QuantityMustBePositive`], so a client sees one
/// code for one mistake whatever the wire type could carry.
pub fn line_quantity(line: usize, requested: i64) -> Result<u32, OrderRequestError> {
    if requested <= 0 {
        return Err(OrderRequestError::QuantityMustBePositive { line });
    }
    match u32::try_from(requested) {
        Ok(quantity) if quantity <= LINE_QUANTITY_MAX => Ok(quantity),
        _ => Err(OrderRequestError::QuantityTooLarge { line }),
    }
}

/// Why an order request is invalid (HTTP 422, naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRequestError {
    /// `lines` is empty.
    #[error("lines must not be empty")]
    LinesEmpty,
    /// More than [`ORDER_LINES_MAX`] lines.
    #[error("lines has more than {ORDER_LINES_MAX} entries")]
    LinesTooMany,
    /// A quantity is zero.
    #[error("lines[{line}].quantity must be positive")]
    QuantityMustBePositive {
        /// The line's index.
        line: usize,
    },
    /// A quantity is above [`LINE_QUANTITY_MAX`].
    #[error("lines[{line}].quantity is above {LINE_QUANTITY_MAX}")]
    QuantityTooLarge {
        /// The line's index.
        line: usize,
    },
    /// A SKU appears on two lines.
    #[error("lines[{line}].sku repeats an earlier line")]
    SkuDuplicated {
        /// The line's index.
        line: usize,
    },
}

/// Why placing an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceOrderError {
    /// The request is invalid.
    #[error(transparent)]
    Invalid(#[from] OrderRequestError),
    /// The idempotency key was used for a different request (HTTP 422).
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// A request with this key is still being processed (HTTP 409).
    #[error("a request with this idempotency key is still in flight")]
    IdempotencyKeyInFlight {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// The generated order id is already taken (the host must generate unique ids).
    #[error("order id {0} is already taken")]
    OrderIdTaken(OrderId),
}

/// The answer to a placed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAccepted {
    /// The order's id (the original one, on a replay).
    pub order_id: OrderId,
    /// True when this is a replay of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// What [`decide_place_order`] needs loaded.
pub fn place_order_read_set(request: &PlaceOrder) -> ReadSet {
    ReadSet {
        rows: vec![RowKey::Order(request.order_id.clone())],
        idempotency: Some((Service::Order, request.scoped_key())),
        ..ReadSet::default()
    }
}

/// Decides a new order: the order row with its started saga, the first
/// command in the outbox and the idempotency record, all in one commit.
pub fn decide_place_order(
    definition: &Definition<OrderCommand>,
    snapshot: &Snapshot,
    request: &PlaceOrder,
    now: Timestamp,
) -> Result<Decided<OrderAccepted>, PlaceOrderError> {
    request.validate()?;
    let fingerprint = request.fingerprint();
    let stored = snapshot.idempotency.as_ref();
    match saldo_idempotency::decide(stored.map(|record| &record.value), &fingerprint, now) {
        Verdict::Replay(outcome) => {
            let mut accepted: OrderAccepted = serde_json::from_value(outcome.clone())
                .expect("stored order outcomes are OrderAccepted");
            accepted.replayed = true;
            return Ok(Decided {
                decision: Decision::default(),
                reply: accepted,
            });
        }
        Verdict::Mismatch => return Err(PlaceOrderError::IdempotencyKeyReused),
        Verdict::InFlight { retry_after_ms } => {
            return Err(PlaceOrderError::IdempotencyKeyInFlight { retry_after_ms });
        }
        Verdict::Fresh | Verdict::Expired => {}
    }
    if snapshot.order(&request.order_id).1.is_some() {
        return Err(PlaceOrderError::OrderIdTaken(request.order_id.clone()));
    }
    let (saga, transition) = SagaInstance::start(definition, now);
    let mut row = OrderRow {
        order_id: request.order_id.clone(),
        customer: request.customer.clone(),
        lines: request.lines.clone(),
        currency: request.currency,
        amount: None,
        correlation_id: request.correlation_id.clone(),
        traceparent: request.traceparent.clone(),
        saga,
        created_at: now,
        updated_at: now,
    };
    let mut decision = Decision::default();
    let cause = row.root_message_id();
    publish_transition(&mut decision, &mut row, transition, cause, now);
    let accepted = OrderAccepted {
        order_id: request.order_id.clone(),
        replayed: false,
    };
    decision.idempotency = Some(IdempotencyWrite {
        service: Service::Order,
        key: request.scoped_key(),
        expected: stored.map_or(0, |record| record.version),
        record: IdempotencyRecord::completed(
            fingerprint,
            serde_json::to_value(&accepted).expect("serialises"),
            now,
            IDEMPOTENCY_RETENTION_MS,
        ),
    });
    decision.write(0, Row::Order(Arc::new(row)));
    Ok(Decided {
        decision,
        reply: accepted,
    })
}

/// What [`decide_reply`] needs loaded.
pub fn reply_read_set(envelope: &Envelope) -> ReadSet {
    ReadSet {
        rows: vec![RowKey::Order(envelope.order_id.clone())],
        inbox: Some((Service::Order, envelope.message_id)),
        ..ReadSet::default()
    }
}

/// Maps a participant's reply to the saga input it stands for.
fn saga_reply(payload: &Payload) -> Option<Reply<CancelReason>> {
    let reply = |step, phase, outcome| {
        Some(Reply {
            step,
            phase,
            outcome,
        })
    };
    match payload {
        Payload::StockReserved { .. } => {
            reply(STEP_RESERVE_STOCK, Phase::Action, Outcome::Succeeded)
        }
        Payload::StockRejected { reason } => reply(
            STEP_RESERVE_STOCK,
            Phase::Action,
            Outcome::Failed((*reason).into()),
        ),
        Payload::StockReleased => {
            reply(STEP_RESERVE_STOCK, Phase::Compensation, Outcome::Succeeded)
        }
        Payload::PaymentSucceeded { .. } => {
            reply(STEP_TAKE_PAYMENT, Phase::Action, Outcome::Succeeded)
        }
        Payload::PaymentFailed { reason } => reply(
            STEP_TAKE_PAYMENT,
            Phase::Action,
            Outcome::Failed((*reason).into()),
        ),
        Payload::PaymentRefunded => {
            reply(STEP_TAKE_PAYMENT, Phase::Compensation, Outcome::Succeeded)
        }
        Payload::StockCommitted => reply(STEP_COMMIT_STOCK, Phase::Action, Outcome::Succeeded),
        _ => None,
    }
}

/// Decides a participant's reply: moves the saga and publishes its next commands.
pub fn decide_reply(
    definition: &Definition<OrderCommand>,
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    let reply = saga_reply(&envelope.payload).ok_or(ConsumeError::WrongConsumer {
        message_type: envelope.message_type(),
        consumer: Service::Order,
    })?;
    let receipt = match inbox::check(snapshot, Service::Order, envelope, now)? {
        InboxVerdict::Duplicate => {
            return Ok(Decided {
                decision: Decision::default(),
                reply: MessageOutcome::Duplicate,
            });
        }
        InboxVerdict::Fresh(receipt) => receipt,
    };
    let (version, row) = snapshot.order(&envelope.order_id);
    let mut row = row
        .ok_or_else(|| ConsumeError::OrderNotFound(envelope.order_id.clone()))?
        .clone();
    if let Payload::StockReserved { amount } = &envelope.payload {
        // Only the accepted reply may set the amount; it is discarded below if ignored.
        row.amount = Some(*amount);
    }
    let transition = row.saga.handle(definition, now, SagaInput::Reply(reply));
    let mut decision = Decision {
        inbox: Some(receipt),
        ..Decision::default()
    };
    if let Some(reason) = transition.ignored {
        return Ok(Decided {
            decision,
            reply: MessageOutcome::Ignored(reason),
        });
    }
    publish_transition(
        &mut decision,
        &mut row,
        transition,
        envelope.message_id,
        now,
    );
    decision.write(version, Row::Order(Arc::new(row)));
    Ok(Decided {
        decision,
        reply: MessageOutcome::Applied,
    })
}

/// What [`decide_deadline`] needs loaded.
pub fn deadline_read_set(order_id: &OrderId) -> ReadSet {
    ReadSet {
        rows: vec![RowKey::Order(order_id.clone())],
        ..ReadSet::default()
    }
}

/// Decides a due timer: retries, gives up and compensates, or does nothing
/// if the deadline moved (the timer was stale).
pub fn decide_deadline(
    definition: &Definition<OrderCommand>,
    snapshot: &Snapshot,
    order_id: &OrderId,
    now: Timestamp,
) -> Decided<MessageOutcome> {
    let (version, Some(row)) = snapshot.order(order_id) else {
        return Decided {
            decision: Decision::default(),
            reply: MessageOutcome::Ignored(saldo_saga::Ignored::Finished),
        };
    };
    let mut row = row.clone();
    let transition = row.saga.handle(definition, now, SagaInput::DeadlineReached);
    if let Some(reason) = transition.ignored {
        return Decided {
            decision: Decision::default(),
            reply: MessageOutcome::Ignored(reason),
        };
    }
    let mut decision = Decision::default();
    // A timer's cause is the order itself at this instant.
    let cause = Id128::derive(
        "deadline",
        &[order_id.as_str().as_bytes(), &now.unix_ms().to_be_bytes()],
    );
    publish_transition(&mut decision, &mut row, transition, cause, now);
    decision.write(version, Row::Order(Arc::new(row)));
    Decided {
        decision,
        reply: MessageOutcome::Applied,
    }
}

/// Turns the saga's commands (and its ending, if reached) into outbox messages.
pub(crate) fn publish_transition(
    decision: &mut Decision,
    row: &mut OrderRow,
    transition: Transition<OrderCommand>,
    cause: Id128,
    now: Timestamp,
) {
    row.updated_at = now;
    for command in transition.commands {
        let envelope = command_envelope(row, &command, cause, now);
        decision.publish(Service::Order, envelope);
    }
    let ending_payload = match row.status() {
        OrderStatus::Pending => None,
        OrderStatus::Confirmed => Some(Payload::OrderConfirmed),
        OrderStatus::Cancelled(reason) => Some(Payload::OrderCancelled { reason }),
    };
    if let Some(payload) = ending_payload.filter(|_| transition.next_deadline.is_none()) {
        let message_id = Id128::derive("order-ended", &[row.order_id.as_str().as_bytes()]);
        decision.publish(
            Service::Order,
            envelope(row, message_id, cause, now, payload),
        );
    }
}

/// The message id of a saga command: the same step, phase and attempt of the
/// same order always get the same id.
pub fn command_message_id(order_id: &OrderId, step: usize, phase: Phase, attempt: u32) -> Id128 {
    let phase_byte = [match phase {
        Phase::Action => 0u8,
        Phase::Compensation => 1u8,
    }];
    Id128::derive(
        "command",
        &[
            order_id.as_str().as_bytes(),
            &(step as u64).to_be_bytes(),
            &phase_byte,
            &attempt.to_be_bytes(),
        ],
    )
}

fn command_envelope(
    row: &OrderRow,
    command: &SagaCommand<OrderCommand>,
    cause: Id128,
    now: Timestamp,
) -> Envelope {
    let amount = || {
        row.amount
            .expect("payment commands are only sent after stock was reserved and priced")
    };
    let payload = match command.command {
        OrderCommand::ReserveStock => Payload::ReserveStock {
            lines: row.lines.clone(),
            currency: row.currency,
        },
        OrderCommand::ReleaseStock => Payload::ReleaseStock {
            lines: row.lines.clone(),
        },
        OrderCommand::CommitStock => Payload::CommitStock {
            lines: row.lines.clone(),
        },
        OrderCommand::ChargePayment => Payload::ChargePayment {
            customer: row.customer.clone(),
            amount: amount(),
        },
        OrderCommand::RefundPayment => Payload::RefundPayment {
            customer: row.customer.clone(),
            amount: amount(),
        },
    };
    let message_id =
        command_message_id(&row.order_id, command.step, command.phase, command.attempt);
    envelope(row, message_id, cause, now, payload)
}

fn envelope(
    row: &OrderRow,
    message_id: Id128,
    cause: Id128,
    now: Timestamp,
    payload: Payload,
) -> Envelope {
    Envelope {
        message_id,
        schema_version: SCHEMA_VERSION,
        order_id: row.order_id.clone(),
        correlation_id: row.correlation_id.clone(),
        causation_id: Some(cause),
        occurred_at: now,
        traceparent: row.traceparent.child(message_id),
        payload,
    }
}

/// What a client sees of an order: status, reason, lines, amount, and the
/// saga history with timestamps and step names (the HTTP API and the
/// browser harness both show this).
pub fn view(saga: &Definition<OrderCommand>, row: &OrderRow) -> Value {
    let status = serde_json::to_value(row.status()).expect("a status serialises");
    let history: Vec<Value> = row
        .history()
        .iter()
        .map(|record| history_view(saga, record))
        .collect();
    json!({
        "order_id": row.order_id,
        "customer": row.customer,
        "status": status["status"],
        "reason": status.get("reason").cloned().unwrap_or(Value::Null),
        "currency": row.currency.code(),
        "amount_minor": row.amount.map(|amount| amount.amount_minor()),
        "lines": row.lines.iter().map(|line| json!({ "sku": line.sku, "quantity": line.quantity })).collect::<Vec<_>>(),
        "correlation_id": row.correlation_id,
        "traceparent": row.traceparent.as_str(),
        "created_at": row.created_at.to_string(),
        "updated_at": row.updated_at.to_string(),
        "history": history,
    })
}

/// One history record as a client sees it: the event's fields, the step's
/// name, and the time. An `ended` record always has the same shape:
/// `ending` is `"completed"` or `"compensated"`; a compensated one adds
/// `reason` (the order's cancel reason) and the `step` that failed.
fn history_view(saga: &Definition<OrderCommand>, record: &HistoryRecord<CancelReason>) -> Value {
    let mut value = match &record.event {
        HistoryEvent::Ended {
            ending: Ending::Completed,
        } => json!({ "event": "ended", "ending": "completed" }),
        HistoryEvent::Ended {
            ending: Ending::Compensated(failure),
        } => {
            let step = failure.step();
            json!({
                "event": "ended",
                "ending": "compensated",
                "reason": cancel_reason(failure),
                "step": step,
            })
        }
        event => serde_json::to_value(event).expect("history serialises"),
    };
    let object = value
        .as_object_mut()
        .expect("every history event serialises as an object");
    if let Some(name) = object
        .get("step")
        .and_then(Value::as_u64)
        .and_then(|step| saga.steps().get(usize::try_from(step).ok()?))
        .map(|step| step.name.clone())
    {
        object.insert("step_name".to_owned(), json!(name));
    }
    object.insert("at".to_owned(), json!(record.at.to_string()));
    assert!(
        object.get("ending").is_none_or(Value::is_string),
        "an ending has one shape: a string"
    );
    value
}

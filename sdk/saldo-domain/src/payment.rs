//! The payment service: charges an order exactly once from the customer's
//! wallet, refunds it as compensation, and tops wallets up.
//!
//! Every money movement is a ledger posting with an id derived from its
//! cause (`charge` + order, `top_up` + customer + key), and the payment row
//! per order records what happened, so a repeated command answers with the
//! stored outcome and never moves money twice. A refund that arrives before
//! its charge leaves a tombstone, so the late charge is refused.

use saldo_idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyRecord, Namespace, ScopedKey, Verdict,
};
use saldo_ledger::{AccountId, Applied, Book, Memo, Posting, PostingId, Rejection};
use saldo_types::{
    CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Principal, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::decision::{Decided, Decision, IdempotencyWrite, ReadSet, Row, RowKey, Snapshot};
use crate::inbox;
use crate::messages::{Envelope, Payload, PaymentFailure, Service, Traceparent};
use crate::order::IDEMPOTENCY_RETENTION_MS;
use crate::{CommandRefused, ConsumeError, MessageOutcome};

/// Limits the payment service applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPolicy {
    /// The per-payment limit given to a new wallet, in its minor units.
    pub charge_limit_minor: i64,
    /// The largest single top-up, in minor units.
    pub top_up_max_minor: i64,
}

impl Default for PaymentPolicy {
    fn default() -> Self {
        PaymentPolicy {
            charge_limit_minor: 1_000_000,
            top_up_max_minor: 10_000_000,
        }
    }
}

/// A customer's wallet settings; its money lives in the ledger account
/// `wallet:<customer>:<currency>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRow {
    /// The owner.
    pub customer: CustomerId,
    /// The one currency the wallet holds.
    pub currency: Currency,
    /// No single payment may be larger.
    pub charge_limit: Money,
    /// When it was opened.
    pub created_at: Timestamp,
}

impl WalletRow {
    /// The ledger account holding the wallet's money.
    pub fn account(&self) -> AccountId {
        AccountId::wallet(self.customer.clone(), self.currency)
    }
}

/// Where an order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PaymentState {
    /// The wallet was charged by this posting.
    Captured {
        /// The charge posting.
        charge_id: PostingId,
    },
    /// The charge was refused; no money moved.
    Failed {
        /// Why.
        reason: PaymentFailure,
    },
    /// Charged, then refunded by the reversal `refund_id`.
    Refunded {
        /// The charge posting.
        charge_id: PostingId,
        /// Its reversal.
        refund_id: PostingId,
    },
    /// Refunded before any charge arrived; a later charge is refused.
    CancelledBeforeCharge,
}

/// An order's payment: the payment service's idempotency record per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRow {
    /// The order.
    pub order_id: OrderId,
    /// Who pays.
    pub customer: CustomerId,
    /// How much.
    pub amount: Money,
    /// The fingerprint of the charge request, to refuse a different charge for the same order.
    pub fingerprint: Fingerprint,
    /// Where it stands.
    pub state: PaymentState,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The id of an order's charge posting.
pub fn charge_id(order_id: &OrderId) -> PostingId {
    Id128::derive("posting", &[b"charge", order_id.as_str().as_bytes()])
}

fn charge_fingerprint(customer: &CustomerId, amount: &Money) -> Fingerprint {
    Fingerprint::of_parts(&[
        b"charge",
        customer.as_str().as_bytes(),
        &amount.amount_minor().to_be_bytes(),
        amount.currency().code().as_bytes(),
    ])
}

fn revenue(currency: Currency) -> AccountId {
    AccountId::MerchantRevenue { currency }
}

/// What [`decide_message`] needs loaded.
pub fn message_read_set(envelope: &Envelope) -> ReadSet {
    let mut read_set = ReadSet {
        inbox: Some((Service::Payment, envelope.message_id)),
        ..ReadSet::default()
    };
    read_set
        .rows
        .push(RowKey::Payment(envelope.order_id.clone()));
    match &envelope.payload {
        Payload::ChargePayment { customer, amount } => {
            read_set.rows.push(RowKey::Wallet(customer.clone()));
            read_set.rows.push(RowKey::Account(AccountId::wallet(
                customer.clone(),
                amount.currency(),
            )));
            read_set
                .rows
                .push(RowKey::Account(revenue(amount.currency())));
        }
        Payload::RefundPayment { customer, amount } => {
            read_set.rows.push(RowKey::Account(AccountId::wallet(
                customer.clone(),
                amount.currency(),
            )));
            read_set
                .rows
                .push(RowKey::Account(revenue(amount.currency())));
            let charge = charge_id(&envelope.order_id);
            read_set.postings = vec![charge, Posting::reversal_id(charge)];
        }
        _ => {}
    }
    read_set
}

/// A partial ledger over the loaded accounts and postings.
fn book_from(snapshot: &Snapshot) -> Book {
    Book::from_parts(
        snapshot.accounts().cloned(),
        snapshot.postings.values().cloned(),
        [],
    )
}

/// Adds the book's changes to the decision, each account with the version loaded.
fn commit_book(decision: &mut Decision, snapshot: &Snapshot, book: &mut Book) {
    let changes = book.take_changes();
    for account in changes.accounts {
        let version = snapshot.account(&account.id).0;
        decision.write(version, Row::Account(account));
    }
    decision.postings.extend(changes.postings);
}

fn memo(
    purpose: &str,
    order_id: Option<&OrderId>,
    correlation_id: &CorrelationId,
    traceparent: &Traceparent,
) -> Memo {
    Memo {
        purpose: purpose.to_owned(),
        order_id: order_id.cloned(),
        correlation_id: Some(correlation_id.clone()),
        traceparent: Some(traceparent.as_str().to_owned()),
    }
}

/// Decides a command addressed to payment.
pub fn decide_message(
    snapshot: &Snapshot,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError> {
    inbox::participant(
        Service::Payment,
        snapshot,
        envelope,
        now,
        |decision| match &envelope.payload {
            Payload::ChargePayment { customer, amount } => {
                charge(decision, snapshot, envelope, customer, *amount, now)
            }
            Payload::RefundPayment { customer, amount } => {
                refund(decision, snapshot, envelope, customer, *amount, now)
            }
            _ => unreachable!("participant() admits only payment commands"),
        },
    )
}

fn charge(
    decision: &mut Decision,
    snapshot: &Snapshot,
    envelope: &Envelope,
    customer: &CustomerId,
    amount: Money,
    now: Timestamp,
) -> Result<Payload, ConsumeError> {
    let order_id = &envelope.order_id;
    let fingerprint = charge_fingerprint(customer, &amount);
    let (payment_version, existing) = snapshot.payment(order_id);
    if let Some(existing) = existing {
        if existing.state == PaymentState::CancelledBeforeCharge {
            return Ok(Payload::PaymentFailed {
                reason: PaymentFailure::OrderCancelled,
            });
        }
        let stored = IdempotencyRecord {
            fingerprint: existing.fingerprint,
            state: saldo_idempotency::RecordState::Completed {
                outcome: existing.state,
            },
            created_at: existing.updated_at,
            expires_at: Timestamp::from_unix_ms(u64::MAX),
        };
        return match saldo_idempotency::decide(Some(&stored), &fingerprint, now) {
            Verdict::Replay(PaymentState::Captured { .. }) => Ok(Payload::PaymentSucceeded {
                amount: existing.amount,
            }),
            Verdict::Replay(PaymentState::Failed { reason }) => {
                Ok(Payload::PaymentFailed { reason: *reason })
            }
            // Refunded: every charge command of the order was handled
            // before the refund that follows it on the same partition, and
            // each was answered from the captured charge. A redelivery after
            // its receipt was purged gets that answer again, so the reply
            // (whose id derives from the command) keeps its content.
            Verdict::Replay(PaymentState::Refunded { .. }) => Ok(Payload::PaymentSucceeded {
                amount: existing.amount,
            }),
            Verdict::Replay(PaymentState::CancelledBeforeCharge) => {
                unreachable!("order {order_id}: a tombstone is answered above")
            }
            _ => Err(ConsumeError::Refused(
                CommandRefused::ChargeDiffersFromRecorded,
            )),
        };
    }
    let outcome = evaluate_charge(decision, snapshot, envelope, customer, amount);
    let state = match outcome {
        Ok(charge_id) => PaymentState::Captured { charge_id },
        Err(reason) => PaymentState::Failed { reason },
    };
    decision.write(
        payment_version,
        Row::Payment(PaymentRow {
            order_id: order_id.clone(),
            customer: customer.clone(),
            amount,
            fingerprint,
            state,
            updated_at: now,
        }),
    );
    Ok(match outcome {
        Ok(_) => Payload::PaymentSucceeded { amount },
        Err(reason) => Payload::PaymentFailed { reason },
    })
}

/// Checks a new charge in precedence (amount, wallet, currency, limit,
/// funds) and, if it passes, adds the posting and account changes.
fn evaluate_charge(
    decision: &mut Decision,
    snapshot: &Snapshot,
    envelope: &Envelope,
    customer: &CustomerId,
    amount: Money,
) -> Result<PostingId, PaymentFailure> {
    if !amount.is_positive() {
        return Err(PaymentFailure::AmountMustBePositive);
    }
    let wallet = snapshot
        .wallet(customer)
        .1
        .ok_or(PaymentFailure::UnknownWallet)?;
    if wallet.currency != amount.currency() {
        return Err(PaymentFailure::CurrencyMismatch);
    }
    if amount > wallet.charge_limit {
        return Err(PaymentFailure::AmountOverLimit);
    }
    let mut book = book_from(snapshot);
    assert!(
        book.account(&wallet.account()).is_some(),
        "wallet {customer} has its ledger account"
    );
    book.open_account(revenue(amount.currency()));
    let id = charge_id(&envelope.order_id);
    let posting = Posting::transfer(
        id,
        wallet.account(),
        revenue(amount.currency()),
        amount,
        memo(
            "charge",
            Some(&envelope.order_id),
            &envelope.correlation_id,
            &envelope.traceparent,
        ),
    );
    match book.post(posting) {
        Ok(Applied::Created) => {
            commit_book(decision, snapshot, &mut book);
            Ok(id)
        }
        Err(Rejection::InsufficientFunds { .. }) => Err(PaymentFailure::InsufficientFunds),
        // The payment row is written with every charge, so a posting that
        // exists without one, or any other refusal, is a broken invariant.
        other => panic!(
            "charge posting for order {} refused unexpectedly: {other:?}",
            envelope.order_id
        ),
    }
}

fn refund(
    decision: &mut Decision,
    snapshot: &Snapshot,
    envelope: &Envelope,
    customer: &CustomerId,
    amount: Money,
    now: Timestamp,
) -> Result<Payload, ConsumeError> {
    let order_id = &envelope.order_id;
    let (version, existing) = snapshot.payment(order_id);
    match existing.map(|row| row.state) {
        None => {
            decision.write(
                0,
                Row::Payment(PaymentRow {
                    order_id: order_id.clone(),
                    customer: customer.clone(),
                    amount,
                    fingerprint: charge_fingerprint(customer, &amount),
                    state: PaymentState::CancelledBeforeCharge,
                    updated_at: now,
                }),
            );
        }
        Some(PaymentState::Captured { charge_id }) => {
            let mut book = book_from(snapshot);
            let refund_memo = memo(
                "refund",
                Some(order_id),
                &envelope.correlation_id,
                &envelope.traceparent,
            );
            match book.reverse(charge_id, refund_memo) {
                Ok(Applied::Created) => commit_book(decision, snapshot, &mut book),
                Ok(Applied::Exists) => {
                    panic!("order {order_id}: a refund exists but the payment row says captured")
                }
                Err(rejection) => {
                    return Err(ConsumeError::Refused(CommandRefused::Ledger(rejection)));
                }
            }
            let mut row = existing.expect("matched Some").clone();
            row.state = PaymentState::Refunded {
                charge_id,
                refund_id: Posting::reversal_id(charge_id),
            };
            row.updated_at = now;
            decision.write(version, Row::Payment(row));
        }
        // Failed, refunded or cancelled: no money is held, nothing to undo.
        Some(_) => {}
    }
    Ok(Payload::PaymentRefunded)
}

/// A request to add money to a wallet (`POST /wallets/{customer}/top-ups`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUp {
    /// Whose wallet; it is opened by the first top-up.
    pub customer: CustomerId,
    /// How much.
    pub amount: Money,
    /// The client's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The client the gateway authenticated, if one did; it names the
    /// namespace of the idempotency key (see [`TopUp::scoped_key`]).
    pub principal: Option<Principal>,
    /// The request's correlation id.
    pub correlation_id: CorrelationId,
    /// The request's trace.
    pub traceparent: Traceparent,
}

impl TopUp {
    /// The idempotency key in its namespace: the principal's when the
    /// gateway authenticated one, otherwise the wallet owner's.
    pub fn scoped_key(&self) -> ScopedKey {
        ScopedKey::new(
            Namespace::of(self.principal.as_ref(), &self.customer),
            self.idempotency_key.clone(),
        )
    }
}

/// The answer to a top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpApplied {
    /// The wallet's owner.
    pub customer: CustomerId,
    /// The posting that moved the money.
    pub posting_id: PostingId,
    /// How much was added.
    pub amount: Money,
    /// True when this is a replay of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// Why a top-up was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopUpError {
    /// The amount is zero or negative.
    #[error("amount must be positive")]
    AmountMustBePositive,
    /// The amount is above the policy's single top-up limit.
    #[error("amount is above the top-up limit")]
    AmountOverLimit,
    /// The wallet holds another currency.
    #[error("the wallet holds {wallet}, not {requested}")]
    CurrencyMismatch {
        /// The wallet's currency.
        wallet: Currency,
        /// The requested currency.
        requested: Currency,
    },
    /// The idempotency key was used for a different request.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// A request with this key is still in flight.
    #[error("a request with this idempotency key is still in flight")]
    IdempotencyKeyInFlight {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// The ledger refused the posting (for example its balance would overflow).
    #[error("the ledger refused the top-up: {0}")]
    Ledger(Rejection),
}

/// What [`decide_top_up`] needs loaded.
pub fn top_up_read_set(request: &TopUp) -> ReadSet {
    let currency = request.amount.currency();
    ReadSet {
        rows: vec![
            RowKey::Wallet(request.customer.clone()),
            RowKey::Account(AccountId::wallet(request.customer.clone(), currency)),
            RowKey::Account(AccountId::Funding { currency }),
        ],
        postings: vec![top_up_id(&request.customer, &request.scoped_key())],
        idempotency: Some((Service::Payment, request.scoped_key())),
        ..ReadSet::default()
    }
}

/// The id of a top-up posting, derived from the wallet and the scoped key,
/// so that two clients using the same key never share a posting (a shared
/// id would make the second top-up look like a retry of the first and move
/// no money). In the customer's own namespace the id is what it was before
/// keys had namespaces, so a retry across that upgrade still moves money once.
pub fn top_up_id(customer: &CustomerId, key: &ScopedKey) -> PostingId {
    let client_key = key.key().as_str().as_bytes();
    match key.namespace() {
        Namespace::Customer(owner) => {
            assert_eq!(
                owner, customer,
                "a top-up in a customer namespace is keyed by the wallet's owner"
            );
            Id128::derive(
                "posting",
                &[b"top_up", customer.as_str().as_bytes(), client_key],
            )
        }
        Namespace::Principal(principal) => Id128::derive(
            "posting",
            &[
                b"top_up",
                customer.as_str().as_bytes(),
                client_key,
                b"principal",
                principal.as_str().as_bytes(),
            ],
        ),
    }
}

/// Decides a top-up: opens the wallet on first use and posts funding -> wallet.
pub fn decide_top_up(
    policy: &PaymentPolicy,
    snapshot: &Snapshot,
    request: &TopUp,
    now: Timestamp,
) -> Result<Decided<TopUpApplied>, TopUpError> {
    let amount = request.amount;
    if !amount.is_positive() {
        return Err(TopUpError::AmountMustBePositive);
    }
    if amount.amount_minor() > policy.top_up_max_minor {
        return Err(TopUpError::AmountOverLimit);
    }
    let fingerprint = Fingerprint::of_parts(&[
        b"top_up",
        request.customer.as_str().as_bytes(),
        &amount.amount_minor().to_be_bytes(),
        amount.currency().code().as_bytes(),
    ]);
    let stored = snapshot.idempotency.as_ref();
    match saldo_idempotency::decide(stored.map(|record| &record.value), &fingerprint, now) {
        Verdict::Replay(outcome) => {
            let mut applied: TopUpApplied = serde_json::from_value(outcome.clone())
                .expect("stored top-up outcomes are TopUpApplied");
            applied.replayed = true;
            return Ok(Decided {
                decision: Decision::default(),
                reply: applied,
            });
        }
        Verdict::Mismatch => return Err(TopUpError::IdempotencyKeyReused),
        Verdict::InFlight { retry_after_ms } => {
            return Err(TopUpError::IdempotencyKeyInFlight { retry_after_ms });
        }
        Verdict::Fresh | Verdict::Expired => {}
    }
    let mut decision = Decision::default();
    let (wallet_version, wallet) = snapshot.wallet(&request.customer);
    let wallet = match wallet {
        Some(wallet) if wallet.currency != amount.currency() => {
            return Err(TopUpError::CurrencyMismatch {
                wallet: wallet.currency,
                requested: amount.currency(),
            });
        }
        Some(wallet) => wallet.clone(),
        None => {
            let wallet = WalletRow {
                customer: request.customer.clone(),
                currency: amount.currency(),
                charge_limit: Money::from_minor(policy.charge_limit_minor, amount.currency()),
                created_at: now,
            };
            decision.write(wallet_version, Row::Wallet(wallet.clone()));
            wallet
        }
    };
    let mut book = book_from(snapshot);
    book.open_account(wallet.account());
    book.open_account(AccountId::Funding {
        currency: amount.currency(),
    });
    let posting_id = top_up_id(&request.customer, &request.scoped_key());
    let posting = Posting::transfer(
        posting_id,
        AccountId::Funding {
            currency: amount.currency(),
        },
        wallet.account(),
        amount,
        memo(
            "top_up",
            None,
            &request.correlation_id,
            &request.traceparent,
        ),
    );
    // The posting's identity is the wallet, the key and the amount, never the
    // request's correlation id or trace (`Memo::same_cause`): a retry after
    // its idempotency record expired or was purged finds the posting and
    // answers as the first request did, moving no money (ADR 0015).
    let replayed = match book.post(posting) {
        Ok(Applied::Created) => false,
        Ok(Applied::Exists) => true,
        Err(
            Rejection::ExistsWithDifferentAmounts
            | Rejection::ExistsWithDifferentAccounts
            | Rejection::ExistsWithDifferentMemo,
        ) => return Err(TopUpError::IdempotencyKeyReused),
        Err(rejection) => return Err(TopUpError::Ledger(rejection)),
    };
    commit_book(&mut decision, snapshot, &mut book);
    assert!(
        !replayed
            || (decision.postings.is_empty()
                && !decision
                    .writes
                    .iter()
                    .any(|write| matches!(write.row, Row::Account(_)))),
        "a top-up that found its posting moves no money"
    );
    let applied = TopUpApplied {
        customer: request.customer.clone(),
        posting_id,
        amount,
        replayed,
    };
    decision.idempotency = Some(IdempotencyWrite {
        service: Service::Payment,
        key: request.scoped_key(),
        expected: stored.map_or(0, |record| record.version),
        record: IdempotencyRecord::completed(
            fingerprint,
            serde_json::to_value(&applied).expect("serialises"),
            now,
            IDEMPOTENCY_RETENTION_MS,
        ),
    });
    Ok(Decided {
        decision,
        reply: applied,
    })
}

//! Batches: many inputs decided one after another, committed as one.
//!
//! A host that has several inputs in hand (a consumer's poll, concurrent
//! HTTP requests, due timers) loads the union of their read sets once
//! ([`BatchReadSet`] → [`Loaded`]), decides them in order with
//! [`Batch::decide`], and commits [`Batch::finish`]'s [`Commit`] in one
//! transaction. Each input is decided against an overlay: the loaded rows
//! with the decisions of the inputs before it already applied, so it sees
//! their writes exactly as it would have seen them had each been committed
//! on its own. An input whose decider refuses it changes nothing and the
//! rest of the batch goes on.
//!
//! The commit is the batch's decisions merged: one write per row (the
//! version the batch first saw, the content the last decision left), every
//! inbox receipt, posting, outbox message and idempotency record in
//! decision order, and the changes to accounts that many inputs move at
//! once (see [`saldo_ledger::AccountId::commutes`]) as increments that need
//! no version check.
//!
//! The same code runs in production, in `saldo dev` and in the simulator,
//! which draws batch sizes from its seed so that every invariant covers
//! batching.

use std::collections::{BTreeMap, BTreeSet};

use saldo_idempotency::{IdempotencyRecord, ScopedKey};
use saldo_ledger::{Account, AccountId, Posting, PostingId};

use crate::decision::{
    Decided, Decision, IdempotencyWrite, InboxReceipt, ReadSet, Row, RowKey, RowSet, Snapshot,
    Version, Versioned, Write,
};
use crate::messages::{Envelope, MessageId, Service};
use crate::operator::{AuditRecord, DeadLetterRef};

/// The most inputs one batch decides and commits together.
pub const BATCH_INPUTS_MAX: usize = 256;

/// What a batch needs loaded: the union of its inputs' read sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchReadSet {
    /// Versioned rows.
    pub rows: BTreeSet<RowKey>,
    /// Postings by id.
    pub postings: BTreeSet<PostingId>,
    /// Inbox receipts by consumer and message.
    pub inbox: BTreeSet<(Service, MessageId)>,
    /// Idempotency records by service and key.
    pub idempotency: BTreeSet<(Service, ScopedKey)>,
}

impl BatchReadSet {
    /// The union of `read_sets`.
    pub fn of<'a>(read_sets: impl IntoIterator<Item = &'a ReadSet>) -> BatchReadSet {
        let mut union = BatchReadSet::default();
        for read_set in read_sets {
            union.add(read_set);
        }
        union
    }

    /// Adds what `read_set` names.
    pub fn add(&mut self, read_set: &ReadSet) {
        self.rows.extend(read_set.rows.iter().cloned());
        self.postings.extend(read_set.postings.iter().copied());
        self.inbox.extend(read_set.inbox);
        self.idempotency
            .extend(read_set.idempotency.iter().cloned());
    }
}

/// An idempotency record as stored, with its version.
pub type StoredRecord = Versioned<IdempotencyRecord<serde_json::Value>>;

/// What a store loaded for a [`BatchReadSet`]; absent things are absent.
/// During a batch it is the overlay the inputs are decided against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    /// Rows by key.
    pub rows: BTreeMap<RowKey, Versioned<Row>>,
    /// Sealed postings by id.
    pub postings: BTreeMap<PostingId, Posting>,
    /// Inbox receipts by consumer and message.
    pub inbox: BTreeMap<(Service, MessageId), InboxReceipt>,
    /// Idempotency records by service and key.
    pub idempotency: BTreeMap<(Service, ScopedKey), StoredRecord>,
}

impl Loaded {
    /// What one input sees: the part of the overlay its read set names.
    pub fn view(&self, read_set: &ReadSet) -> Snapshot {
        let rows: RowSet = read_set
            .rows
            .iter()
            .filter_map(|key| self.rows.get(key).map(|row| (key.clone(), row.clone())))
            .collect();
        Snapshot {
            rows,
            postings: read_set
                .postings
                .iter()
                .filter_map(|id| self.postings.get(id).map(|posting| (*id, posting.clone())))
                .collect(),
            inbox: read_set.inbox.and_then(|key| self.inbox.get(&key).cloned()),
            idempotency: read_set
                .idempotency
                .as_ref()
                .and_then(|key| self.idempotency.get(key).cloned()),
        }
    }

    /// Applies a decision as a commit would: every row at its next version.
    fn apply(&mut self, decision: &Decision) {
        for write in &decision.writes {
            let key = write.row.key();
            let found = self.rows.get(&key).map_or(0, |row| row.version);
            assert_eq!(
                found, write.expected,
                "a decision in a batch expects {key:?} at the version the batch showed it"
            );
            self.rows.insert(
                key,
                Versioned {
                    version: write.expected + 1,
                    value: write.row.clone(),
                },
            );
        }
        for posting in &decision.postings {
            let previous = self.postings.insert(posting.id, posting.clone());
            assert!(
                previous.is_none(),
                "posting {} is sealed once in a batch",
                posting.id
            );
        }
        if let Some(receipt) = &decision.inbox {
            self.inbox
                .insert((receipt.consumer, receipt.message_id), receipt.clone());
        }
        if let Some(write) = &decision.idempotency {
            self.idempotency.insert(
                (write.service, write.key.clone()),
                Versioned {
                    version: write.expected + 1,
                    value: write.record.clone(),
                },
            );
        }
    }
}

/// A change to an account that many inputs move at once, applied without a
/// version check: `balance += balance_minor`, `held += held_minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    /// The account (one whose `commutes()` is true).
    pub account: AccountId,
    /// The change of its balance, in minor units of its currency.
    pub balance_minor: i64,
    /// The change of its holds, in minor units of its currency.
    pub held_minor: i64,
}

/// What one transaction commits: the merged decisions of a batch. An empty
/// commit changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Commit {
    /// Versioned row writes, one per row, ordered by key (so concurrent
    /// transactions lock rows in one order).
    pub writes: Vec<Write>,
    /// Increments, one per account, ordered by account.
    pub increments: Vec<Increment>,
    /// Postings to seal into the hash chain, in decision order.
    pub postings: Vec<Posting>,
    /// Inbox receipts.
    pub inbox: Vec<InboxReceipt>,
    /// Messages to publish, each through its service's outbox, in order.
    pub outbox: Vec<(Service, Envelope)>,
    /// Idempotency records, one per key.
    pub idempotency: Vec<IdempotencyWrite>,
    /// Operators' audit records, each in its service's audit table.
    pub audit: Vec<AuditRecord>,
    /// Dead letters to delete; one already gone is a conflict.
    pub dead_letters_settled: Vec<DeadLetterRef>,
}

impl Commit {
    /// True when committing it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.increments.is_empty()
            && self.postings.is_empty()
            && self.inbox.is_empty()
            && self.outbox.is_empty()
            && self.idempotency.is_empty()
            && self.audit.is_empty()
            && self.dead_letters_settled.is_empty()
    }
}

/// One decision committed on its own, every write version-checked.
impl From<Decision> for Commit {
    fn from(decision: Decision) -> Commit {
        let mut writes = decision.writes;
        writes.sort_by_key(|write| write.row.key());
        let outbox = match decision.outbox_service {
            Some(service) => decision
                .outbox
                .into_iter()
                .map(|envelope| (service, envelope))
                .collect(),
            None => Vec::new(),
        };
        Commit {
            writes,
            increments: Vec::new(),
            postings: decision.postings,
            inbox: decision.inbox.into_iter().collect(),
            outbox,
            idempotency: decision.idempotency.into_iter().collect(),
            audit: decision.audit.into_iter().collect(),
            dead_letters_settled: decision.settle_dead_letter.into_iter().collect(),
        }
    }
}

/// A row's first and last write within a batch.
#[derive(Debug)]
struct Coalesced {
    /// The version the batch loaded.
    expected: Version,
    /// How many decisions wrote it.
    writes: u64,
    /// The content the last one left.
    row: Row,
    /// For an account: its balance and holds before the batch, or `None`
    /// when the batch opens it.
    before: Option<Option<(i64, i64)>>,
}

/// A batch being decided: the overlay and what its decisions will commit.
#[derive(Debug)]
pub struct Batch {
    overlay: Loaded,
    rows: BTreeMap<RowKey, Coalesced>,
    postings: Vec<Posting>,
    inbox: Vec<InboxReceipt>,
    outbox: Vec<(Service, Envelope)>,
    idempotency: BTreeMap<(Service, ScopedKey), IdempotencyWrite>,
    audit: Vec<AuditRecord>,
    dead_letters_settled: Vec<DeadLetterRef>,
    decided: usize,
}

impl Batch {
    /// A batch over what was loaded for it.
    pub fn new(loaded: Loaded) -> Batch {
        Batch {
            overlay: loaded,
            rows: BTreeMap::new(),
            postings: Vec::new(),
            inbox: Vec::new(),
            outbox: Vec::new(),
            idempotency: BTreeMap::new(),
            audit: Vec::new(),
            dead_letters_settled: Vec::new(),
            decided: 0,
        }
    }

    /// Decides one input against the overlay. On success its decision joins
    /// the batch and later inputs see its writes; a refusal changes nothing.
    pub fn decide<R, E>(
        &mut self,
        read_set: &ReadSet,
        decide: impl FnOnce(&Snapshot) -> Result<Decided<R>, E>,
    ) -> Result<R, E> {
        assert!(
            self.decided < BATCH_INPUTS_MAX,
            "a batch decides at most {BATCH_INPUTS_MAX} inputs"
        );
        let snapshot = self.overlay.view(read_set);
        let decided = decide(&snapshot)?;
        self.decided += 1;
        self.join(decided.decision);
        Ok(decided.reply)
    }

    /// How many inputs were decided (refusals not counted).
    pub fn len(&self) -> usize {
        self.decided
    }

    /// True when no input was decided yet.
    pub fn is_empty(&self) -> bool {
        self.decided == 0
    }

    fn join(&mut self, decision: Decision) {
        for write in &decision.writes {
            let key = write.row.key();
            let before = match self.overlay.rows.get(&key) {
                Some(Versioned {
                    value: Row::Account(account),
                    ..
                }) => Some((account.balance.amount_minor(), account.held.amount_minor())),
                _ => None,
            };
            match self.rows.get_mut(&key) {
                Some(coalesced) => {
                    assert_eq!(
                        write.expected,
                        coalesced.expected + coalesced.writes,
                        "{key:?}: each write in a batch follows the one before"
                    );
                    coalesced.writes += 1;
                    coalesced.row = write.row.clone();
                }
                None => {
                    self.rows.insert(
                        key,
                        Coalesced {
                            expected: write.expected,
                            writes: 1,
                            row: write.row.clone(),
                            before: matches!(write.row, Row::Account(_)).then_some(before),
                        },
                    );
                }
            }
        }
        self.overlay.apply(&decision);
        self.postings.extend(decision.postings);
        self.inbox.extend(decision.inbox);
        if let Some(service) = decision.outbox_service {
            self.outbox.extend(
                decision
                    .outbox
                    .into_iter()
                    .map(|envelope| (service, envelope)),
            );
        }
        self.audit.extend(decision.audit);
        if let Some(letter) = decision.settle_dead_letter {
            assert!(
                !self.dead_letters_settled.contains(&letter),
                "a batch settles {letter:?} once"
            );
            self.dead_letters_settled.push(letter);
        }
        if let Some(write) = decision.idempotency {
            let key = (write.service, write.key.clone());
            let expected = match self.idempotency.get(&key) {
                Some(earlier) => earlier.expected,
                None => write.expected,
            };
            self.idempotency
                .insert(key, IdempotencyWrite { expected, ..write });
        }
    }

    /// The merged decisions, ready to commit in one transaction.
    pub fn finish(self) -> Commit {
        let mut commit = Commit {
            postings: self.postings,
            inbox: self.inbox,
            outbox: self.outbox,
            idempotency: self.idempotency.into_values().collect(),
            audit: self.audit,
            dead_letters_settled: self.dead_letters_settled,
            ..Commit::default()
        };
        for (_, coalesced) in self.rows {
            match coalesced.row {
                Row::Account(account) if account.id.commutes() => {
                    if let Some(increment) = increment(&account, coalesced.before.flatten()) {
                        commit.increments.push(increment);
                    }
                }
                row => commit.writes.push(Write {
                    expected: coalesced.expected,
                    row,
                }),
            }
        }
        debug_assert!(
            commit
                .writes
                .windows(2)
                .all(|pair| pair[0].row.key() < pair[1].row.key())
        );
        commit
    }
}

/// The change from `before` (balance, held) to `account`. `None` when
/// nothing changed on an account that exists; an account the batch opens
/// always gets its increment, even a zero one, so that it exists after the
/// commit (ledger legs refer to it: a charge and its refund in one batch
/// net to zero on a revenue account that nobody had opened yet).
fn increment(account: &Account, before: Option<(i64, i64)>) -> Option<Increment> {
    let opened = before.is_none();
    let (balance_before, held_before) = before.unwrap_or((0, 0));
    let balance_minor = account
        .balance
        .amount_minor()
        .checked_sub(balance_before)
        .expect("an account's change fits in minor units");
    let held_minor = account
        .held
        .amount_minor()
        .checked_sub(held_before)
        .expect("an account's change fits in minor units");
    (opened || balance_minor != 0 || held_minor != 0).then(|| Increment {
        account: account.id.clone(),
        balance_minor,
        held_minor,
    })
}

#[cfg(test)]
mod tests {
    use saldo_idempotency::IdempotencyKey;
    use saldo_ledger::AccountId;
    use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, Timestamp};

    use super::*;
    use crate::MemoryStore;
    use crate::messages::Traceparent;
    use crate::payment::{PaymentPolicy, TopUp, TopUpError, decide_top_up, top_up_read_set};

    const NOW: Timestamp = Timestamp::from_unix_ms(1_700_000_000_000);

    fn top_up(customer: &str, amount_minor: i64, key: &str) -> TopUp {
        TopUp {
            customer: CustomerId::new(customer).expect("valid"),
            amount: Money::from_minor(amount_minor, Currency::EUR),
            idempotency_key: IdempotencyKey::new(key).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new(key).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("batch-test", &[key.as_bytes()])),
        }
    }

    /// Decides `requests` as one batch on `store`; returns each answer.
    fn decide_all(
        store: &MemoryStore,
        requests: &[TopUp],
    ) -> (Commit, Vec<Result<bool, TopUpError>>) {
        let read_sets: Vec<ReadSet> = requests.iter().map(top_up_read_set).collect();
        let mut batch = Batch::new(store.load_batch(&BatchReadSet::of(&read_sets)));
        let answers = requests
            .iter()
            .zip(&read_sets)
            .map(|(request, read_set)| {
                batch
                    .decide(read_set, |snapshot| {
                        decide_top_up(&PaymentPolicy::default(), snapshot, request, NOW)
                    })
                    .map(|applied| applied.replayed)
            })
            .collect();
        (batch.finish(), answers)
    }

    fn balance(store: &MemoryStore, account: AccountId) -> i64 {
        match store.row(&RowKey::Account(account)) {
            Some(Versioned {
                value: Row::Account(account),
                ..
            }) => account.balance.amount_minor(),
            _ => 0,
        }
    }

    fn wallet(customer: &str) -> AccountId {
        AccountId::wallet(CustomerId::new(customer).expect("valid"), Currency::EUR)
    }

    const FUNDING: AccountId = AccountId::Funding {
        currency: Currency::EUR,
    };

    #[test]
    fn a_batch_commits_what_deciding_one_by_one_commits() {
        // Proves each input sees the writes of those before it: two top-ups
        // of one wallet, a replayed key and a refused amount end as they
        // would one commit at a time, with one write per row.
        let requests = [
            top_up("alice", 1_000, "a1"),
            top_up("alice", 500, "a2"),
            top_up("alice", 1_000, "a1"),
            top_up("bob", 0, "b1"),
            top_up("bob", 300, "b2"),
        ];
        let mut batched = MemoryStore::new();
        let (commit, answers) = decide_all(&batched, &requests);
        assert_eq!(
            answers,
            vec![
                Ok(false),
                Ok(false),
                Ok(true),
                Err(TopUpError::AmountMustBePositive),
                Ok(false)
            ]
        );
        let wallet_writes = commit
            .writes
            .iter()
            .filter(|write| matches!(&write.row, Row::Account(account) if account.id == wallet("alice")))
            .count();
        assert_eq!(wallet_writes, 1, "one write per row: {commit:?}");
        assert_eq!(commit.postings.len(), 3);
        assert_eq!(
            commit.idempotency.len(),
            3,
            "the refused key records nothing"
        );
        batched.commit(commit, NOW).expect("commits");

        let mut sequential = MemoryStore::new();
        for request in &requests {
            let one = std::slice::from_ref(request);
            let (commit, _) = decide_all(&sequential, one);
            sequential.commit(commit, NOW).expect("commits");
        }
        for account in [wallet("alice"), wallet("bob"), FUNDING] {
            assert_eq!(
                balance(&batched, account.clone()),
                balance(&sequential, account.clone()),
                "{account}"
            );
        }
        assert_eq!(balance(&batched, wallet("alice")), 1_500);
        assert_eq!(balance(&batched, FUNDING), -1_800);
        assert_eq!(batched.entries().len(), sequential.entries().len());
    }

    #[test]
    fn shared_accounts_move_by_increments_that_commute() {
        // Proves the funding account is no hot row: two batches decided from
        // the same state both commit, and its balance counts both; while
        // two writers of one wallet conflict.
        let store = MemoryStore::new();
        let (first, _) = decide_all(&store, &[top_up("alice", 100, "k1")]);
        let (second, _) = decide_all(&store, &[top_up("bob", 200, "k2")]);
        assert_eq!(
            first.increments,
            vec![Increment {
                account: FUNDING,
                balance_minor: -100,
                held_minor: 0
            }]
        );
        assert!(
            first
                .writes
                .iter()
                .all(|write| !matches!(&write.row, Row::Account(account) if account.id.commutes()))
        );
        let mut store = store;
        store.commit(first, NOW).expect("commits");
        store
            .commit(second, NOW)
            .expect("commits despite the stale funding balance");
        assert_eq!(balance(&store, FUNDING), -300);

        let (third, _) = decide_all(&store, &[top_up("alice", 1, "k3")]);
        let (fourth, _) = decide_all(&store, &[top_up("alice", 2, "k4")]);
        store.commit(third, NOW).expect("commits");
        assert!(
            matches!(
                store.commit(fourth, NOW),
                Err(crate::store::CommitError::VersionConflict { .. })
            ),
            "a wallet keeps its version check"
        );
    }

    #[test]
    fn an_account_a_batch_opens_gets_its_increment_even_when_it_nets_to_zero() {
        // Regression (review): a charge and its refund in one batch net to
        // zero on a revenue account nobody had opened; the increment was
        // dropped, so the account never existed while ledger legs named it
        // (PostgreSQL refuses that with a foreign key).
        use crate::messages::{Envelope, Payload, SCHEMA_VERSION};
        use crate::{Rules, decide_message, message_read_set};
        use saldo_types::OrderId;
        let mut store = MemoryStore::new();
        let (funded, _) = decide_all(&store, &[top_up("alice", 1_000, "seed")]);
        store.commit(funded, NOW).expect("commits");
        let message = |index: u8, payload: Payload| {
            let message_id = Id128::derive("batch-test-message", &[&[index]]);
            Envelope {
                message_id,
                schema_version: SCHEMA_VERSION,
                order_id: OrderId::new("o1").expect("valid"),
                correlation_id: CorrelationId::new("c1").expect("valid"),
                causation_id: None,
                occurred_at: NOW,
                traceparent: Traceparent::root(message_id),
                payload,
            }
        };
        let customer = CustomerId::new("alice").expect("valid");
        let amount = Money::from_minor(300, Currency::EUR);
        let messages = [
            message(
                1,
                Payload::ChargePayment {
                    customer: customer.clone(),
                    amount,
                },
            ),
            message(2, Payload::RefundPayment { customer, amount }),
        ];
        let rules = Rules::default();
        let read_sets: Vec<ReadSet> = messages
            .iter()
            .map(|envelope| message_read_set(Service::Payment, envelope))
            .collect();
        let mut batch = Batch::new(store.load_batch(&BatchReadSet::of(&read_sets)));
        for (envelope, read_set) in messages.iter().zip(&read_sets) {
            batch
                .decide(read_set, |snapshot| {
                    decide_message(&rules, Service::Payment, snapshot, envelope, NOW)
                })
                .expect("decided");
        }
        let commit = batch.finish();
        let revenue = AccountId::MerchantRevenue {
            currency: Currency::EUR,
        };
        assert!(
            commit
                .increments
                .iter()
                .any(|increment| increment.account == revenue && increment.balance_minor == 0),
            "{:?}",
            commit.increments
        );
        store.commit(commit, NOW).expect("commits");
        assert!(
            store.row(&RowKey::Account(revenue)).is_some(),
            "revenue exists"
        );
        assert_eq!(balance(&store, wallet("alice")), 1_000);
    }
}

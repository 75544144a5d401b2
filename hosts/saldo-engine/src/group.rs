//! Group commit: concurrent requests gathered into one transaction.
//!
//! Each HTTP request submits its input and waits for its own answer. A few
//! workers take whatever requests are waiting (up to [`GROUP_COMMIT_MAX`])
//! and run them through [`execute_batch`] as one batch: one load, one
//! decision each against the overlay, one commit. An idle service commits a
//! lone request at once; a busy one commits many per transaction, because
//! requests queue up while the previous group commits. Each request keeps
//! its own answer and its own idempotency record, and a refused request does
//! not affect the others.

use std::sync::Arc;

use saldo_domain::decision::{Decided, ReadSet, Snapshot};
use saldo_types::Timestamp;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::run::{ExecuteFailure, execute_batch};
use crate::store::{Store, Unavailable};
use crate::telemetry::Parent;

/// The most requests one transaction carries.
pub const GROUP_COMMIT_MAX: usize = 64;
/// Requests waiting for a worker, at most; past it, callers wait to queue.
pub const GROUP_QUEUE_MAX: usize = 1_024;
/// Workers committing groups concurrently. More than one keeps the database
/// busy while a group's answers travel back; a few suffice.
pub const GROUP_COMMIT_WORKERS: usize = 4;

type Answer<R, E> = Result<R, ExecuteFailure<E>>;

struct Pending<I, R, E> {
    input: I,
    /// The request's span, which its decision's spans hang from.
    parent: Parent,
    answer: oneshot::Sender<Answer<R, E>>,
}

/// A decider of one kind of request: the input, its snapshot and the time.
pub type Decider<I, R, E> =
    dyn Fn(&I, &Snapshot, Timestamp) -> Result<Decided<R>, E> + Send + Sync + 'static;

/// Gathers concurrent requests of one kind into shared transactions.
pub struct GroupCommit<I, R, E> {
    queue: mpsc::Sender<Pending<I, R, E>>,
}

impl<I, R, E> GroupCommit<I, R, E>
where
    I: Send + Sync + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    /// Starts the workers on the current tokio runtime. They stop when the
    /// last handle is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        clock: fn() -> Timestamp,
        read_set: fn(&I) -> ReadSet,
        decide: Arc<Decider<I, R, E>>,
    ) -> GroupCommit<I, R, E> {
        let (queue, waiting) = mpsc::channel(GROUP_QUEUE_MAX);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..GROUP_COMMIT_WORKERS {
            tokio::spawn(work(
                waiting.clone(),
                store.clone(),
                clock,
                read_set,
                decide.clone(),
            ));
        }
        GroupCommit { queue }
    }

    /// How many requests wait for a worker now (the queue's depth).
    pub fn waiting(&self) -> usize {
        GROUP_QUEUE_MAX - self.queue.capacity()
    }

    /// Decides and commits `input` with whatever else is waiting; answers
    /// only after the commit.
    pub async fn submit(&self, input: I) -> Answer<R, E> {
        let (answer, answered) = oneshot::channel();
        let stopped = || Unavailable("the committer stopped".to_owned());
        self.queue
            .send(Pending {
                input,
                parent: Parent::current(),
                answer,
            })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// One worker: takes the waiting requests (the first it waits for, the rest
/// only if already there), commits them as one batch, answers each.
async fn work<I, R, E>(
    waiting: Arc<Mutex<mpsc::Receiver<Pending<I, R, E>>>>,
    store: Arc<dyn Store>,
    clock: fn() -> Timestamp,
    read_set: fn(&I) -> ReadSet,
    decide: Arc<Decider<I, R, E>>,
) where
    I: Send + Sync + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    loop {
        let group = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < GROUP_COMMIT_MAX {
                match waiting.try_recv() {
                    Ok(pending) => group.push(pending),
                    Err(_) => break,
                }
            }
            group
        };
        let mut inputs = Vec::with_capacity(group.len());
        let mut answers = Vec::with_capacity(group.len());
        for pending in group {
            inputs.push((pending.input, pending.parent));
            answers.push(pending.answer);
        }
        let now = clock();
        let results = execute_batch(
            store.as_ref(),
            &inputs,
            now,
            |(input, _)| read_set(input),
            |(input, _), snapshot| decide(input, snapshot, now),
            |(_, parent)| parent.clone(),
        )
        .await;
        metrics::histogram!("saldo_group_commit_size").record(inputs.len() as f64);
        for (answer, result) in answers.into_iter().zip(results) {
            // A caller that went away (a closed connection) gets no answer;
            // its request committed all the same and a retry replays it.
            let _ = answer.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use saldo_domain::MemoryStore;
    use saldo_domain::batch::{BatchReadSet, Commit, Loaded};
    use saldo_domain::messages::{Service, Traceparent};
    use saldo_domain::payment::{
        PaymentPolicy, TopUp, TopUpApplied, TopUpError, decide_top_up, top_up_read_set,
    };
    use saldo_idempotency::IdempotencyKey;
    use saldo_ledger::{AccountId, Entry};
    use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId};

    use super::*;
    use crate::delivery::DeadLetter;
    use crate::memory::MemoryBackend;
    use crate::store::CommitFailure;

    const NOW: Timestamp = Timestamp::from_unix_ms(1_700_000_000_000);
    /// How long the test waits for a condition before it fails.
    const DEADLINE: Duration = Duration::from_secs(30);

    /// The in-memory store behind a gate: loads wait until the test opens
    /// it, as requests wait behind a commit's disk flush. It counts the
    /// loads waiting, the requests they carry and the commits.
    #[derive(Default)]
    struct GatedStore {
        inner: MemoryBackend,
        gate: tokio::sync::Notify,
        open: std::sync::atomic::AtomicBool,
        loads_waiting: AtomicUsize,
        requests_loaded: AtomicUsize,
        commits: AtomicUsize,
    }

    #[async_trait]
    impl Store for GatedStore {
        async fn load(&self, read_set: &BatchReadSet) -> Result<Loaded, Unavailable> {
            self.requests_loaded
                .fetch_add(read_set.idempotency.len(), Ordering::SeqCst);
            self.loads_waiting.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                let opened = self.gate.notified();
                if self.open.load(Ordering::SeqCst) {
                    break;
                }
                opened.await;
            }
            self.loads_waiting.fetch_sub(1, Ordering::SeqCst);
            self.inner.load(read_set).await
        }
        async fn commit(&self, commit: Commit, now: Timestamp) -> Result<(), CommitFailure> {
            self.commits.fetch_add(1, Ordering::SeqCst);
            self.inner.commit(commit, now).await
        }
        async fn due_timers(
            &self,
            now: Timestamp,
            limit: usize,
        ) -> Result<Vec<OrderId>, Unavailable> {
            self.inner.due_timers(now, limit).await
        }
        async fn entries_of(
            &self,
            account: &AccountId,
            limit: usize,
        ) -> Result<Vec<Entry>, Unavailable> {
            self.inner.entries_of(account, limit).await
        }
        async fn record_dead_letter(
            &self,
            consumer: Service,
            letter: &DeadLetter,
        ) -> Result<(), Unavailable> {
            self.inner.record_dead_letter(consumer, letter).await
        }
        async fn purge(
            &self,
            service: Service,
            horizons: &saldo_domain::retention::Horizons,
            now: Timestamp,
            limit: usize,
        ) -> Result<saldo_domain::store::Purged, Unavailable> {
            self.inner.purge(service, horizons, now, limit).await
        }
        async fn ready(&self) -> Result<(), Unavailable> {
            Ok(())
        }
    }

    fn top_up(customer: usize, amount_minor: i64) -> TopUp {
        let key = format!("key-{customer}");
        TopUp {
            customer: CustomerId::new(format!("c{customer}")).expect("valid"),
            amount: Money::from_minor(amount_minor, Currency::EUR),
            idempotency_key: IdempotencyKey::new(key.clone()).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new(key.clone()).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("group-test", &[key.as_bytes()])),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_transactions_and_keep_their_own_answers() {
        // Proves group commit: 64 concurrent top-ups of 64 wallets (one of
        // them refused) commit in far fewer transactions than requests, each
        // request gets its own answer, the refusal affects no other, and no
        // request meets contention on the shared funding account.
        let store = Arc::new(GatedStore::default());
        let decide: Arc<Decider<TopUp, TopUpApplied, TopUpError>> =
            Arc::new(|request, snapshot, now| {
                decide_top_up(&PaymentPolicy::default(), snapshot, request, now)
            });
        let committer = Arc::new(GroupCommit::start(
            store.clone(),
            || NOW,
            top_up_read_set,
            decide,
        ));
        let requests = 64;
        let tasks: Vec<_> = (0..requests)
            .map(|customer| {
                let committer = committer.clone();
                let amount_minor = if customer == 7 { 0 } else { 100 };
                tokio::spawn(async move { committer.submit(top_up(customer, amount_minor)).await })
            })
            .collect();
        // Every worker holds a group at the gate and every other request
        // waits in the queue: only then is the gate opened, so how requests
        // group does not depend on how fast the machine is.
        let started = std::time::Instant::now();
        loop {
            let queued = committer.waiting();
            let all_placed = store.requests_loaded.load(Ordering::SeqCst) + queued == requests;
            let workers_busy = store.loads_waiting.load(Ordering::SeqCst) == GROUP_COMMIT_WORKERS;
            if all_placed && (workers_busy || queued == 0) {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the requests never all queued"
            );
            tokio::task::yield_now().await;
        }
        store.open.store(true, Ordering::SeqCst);
        store.gate.notify_waiters();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("the task ran"));
        }
        for (customer, answer) in answers.iter().enumerate() {
            match answer {
                Ok(applied) => {
                    assert_ne!(customer, 7);
                    assert_eq!(applied.customer.as_str(), format!("c{customer}"));
                }
                Err(ExecuteFailure::Rejected(TopUpError::AmountMustBePositive)) => {
                    assert_eq!(customer, 7)
                }
                Err(other) => panic!("c{customer}: {other:?}"),
            }
        }
        // The groups held at the gate commit, then the queued requests in at
        // most one group per worker.
        let commits = store.commits.load(Ordering::SeqCst);
        assert!(
            commits <= 2 * GROUP_COMMIT_WORKERS,
            "{commits} transactions for {requests} requests"
        );
        let memory: std::sync::MutexGuard<'_, MemoryStore> = store.inner.lock();
        assert_eq!(
            memory.entries().len(),
            requests - 1,
            "one entry per accepted top-up"
        );
        assert_eq!(
            memory.idempotency_records().count(),
            requests - 1,
            "each accepted request has its own idempotency record"
        );
    }
}

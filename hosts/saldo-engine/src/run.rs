//! The one re-decide loop.

use std::collections::VecDeque;
use std::ops::Range;

use saldo_domain::batch::{Batch, BatchReadSet};
use saldo_domain::decision::{Decided, ReadSet, Snapshot};
use saldo_domain::store::{CommitError, DECIDE_ATTEMPTS_MAX};
use saldo_types::Timestamp;

use crate::store::{CommitFailure, Store, Unavailable};
use crate::telemetry::{Parent, Traced};

/// How many times a batch of more than one input is decided again from
/// fresh state after conflicts before it is split in halves. A single input
/// gets [`DECIDE_ATTEMPTS_MAX`] attempts.
pub const BATCH_REDECIDE_MAX: u32 = 2;

/// Why one input of a batch got no answer. Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputFailure<E> {
    /// The decider refused the input.
    #[error(transparent)]
    Rejected(E),
    /// Conflicts persisted through every attempt (heavy contention).
    #[error("still conflicting after {DECIDE_ATTEMPTS_MAX} attempts: {0}")]
    Conflict(CommitError),
    /// The store failed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The store refused this input's commit for a reason that deciding it
    /// again cannot change: a poison input, not an outage.
    #[error("the store refused the commit: {0}")]
    Refused(String),
}

/// Why [`execute`] gave no answer.
pub type ExecuteFailure<E> = InputFailure<E>;

/// Decides `inputs` in order and commits them in as few transactions as
/// contention allows: first all together; after [`BATCH_REDECIDE_MAX`]
/// conflicting attempts (or at once, when the store refuses the commit
/// outright) the batch is split in halves, down to single inputs, each of
/// which gets [`DECIDE_ATTEMPTS_MAX`] attempts. Every
/// attempt decides from freshly loaded state. Returns one result per input,
/// in input order; a refused input changes nothing and does not stop the
/// others. Once an input's decision is committed, the messages it emits and
/// the postings it seals are traced under `parent` of the input (ADR 0020).
pub async fn execute_batch<I, R, E>(
    store: &dyn Store,
    inputs: &[I],
    now: Timestamp,
    read_set: impl Fn(&I) -> ReadSet,
    mut decide: impl FnMut(&I, &Snapshot) -> Result<Decided<R>, E> + Send,
    parent: impl Fn(&I) -> Parent,
) -> Vec<Result<R, InputFailure<E>>>
where
    I: Sync,
    R: Send,
    E: Send,
{
    let read_sets: Vec<ReadSet> = inputs.iter().map(read_set).collect();
    let mut results: Vec<Option<Result<R, InputFailure<E>>>> =
        inputs.iter().map(|_| None).collect();
    let mut pending: VecDeque<Range<usize>> = VecDeque::new();
    if !inputs.is_empty() {
        pending.push_back(0..inputs.len());
    }
    while let Some(range) = pending.pop_front() {
        let attempts = if range.len() == 1 {
            DECIDE_ATTEMPTS_MAX
        } else {
            BATCH_REDECIDE_MAX
        };
        let mut unsettled = None;
        for _ in 0..attempts {
            match attempt(store, inputs, &read_sets, range.clone(), now, &mut decide).await {
                Ok((replies, traced)) => {
                    let committed = std::time::SystemTime::now();
                    for (index, traced) in traced {
                        traced.export(&parent(&inputs[index]), committed);
                    }
                    for (index, reply) in range.clone().zip(replies) {
                        results[index] = Some(reply.map_err(InputFailure::Rejected));
                    }
                    unsettled = None;
                    break;
                }
                Err(CommitFailure::Conflict(conflict)) => {
                    // Contention, which SaldoCommitContention watches.
                    metrics::counter!("saldo_commit_conflicts_total").increment(1);
                    unsettled = Some(InputFailure::Conflict(conflict));
                }
                Err(CommitFailure::Unavailable(unavailable)) => {
                    for index in range.clone() {
                        results[index] = Some(Err(InputFailure::Unavailable(unavailable.clone())));
                    }
                    unsettled = None;
                    break;
                }
                // Deciding again cannot help; splitting finds the input.
                Err(CommitFailure::Refused(reason)) => {
                    unsettled = Some(InputFailure::Refused(reason));
                    break;
                }
            }
        }
        let Some(failure) = unsettled else {
            continue;
        };
        if range.len() == 1 {
            results[range.start] = Some(Err(failure));
        } else {
            let middle = range.start + range.len() / 2;
            pending.push_front(middle..range.end);
            pending.push_front(range.start..middle);
        }
    }
    results
        .into_iter()
        .map(|result| result.expect("every input got a result"))
        .collect()
}

/// What one committed attempt answers: a reply per input, and what each
/// decided input shows in its trace (empty unless exporting).
type Attempted<R, E> = (Vec<Result<R, E>>, Vec<(usize, Traced)>);

/// One attempt at a range of inputs: load, decide in order, commit once.
async fn attempt<I, R, E>(
    store: &dyn Store,
    inputs: &[I],
    read_sets: &[ReadSet],
    range: Range<usize>,
    now: Timestamp,
    decide: &mut (impl FnMut(&I, &Snapshot) -> Result<Decided<R>, E> + Send),
) -> Result<Attempted<R, E>, CommitFailure>
where
    I: Sync,
    R: Send,
    E: Send,
{
    let started = std::time::SystemTime::now();
    let loaded = store
        .load(&BatchReadSet::of(&read_sets[range.clone()]))
        .await?;
    let mut batch = Batch::new(loaded);
    let mut traced = Vec::new();
    let replies: Vec<Result<R, E>> = range
        .map(|index| {
            batch.decide(&read_sets[index], |snapshot| {
                let decided = decide(&inputs[index], snapshot)?;
                if let Some(shown) = Traced::of(&decided.decision, started) {
                    traced.push((index, shown));
                }
                Ok(decided)
            })
        })
        .collect();
    store.commit(batch.finish(), now).await?;
    Ok((replies, traced))
}

/// The rhythm for one input: a batch of one, traced under the current span.
pub async fn execute<R, E>(
    store: &dyn Store,
    read_set: &ReadSet,
    now: Timestamp,
    mut decide: impl FnMut(&Snapshot) -> Result<Decided<R>, E> + Send,
) -> Result<R, ExecuteFailure<E>>
where
    R: Send,
    E: Send,
{
    let parent = Parent::current();
    execute_batch(
        store,
        &[()],
        now,
        |()| read_set.clone(),
        |(), snapshot| decide(snapshot),
        |()| parent.clone(),
    )
    .await
    .pop()
    .expect("one input, one result")
}

/// Reads what `read_set` names, outside any decision (an API's GET).
pub async fn read(store: &dyn Store, read_set: &ReadSet) -> Result<Snapshot, Unavailable> {
    let loaded = store.load(&BatchReadSet::of([read_set])).await?;
    Ok(loaded.view(read_set))
}

//! The one timer loop: due saga deadlines, fired in batches.

use std::time::Duration;

use saldo_domain::order::{deadline_read_set, decide_deadline};
use saldo_domain::{MessageOutcome, Rules};
use saldo_types::OrderId;

use crate::run::{InputFailure, execute_batch};
use crate::store::{Store, Unavailable};
use crate::telemetry::{self, Parent};
use crate::wall_clock;

/// The most due deadlines fired as one batch.
pub const TIMER_BATCH_MAX: usize = 128;
/// How often the timer loop looks for due deadlines. A deadline fires at
/// most this late; saga deadlines are seconds long.
pub const TIMER_INTERVAL: Duration = Duration::from_millis(250);

/// What one round of [`fire_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// Deadlines decided and committed.
    pub fired: usize,
    /// Deadlines left for a later round (contention or an unreachable store).
    pub deferred: usize,
}

/// Fires the deadlines due now, at most [`TIMER_BATCH_MAX`], as one batch.
pub async fn fire_due(store: &dyn Store, rules: &Rules) -> Result<Fired, Unavailable> {
    let now = wall_clock();
    let due: Vec<OrderId> = store.due_timers(now, TIMER_BATCH_MAX).await?;
    // A deadline's spans hang from the order's own trace (its placement),
    // read from the row its decision saw.
    let traces = std::sync::Mutex::new(std::collections::HashMap::new());
    let results = execute_batch(
        store,
        &due,
        now,
        deadline_read_set,
        |order_id, snapshot| {
            if telemetry::exporting()
                && let Some(row) = snapshot.order(order_id).1
            {
                traces
                    .lock()
                    .expect("no panic holds it")
                    .insert(order_id.clone(), row.traceparent.clone());
            }
            Ok::<_, std::convert::Infallible>(decide_deadline(
                &rules.order_saga,
                snapshot,
                order_id,
                now,
            ))
        },
        |order_id| {
            traces
                .lock()
                .expect("no panic holds it")
                .get(order_id)
                .cloned()
                .map_or(Parent::None, Parent::Traceparent)
        },
    )
    .await;
    let mut fired = Fired::default();
    for (order_id, result) in due.iter().zip(results) {
        match result {
            Ok(
                MessageOutcome::Applied | MessageOutcome::Duplicate | MessageOutcome::Ignored(_),
            ) => {
                fired.fired += 1;
            }
            Err(InputFailure::Rejected(never)) => match never {},
            Err(error) => {
                fired.deferred += 1;
                tracing::debug!(%order_id, %error, "deadline deferred to the next round");
            }
        }
    }
    Ok(fired)
}

/// Fires due deadlines every [`TIMER_INTERVAL`] until `stop` turns true.
pub async fn run(
    store: std::sync::Arc<dyn Store>,
    rules: std::sync::Arc<Rules>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match fire_due(store.as_ref(), &rules).await {
            // A full batch means more may be due: go again at once.
            Ok(fired) if fired.fired + fired.deferred == TIMER_BATCH_MAX && fired.deferred == 0 => {
                continue;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read due deadlines"),
        }
        tokio::select! {
            () = tokio::time::sleep(TIMER_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

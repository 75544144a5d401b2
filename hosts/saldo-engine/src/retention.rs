//! The one purge loop (ADR 0015): each service deletes its own inbox
//! receipts past the inbox horizon and its expired idempotency records, in
//! bounded statements, on a timer. What may be deleted is the sdk's rule
//! (`saldo_domain::retention`); this loop only carries it out.

use std::sync::Arc;
use std::time::Duration;

use saldo_domain::messages::Service;
use saldo_domain::retention::{Horizons, PURGE_BATCH_MAX, PURGE_INTERVAL_MS, PURGE_ROUNDS_MAX};
use saldo_domain::store::Purged;

use crate::store::{Store, Unavailable};
use crate::wall_clock;

/// How often a service purges.
pub const PURGE_INTERVAL: Duration = Duration::from_millis(PURGE_INTERVAL_MS);

/// Purges until nothing more is past its horizon or [`PURGE_ROUNDS_MAX`]
/// statements of at most [`PURGE_BATCH_MAX`] rows per table have run.
pub async fn purge_expired(
    store: &dyn Store,
    service: Service,
    horizons: &Horizons,
) -> Result<Purged, Unavailable> {
    let limit = usize::try_from(PURGE_BATCH_MAX).expect("the batch bound fits usize");
    let mut total = Purged::default();
    for _ in 0..PURGE_ROUNDS_MAX {
        let purged = store.purge(service, horizons, wall_clock(), limit).await?;
        assert!(
            purged.inbox <= limit && purged.idempotency <= limit,
            "a purge statement deletes at most {limit} rows"
        );
        total.inbox += purged.inbox;
        total.idempotency += purged.idempotency;
        if purged.inbox < limit && purged.idempotency < limit {
            break;
        }
    }
    Ok(total)
}

/// Purges `service`'s expired rows every [`PURGE_INTERVAL`], first at
/// start, until `stop` turns true. An unreachable store is logged and tried
/// again next time: purging late only keeps rows longer.
pub async fn run(
    store: Arc<dyn Store>,
    service: Service,
    horizons: Horizons,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match purge_expired(store.as_ref(), service, &horizons).await {
            Ok(purged) => {
                metrics::counter!("saldo_purged_total", "service" => service.name(), "table" => "inbox")
                    .increment(purged.inbox as u64);
                metrics::counter!("saldo_purged_total", "service" => service.name(), "table" => "idempotency_keys")
                    .increment(purged.idempotency as u64);
                if purged != Purged::default() {
                    tracing::info!(%service, inbox = purged.inbox, idempotency = purged.idempotency, "purged rows past their horizon");
                }
            }
            Err(error) => tracing::warn!(%service, %error, "cannot purge; trying again later"),
        }
        tokio::select! {
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use saldo_domain::batch::Commit;
    use saldo_domain::decision::InboxReceipt;
    use saldo_idempotency::Fingerprint;
    use saldo_types::{Id128, Timestamp};

    use super::*;
    use crate::MemoryBackend;

    #[tokio::test]
    async fn a_purge_round_is_bounded_and_leaves_the_rest_for_the_next() {
        // Proves one round deletes at most PURGE_ROUNDS_MAX * PURGE_BATCH_MAX
        // receipts and the next round finishes the job.
        let backend = MemoryBackend::new();
        let batch = PURGE_BATCH_MAX as usize;
        let count = batch * PURGE_ROUNDS_MAX as usize + 7;
        let receipts = (0..count)
            .map(|index| InboxReceipt {
                consumer: Service::Payment,
                message_id: Id128::derive("test", &[&index.to_be_bytes()]),
                fingerprint: Fingerprint::of_parts(&[b"x"]),
                received_at: Timestamp::from_unix_ms(1),
            })
            .collect();
        let commit = Commit {
            inbox: receipts,
            ..Commit::default()
        };
        backend
            .commit(commit, Timestamp::from_unix_ms(1))
            .await
            .expect("committed");
        let horizons = Horizons { inbox_ms: 1 };
        let first = purge_expired(&backend, Service::Payment, &horizons)
            .await
            .expect("purged");
        assert_eq!(first.inbox, batch * PURGE_ROUNDS_MAX as usize);
        let second = purge_expired(&backend, Service::Payment, &horizons)
            .await
            .expect("purged");
        assert_eq!(second.inbox, 7);
        assert_eq!(backend.lock().inbox_len(Service::Payment), 0);
    }
}

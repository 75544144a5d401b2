//! The outbox as a publisher sees it: a commit wakes a waiting publisher.

use std::time::{Duration, Instant};

use saldo_domain::Decision;
use saldo_domain::messages::{Envelope, Payload, SCHEMA_VERSION, Service, Traceparent};
use saldo_engine::OutboxSource;
use saldo_postgres::PgOutbox;
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Id128, OrderId};

use crate::backends::NOW;

/// Far longer than a wake-up takes: a publisher that waits this long was
/// not woken by the commit.
const IDLE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_commit_with_outbox_rows_wakes_the_waiting_publisher() {
    // Proves the publisher does not wait out its idle pause: the commit of
    // an outbox row notifies the service's channel, and the waiting outbox
    // returns long before IDLE, then claims the row.
    let database = TestDatabase::create().await;
    let mut outbox = PgOutbox::connect(database.url(), Service::Inventory)
        .await
        .expect("connects");
    assert_eq!(
        outbox.claim_lanes().await.expect("lanes"),
        saldo_postgres::LANES as usize
    );
    let store = database.store.clone();
    let committer = tokio::spawn(async move {
        tokio::task::yield_now().await;
        let message_id = Id128::derive("wake-test", &[b"1"]);
        let mut decision = Decision::default();
        decision.publish(
            Service::Inventory,
            Envelope {
                message_id,
                schema_version: SCHEMA_VERSION,
                order_id: OrderId::new("o1").expect("valid"),
                correlation_id: CorrelationId::new("c1").expect("valid"),
                causation_id: None,
                occurred_at: NOW,
                traceparent: Traceparent::root(message_id),
                payload: Payload::StockReleased,
            },
        );
        store.commit(decision, NOW).await.expect("commits");
    });
    let started = Instant::now();
    outbox.wait_for_rows(IDLE).await;
    let waited = started.elapsed();
    committer.await.expect("committed");
    assert!(
        waited < IDLE / 2,
        "woken after {waited:?}, not by the commit"
    );
    let rows = outbox.claim(10, &[]).await.expect("claims");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].message_type, "StockReleased");
    assert_eq!(rows[0].order_id, "o1");
}

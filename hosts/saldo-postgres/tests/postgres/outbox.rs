//! The outbox as a publisher sees it: a commit wakes a waiting publisher,
//! and a claim passes published rows once.

use std::time::{Duration, Instant};

use saldo_domain::Decision;
use saldo_domain::messages::{Envelope, Payload, SCHEMA_VERSION, Service, Traceparent};
use saldo_engine::OutboxSource;
use saldo_postgres::PgOutbox;
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Id128, OrderId};
use sqlx::Connection;

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

/// Rows published before the measured claim: far more than one claim takes.
const PUBLISHED_ROWS: i64 = 2_000;

#[tokio::test]
async fn a_claim_skips_published_rows_instead_of_reading_them_again() {
    // Regression: the claim ran as a bitmap scan, which never marks the
    // pending index's entries of published rows dead, so every claim read
    // every row published since the last vacuum (29 ms per claim at 17,000
    // rows in the saga benchmark). In the claim's transaction the claim
    // walks the index in order, and once one claim has passed the published
    // rows the next reads only a few pages. The setting is the
    // transaction's alone (PgBouncer refuses startup options, and transaction
    // pooling hands the connection to other clients between transactions):
    // on a plain connection, and gone from the session after the claim.
    let database = TestDatabase::create().await;
    let mut setup = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connects");
    sqlx::query(
        "INSERT INTO inventory.outbox (message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at) \
         SELECT 'm' || n, 'o' || n, 'StockReleased', 'c', 't', decode(repeat('ab', 450), 'hex'), now() \
         FROM generate_series(1, $1::bigint + 10) AS n",
    )
    .bind(PUBLISHED_ROWS)
    .execute(&mut setup)
    .await
    .expect("rows");
    sqlx::query("UPDATE inventory.outbox SET published_at = now() WHERE sequence <= $1")
        .bind(PUBLISHED_ROWS)
        .execute(&mut setup)
        .await
        .expect("published");
    let mut publisher = sqlx::PgConnection::connect(database.url())
        .await
        .expect("connects");
    let lanes: Vec<i32> = (0..saldo_postgres::LANES).collect();
    let in_flight: Vec<i64> = vec![PUBLISHED_ROWS + 1];
    let explain = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        saldo_postgres::claim_sql(Service::Inventory)
    );
    let mut plans = Vec::new();
    for _ in 0..2 {
        let mut claim = saldo_postgres::begin_claim(&mut publisher)
            .await
            .expect("begins");
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain.clone()))
            .bind(&lanes)
            .bind(100_i64)
            .bind(&in_flight)
            .fetch_one(&mut *claim)
            .await
            .expect("explains");
        claim.commit().await.expect("commits");
        plans.push(plan);
    }
    let session: String = sqlx::query_scalar("SELECT current_setting('enable_bitmapscan')")
        .fetch_one(&mut publisher)
        .await
        .expect("reads the setting");
    assert_eq!(
        session, "on",
        "the claim's setting stays in its transaction"
    );
    let second = &plans[1][0]["Plan"];
    let text = plans[1].to_string();
    assert!(
        text.contains("\"Index Scan\"") && text.contains("inventory_outbox_pending"),
        "the claim walks the pending index: {text}"
    );
    assert!(!text.contains("Bitmap"), "no bitmap scan: {text}");
    assert_eq!(
        second["Actual Rows"], 9,
        "the unpublished rows not in flight"
    );
    let blocks = second["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + second["Shared Read Blocks"].as_i64().unwrap_or(0);
    assert!(
        blocks < 20,
        "the second claim read {blocks} pages, as if the {PUBLISHED_ROWS} published rows were pending: {text}"
    );
}

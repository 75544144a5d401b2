//! Outbox drain rate and publish lag.
//!
//! `SALDO_TEST_DATABASE_URL=... cargo bench -p saldo-kafka --bench outbox`
//!
//! 1. Drain: 100,000 rows wait in an outbox; one publisher drains them to
//!    the broker (librdkafka's mock cluster). Beside it, in the same run,
//!    pgbench runs the bare claim-and-mark statement over an identical
//!    table (claim 500 rows in sequence order, mark them), one client.
//! 2. Lag: rows are inserted at 10,000 per second for 10 seconds while the
//!    publisher runs; a consumer measures, for every message, the time from
//!    its row's insertion to its arrival (p50, p99).

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use saldo_domain::messages::{Envelope, Payload, SCHEMA_VERSION, Service, Traceparent};
use saldo_kafka::connection::Connection;
use saldo_kafka::publisher::OutboxPublisher;
use saldo_kafka::{topics, wall_clock};
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Id128, OrderId};
use sqlx::Executor;

const ROWS: i64 = 100_000;
const RATE_PER_SECOND: u64 = 10_000;
const LAG_SECONDS: u64 = 10;

fn envelope(index: u64) -> Envelope {
    let message_id = Id128::derive("bench", &[&index.to_be_bytes()]);
    Envelope {
        message_id,
        schema_version: SCHEMA_VERSION,
        order_id: OrderId::new(format!("o{}", index % 10_000)).expect("valid"),
        correlation_id: CorrelationId::new("bench").expect("valid"),
        causation_id: None,
        occurred_at: wall_clock(),
        traceparent: Traceparent::root(message_id),
        payload: Payload::StockReleased,
    }
}

/// Inserts rows `from..to` into the inventory outbox in one statement.
async fn insert(pool: &sqlx::PgPool, from: u64, to: u64) {
    let mut ids = Vec::new();
    let mut orders = Vec::new();
    let mut envelopes = Vec::new();
    for index in from..to {
        let envelope = envelope(index);
        ids.push(envelope.message_id.to_hex());
        orders.push(envelope.order_id.as_str().to_owned());
        envelopes.push(envelope.encode());
    }
    sqlx::query(
        "INSERT INTO inventory.outbox (message_id, order_id, message_type, correlation_id, traceparent, envelope, created_at) \
         SELECT id, o, 'StockReleased', 'bench', '00-0-0-01', e, now() FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(id, o, e)",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&envelopes)
    .execute(pool)
    .await
    .expect("inserts");
}

/// Rows per second of the bare claim-and-mark statement, integer arithmetic.
fn pgbench_claim_and_mark(url: &str) -> u64 {
    let script = std::env::temp_dir().join(format!("saldo-claim-mark-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "WITH batch AS (SELECT sequence FROM bench_outbox WHERE published_at IS NULL ORDER BY sequence LIMIT 500 FOR UPDATE SKIP LOCKED) \
         UPDATE bench_outbox SET published_at = now() FROM batch WHERE bench_outbox.sequence = batch.sequence;\n",
    )
    .expect("script");
    let transactions = (ROWS / 500).to_string();
    let started = Instant::now();
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-c", "1", "-t", &transactions, "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("pgbench runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    rate(ROWS as u64, started.elapsed())
}

fn rate(count: u64, elapsed: Duration) -> u64 {
    (u128::from(count) * 1_000_000 / elapsed.as_micros().max(1)) as u64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // A fresh mock cluster for each round and for the lag phase: the mock
    // broker runs in this process and some of its lookups scan a partition's
    // whole log, so a log kept across rounds would slow every later round.
    let cluster = || {
        let cluster = MockCluster::new(1).expect("mock cluster");
        for topic in topics::ALL {
            cluster.create_topic(topic, 8, 1).expect("topic");
        }
        cluster
    };
    runtime.block_on(async {
        let database = TestDatabase::create().await;
        let pool = database.store.pool().clone();
        let mut publisher_rates = Vec::new();
        let mut pgbench_rates = Vec::new();
        for round in 0..3u64 {
            pool.execute("DELETE FROM inventory.outbox").await.expect("clears");
            for chunk in 0..(ROWS as u64 / 5_000) {
                insert(&pool, round * 1_000_000 + chunk * 5_000, round * 1_000_000 + (chunk + 1) * 5_000).await;
            }
            pool.execute("DROP TABLE IF EXISTS bench_outbox").await.expect("drops");
            pool.execute("CREATE TABLE bench_outbox AS SELECT * FROM inventory.outbox").await.expect("copies");
            pool.execute("ALTER TABLE bench_outbox ADD PRIMARY KEY (sequence)").await.expect("keys");
            pool.execute("CREATE INDEX ON bench_outbox (sequence) WHERE published_at IS NULL").await.expect("indexes");
            pool.execute("VACUUM ANALYZE").await.expect("analyses");
            let broker = cluster();
            let producer = saldo_kafka::producer::create(&Connection::new(&broker.bootstrap_servers())).expect("producer");
            let mut publisher = OutboxPublisher::new(Box::new(saldo_postgres::PgOutbox::connect(database.url(), Service::Inventory).await.expect("outbox")), producer);
            let started = Instant::now();
            let mut published = 0;
            while published < ROWS as usize {
                published += publisher.round().await.expect("round").published;
            }
            publisher_rates.push(rate(ROWS as u64, started.elapsed()));
            drop(publisher);
            drop(broker);
            let url = database.url().to_owned();
            pgbench_rates.push(tokio::task::spawn_blocking(move || pgbench_claim_and_mark(&url)).await.expect("pgbench"));
        }
        publisher_rates.sort_unstable();
        pgbench_rates.sort_unstable();
        let (publisher, reference) = (publisher_rates[1], pgbench_rates[1]);
        println!("outbox drain, 100,000 rows, one publisher, median of 3:");
        println!("  bare claim-and-mark (pgbench, 1 client)  {reference:>9} rows/s   samples {pgbench_rates:?}");
        println!("  saldo outbox publisher to Kafka          {publisher:>9} rows/s   {}% of the bare query   samples {publisher_rates:?}", publisher * 100 / reference.max(1));

        pool.execute("DELETE FROM inventory.outbox").await.expect("clears");
        let broker = cluster();
        let servers = Connection::new(&broker.bootstrap_servers());
        let reader: StreamConsumer = saldo_kafka::consumer::config(&servers, "lag-reader").create().expect("reader");
        reader.subscribe(&[topics::consumed_by(Service::Order)]).expect("subscribes");
        // Only messages created from here on are measured (the warm-up
        // message below is older).
        let phase_start = wall_clock();
        // Measure the steady state, not the consumer group's first join: wait
        // until the reader owns its partitions (one warm-up message proves it).
        insert(&pool, 9_999_999, 10_000_000).await;
        // The same publisher warms up and then runs: a second one would wait
        // for the first connection's lane locks to be released.
        let producer = saldo_kafka::producer::create(&servers).expect("producer");
        let mut publisher = OutboxPublisher::new(Box::new(saldo_postgres::PgOutbox::connect(database.url(), Service::Inventory).await.expect("outbox")), producer);
        while publisher.round().await.expect("round").published == 0 {}
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), reader.recv()).await.expect("the reader joins").expect("message");
            let envelope = Envelope::decode(message.payload().expect("payload")).expect("decodes");
            if envelope.occurred_at >= phase_start {
                break;
            }
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let publishing = tokio::spawn(publisher.run(Duration::from_millis(2), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        let inserting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(10));
                let per_tick = RATE_PER_SECOND / 100;
                for tick in 0..(LAG_SECONDS * 100) {
                    ticker.tick().await;
                    insert(&pool, 10_000_000 + tick * per_tick, 10_000_000 + (tick + 1) * per_tick).await;
                }
            })
        };
        let expected = RATE_PER_SECOND * LAG_SECONDS;
        let mut lags_ms = Vec::with_capacity(expected as usize);
        while (lags_ms.len() as u64) < expected {
            let message = tokio::time::timeout(Duration::from_secs(60), reader.recv()).await.expect("messages keep arriving").expect("message");
            let envelope = Envelope::decode(message.payload().expect("payload")).expect("decodes");
            if envelope.occurred_at >= phase_start && envelope.payload == Payload::StockReleased {
                lags_ms.push(wall_clock().ms_since(envelope.occurred_at));
            }
        }
        inserting.await.expect("inserter");
        stop.send_replace(true);
        publishing.await.expect("publisher task").expect("publisher");
        lags_ms.sort_unstable();
        let percentile = |p: usize| lags_ms[(lags_ms.len() * p / 100).min(lags_ms.len() - 1)];
        println!("publish lag at {RATE_PER_SECOND} events/s for {LAG_SECONDS} s (insert to consumer), {} messages:", lags_ms.len());
        println!("  p50 {} ms   p99 {} ms   max {} ms", percentile(50), percentile(99), lags_ms[lags_ms.len() - 1]);
    });
}

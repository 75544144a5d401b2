//! The Kafka backbone against a real PostgreSQL and a Kafka-protocol broker:
//! librdkafka's mock cluster, or tansu with `SALDO_TEST_BROKER=tansu`
//! (`saldo_kafka::testing`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Envelope, OrderLine, Payload, SCHEMA_VERSION, Service, Traceparent};
use saldo_domain::order::{PlaceOrder, decide_place_order, place_order_read_set};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::{Decision, Rules};
use saldo_idempotency::IdempotencyKey;
use saldo_kafka::connection::{Connection, Properties};
use saldo_kafka::consumer::ConsumerRunner;
use saldo_kafka::publisher::OutboxPublisher;
use saldo_kafka::testing::TestBroker;
use saldo_kafka::{topics, wall_clock};
use saldo_postgres::PgStore;
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 4;

fn eur(minor: i64) -> Money {
    Money::from_minor(minor, Currency::EUR)
}

/// A broker with Saldo's topics, and a fresh database.
struct Setup {
    broker: TestBroker,
    database: TestDatabase,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Passed through to every client the setup creates.
    properties: Properties,
}

impl Setup {
    async fn new() -> Setup {
        let broker = TestBroker::start(PARTITIONS).await;
        let (stop, _) = watch::channel(false);
        Setup {
            broker,
            database: TestDatabase::create().await,
            stop,
            tasks: Vec::new(),
            properties: Properties::new(),
        }
    }

    /// The broker with this setup's passed-through properties.
    fn connection(&self) -> Connection {
        Connection::with_properties(&self.broker.bootstrap_servers(), self.properties.clone())
    }

    fn store(&self) -> PgStore {
        self.database.store.clone()
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.stop.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }

    async fn start_publisher(&mut self, service: Service) {
        let producer = saldo_kafka::producer::create(&self.connection()).expect("producer");
        let publisher = OutboxPublisher::new(
            Box::new(
                saldo_postgres::PgOutbox::connect(self.database.url(), service)
                    .await
                    .expect("outbox"),
            ),
            producer,
        );
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            publisher
                .run(Duration::from_millis(20), stopped)
                .await
                .expect("publisher stops cleanly")
        }));
    }

    fn start_consumer(&mut self, service: Service) {
        let runner = ConsumerRunner::new(
            &self.connection(),
            &format!("saldo-{}", service.name()),
            service,
            std::sync::Arc::new(self.store()),
            std::sync::Arc::new(Rules::default()),
            self.stop.subscribe(),
        )
        .expect("consumer");
        let stopped = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            runner.run(stopped).await.expect("consumer stops cleanly")
        }));
    }

    async fn start_platform(&mut self) {
        for service in Service::ALL {
            self.start_publisher(service).await;
            self.start_consumer(service);
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("stops in time")
                .expect("task");
        }
    }
}

async fn scalar(store: &PgStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Waits (with a deadline) until `sql` returns `expected`.
async fn wait_for(store: &PgStore, sql: &'static str, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = scalar(store, sql).await;
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} stayed at {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn seed(store: &PgStore) {
    let rules = Rules::default();
    let now = wall_clock();
    for (customer, amount) in [("alice", 5_000), ("bob", 300)] {
        let request = TopUp {
            customer: CustomerId::new(customer).expect("valid"),
            amount: eur(amount),
            idempotency_key: IdempotencyKey::new(format!("seed-{customer}")).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new("seed").expect("valid"),
            traceparent: Traceparent::root(Id128::derive("seed", &[customer.as_bytes()])),
        };
        saldo_engine::execute(store, &top_up_read_set(&request), now, |s| {
            decide_top_up(&rules.payment, s, &request, now)
        })
        .await
        .expect("top-up");
    }
    let request = SetStock {
        sku: Sku::new("apple").expect("valid"),
        on_hand: 6,
        unit_price: eur(200),
    };
    saldo_engine::execute(store, &set_stock_read_set(&request), now, |s| {
        decide_set_stock(s, &request)
    })
    .await
    .expect("stock");
}

async fn place(store: &PgStore, order: &str, customer: &str, quantity: u32) {
    let rules = Rules::default();
    let now = wall_clock();
    let request = PlaceOrder {
        order_id: OrderId::new(order).expect("valid"),
        customer: CustomerId::new(customer).expect("valid"),
        lines: vec![OrderLine {
            sku: Sku::new("apple").expect("valid"),
            quantity,
        }],
        currency: Currency::EUR,
        idempotency_key: IdempotencyKey::new(format!("key-{order}")).expect("valid"),
        principal: None,
        correlation_id: CorrelationId::new(format!("c-{order}")).expect("valid"),
        traceparent: Traceparent::root(Id128::derive("test", &[order.as_bytes()])),
    };
    saldo_engine::execute(store, &place_order_read_set(&request), now, |s| {
        decide_place_order(&rules.order_saga, s, &request, now)
    })
    .await
    .expect("placed");
}

async fn statuses(store: &PgStore) -> BTreeMap<String, String> {
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT order_id, status, cancel_reason FROM orders.orders")
            .fetch_all(store.pool())
            .await
            .expect("reads");
    rows.into_iter()
        .map(|(id, status, reason)| {
            (
                id,
                format!(
                    "{status}{}",
                    reason.map(|r| format!(" {r}")).unwrap_or_default()
                ),
            )
        })
        .collect()
}

/// The platform's money and stock invariants, checked with SQL.
async fn check_invariants(store: &PgStore) {
    assert_eq!(
        scalar(
            store,
            "SELECT COALESCE(sum(balance_minor), 0)::bigint FROM payment.accounts"
        )
        .await,
        0,
        "money is conserved"
    );
    assert_eq!(
        scalar(store, "SELECT count(*) FROM payment.accounts a WHERE balance_minor <> (SELECT COALESCE(sum(CASE side WHEN 'credit' THEN amount_minor ELSE -amount_minor END), 0) FROM payment.ledger_legs l WHERE l.account_id = a.account_id)").await,
        0,
        "balances equal their entries"
    );
    assert_eq!(
        scalar(
            store,
            "SELECT count(*) FROM inventory.stock WHERE reserved <> 0"
        )
        .await,
        0,
        "nothing held at rest"
    );
    assert_eq!(
        scalar(
            store,
            "SELECT count(*) FROM payment.ledger_entries WHERE purpose = 'charge'"
        )
        .await,
        scalar(
            store,
            "SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'"
        )
        .await,
        "one charge per confirmed order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_flow_through_kafka_to_their_end() {
    // Proves the publish-then-consume round trip: orders placed in PostgreSQL
    // travel through the outbox, Kafka and every consumer to a terminal state.
    let mut setup = Setup::new().await;
    let store = setup.store();
    seed(&store).await;
    setup.start_platform().await;
    place(&store, "o1", "alice", 2).await;
    place(&store, "o2", "bob", 2).await;
    place(&store, "o3", "alice", 1).await;
    place(&store, "o4", "alice", 9).await;
    wait_for(
        &store,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        4,
        Duration::from_secs(60),
    )
    .await;
    let statuses = statuses(&store).await;
    assert_eq!(statuses["o1"], "CONFIRMED");
    assert_eq!(statuses["o2"], "CANCELLED insufficient_funds");
    assert_eq!(statuses["o3"], "CONFIRMED");
    assert_eq!(statuses["o4"], "CANCELLED out_of_stock");
    check_invariants(&store).await;
    assert_eq!(scalar(&store, "SELECT (SELECT count(*) FROM orders.dead_letters) + (SELECT count(*) FROM inventory.dead_letters) + (SELECT count(*) FROM payment.dead_letters)").await, 0);
    setup.stop().await;
}

fn envelope(order: &str, index: u32, payload: Payload) -> Envelope {
    let message_id = Id128::derive("kafka-test", &[order.as_bytes(), &index.to_be_bytes()]);
    Envelope {
        message_id,
        schema_version: SCHEMA_VERSION,
        order_id: OrderId::new(order).expect("valid"),
        correlation_id: CorrelationId::new(format!("c-{order}")).expect("valid"),
        causation_id: None,
        occurred_at: wall_clock(),
        traceparent: Traceparent::root(message_id),
        payload,
    }
}

async fn send_raw(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_delivery_has_no_second_effect() {
    // Proves a message delivered twice by Kafka is absorbed by the inbox.
    let mut setup = Setup::new().await;
    let store = setup.store();
    seed(&store).await;
    setup.start_consumer(Service::Inventory);
    let producer = saldo_kafka::producer::create(&setup.connection()).expect("producer");
    let reserve = envelope(
        "o1",
        0,
        Payload::ReserveStock {
            lines: vec![OrderLine {
                sku: Sku::new("apple").expect("valid"),
                quantity: 2,
            }],
            currency: Currency::EUR,
        },
    );
    saldo_kafka::producer::publish(&producer, &reserve)
        .await
        .expect("sent");
    saldo_kafka::producer::publish(&producer, &reserve)
        .await
        .expect("sent again");
    let marker = envelope(
        "o2",
        0,
        Payload::ReserveStock {
            lines: vec![OrderLine {
                sku: Sku::new("apple").expect("valid"),
                quantity: 1,
            }],
            currency: Currency::EUR,
        },
    );
    saldo_kafka::producer::publish(&producer, &marker)
        .await
        .expect("sent");
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.inbox",
        2,
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.reservations",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        scalar(
            &store,
            "SELECT reserved FROM inventory.stock WHERE sku = 'apple'"
        )
        .await,
        3,
        "o1 reserved once, o2 once"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM inventory.outbox WHERE message_type = 'StockReserved'"
        )
        .await,
        2,
        "one reply each"
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_and_later_messages_flow() {
    // Proves garbage and unhandleable commands go to the dead-letter topic and
    // table with their error while the consumer carries on.
    let mut setup = Setup::new().await;
    let store = setup.store();
    seed(&store).await;
    setup.start_consumer(Service::Inventory);
    let producer = saldo_kafka::producer::create(&setup.connection()).expect("producer");
    send_raw(
        &producer,
        topics::consumed_by(Service::Inventory),
        "o1",
        b"{ not json",
    )
    .await;
    let misrouted = envelope(
        "o1",
        1,
        Payload::ChargePayment {
            customer: CustomerId::new("alice").expect("valid"),
            amount: eur(5),
        },
    );
    send_raw(
        &producer,
        topics::consumed_by(Service::Inventory),
        "o1",
        &misrouted.encode(),
    )
    .await;
    let valid = envelope(
        "o1",
        2,
        Payload::ReserveStock {
            lines: vec![OrderLine {
                sku: Sku::new("apple").expect("valid"),
                quantity: 1,
            }],
            currency: Currency::EUR,
        },
    );
    saldo_kafka::producer::publish(&producer, &valid)
        .await
        .expect("sent");
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.reservations",
        1,
        Duration::from_secs(30),
    )
    .await;
    // A batch commits its decided messages before it records the dead
    // letters of the refused ones: wait for those too, not only for the
    // reservation.
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.dead_letters",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM inventory.dead_letters WHERE error LIKE 'undecodable%'"
        )
        .await,
        1
    );
    assert_eq!(scalar(&store, "SELECT count(*) FROM inventory.dead_letters WHERE error LIKE '%does not consume ChargePayment%'").await, 1);
    let reader: StreamConsumer =
        saldo_kafka::consumer::config(&setup.connection(), "dead-letter-reader")
            .create()
            .expect("reader");
    reader
        .subscribe(&[topics::DEAD_LETTERS])
        .expect("subscribes");
    let mut errors = Vec::new();
    while errors.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("dead letters arrive")
            .expect("message");
        let error = message.headers().and_then(|headers| {
            use rdkafka::message::Headers;
            headers
                .iter()
                .find(|header| header.key == "saldo-error")
                .and_then(|header| {
                    header
                        .value
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                })
        });
        errors.push(error.expect("the error travels in a header"));
    }
    assert!(errors[0].starts_with("undecodable"), "{errors:?}");
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_publishers_keep_each_orders_messages_in_order() {
    // Proves two publishers on one outbox publish every row once (normal path)
    // and each order's messages in outbox order.
    let mut setup = Setup::new().await;
    let store = setup.store();
    let mut decision = Decision::default();
    for order in 0..40 {
        for index in 0..5 {
            decision.publish(
                Service::Inventory,
                envelope(&format!("o{order}"), index, Payload::StockReleased),
            );
        }
    }
    store
        .commit(decision, wall_clock())
        .await
        .expect("outbox rows");
    let reader: StreamConsumer = saldo_kafka::consumer::config(&setup.connection(), "order-reader")
        .create()
        .expect("reader");
    reader
        .subscribe(&[topics::consumed_by(Service::Order)])
        .expect("subscribes");
    setup.start_publisher(Service::Inventory).await;
    setup.start_publisher(Service::Inventory).await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..200 {
        let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("messages arrive")
            .expect("message");
        let envelope = Envelope::decode(message.payload().expect("payload")).expect("decodes");
        seen.entry(envelope.order_id.as_str().to_owned())
            .or_default()
            .push(envelope.message_id.to_hex());
    }
    for (order, ids) in &seen {
        let expected: Vec<String> = (0..5u32)
            .map(|index| {
                Id128::derive("kafka-test", &[order.as_bytes(), &index.to_be_bytes()]).to_hex()
            })
            .collect();
        assert_eq!(
            ids, &expected,
            "order {order} arrived out of order or duplicated"
        );
    }
    assert_eq!(seen.len(), 40);
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL",
        0,
        Duration::from_secs(10),
    )
    .await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_going_down_delays_but_loses_nothing() {
    // Proves orders placed while the broker is down finish once it is back.
    let mut setup = Setup::new().await;
    let store = setup.store();
    seed(&store).await;
    setup.start_platform().await;
    place(&store, "o1", "alice", 1).await;
    wait_for(
        &store,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        1,
        Duration::from_secs(60),
    )
    .await;
    setup.broker.go_down();
    place(&store, "o2", "alice", 1).await;
    place(&store, "o3", "bob", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'"
        )
        .await,
        1,
        "nothing moves while the broker is down"
    );
    setup.broker.come_back();
    wait_for(
        &store,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        3,
        Duration::from_secs(90),
    )
    .await;
    check_invariants(&store).await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_removed_after_the_retention_period() {
    // Proves the outbox stays bounded: rows published longer ago than the
    // retention period are deleted, recent and unpublished ones stay.
    let setup = Setup::new().await;
    let store = setup.store();
    let mut decision = Decision::default();
    for index in 0..6 {
        decision.publish(
            Service::Inventory,
            envelope("o1", index, Payload::StockReleased),
        );
    }
    store
        .commit(decision, wall_clock())
        .await
        .expect("outbox rows");
    sqlx::query("UPDATE inventory.outbox SET published_at = now() - interval '2 hours' WHERE sequence IN (SELECT sequence FROM inventory.outbox ORDER BY sequence LIMIT 3)")
        .execute(store.pool())
        .await
        .expect("ages");
    sqlx::query("UPDATE inventory.outbox SET published_at = now() WHERE sequence = (SELECT max(sequence) FROM inventory.outbox)").execute(store.pool()).await.expect("marks");
    let producer = saldo_kafka::producer::create(&setup.connection()).expect("producer");
    let mut publisher = OutboxPublisher::new(
        Box::new(
            saldo_postgres::PgOutbox::connect(setup.database.url(), Service::Inventory)
                .await
                .expect("outbox"),
        ),
        producer,
    );
    assert_eq!(publisher.apply_retention().await.expect("deletes"), 3);
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM inventory.outbox").await,
        3
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL"
        )
        .await,
        2
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_database_connections_are_replaced_and_nothing_is_dead_lettered() {
    // Proves the engine survives its database: every connection of the
    // publishers, consumers and pools is terminated (pg_terminate_backend)
    // twice mid-flow; the publishers reconnect and claim their lanes again,
    // the consumers keep their messages until the store answers, and every
    // order still ends with nothing dead-lettered.
    let mut setup = Setup::new().await;
    let store = setup.store();
    seed(&store).await;
    setup.start_platform().await;
    place(&store, "o1", "alice", 1).await;
    wait_for(
        &store,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        1,
        Duration::from_secs(60),
    )
    .await;
    let terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()";
    for round in 0..2 {
        let terminated = scalar(&store, terminate).await;
        assert!(terminated > 0, "round {round}: some connections were open");
        place(&store, &format!("t{round}a"), "alice", 1).await;
        place(&store, &format!("t{round}b"), "alice", 1).await;
    }
    wait_for(
        &store,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        5,
        Duration::from_secs(60),
    )
    .await;
    check_invariants(&store).await;
    assert_eq!(scalar(&store, "SELECT (SELECT count(*) FROM orders.dead_letters) + (SELECT count(*) FROM inventory.dead_letters) + (SELECT count(*) FROM payment.dead_letters)").await, 0);
    setup.stop().await;
}

/// The sum over partitions of `saldo_consumer_lag_messages` for `group`
/// in `rendered` (Prometheus text), and how many partitions reported.
fn lag_of(rendered: &str, group: &str) -> (i64, usize) {
    let label = format!("group=\"{group}\"");
    rendered
        .lines()
        .filter(|line| line.starts_with("saldo_consumer_lag_messages{") && line.contains(&label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold((0, 0), |(sum, count), lag| (sum + lag as i64, count + 1))
}

/// Waits (with a deadline) until `group`'s lag, summed over `PARTITIONS`
/// reporting partitions, is `expected`.
async fn wait_for_lag(
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    group: &str,
    expected: i64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let (lag, partitions) = lag_of(&metrics.render(), group);
        if lag == expected && partitions == PARTITIONS as usize {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group}: lag {lag} over {partitions} partitions, expected {expected}:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consumer_lag_gauge_counts_what_a_group_has_not_committed_through_the_passthrough() {
    // Proves the passthrough reaches the consumers (statistics.interval.ms of
    // 100 ms: Saldo's default of 10 s would miss the deadline), that a group
    // that consumes without committing reports every published message as
    // lag, and that the runner's group drops to 0 once it committed them.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test process");
    let mut setup = Setup::new().await;
    setup
        .properties
        .insert("statistics.interval.ms", "100")
        .expect("a librdkafka property");
    let store = setup.store();
    seed(&store).await;
    let producer = saldo_kafka::producer::create(&setup.connection()).expect("producer");
    const ORDERS: u32 = 12;
    for index in 0..ORDERS {
        let reserve = envelope(
            &format!("lag-{index}"),
            0,
            Payload::ReserveStock {
                lines: vec![OrderLine {
                    sku: Sku::new("apple").expect("valid"),
                    quantity: 1,
                }],
                currency: Currency::EUR,
            },
        );
        saldo_kafka::producer::publish(&producer, &reserve)
            .await
            .expect("sent");
    }
    let topic = topics::consumed_by(Service::Inventory);
    // A group that reads and never stores an offset: all of it is lag.
    let watcher: StreamConsumer<saldo_kafka::consumer::LagContext> =
        saldo_kafka::consumer::config(&setup.connection(), "lag-watcher")
            .create_with_context(saldo_kafka::consumer::LagContext::new("lag-watcher", topic))
            .expect("watcher");
    watcher.subscribe(&[topic]).expect("subscribes");
    let reading = tokio::spawn(async move {
        loop {
            let _ = watcher.recv().await;
        }
    });
    wait_for_lag(
        &metrics,
        "lag-watcher",
        i64::from(ORDERS),
        Duration::from_secs(8),
    )
    .await;
    setup.start_consumer(Service::Inventory);
    wait_for(
        &store,
        "SELECT count(*) FROM inventory.inbox",
        i64::from(ORDERS),
        Duration::from_secs(30),
    )
    .await;
    wait_for_lag(&metrics, "saldo-inventory", 0, Duration::from_secs(10)).await;
    reading.abort();
    setup.stop().await;
}

//! Concurrency, proven on the real server: optimistic version checks keep
//! stock and money right under contention.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use saldo_domain::messages::{Envelope, Payload, SCHEMA_VERSION, Service, Traceparent};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::{MessageOutcome, Rules, decide_message, message_read_set};
use saldo_engine::ExecuteFailure;
use saldo_idempotency::IdempotencyKey;
use saldo_postgres::PgStore;
use saldo_types::{CorrelationId, CustomerId, Id128, OrderId};
use sqlx::Row as _;

use crate::backends::{Driver, Kind, NOW, eur, line};

/// How often a task decides again after losing a race before giving up.
const RACES_MAX: usize = 500;

fn store_of(driver: &Driver) -> PgStore {
    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    database.store.clone()
}

fn command(order: &str, payload: Payload) -> Envelope {
    let message_id = Id128::derive("test-command", &[order.as_bytes()]);
    Envelope {
        message_id,
        schema_version: SCHEMA_VERSION,
        order_id: OrderId::new(order).expect("valid"),
        correlation_id: CorrelationId::new(format!("c-{order}")).expect("valid"),
        causation_id: None,
        occurred_at: NOW,
        traceparent: Traceparent::root(message_id),
        payload,
    }
}

/// Delivers `envelope` through the rhythm, deciding again after every lost race.
async fn deliver_until_decided(
    store: &PgStore,
    rules: &Rules,
    envelope: &Envelope,
) -> MessageOutcome {
    let consumer = envelope.payload.consumer().expect("consumed");
    let read_set = message_read_set(consumer, envelope);
    for _ in 0..RACES_MAX {
        match saldo_engine::execute(store, &read_set, NOW, |snapshot| {
            decide_message(rules, consumer, snapshot, envelope, NOW)
        })
        .await
        {
            Ok(outcome) => return outcome,
            Err(ExecuteFailure::Conflict(_)) => tokio::task::yield_now().await,
            Err(other) => panic!("delivery failed: {other}"),
        }
    }
    panic!("{} lost {RACES_MAX} races in a row", envelope.message_id)
}

/// Alice's wallet balance, in minor units.
async fn alice_balance(store: &PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT balance_minor FROM payment.accounts WHERE account_id = 'wallet:alice:EUR'",
    )
    .fetch_one(store.pool())
    .await
    .expect("reads")
}

/// The reply types in a service's outbox, counted.
async fn replies(store: &PgStore, service: Service) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, envelope) in store
        .outbox_pending(service, i64::MAX)
        .await
        .expect("reads")
    {
        let key = match &envelope.payload {
            Payload::StockRejected { reason } => format!("StockRejected {reason:?}"),
            Payload::PaymentFailed { reason } => format!("PaymentFailed {reason:?}"),
            other => other.message_type().to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_reservations_race_for_ten_units() {
    // Proves exactly 10 of 64 concurrent one-unit reservations succeed and
    // available stock is never negative while they race.
    let driver = Driver::new(Kind::Postgres).await;
    driver.set_stock("hot", 10, eur(100)).await;
    let store = store_of(&driver);
    let racing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (store, racing) = (store.clone(), Arc::clone(&racing));
        tokio::spawn(async move {
            let mut samples = 0;
            while racing.load(Ordering::Relaxed) || samples == 0 {
                let available: i64 = sqlx::query_scalar(
                    "SELECT on_hand - reserved FROM inventory.stock WHERE sku = 'hot'",
                )
                .fetch_one(store.pool())
                .await
                .expect("reads");
                assert!(available >= 0, "available stock went negative: {available}");
                samples += 1;
            }
            samples
        })
    };
    let tasks: Vec<_> = (0..64)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let envelope = command(
                    &format!("order-{index}"),
                    Payload::ReserveStock {
                        lines: vec![line("hot", 1)],
                        currency: crate::backends::EUR,
                    },
                );
                deliver_until_decided(&store, &Rules::default(), &envelope).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), MessageOutcome::Applied);
    }
    racing.store(false, Ordering::Relaxed);
    assert!(sampler.await.expect("sampler") > 0);
    let counts = replies(&store, Service::Inventory).await;
    assert_eq!(counts.get("StockReserved"), Some(&10), "{counts:?}");
    assert_eq!(
        counts.get("StockRejected OutOfStock"),
        Some(&54),
        "{counts:?}"
    );
    let row = sqlx::query("SELECT on_hand, reserved FROM inventory.stock WHERE sku = 'hot'")
        .fetch_one(store.pool())
        .await
        .expect("reads");
    assert_eq!((row.get::<i64, _>(0), row.get::<i64, _>(1)), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_copies_of_one_payment_charge_once() {
    // Proves 32 concurrent deliveries of the same charge move money once.
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(10_000), "top-up-1")
        .await
        .expect("top-up");
    let store = store_of(&driver);
    let charge = command(
        "order-1",
        Payload::ChargePayment {
            customer: CustomerId::new("alice").expect("valid"),
            amount: eur(2_500),
        },
    );
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, charge) = (store.clone(), charge.clone());
            tokio::spawn(
                async move { deliver_until_decided(&store, &Rules::default(), &charge).await },
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == MessageOutcome::Applied)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == MessageOutcome::Duplicate)
            .count(),
        31
    );
    let charges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment.ledger_entries WHERE purpose = 'charge'")
            .fetch_one(store.pool())
            .await
            .expect("counts");
    assert_eq!(charges, 1);
    let balance = alice_balance(&store).await;
    assert_eq!(balance, 7_500);
    assert_eq!(
        replies(&store, Service::Payment)
            .await
            .get("PaymentSucceeded"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_top_ups_and_payments_keep_the_balance_equal_to_its_entries() {
    // Proves a wallet's balance always equals the sum of its ledger legs and
    // never goes negative while top-ups and charges race on it.
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(500), "top-up-initial")
        .await
        .expect("top-up");
    let store = store_of(&driver);
    let racing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (store, racing) = (store.clone(), Arc::clone(&racing));
        tokio::spawn(async move {
            let mut samples = 0;
            while racing.load(Ordering::Relaxed) || samples == 0 {
                let mut transaction = store.pool().begin().await.expect("begins");
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut *transaction)
                    .await
                    .expect("sets");
                let balance: i64 = sqlx::query_scalar("SELECT balance_minor FROM payment.accounts WHERE account_id = 'wallet:alice:EUR'")
                    .fetch_one(&mut *transaction)
                    .await
                    .expect("reads");
                let entries: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(SUM(CASE side WHEN 'credit' THEN amount_minor ELSE -amount_minor END), 0)::bigint FROM payment.ledger_legs WHERE account_id = 'wallet:alice:EUR'",
                )
                .fetch_one(&mut *transaction)
                .await
                .expect("sums");
                transaction.commit().await.expect("ends");
                assert_eq!(
                    balance, entries,
                    "the balance row disagrees with its entries"
                );
                assert!(balance >= 0, "the wallet went negative: {balance}");
                samples += 1;
            }
            samples
        })
    };
    let rules = Rules::default();
    let mut tasks = Vec::new();
    for index in 0..20 {
        let store = store.clone();
        let policy = rules.payment;
        tasks.push(tokio::spawn(async move {
            let request = TopUp {
                customer: CustomerId::new("alice").expect("valid"),
                amount: eur(100),
                idempotency_key: IdempotencyKey::new(format!("top-up-{index}")).expect("valid"),
                principal: None,
                correlation_id: CorrelationId::new(format!("c-top-up-{index}")).expect("valid"),
                traceparent: Traceparent::root(Id128::derive("test", &[&[index]])),
            };
            for _ in 0..RACES_MAX {
                match saldo_engine::execute(&store, &top_up_read_set(&request), NOW, |snapshot| {
                    decide_top_up(&policy, snapshot, &request, NOW)
                })
                .await
                {
                    Ok(_) => return true,
                    Err(ExecuteFailure::Conflict(_)) => tokio::task::yield_now().await,
                    Err(other) => panic!("top-up failed: {other}"),
                }
            }
            panic!("top-up lost every race")
        }));
    }
    for index in 0..30 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let charge = command(
                &format!("order-{index}"),
                Payload::ChargePayment {
                    customer: CustomerId::new("alice").expect("valid"),
                    amount: eur(150),
                },
            );
            deliver_until_decided(&store, &Rules::default(), &charge).await
                == MessageOutcome::Applied
        }));
    }
    for task in tasks {
        assert!(task.await.expect("task"));
    }
    racing.store(false, Ordering::Relaxed);
    assert!(sampler.await.expect("sampler") > 0);
    let counts = replies(&store, Service::Payment).await;
    let succeeded = counts.get("PaymentSucceeded").copied().unwrap_or(0) as i64;
    let failed = counts
        .get("PaymentFailed InsufficientFunds")
        .copied()
        .unwrap_or(0) as i64;
    assert_eq!(succeeded + failed, 30, "{counts:?}");
    let balance = alice_balance(&store).await;
    assert_eq!(balance, 500 + 20 * 100 - 150 * succeeded);
    assert!(balance >= 0);
}

/// The store connected as `role`, as a service process connects in production.
pub async fn store_as(driver: &Driver, role: &str) -> PgStore {
    let crate::backends::Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    sqlx::query(sqlx::AssertSqlSafe(format!("GRANT {role} TO CURRENT_USER")))
        .execute(database.store.pool())
        .await
        .expect("the test role may grant service roles");
    let url = format!("{}?options=-c%20role%3D{role}", database.url());
    PgStore::connect(&url, 2)
        .await
        .expect("connects as the role")
}

#[tokio::test]
async fn every_batched_statement_runs_with_only_its_services_privileges() {
    // Proves the batched commit needs nothing its service's role lacks: key-
    // ordered row locks, multi-row updates, increments of the shared accounts,
    // the chain head, inbox receipts, outbox rows and their notification, each
    // committed as saldo_payment, saldo_inventory and saldo_order.
    let driver = Driver::new(Kind::Postgres).await;
    for customer in ["alice", "bob"] {
        driver
            .top_up(customer, eur(1_000), &format!("seed-{customer}"))
            .await
            .expect("funded");
    }
    driver.set_stock("apple", 10, eur(100)).await;
    driver.set_stock("pear", 10, eur(100)).await;
    let rules = Rules::default();
    let deliver_all = |store: PgStore, consumer: Service, messages: Vec<Envelope>| {
        let rules = rules.clone();
        async move {
            saldo_engine::execute_batch(
                &store,
                &messages,
                NOW,
                |message| message_read_set(consumer, message),
                |message, snapshot| decide_message(&rules, consumer, snapshot, message, NOW),
                |_| saldo_engine::telemetry::Parent::None,
            )
            .await
        }
    };
    let payment = store_as(&driver, "saldo_payment").await;
    let charges = ["alice", "bob"]
        .into_iter()
        .map(|customer| {
            command(
                &format!("o-{customer}"),
                Payload::ChargePayment {
                    customer: CustomerId::new(customer).expect("valid"),
                    amount: eur(300),
                },
            )
        })
        .collect();
    for result in deliver_all(payment, Service::Payment, charges).await {
        assert_eq!(
            result.expect("charged as saldo_payment"),
            MessageOutcome::Applied
        );
    }
    let inventory = store_as(&driver, "saldo_inventory").await;
    let reservations = ["apple", "pear"]
        .into_iter()
        .map(|sku| {
            command(
                &format!("o-{sku}"),
                Payload::ReserveStock {
                    lines: vec![line(sku, 1)],
                    currency: saldo_types::Currency::EUR,
                },
            )
        })
        .collect();
    for result in deliver_all(inventory, Service::Inventory, reservations).await {
        assert_eq!(
            result.expect("reserved as saldo_inventory"),
            MessageOutcome::Applied
        );
    }
    let order = store_as(&driver, "saldo_order").await;
    let requests: Vec<saldo_domain::order::PlaceOrder> = ["o1", "o2"]
        .into_iter()
        .map(|id| saldo_domain::order::PlaceOrder {
            order_id: OrderId::new(id).expect("valid"),
            customer: CustomerId::new("alice").expect("valid"),
            lines: vec![line("apple", 1)],
            currency: saldo_types::Currency::EUR,
            idempotency_key: IdempotencyKey::new(format!("key-{id}")).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new(format!("c-{id}")).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("role-test", &[id.as_bytes()])),
        })
        .collect();
    let placed = saldo_engine::execute_batch(
        &order,
        &requests,
        NOW,
        saldo_domain::order::place_order_read_set,
        |request, snapshot| {
            saldo_domain::order::decide_place_order(&rules.order_saga, snapshot, request, NOW)
        },
        |_| saldo_engine::telemetry::Parent::None,
    )
    .await;
    for result in placed {
        result.expect("placed as saldo_order");
    }
    assert_eq!(
        alice_balance(&store_of(&driver)).await,
        700,
        "alice was charged once"
    );
}

//! Contract tests: the same decisions on the in-memory store and on
//! PostgreSQL leave the same observable state, including every refusal and
//! conflict.

use rstest::rstest;
use saldo_domain::decision::RowKey;
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Envelope, Payload};
use saldo_domain::store::CommitError;
use saldo_types::{CustomerId, Id128, Sku};

use crate::backends::{Driver, Kind, eur, line};

/// A scenario: a sequence of operations whose answers are recorded as text.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    Confirmed,
    InsufficientFunds,
    OutOfStock,
    RedeliveredEverything,
    RefusedRequests,
    StaleDecision,
    CompensationOvertakesCommand,
}

async fn play(scenario: Scenario, kind: Kind) -> (Vec<String>, saldo_postgres::Dump) {
    let driver = Driver::new(kind).await;
    let mut log = Vec::new();
    log.push(format!(
        "{:?}",
        driver
            .top_up("alice", eur(2_000), "top-up-1")
            .await
            .map(|applied| applied.amount)
    ));
    driver.set_stock("apple", 5, eur(300)).await;
    driver.set_stock("pear", 1, eur(900)).await;
    match scenario {
        Scenario::Confirmed => {
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "alice", vec![line("apple", 2), line("pear", 1)], "k1")
                    .await
            ));
            log.extend(driver.pump(|_| false).await);
        }
        Scenario::InsufficientFunds => {
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "alice", vec![line("apple", 5), line("pear", 1)], "k1")
                    .await
            ));
            log.extend(driver.pump(|_| false).await);
        }
        Scenario::OutOfStock => {
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "alice", vec![line("pear", 2)], "k1")
                    .await
            ));
            log.extend(driver.pump(|_| false).await);
        }
        Scenario::RedeliveredEverything => {
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "alice", vec![line("apple", 1)], "k1")
                    .await
            ));
            log.push(format!(
                "{:?}",
                driver
                    .place("o1-retry", "alice", vec![line("apple", 1)], "k1")
                    .await
            ));
            log.extend(driver.pump(|_| true).await);
            log.push(format!(
                "{:?}",
                driver
                    .top_up("alice", eur(2_000), "top-up-1")
                    .await
                    .map(|applied| applied.replayed)
            ));
        }
        Scenario::RefusedRequests => {
            log.push(format!(
                "{:?}",
                driver.place("o1", "alice", vec![], "k1").await
            ));
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "alice", vec![line("apple", 1)], "k1")
                    .await
            ));
            log.push(format!(
                "{:?}",
                driver
                    .place("o2", "alice", vec![line("apple", 2)], "k1")
                    .await
            ));
            log.push(format!(
                "{:?}",
                driver
                    .place("o1", "bob", vec![line("apple", 1)], "k2")
                    .await
            ));
            log.push(format!(
                "{:?}",
                driver
                    .top_up(
                        "alice",
                        saldo_types::Money::from_minor(5, saldo_types::Currency::USD),
                        "top-up-2"
                    )
                    .await
            ));
            log.push(format!(
                "{:?}",
                driver.top_up("alice", eur(7), "top-up-1").await
            ));
        }
        Scenario::StaleDecision => {
            let request = SetStock {
                sku: Sku::new("apple").expect("valid"),
                on_hand: 9,
                unit_price: eur(300),
            };
            let stale = driver.backend.load(&set_stock_read_set(&request)).await;
            driver.set_stock("apple", 7, eur(300)).await;
            let decided = decide_set_stock(&stale, &request).expect("decides");
            let conflict = driver.backend.commit(decided.decision, driver.now).await;
            assert!(
                matches!(
                    &conflict,
                    Err(CommitError::VersionConflict {
                        key: RowKey::Stock(_),
                        expected: 1,
                        found: 2
                    })
                ),
                "{conflict:?}"
            );
            log.push(format!("{conflict:?}"));
            // The same message id handled twice concurrently: the second commit
            // loses on the inbox and the whole decision is rolled back.
            driver
                .place("o1", "alice", vec![line("apple", 1)], "k1")
                .await
                .expect("placed");
            let reserve = driver.pending().await.remove(0);
            let consumer = reserve.payload.consumer().expect("consumed");
            let read_set = saldo_domain::message_read_set(consumer, &reserve);
            let first = driver.backend.load(&read_set).await;
            let second = driver.backend.load(&read_set).await;
            let rules = &driver.rules;
            let winner =
                saldo_domain::decide_message(rules, consumer, &first, &reserve, driver.now)
                    .expect("decides");
            let loser =
                saldo_domain::decide_message(rules, consumer, &second, &reserve, driver.now)
                    .expect("decides");
            log.push(format!(
                "{:?}",
                driver.backend.commit(winner.decision, driver.now).await
            ));
            log.push(format!(
                "{:?}",
                driver.backend.commit(loser.decision, driver.now).await
            ));
        }
        Scenario::CompensationOvertakesCommand => {
            driver
                .place("o1", "alice", vec![line("apple", 1)], "k1")
                .await
                .expect("placed");
            let reserve = driver.pending().await.remove(0);
            driver.deliver(&reserve).await.expect("reserved");
            let reserved = driver
                .pending()
                .await
                .into_iter()
                .find(|e| matches!(e.payload, Payload::StockReserved { .. }))
                .expect("reply");
            driver.deliver(&reserved).await.expect("saga moves on");
            let charge = driver
                .pending()
                .await
                .into_iter()
                .find(|e| matches!(e.payload, Payload::ChargePayment { .. }))
                .expect("charge");
            let refund = Envelope {
                message_id: Id128::derive("test", &[b"refund"]),
                payload: Payload::RefundPayment {
                    customer: CustomerId::new("alice").expect("valid"),
                    amount: eur(300),
                },
                ..charge.clone()
            };
            log.push(format!("{:?}", driver.deliver(&refund).await));
            log.push(format!("{:?}", driver.deliver(&charge).await));
        }
    }
    (log, driver.backend.dump().await)
}

#[rstest]
#[case::confirmed(Scenario::Confirmed)]
#[case::insufficient_funds(Scenario::InsufficientFunds)]
#[case::out_of_stock(Scenario::OutOfStock)]
#[case::redelivered_everything(Scenario::RedeliveredEverything)]
#[case::refused_requests(Scenario::RefusedRequests)]
#[case::stale_decision(Scenario::StaleDecision)]
#[case::compensation_overtakes_command(Scenario::CompensationOvertakesCommand)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_leave_the_same_state(#[case] scenario: Scenario) {
    // Proves PostgreSQL and the in-memory store give the same answers and end
    // with the same rows, versions, ledger entries (hashes included), inbox,
    // outbox and idempotency records.
    let (memory_log, memory) = play(scenario, Kind::Memory).await;
    let (postgres_log, postgres) = play(scenario, Kind::Postgres).await;
    assert_eq!(memory_log, postgres_log);
    assert!(!memory.rows.is_empty());
    assert_eq!(memory.rows, postgres.rows);
    assert_eq!(memory.entries, postgres.entries);
    assert_eq!(memory.inbox, postgres.inbox);
    assert_eq!(memory.outbox, postgres.outbox);
    assert_eq!(memory.idempotency, postgres.idempotency);
    assert_eq!(
        saldo_ledger::verify_chain(None, &postgres.entries).map(|_| ()),
        Ok(())
    );
}

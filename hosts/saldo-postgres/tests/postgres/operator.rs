//! The operator's tables (ADR 0017): audit records commit with their
//! intervention, the audit trail is append-only, dead letters settle once,
//! and a story part reads one service's rows for one order.

use saldo_domain::decision::Row;
use saldo_domain::messages::Service;
use saldo_domain::operator::{
    Actor, DeadLetterAction, OrderAction, OrderIntervention, Run, decide_dead_letter,
    decide_order_intervention, order_intervention_read_set,
};
use saldo_domain::order::{CancelReason, OrderStatus};
use saldo_domain::store::CommitError;
use saldo_engine::{DeadLetter, OperatorStore, OrderQuery, Store};
use saldo_types::OrderId;
use sqlx::{Connection, Executor, PgConnection};

use crate::backends::{Backend, Driver, Kind, Outcome, eur, line};
use crate::ledger::error_of;

fn actor() -> Actor {
    Actor {
        principal: "ops".to_owned(),
        key: "ops".to_owned(),
    }
}

/// A database with alice's order o1 placed and its command not delivered.
async fn stuck() -> Driver {
    let driver = Driver::new(Kind::Postgres).await;
    driver
        .top_up("alice", eur(5_000), "t1")
        .await
        .expect("top-up");
    driver.set_stock("apple", 5, eur(300)).await;
    driver
        .place("o1", "alice", vec![line("apple", 1)], "k1")
        .await
        .expect("placed");
    driver
}

fn database(driver: &Driver) -> &saldo_postgres::testing::TestDatabase {
    let Backend::Postgres(database) = &driver.backend else {
        panic!("postgres only")
    };
    database
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intervention_commits_its_audit_record_with_its_effect_and_the_trail_is_append_only() {
    // Proves a forced compensation committed on PostgreSQL writes its audit row in the same commit, the saga then ends cancelled by the operator, and neither the service role nor the owner can change the audit trail.
    let driver = stuck().await;
    let order_id = OrderId::new("o1").expect("valid");
    let intervention = OrderIntervention {
        order_id: order_id.clone(),
        action: OrderAction::ForceCompensation,
        expected_version: Some(1),
    };
    let definition = driver.rules.order_saga.clone();
    let now = driver.now;
    driver
        .backend
        .execute(&order_intervention_read_set(&order_id), now, |snapshot| {
            decide_order_intervention(
                &definition,
                snapshot,
                &intervention,
                Run::Commit,
                &actor(),
                now,
            )
        })
        .await
        .expect("forced");
    let store = &database(&driver).store;
    let audit = store.audit(Service::Order, None, 10).await.expect("reads");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].record.action, "force_compensation");
    assert_eq!(audit[0].record.actor, actor());
    assert_eq!(audit[0].record.dry_run["writes"][0]["expected"], 1);
    let stale = driver
        .backend
        .execute(&order_intervention_read_set(&order_id), now, |snapshot| {
            decide_order_intervention(
                &definition,
                snapshot,
                &intervention,
                Run::Commit,
                &actor(),
                now,
            )
        })
        .await;
    assert!(
        matches!(stale, Err(Outcome::Rejected(refused)) if refused.code() == "version_changed")
    );
    let pending = store
        .orders(&OrderQuery {
            status: Some("PENDING"),
            limit: 10,
            ..OrderQuery::default()
        })
        .await
        .expect("lists");
    assert_eq!(pending.len(), 1);
    let part = store
        .story_part(Service::Order, &order_id, &[])
        .await
        .expect("reads");
    assert_eq!(
        part.outbox.len(),
        2,
        "the reserve command and the forced release"
    );
    assert_eq!(part.audit.len(), 1);
    driver.pump(|_| false).await;
    let part = store
        .story_part(Service::Order, &order_id, &[])
        .await
        .expect("reads");
    let status = part.rows.iter().find_map(|stored| match &stored.row {
        Row::Order(order) => Some(order.status()),
        _ => None,
    });
    assert_eq!(
        status,
        Some(OrderStatus::Cancelled(CancelReason::CancelledByOperator))
    );
    let mut owner = PgConnection::connect(database(&driver).url())
        .await
        .expect("connects");
    for statement in [
        "UPDATE orders.audit SET action = 'nothing'",
        "DELETE FROM orders.audit",
        "TRUNCATE orders.audit",
    ] {
        let refused = error_of(&mut owner, statement).await;
        assert!(
            refused.contains("the audit trail is append-only"),
            "{statement}: {refused}"
        );
    }
    owner
        .execute("GRANT saldo_order TO CURRENT_USER")
        .await
        .expect("grants");
    owner
        .execute("SET ROLE saldo_order")
        .await
        .expect("sets role");
    assert!(
        error_of(&mut owner, "DELETE FROM orders.audit")
            .await
            .starts_with("42501 permission denied")
    );
    assert_eq!(
        error_of(&mut owner, "SELECT count(*) FROM orders.audit").await,
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_letter_is_queued_and_deleted_in_one_commit_and_settles_only_once() {
    // Proves a redrive on PostgreSQL puts the letter's envelope in its consumer's outbox and deletes the letter in one commit, and committing the same settlement again is a conflict that writes nothing.
    let driver = stuck().await;
    let store = &database(&driver).store;
    let reserve = driver.pending().await.remove(0);
    let letter = DeadLetter {
        message_id: Some(reserve.message_id),
        message_type: Some(reserve.message_type()),
        order_id: Some("o1".to_owned()),
        error: "poison".to_owned(),
        key: "o1".to_owned(),
        payload: reserve.encode(),
        origin: "test".to_owned(),
    };
    store
        .record_dead_letter(Service::Inventory, &letter)
        .await
        .expect("recorded");
    let listed = store
        .dead_letters(Service::Inventory, None, 10)
        .await
        .expect("lists");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].payload, reserve.encode());
    let decided = decide_dead_letter(&listed[0], &DeadLetterAction::Redrive, &actor(), driver.now)
        .expect("redrivable");
    driver
        .backend
        .commit(decided.decision.clone(), driver.now)
        .await
        .expect("committed");
    assert!(
        store
            .dead_letters(Service::Inventory, None, 10)
            .await
            .expect("lists")
            .is_empty()
    );
    let inventory_outbox = store
        .story_part(Service::Inventory, &reserve.order_id, &[])
        .await
        .expect("reads");
    assert_eq!(inventory_outbox.outbox.len(), 1);
    assert_eq!(
        inventory_outbox.audit.len(),
        1,
        "the redrive of the order's dead letter is in the order's story"
    );
    assert_eq!(inventory_outbox.audit[0].target, "dead_letter:inventory:1");
    assert_eq!(
        store
            .audit(Service::Inventory, None, 10)
            .await
            .expect("reads")
            .len(),
        1
    );
    let again = driver.backend.commit(decided.decision, driver.now).await;
    assert!(matches!(again, Err(CommitError::Aborted(_))), "{again:?}");
    assert_eq!(
        store
            .audit(Service::Inventory, None, 10)
            .await
            .expect("reads")
            .len(),
        1
    );
    // The redriven copy is published, the consumer refuses it again, and it
    // is redriven a second time: the published copy gives way to the new one
    // (the outbox holds one row per message id).
    let pool = database(&driver).store.pool();
    pool.execute("UPDATE inventory.outbox SET published_at = now()")
        .await
        .expect("published");
    store
        .record_dead_letter(Service::Inventory, &letter)
        .await
        .expect("recorded again");
    let listed = store
        .dead_letters(Service::Inventory, None, 10)
        .await
        .expect("lists");
    let second = decide_dead_letter(&listed[0], &DeadLetterAction::Redrive, &actor(), driver.now)
        .expect("redrivable");
    driver
        .backend
        .commit(second.decision, driver.now)
        .await
        .expect("a second redrive of the same message commits");
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .expect("counts");
    assert_eq!(unpublished, 1);
}

#[rstest::rstest]
#[case::memory(Kind::Memory)]
#[case::postgres(Kind::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_pending_order_is_the_earliest_placed_whose_saga_still_runs(#[case] kind: Kind) {
    // Proves the saga-age read: nothing pending is None; an order that ended
    // no longer counts, however old; the earliest placed of the running ones
    // is the answer, on the in-memory store and on PostgreSQL alike.
    let mut driver = Driver::new(kind).await;
    assert_eq!(
        operator_of(&driver)
            .oldest_pending_order()
            .await
            .expect("reads"),
        None
    );
    driver
        .top_up("alice", eur(5_000), "t1")
        .await
        .expect("top-up");
    driver.set_stock("apple", 5, eur(300)).await;
    let first = driver.now;
    driver
        .place("o1", "alice", vec![line("apple", 1)], "k1")
        .await
        .expect("placed");
    assert_eq!(
        operator_of(&driver)
            .oldest_pending_order()
            .await
            .expect("reads"),
        Some(first)
    );
    driver.pump(|_| false).await;
    driver.now = first.plus_ms(1_000);
    driver
        .place("o2", "alice", vec![line("apple", 1)], "k2")
        .await
        .expect("placed");
    driver.now = first.plus_ms(2_000);
    driver
        .place("o3", "alice", vec![line("apple", 1)], "k3")
        .await
        .expect("placed");
    let confirmed = operator_of(&driver)
        .orders(&OrderQuery {
            status: Some("CONFIRMED"),
            limit: 10,
            ..OrderQuery::default()
        })
        .await
        .expect("lists");
    assert_eq!(confirmed.len(), 1, "o1 ended");
    assert_eq!(
        operator_of(&driver)
            .oldest_pending_order()
            .await
            .expect("reads"),
        Some(first.plus_ms(1_000))
    );
}

/// The operator's read port of either backend.
fn operator_of(driver: &Driver) -> &dyn OperatorStore {
    match &driver.backend {
        Backend::Memory(store) => store,
        Backend::Postgres(database) => &database.store,
    }
}

//! Migrations apply once and report what they did.

use saldo_postgres::testing::TestDatabase;
use saldo_postgres::{MIGRATOR, migrate};

#[tokio::test]
async fn migrating_again_applies_nothing() {
    // Proves migrations are idempotent and the report names only what ran.
    let database = TestDatabase::create().await;
    let again = migrate(database.store.pool()).await.expect("migrates");
    assert_eq!(again, Vec::new());
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations WHERE success")
            .fetch_one(database.store.pool())
            .await
            .expect("counts");
    assert_eq!(applied, MIGRATOR.iter().count() as i64);
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname IN ('orders', 'inventory', 'payment') ORDER BY 1")
        .fetch_all(database.store.pool())
        .await
        .expect("lists");
    assert_eq!(schemas, vec!["inventory", "orders", "payment"]);
}

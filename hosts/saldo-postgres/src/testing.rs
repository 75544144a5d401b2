//! Fresh databases for tests: every test gets a newly created, migrated
//! database, so no test depends on what another (or an earlier run) left.
//!
//! The server is named by `SALDO_TEST_DATABASE_URL`, a URL for a role that
//! may create databases and roles (`tests/run.sh` creates it and exports the
//! variable). Test databases are named `saldo_test_*`; `tests/run.sh` drops
//! old ones before a run.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

use crate::{PgStore, migrate};

/// The environment variable naming the test server.
pub const TEST_DATABASE_URL: &str = "SALDO_TEST_DATABASE_URL";

static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// A freshly created and migrated database.
#[derive(Debug)]
pub struct TestDatabase {
    /// The store over it.
    pub store: PgStore,
    /// Its name.
    pub name: String,
    url: String,
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |index| index + 3);
    let path_start = base[authority_end..]
        .find('/')
        .map_or(base.len(), |index| authority_end + index);
    let mut result = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

impl TestDatabase {
    /// Creates and migrates a new database. Panics with instructions when
    /// the test server is not configured: a missing database is a broken
    /// test environment, never a reason to skip.
    pub async fn create() -> TestDatabase {
        let admin_url = std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| {
            panic!("{TEST_DATABASE_URL} is not set: run the tests through `bash tests/run.sh`, which starts PostgreSQL and sets it")
        });
        let name = format!(
            "saldo_test_{}_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.subsec_nanos())
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("the test server accepts the admin role");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("the admin role may create databases");
        admin.close().await.expect("closes");
        let url = with_database(&admin_url, &name);
        let store = PgStore::connect(&url, 16)
            .await
            .expect("the new database accepts connections");
        migrate(store.pool())
            .await
            .expect("migrations apply to a fresh database");
        TestDatabase { store, name, url }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_are_replaced_in_urls() {
        // Proves the URL rewrite keeps credentials, host and options.
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}

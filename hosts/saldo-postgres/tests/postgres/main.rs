//! PostgreSQL storage tests, each on a freshly created database.

mod backends;
mod concurrency;
mod contract;
mod ledger;
mod migrations;
mod operator;
mod outbox;
mod reconcile;
mod retention;
mod tls;

//! `saldo migrate`: applies the schema migrations and says what it did.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Arguments of `saldo migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL of a role that owns the schemas (or may create them).
    #[arg(long, env = "SALDO_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Applies every pending migration; applying again is a no-op.
pub fn run(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = saldo_postgres::PgStore::connect(&args.database_url, 1)
            .await
            .context("cannot connect to the database")?;
        let applied = saldo_postgres::migrate(store.pool())
            .await
            .context("migration failed")?;
        if applied.is_empty() {
            println!(
                "saldo migrate: the database is up to date ({} migrations)",
                saldo_postgres::MIGRATOR.iter().count()
            );
        }
        for migration in &applied {
            println!(
                "saldo migrate: applied {} {}",
                migration.version, migration.description
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

//! `saldo ledger`: the ledger's external anchor.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use sqlx::postgres::PgPoolOptions;

/// Arguments of `saldo ledger`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Verify the whole hash chain and print its last entry as
    /// SEQUENCE:HASH, to keep outside the database (a ticket, a log, another
    /// system). `saldo reconcile --expect-checkpoint SEQUENCE:HASH` then
    /// reports any rewrite of the chain at or before it, even one that
    /// recomputed every hash. Exit 1 (and no checkpoint) when the chain does
    /// not verify or is empty.
    Checkpoint {
        /// PostgreSQL URL; the read-only `saldo_reconcile` role is enough.
        #[arg(long, env = "SALDO_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

/// Runs the command.
pub fn run(args: &LedgerArgs) -> anyhow::Result<ExitCode> {
    let LedgerCommand::Checkpoint { database_url } = &args.command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(saldo_postgres::ACQUIRE_TIMEOUT)
            .connect(database_url)
            .await
            .context("cannot connect to the database")?;
        let verified = saldo_postgres::reconcile::verified_checkpoint(&pool)
            .await
            .context("cannot read the ledger")?;
        match verified {
            Ok(Some(checkpoint)) => {
                println!("{checkpoint}");
                eprintln!(
                    "saldo ledger: entries 1 to {} verify; keep this checkpoint outside the database",
                    checkpoint.sequence
                );
                Ok(ExitCode::SUCCESS)
            }
            Ok(None) => {
                eprintln!("saldo ledger: the ledger has no entries yet; nothing to checkpoint");
                Ok(ExitCode::from(1))
            }
            Err(findings) => {
                for finding in &findings {
                    eprintln!(
                        "saldo ledger: {} {}: {}",
                        finding.kind.name(),
                        finding.ids.join(" "),
                        finding.detail
                    );
                }
                eprintln!("saldo ledger: the chain does not verify; no checkpoint printed");
                Ok(ExitCode::from(1))
            }
        }
    })
}

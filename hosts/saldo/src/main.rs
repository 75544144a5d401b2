//! `saldo`: the one command-line binary.

mod migrate_command;
mod reconcile_command;
mod sim_command;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Saldo: distributed transactions that stay financially correct under failure.
#[derive(Debug, Parser)]
#[command(name = "saldo", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the deterministic whole-platform simulator with fault injection.
    Sim(sim_command::SimArgs),
    /// Apply the database migrations (idempotent) and report what was applied.
    Migrate(migrate_command::MigrateArgs),
    /// Check orders, payments, ledger, stock and outboxes for silent failures (read-only).
    Reconcile(reconcile_command::ReconcileArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim_command::run(&args),
        Command::Migrate(args) => migrate_command::run(&args),
        Command::Reconcile(args) => reconcile_command::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // One readable line, then a non-zero exit.
            eprintln!("saldo: {error:#}");
            ExitCode::from(2)
        }
    }
}

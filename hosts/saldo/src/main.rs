//! `saldo`: the one command-line binary.

mod migrate_command;
mod reconcile_command;
mod service_command;
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
    /// Run the order service's consumer (replies) and its saga deadline timers.
    Order(service_command::ServiceArgs),
    /// Run the inventory service's consumer.
    Inventory(service_command::ServiceArgs),
    /// Run the payment service's consumer.
    Payment(service_command::ServiceArgs),
    /// Run the outbox publisher of one service.
    Outbox(service_command::OutboxArgs),
    /// Run a Kafka-protocol broker for development and tests (librdkafka's mock cluster).
    Broker(service_command::BrokerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim_command::run(&args),
        Command::Migrate(args) => migrate_command::run(&args),
        Command::Reconcile(args) => reconcile_command::run(&args),
        Command::Order(args) => {
            service_command::run_consumer(saldo_domain::messages::Service::Order, &args)
        }
        Command::Inventory(args) => {
            service_command::run_consumer(saldo_domain::messages::Service::Inventory, &args)
        }
        Command::Payment(args) => {
            service_command::run_consumer(saldo_domain::messages::Service::Payment, &args)
        }
        Command::Outbox(args) => service_command::run_outbox(&args),
        Command::Broker(args) => service_command::run_broker(&args),
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

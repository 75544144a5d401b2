//! `saldo`: the one command-line binary.

mod admin_command;
mod config;
mod dev_command;
mod gateway_command;
mod ledger_command;
mod load_command;
mod migrate_command;
mod reconcile_command;
mod service_command;
mod sim_command;
mod telemetry;
mod tls_flags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Saldo: distributed transactions that stay financially correct under failure.
#[derive(Debug, Parser)]
#[command(name = "saldo", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// A TOML file of settings; flags and environment variables win over it.
    #[arg(long, global = true, env = config::CONFIG_ENV)]
    config: Option<std::path::PathBuf>,
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, global = true, default_value = "human", env = "SALDO_LOG_FORMAT", value_parser = ["human", "json"])]
    log_format: String,
    /// Parse the flags, environment variables and file as the command
    /// would, say whether they are valid, and exit without connecting to
    /// anything or starting the command.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process, in memory, with demo data: no
    /// PostgreSQL, no Kafka. Start here.
    Dev(dev_command::DevArgs),
    /// Run the deterministic whole-platform simulator with fault injection.
    Sim(sim_command::SimArgs),
    /// Apply the database migrations (idempotent) and report what was applied.
    Migrate(migrate_command::MigrateArgs),
    /// Check orders, payments, ledger, stock and outboxes for silent failures (read-only).
    Reconcile(reconcile_command::ReconcileArgs),
    /// Print a verified checkpoint of the ledger's hash chain, to keep outside the database.
    Ledger(ledger_command::LedgerArgs),
    /// Run the order service: its HTTP API (with --http-address), its
    /// reply consumer and its saga deadline timers.
    Order(service_command::ServiceArgs),
    /// Run the inventory service: its consumer and (with --http-address) the stock API.
    Inventory(service_command::ServiceArgs),
    /// Run the payment service: its consumer and (with --http-address) the wallet API.
    Payment(service_command::ServiceArgs),
    /// Run the outbox publisher of one service.
    // It shares the services' connection flags, but has no HTTP API.
    #[command(
        mut_arg("http_address", |arg| arg.hide(true)),
        mut_arg("tls_cert", |arg| arg.hide(true)),
        mut_arg("tls_key", |arg| arg.hide(true)),
        mut_arg("tls_client_ca", |arg| arg.hide(true))
    )]
    Outbox(service_command::OutboxArgs),
    /// Run a Kafka-protocol broker for development and tests (librdkafka's mock cluster).
    Broker(service_command::BrokerArgs),
    /// Run the optional API gateway: API keys, rate limits and request
    /// checks in front of the services.
    Gateway(gateway_command::GatewayArgs),
    /// Issue an API key for the gateway (printed once; only its hash is stored).
    ApiKey(gateway_command::ApiKeyArgs),
    /// Place orders over HTTP and report how fast they end, for benchmarks.
    Load(load_command::LoadArgs),
    /// Operate a running platform through the gateway's operator API: find
    /// stuck sagas, read an order's story, retry, compensate, resolve,
    /// redrive or discard dead letters (each with --dry-run), read the audit.
    Admin(admin_command::AdminArgs),
}

impl Command {
    /// The service name a long-running command's traces carry (ADR 0020);
    /// short commands export none.
    fn trace_service(&self) -> Option<String> {
        Some(match self {
            Command::Dev(_) => "saldo-dev".to_owned(),
            Command::Order(_) => "saldo-order".to_owned(),
            Command::Inventory(_) => "saldo-inventory".to_owned(),
            Command::Payment(_) => "saldo-payment".to_owned(),
            Command::Outbox(args) => format!("saldo-outbox-{}", args.service_name()),
            Command::Gateway(_) => "saldo-gateway".to_owned(),
            Command::Reconcile(_) => "saldo-reconcile".to_owned(),
            _ => return None,
        })
    }

    /// The broker and passed-through properties of a command with Kafka clients.
    fn kafka_connection(&self) -> Option<saldo_kafka::connection::Connection> {
        match self {
            Command::Order(args) | Command::Inventory(args) | Command::Payment(args) => {
                Some(args.connection())
            }
            Command::Outbox(args) => Some(args.connection.connection()),
            _ => None,
        }
    }
}

/// Help and version go to stdout as clap renders them; a bad argument is one
/// line on stderr and exit 2, like every other configuration error.
fn refuse_arguments(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = error.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| {
                    !line.starts_with("Usage:") && !line.starts_with("For more information")
                })
                .filter(|line| !line.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("saldo: {message} (see --help)");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    use clap::CommandFactory;
    let argv = match config::apply(&Cli::command(), std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("saldo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => return refuse_arguments(&error),
    };
    if cli.check_config {
        if cli.command.trace_service().is_some()
            && let Err(error) = telemetry::check()
        {
            eprintln!("saldo: {error:#}");
            return ExitCode::from(2);
        }
        println!("saldo: the configuration is valid");
        if let Some(connection) = cli.command.kafka_connection()
            && !connection.properties().is_empty()
        {
            // Secrets redacted: this line may end up in a CI log.
            println!(
                "saldo: kafka properties for every client: {}",
                connection.properties()
            );
        }
        return ExitCode::SUCCESS;
    }
    let service = cli.command.trace_service();
    let telemetry = match telemetry::init(&cli.log_format, service.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("saldo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Dev(args) => dev_command::run(&args),
        Command::Gateway(args) => gateway_command::run(&args),
        Command::ApiKey(args) => gateway_command::run_api_key(&args),
        Command::Sim(args) => sim_command::run(&args),
        Command::Migrate(args) => migrate_command::run(&args),
        Command::Reconcile(args) => reconcile_command::run(&args),
        Command::Ledger(args) => ledger_command::run(&args),
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
        Command::Load(args) => load_command::run(&args),
        Command::Admin(args) => admin_command::run(&args),
    };
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(error) => {
            // One readable line, then a non-zero exit.
            eprintln!("saldo: {error:#}");
            ExitCode::from(2)
        }
    }
}

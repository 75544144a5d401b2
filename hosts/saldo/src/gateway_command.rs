//! `saldo gateway` (the optional edge in front of the services) and
//! `saldo api-key` (issuing a key for it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axum::http::Uri;
use clap::Args;
use saldo_http::gateway::{Gateway, Scope, hash_key, new_key, parse_keys, to_hex};
use saldo_http::proxy::{self, Upstreams};
use saldo_types::{CustomerId, Principal};

use crate::service_command::{runtime, shutdown};
use crate::tls_flags::{ListenerTls, UpstreamTls};

/// Arguments of `saldo gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Where to listen for clients.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SALDO_LISTEN")]
    listen: SocketAddr,
    /// The order service's address, e.g. http://127.0.0.1:8081 (or
    /// https://, with --upstream-ca).
    #[arg(long, env = "SALDO_ORDER_URL")]
    order_url: Uri,
    /// The payment service's HTTP address.
    #[arg(long, env = "SALDO_PAYMENT_URL")]
    payment_url: Uri,
    /// The inventory service's HTTP address.
    #[arg(long, env = "SALDO_INVENTORY_URL")]
    inventory_url: Uri,
    /// The API keys it admits (hashed; see `saldo api-key`).
    #[arg(long, env = "SALDO_GATEWAY_KEYS")]
    keys: PathBuf,
    #[command(flatten)]
    tls: ListenerTls,
    #[command(flatten)]
    upstream_tls: UpstreamTls,
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(args: &GatewayArgs) -> anyhow::Result<ExitCode> {
    for (flag, uri) in [
        ("--order-url", &args.order_url),
        ("--payment-url", &args.payment_url),
        ("--inventory-url", &args.inventory_url),
    ] {
        let scheme = uri.scheme_str();
        if !matches!(scheme, Some("http" | "https")) || uri.authority().is_none() {
            anyhow::bail!("{flag} must look like http://HOST:PORT or https://HOST:PORT, not {uri}");
        }
        if scheme == Some("https") && !args.upstream_tls.has_ca() {
            anyhow::bail!(
                "{flag} is https:// ({uri}): give --upstream-ca, the CA that signs the services' certificates"
            );
        }
    }
    let text = std::fs::read_to_string(&args.keys)
        .with_context(|| format!("cannot read the keys file {}", args.keys.display()))?;
    let gateway = Gateway::new(parse_keys(&text)?);
    let server_tls = args.tls.server_config()?;
    let client_tls = args.upstream_tls.client_config()?;
    let upstreams = Upstreams {
        order: args.order_url.clone(),
        payment: args.payment_url.clone(),
        inventory: args.inventory_url.clone(),
    };
    runtime()?.block_on(async {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let router = gateway.protect(proxy::router_with_tls(upstreams, client_tls, Some(metrics)));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(
            "gateway listening on {}://{}",
            args.tls.scheme(),
            args.listen
        );
        saldo_http::serve_with_tls(
            listener,
            router,
            saldo_http::Limits::default(),
            server_tls,
            shutdown(),
        )
        .await
        .context("serving HTTP")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Arguments of `saldo api-key`.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    /// Who gets the key: its principal (shown in logs and 403 answers, and
    /// the namespace of its idempotency keys). Letters, digits and . _ : -
    #[arg(long, value_parser = parse_name)]
    name: String,
    /// A customer the key acts for (repeatable; required unless
    /// --all-customers).
    #[arg(
        long = "customer",
        value_parser = parse_customer,
        required_unless_present = "all_customers",
        conflicts_with = "all_customers"
    )]
    customers: Vec<String>,
    /// The key acts for every customer (a back-office key).
    #[arg(long)]
    all_customers: bool,
    /// What it may do, exactly: orders:read, orders:write, wallets:read,
    /// wallets:top-up, stock:read, stock:write, admin (the operator API
    /// under /admin; only with --all-customers), or * (repeatable). A write
    /// scope grants no read.
    #[arg(long = "scope", required = true, value_parser = parse_scope)]
    scopes: Vec<String>,
    /// Sustained requests per second.
    #[arg(long)]
    rate_per_second: Option<u32>,
    /// Requests allowed at once.
    #[arg(long)]
    burst: Option<u32>,
}

fn parse_scope(text: &str) -> Result<String, String> {
    text.parse::<Scope>().map(|_| text.to_owned())
}

fn parse_name(text: &str) -> Result<String, String> {
    Principal::new(text)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_customer(text: &str) -> Result<String, String> {
    if text == "*" {
        return Err("use --all-customers for a back-office key".to_owned());
    }
    CustomerId::new(text)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

/// Prints a new key once, and the entry (with only its hash) for the keys file.
pub fn run_api_key(args: &ApiKeyArgs) -> anyhow::Result<ExitCode> {
    let key = new_key();
    let customers = if args.all_customers {
        vec!["*".to_owned()]
    } else {
        args.customers.clone()
    };
    let mut entry = format!(
        "[[key]]\nname = {:?}\nsha256 = \"{}\"\ncustomers = {:?}\nscopes = {:?}\n",
        args.name,
        to_hex(&hash_key(&key)),
        customers,
        args.scopes
    );
    if let Some(rate) = args.rate_per_second {
        entry.push_str(&format!("rate_per_second = {rate}\n"));
    }
    if let Some(burst) = args.burst {
        entry.push_str(&format!("burst = {burst}\n"));
    }
    // Refuse to print an entry the gateway would refuse.
    parse_keys(&entry)?;
    // The entry (only its hash) on stdout, so that `saldo api-key ... >>
    // keys.toml` appends a loadable entry; the key itself on stderr's first
    // line, never into the keys file.
    print!("{entry}");
    eprintln!("{key}");
    eprintln!(
        "The line above is the key for {}: hand it over now, it is stored nowhere. The [[key]] entry went to stdout, for the gateway's keys file.",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

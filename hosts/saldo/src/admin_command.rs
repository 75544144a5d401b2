//! `saldo admin`: the operator API (ADR 0017) from a terminal.
//!
//! Every action calls the gateway (or `saldo dev`) over HTTP with an API key
//! that has the `admin` scope. Interventions are decided by the services from
//! their live rows: `--dry-run` prints the decision (and the order's
//! version) without writing, and a real run sends the version the operator
//! saw (`--expected-version`, required to act on one order), so nothing
//! that changed since is overwritten (409 `version_changed`: look again). `resolve` states a participant's answer, so it acts on one
//! order, names the awaited step and phase, and needs `--expected-version`
//! from its dry run. Bulk forms act on a listed selection of at most
//! `BULK_SELECTION_MAX` items, only with `--yes`, each with the version the
//! listing showed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use hyper::Method;
use hyper::header::HeaderValue;
use saldo_domain::operator::BULK_SELECTION_MAX;
use serde_json::{Value, json};

use crate::config::parse_duration;
use crate::load_command::{Http, Reply};

/// Arguments of `saldo admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway (or `saldo dev`) to call.
    #[arg(long, env = "SALDO_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key with the `admin` scope.
    #[arg(long, env = "SALDO_ADMIN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

/// The services, as the operator API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceName {
    Order,
    Inventory,
    Payment,
}

impl ServiceName {
    const ALL: [ServiceName; 3] = [
        ServiceName::Order,
        ServiceName::Inventory,
        ServiceName::Payment,
    ];

    fn name(self) -> &'static str {
        match self {
            ServiceName::Order => "order",
            ServiceName::Inventory => "inventory",
            ServiceName::Payment => "payment",
        }
    }
}

/// Which orders a listing or a bulk intervention covers.
#[derive(Debug, Args)]
struct Selection {
    /// Only pending orders unchanged for at least this long (`30s`, `5m`, `1h`).
    #[arg(long, value_parser = parse_duration)]
    stuck: Option<Duration>,
    /// Only orders with this status.
    #[arg(long, value_parser = ["PENDING", "CONFIRMED", "CANCELLED"])]
    status: Option<String>,
    /// Only orders whose saga awaits this.
    #[arg(long, value_parser = ["action_reply", "action_retry", "compensation_reply", "compensation_retry", "nothing"])]
    awaiting: Option<String>,
    /// Start after this order id (the previous page's `next`).
    #[arg(long)]
    after: Option<String>,
    /// At most this many (1 to 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100))]
    limit: u64,
}

impl Selection {
    fn query(&self) -> String {
        let mut pairs = vec![format!("limit={}", self.limit)];
        if let Some(stuck) = self.stuck {
            pairs.push("status=PENDING".to_owned());
            pairs.push(format!("older_than_ms={}", stuck.as_millis()));
        } else if let Some(status) = &self.status {
            pairs.push(format!("status={status}"));
        }
        if let Some(awaiting) = &self.awaiting {
            pairs.push(format!("awaiting={awaiting}"));
        }
        if let Some(after) = &self.after {
            pairs.push(format!("after={after}"));
        }
        pairs.join("&")
    }
}

/// What an intervention acts on: one order, or a selection with `--yes`.
#[derive(Debug, Args)]
struct Targets {
    /// The order to act on.
    #[arg(required_unless_present_any = ["stuck", "status", "awaiting"])]
    order_id: Option<String>,
    #[command(flatten)]
    selection: Selection,
    /// The order's version as you saw it (its dry run prints it): required
    /// to act on one order, so nothing you have not seen is overwritten.
    #[arg(long, requires = "order_id", required_unless_present_any = ["dry_run", "stuck", "status", "awaiting"])]
    expected_version: Option<u64>,
    /// Show the decision (rows, messages, postings) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Confirm a bulk intervention over a selection.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List orders by status, what their saga awaits and age (`--stuck 5m`), paged.
    Orders(Selection),
    /// One order's whole story across the services in causal order: rows,
    /// messages with their bytes, receipts, ledger entries, dead letters,
    /// operators' actions and reconciliation's findings.
    Story {
        /// The order.
        order_id: String,
    },
    /// Export one order's story as a recording: the trace file the browser
    /// harness (`saldo dev`, then Import a trace) replays through the same
    /// deciders, showing where production and the replay differ. The
    /// replay is run here first and its verdict printed on stderr; the exit
    /// code is 1 when it differs from production.
    Export {
        /// The order.
        order_id: String,
        /// Write the recording here instead of to stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Dead letters of every service (or one), with the error and the bytes.
    DeadLetters {
        /// Only this service's.
        #[arg(long)]
        service: Option<ServiceName>,
        /// Start after this id (with --service).
        #[arg(long, requires = "service")]
        after: Option<u64>,
    },
    /// The operators' audit trail of a service: who did what, when, and the decision.
    Audit {
        /// The service.
        #[arg(long, default_value = "order")]
        service: ServiceName,
        /// Start after this id.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Re-send the awaited action or compensation now, as its next attempt.
    RetryNow(Targets),
    /// Turn the saga back: compensate the awaited step and the completed
    /// ones in reverse, once each. Refused past the point of no return.
    ForceCompensation(Targets),
    /// State the awaited step's outcome for one order whose participant
    /// cannot answer. Never in bulk; `reserve_stock` cannot be resolved as
    /// succeeded (only inventory knows the price: use retry-now).
    Resolve {
        /// The order.
        order_id: String,
        /// The awaited step, as `orders` lists it (`take_payment`, ...).
        #[arg(long)]
        step: String,
        /// The awaited phase.
        #[arg(long, value_parser = ["action", "compensation"])]
        phase: String,
        /// What happened.
        #[arg(long, value_parser = ["succeeded", "failed"])]
        outcome: String,
        /// The order's version its dry run printed (required unless --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        expected_version: Option<u64>,
        /// Show the decision and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Publish a dead letter again through its consumer's outbox (its inbox
    /// makes a second delivery safe), and delete it.
    Redrive(LetterTarget),
    /// Delete a dead letter, keeping it and the reason in the audit trail.
    Discard {
        #[command(flatten)]
        letter: LetterTarget,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

/// Which dead letters: one by id, or all of a service's with `--all --yes`.
#[derive(Debug, Args)]
struct LetterTarget {
    /// The consumer that dead-lettered it.
    #[arg(long)]
    service: ServiceName,
    /// Its id.
    #[arg(required_unless_present = "all")]
    id: Option<u64>,
    /// Every dead letter of the service (at most one page), with --yes.
    #[arg(long)]
    all: bool,
    /// Show the decision and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Confirm a bulk action.
    #[arg(long)]
    yes: bool,
}

/// Runs the command.
pub fn run(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

struct Client {
    http: Http,
    base: String,
    json: bool,
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let reply: Reply = self
            .http
            .send(method.clone(), &url, &[], body)
            .await
            .map_err(|error| anyhow::anyhow!("{method} {url}: {error}"))?;
        if !reply.status.is_success() {
            bail!(
                "{method} {path}: {} {}: {}",
                reply.status.as_u16(),
                reply.code(),
                reply.body["detail"].as_str().unwrap_or("")
            );
        }
        Ok(reply.body)
    }
}

async fn run_async(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let key = args
        .key
        .as_deref()
        .map(HeaderValue::from_str)
        .transpose()
        .context("the API key is not a header value")?;
    let client = Client {
        http: Http::new(1, key),
        base: args.url.clone(),
        json: args.json,
    };
    match &args.command {
        AdminCommand::Orders(selection) => {
            let page = client
                .call(
                    Method::GET,
                    &format!("/admin/order/orders?{}", selection.query()),
                    None,
                )
                .await?;
            show(&client, &page, print_orders);
        }
        AdminCommand::Story { order_id } => {
            let story = client
                .call(
                    Method::GET,
                    &format!("/admin/orders/{order_id}/story"),
                    None,
                )
                .await?;
            show(&client, &story, print_story);
        }
        AdminCommand::Export { order_id, output } => {
            let header = client
                .call(
                    Method::GET,
                    &format!("/admin/orders/{order_id}/export"),
                    None,
                )
                .await?;
            let header: saldo_sim::recorded::RecordingHeader = serde_json::from_value(header)
                .context("the export is not a recording this build reads")?;
            let player = saldo_sim::recorded::RecordedPlayer::new(header.clone())
                .map_err(|error| anyhow::anyhow!("the recording cannot be replayed: {error}"))?;
            let text = saldo_sim::recorded::export(&header.recorded);
            match output {
                Some(path) => std::fs::write(path, &text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            let verification = player.verification();
            if verification.exact() {
                eprintln!(
                    "replay: exact ({} inputs, {} messages and the final row as recorded); trace hash {}",
                    player.len(),
                    verification.recorded - 1,
                    verification.trace_hash
                );
            } else {
                eprintln!(
                    "replay: differs at step {}: {}; trace hash {} (the recording is written; the harness page lists every difference)",
                    verification.differences[0].step,
                    verification.differences[0].what,
                    verification.trace_hash
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        AdminCommand::DeadLetters { service, after } => {
            let services = service.map_or(ServiceName::ALL.to_vec(), |service| vec![service]);
            let mut all = Vec::new();
            for service in services {
                let after = after
                    .map(|after| format!("&after={after}"))
                    .unwrap_or_default();
                let page = client
                    .call(
                        Method::GET,
                        &format!("/admin/{}/dead-letters?limit=100{after}", service.name()),
                        None,
                    )
                    .await?;
                all.extend(page["items"].as_array().cloned().unwrap_or_default());
            }
            show(&client, &json!({ "items": all }), print_dead_letters);
        }
        AdminCommand::Audit { service, after } => {
            let after = after
                .map(|after| format!("?after={after}"))
                .unwrap_or_default();
            let page = client
                .call(
                    Method::GET,
                    &format!("/admin/{}/audit{after}", service.name()),
                    None,
                )
                .await?;
            show(&client, &page, print_audit);
        }
        AdminCommand::RetryNow(targets) => {
            intervene(&client, targets, json!({ "action": "retry_now" })).await?;
        }
        AdminCommand::ForceCompensation(targets) => {
            intervene(&client, targets, json!({ "action": "force_compensation" })).await?;
        }
        AdminCommand::Resolve {
            order_id,
            step,
            phase,
            outcome,
            expected_version,
            dry_run,
        } => {
            let body = json!({
                "action": "resolve",
                "step": step,
                "phase": phase,
                "outcome": outcome,
                "expected_version": expected_version,
                "dry_run": dry_run,
            });
            let done = client
                .call(
                    Method::POST,
                    &format!("/admin/order/orders/{order_id}"),
                    Some(&body),
                )
                .await?;
            show(&client, &done, print_intervened);
        }
        AdminCommand::Redrive(letter) => {
            settle(&client, letter, json!({ "action": "redrive" })).await?;
        }
        AdminCommand::Discard { letter, reason } => {
            settle(
                &client,
                letter,
                json!({ "action": "discard", "reason": reason }),
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(client: &Client, value: &Value, text: fn(&Value)) {
    if client.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON prints")
        );
    } else {
        text(value);
    }
}

/// The ids a bulk action covers, refused past the bound or without `--yes`.
fn bulk(ids: Vec<String>, yes: bool, what: &str) -> anyhow::Result<Vec<String>> {
    if ids.is_empty() {
        eprintln!("saldo admin: no {what} selected; nothing to do");
        return Ok(ids);
    }
    if ids.len() > BULK_SELECTION_MAX {
        bail!(
            "{} {what} selected; a bulk action covers at most {BULK_SELECTION_MAX}",
            ids.len()
        );
    }
    if !yes {
        bail!(
            "{} {what} selected ({}); add --yes to act on all of them, or --dry-run to see each decision",
            ids.len(),
            ids.join(", ")
        );
    }
    Ok(ids)
}

async fn intervene(client: &Client, targets: &Targets, action: Value) -> anyhow::Result<()> {
    // Each order with the version the operator saw: the one named, or the
    // listing's (`None`: a dry run of one order, at whatever is live).
    let orders: Vec<(String, Option<Value>)> = match &targets.order_id {
        Some(order_id) => vec![(order_id.clone(), targets.expected_version.map(Value::from))],
        None => {
            let page = client
                .call(
                    Method::GET,
                    &format!("/admin/order/orders?{}", targets.selection.query()),
                    None,
                )
                .await?;
            let listed: Vec<(String, Option<Value>)> = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|order| {
                    let id = order["order_id"].as_str()?.to_owned();
                    Some((id, Some(order["version"].clone())))
                })
                .collect();
            if !targets.dry_run {
                let ids = listed.iter().map(|(id, _)| id.clone()).collect();
                bulk(ids, targets.yes, "orders")?;
            }
            listed
        }
    };
    let mut failures = 0;
    for (order_id, seen) in orders {
        let path = format!("/admin/order/orders/{order_id}");
        let body = match seen {
            Some(version) => with(&action, "expected_version", version),
            None => action.clone(),
        };
        let body = with(&body, "dry_run", json!(targets.dry_run));
        let outcome = client.call(Method::POST, &path, Some(&body)).await;
        match outcome {
            Ok(done) => show(client, &done, print_intervened),
            Err(error) => {
                failures += 1;
                eprintln!("saldo admin: {order_id}: {error:#}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} interventions refused or failed");
    }
    Ok(())
}

async fn settle(client: &Client, letter: &LetterTarget, action: Value) -> anyhow::Result<()> {
    let service = letter.service.name();
    let ids = match letter.id {
        Some(id) => vec![id.to_string()],
        None => {
            let page = client
                .call(Method::GET, &format!("/admin/{service}/dead-letters"), None)
                .await?;
            let ids = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item["id"].as_u64().map(|id| id.to_string()))
                .collect();
            if letter.dry_run {
                ids
            } else {
                bulk(ids, letter.yes, "dead letters")?
            }
        }
    };
    for id in ids {
        let body = with(&action, "dry_run", json!(letter.dry_run));
        let done = client
            .call(
                Method::POST,
                &format!("/admin/{service}/dead-letters/{id}"),
                Some(&body),
            )
            .await?;
        show(client, &done, print_intervened);
    }
    Ok(())
}

fn with(body: &Value, name: &str, value: Value) -> Value {
    let mut body = body.clone();
    body[name] = value;
    body
}

fn print_orders(page: &Value) {
    for order in page["items"].as_array().into_iter().flatten() {
        println!(
            "{}  {} v{}  awaiting {} {} ({}, attempt {})  updated {}",
            order["order_id"].as_str().unwrap_or("?"),
            order["status"].as_str().unwrap_or("?"),
            order["version"],
            order["awaiting"].as_str().unwrap_or("?"),
            order["step_name"].as_str().unwrap_or("-"),
            order["phase"].as_str().unwrap_or("-"),
            order["attempt"],
            order["updated_at"],
        );
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}

fn print_story(story: &Value) {
    println!("order {}", story["order_id"].as_str().unwrap_or("?"));
    for row in story["rows"].as_array().into_iter().flatten() {
        println!(
            "  row  {} {} v{}",
            row[0].as_str().unwrap_or("?"),
            row[1]["row"]["table"].as_str().unwrap_or("?"),
            row[1]["version"]
        );
    }
    for message in story["messages"].as_array().into_iter().flatten() {
        let received: Vec<String> = message["received"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|seen| seen[0].as_str().map(str::to_owned))
            .collect();
        println!(
            "  msg  {} {} from {} caused by {} published {} received by [{}]",
            message["message_id"].as_str().unwrap_or("?"),
            message["message_type"].as_str().unwrap_or("?"),
            message["sender"].as_str().unwrap_or("?"),
            message["causation_id"].as_str().unwrap_or("-"),
            if message["published_at"].is_null() {
                "no"
            } else {
                "yes"
            },
            received.join(", ")
        );
    }
    for entry in story["entries"].as_array().into_iter().flatten() {
        println!(
            "  entry {} {} hash {}",
            entry["sequence"],
            entry["posting"]["memo"]["purpose"].as_str().unwrap_or("?"),
            entry["hash"]
        );
    }
    for letter in story["dead_letters"].as_array().into_iter().flatten() {
        println!(
            "  dead letter {} {}: {}",
            letter["service"].as_str().unwrap_or("?"),
            letter["id"],
            letter["error"].as_str().unwrap_or("")
        );
    }
    for record in story["audit"].as_array().into_iter().flatten() {
        println!(
            "  operator {} {} at {}",
            record["actor"]["principal"].as_str().unwrap_or("?"),
            record["action"].as_str().unwrap_or("?"),
            record["at"]
        );
    }
    let findings = story["findings"].as_array().cloned().unwrap_or_default();
    if findings.is_empty() {
        println!("  reconciliation: clean");
    }
    for finding in findings {
        println!(
            "  finding {}: {}",
            finding["kind"].as_str().unwrap_or("?"),
            finding["detail"].as_str().unwrap_or("")
        );
    }
}

fn print_dead_letters(page: &Value) {
    for letter in page["items"].as_array().into_iter().flatten() {
        println!(
            "{} {}  {} {} order {}: {}",
            letter["service"].as_str().unwrap_or("?"),
            letter["id"],
            letter["message_type"].as_str().unwrap_or("-"),
            letter["message_id"].as_str().unwrap_or("-"),
            letter["order_id"].as_str().unwrap_or("-"),
            letter["error"].as_str().unwrap_or(""),
        );
    }
}

fn print_audit(page: &Value) {
    for record in page["items"].as_array().into_iter().flatten() {
        println!(
            "{}  {} (key {})  {} {}  at {}",
            record["id"],
            record["actor"]["principal"].as_str().unwrap_or("?"),
            record["actor"]["key"].as_str().unwrap_or("?"),
            record["action"].as_str().unwrap_or("?"),
            record["target"].as_str().unwrap_or("?"),
            record["at"],
        );
    }
}

fn print_intervened(done: &Value) {
    let verb = if done["dry_run"] == json!(true) {
        "would commit"
    } else {
        "committed"
    };
    let version = match &done["expected_version"] {
        Value::Null => String::new(),
        version => format!(" (decided on version {version})"),
    };
    println!(
        "{} {}{version}: {verb}:",
        done["action"].as_str().unwrap_or("?"),
        done["target"].as_str().unwrap_or("?")
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&done["decision"]).expect("JSON prints")
    );
}

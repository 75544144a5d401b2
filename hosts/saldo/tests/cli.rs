//! The `saldo` binary as a user meets it: exit codes, error lines, output files.

use std::process::{Command, Output};

#[path = "cli/deploy.rs"]
mod deploy;
#[path = "cli/kafka.rs"]
mod kafka;
#[path = "cli/prometheus.rs"]
mod prometheus;
#[path = "cli/traces.rs"]
mod traces;

fn saldo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn api_key_help_names_every_scope_the_gateway_knows() {
    // Regression: `saldo api-key --help` listed every scope but `admin`,
    // the operator API's. Its help now names each scope of Scope::NAMES.
    let help = saldo(&["api-key", "--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    // The last mention is the option's own description (the first is usage).
    let (_, scope_help) = text
        .rsplit_once("--scope <SCOPES>")
        .expect("the help describes --scope");
    for (name, _) in saldo_http::gateway::Scope::NAMES {
        assert!(
            scope_help.contains(&format!(" {name}")),
            "{name} is missing from:\n{text}"
        );
    }
}

#[test]
fn admin_help_documents_every_action_and_a_refused_call_is_one_line() {
    // Proves `saldo admin --help` names every operator action, each action's help names --dry-run where it intervenes, and an unreachable API is one line and exit 2.
    let help = saldo(&["admin", "--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    for action in [
        "orders",
        "story",
        "export",
        "dead-letters",
        "audit",
        "retry-now",
        "force-compensation",
        "resolve",
        "redrive",
        "discard",
    ] {
        assert!(text.contains(action), "{action} is missing from:\n{text}");
    }
    for action in [
        "retry-now",
        "force-compensation",
        "resolve",
        "redrive",
        "discard",
    ] {
        let help = stdout(&saldo(&["admin", action, "--help"]));
        assert!(help.contains("--dry-run"), "{action}: {help}");
    }
    let help = stdout(&saldo(&["admin", "export", "--help"]));
    assert!(
        help.contains("--output") && help.contains("harness"),
        "export: {help}"
    );
    let refused = saldo(&[
        "admin",
        "--url",
        "http://127.0.0.1:9",
        "orders",
        "--stuck",
        "5m",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("saldo: GET http://127.0.0.1:9/admin/order/orders?"),
        "{error}"
    );
}

#[test]
fn sim_runs_seeds_and_reports_a_summary() {
    // Proves `saldo sim` exits 0 on a clean run and prints the summary lines.
    let output = saldo(&[
        "sim", "--seeds", "50", "--orders", "10", "--faults", "chaos",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    for expected in [
        "orders",
        "confirmed",
        "duplicates",
        "crashes",
        "invariant checks",
        "all invariants held",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn the_largest_seed_runs_once_and_stops() {
    // Proves the seed counter does not wrap past u64::MAX into an endless run
    // (the browser harness's hash test found it).
    let output = saldo(&[
        "sim",
        "--seed",
        "18446744073709551615",
        "--orders",
        "5",
        "--faults",
        "chaos",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("1 seed(s) from 18446744073709551615"));
    let output = saldo(&["sim", "--seed", "18446744073709551615", "--seeds", "2"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn one_seed_prints_its_trace_hash_and_writes_its_trace() {
    // Proves --trace writes JSON lines and the hash is stable across invocations.
    let directory = std::env::temp_dir().join(format!("saldo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let path = directory.join("trace.jsonl");
    let path_text = path.to_str().expect("utf-8 path");
    let first = saldo(&[
        "sim", "--seed", "42", "--orders", "15", "--faults", "heavy", "--trace", path_text,
    ]);
    assert_eq!(first.status.code(), Some(0));
    let second = saldo(&["sim", "--seed", "42", "--orders", "15", "--faults", "heavy"]);
    let hash = |output: &Output| {
        stdout(output)
            .lines()
            .find(|line| line.contains("trace hash"))
            .map(str::to_owned)
    };
    assert!(hash(&first).is_some());
    assert_eq!(hash(&first), hash(&second));
    let trace = std::fs::read_to_string(&path).expect("trace written");
    assert!(trace.lines().count() > 50);
    assert!(
        trace
            .lines()
            .all(|line| line.starts_with('{') && line.ends_with('}'))
    );
    std::fs::remove_dir_all(&directory).expect("cleanup");
}

#[test]
fn bad_arguments_give_one_readable_line_and_a_non_zero_exit() {
    // Proves configuration errors are one line on stderr with exit code 2.
    for (args, expected) in [
        (vec!["sim", "--faults", "mild"], "unknown fault profile"),
        (vec!["sim", "--seeds", "0"], "--seeds must be at least 1"),
        (vec!["sim", "--orders", "0"], "--orders must be between"),
        (
            vec!["sim", "--seeds", "2", "--trace", "x.jsonl"],
            "--trace records one run",
        ),
        (
            vec!["sim", "--seeds", "abc"],
            "invalid value 'abc' for '--seeds",
        ),
        (vec!["dev", "--listen", "nowhere"], "invalid socket address"),
        (
            vec![
                "admin",
                "resolve",
                "o1",
                "--step",
                "take_payment",
                "--phase",
                "action",
                "--outcome",
                "failed",
            ],
            "required arguments were not provided: --expected-version",
        ),
        (
            vec!["admin", "retry-now", "o1"],
            "required arguments were not provided: --expected-version",
        ),
        (
            vec![
                "admin",
                "resolve",
                "--stuck",
                "5m",
                "--step",
                "take_payment",
                "--phase",
                "action",
                "--outcome",
                "failed",
                "--dry-run",
            ],
            "unexpected argument '--stuck'",
        ),
        (
            vec!["gateway", "--keys", "k.toml"],
            "required arguments were not provided: --order-url",
        ),
        (
            vec![
                "gateway",
                "--keys",
                "/nonexistent/keys.toml",
                "--order-url",
                "http://a:1",
                "--payment-url",
                "http://a:2",
                "--inventory-url",
                "http://a:3",
            ],
            "cannot read the keys file /nonexistent/keys.toml",
        ),
        (
            vec![
                "api-key",
                "--name",
                "x",
                "--all-customers",
                "--scope",
                "orders:delete",
            ],
            "scope \"orders:delete\" is unknown; scopes are *, orders:read",
        ),
        (
            vec![
                "api-key",
                "--name",
                "x",
                "--customer",
                "alice",
                "--scope",
                "wallets:write",
            ],
            "use wallets:top-up to top up and wallets:read to read",
        ),
        (
            vec!["api-key", "--name", "x", "--scope", "*"],
            "--customer <CUSTOMERS>",
        ),
        (
            vec!["api-key", "--name", "x", "--customer", "*", "--scope", "*"],
            "use --all-customers for a back-office key",
        ),
        (
            vec![
                "order",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--http-address",
                "no",
            ],
            "invalid socket address",
        ),
        (
            vec![
                "outbox",
                "--service",
                "order",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--http-address",
                "127.0.0.1:1",
            ],
            "saldo outbox has no HTTP API",
        ),
        (
            vec![
                "order",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--http-address",
                "127.0.0.1:0",
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "cannot read the certificate /nonexistent/cert.pem",
        ),
        (
            vec![
                "order",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--admin-without-gateway",
            ],
            "--admin-without-gateway applies to the HTTP API: give --http-address too",
        ),
        (
            vec![
                "outbox",
                "--service",
                "order",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--admin-without-gateway",
            ],
            "saldo outbox has no HTTP API, so no --admin-without-gateway",
        ),
        (
            vec![
                "payment",
                "--database-url",
                "postgres://x",
                "--kafka-bootstrap",
                "k",
                "--http-address",
                "127.0.0.1:0",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-client-name",
                "gateway.saldo.internal",
            ],
            "--tls-client-ca <FILE>",
        ),
        (
            vec!["dev", "--tls-cert", "/nonexistent/cert.pem"],
            "--tls-key <FILE>",
        ),
        (
            vec![
                "gateway",
                "--keys",
                "/dev/null",
                "--order-url",
                "https://a:1",
                "--payment-url",
                "http://a:2",
                "--inventory-url",
                "http://a:3",
            ],
            "--order-url is https:// (https://a:1/): give --upstream-ca",
        ),
        (vec!["nonsense"], "unrecognized subcommand 'nonsense'"),
    ] {
        let output = saldo(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let help = saldo(&["dev", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        stdout(&help).contains("SALDO_LISTEN"),
        "help names the environment variables"
    );
    // An outbox publisher has no HTTP API, so its help offers none.
    let help = saldo(&["outbox", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        !stdout(&help).contains("--http-address"),
        "{}",
        stdout(&help)
    );
}

#[test]
fn an_issued_key_appended_to_a_keys_file_loads_and_an_empty_file_is_refused() {
    // Regression (issue #16.8): `saldo api-key ... > file` wrote the secret
    // above the [[key]] entry, so the file it made did not load; an empty
    // keys file started a gateway that admitted nobody, silently.
    let directory = std::env::temp_dir().join(format!("saldo-keys-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("a directory");
    let keys = directory.join("keys.toml");
    let empty = directory.join("empty.toml");
    std::fs::write(&empty, "# no keys yet\n").expect("writes");
    let mut file = std::fs::File::create(&keys).expect("creates");
    for name in ["shop", "back-office"] {
        let issued = Command::new(env!("CARGO_BIN_EXE_saldo"))
            .args(["api-key", "--name", name, "--all-customers", "--scope", "*"])
            .stdout(file.try_clone().expect("a handle"))
            .output()
            .expect("runs");
        assert!(issued.status.success());
        let key = String::from_utf8_lossy(&issued.stderr);
        assert!(key.starts_with("sk_"), "the key on stderr: {key}");
    }
    use std::io::Write as _;
    file.flush().expect("flushes");
    let text = std::fs::read_to_string(&keys).expect("reads");
    assert!(!text.contains("sk_"), "no secret in the keys file: {text}");
    let parsed = saldo_http::gateway::parse_keys(&text).expect("the appended file loads");
    assert_eq!(parsed.len(), 2);
    let refused = saldo(&[
        "gateway",
        "--keys",
        empty.to_str().expect("UTF-8"),
        "--order-url",
        "http://127.0.0.1:1",
        "--payment-url",
        "http://127.0.0.1:2",
        "--inventory-url",
        "http://127.0.0.1:3",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("would admit nobody"), "{stderr}");
    std::fs::remove_dir_all(&directory).expect("cleans up");
}

#[test]
fn sim_prints_progress_lines_when_its_output_is_not_a_terminal() {
    // Regression (issue #16.8): `saldo sim` printed nothing until the end
    // when stderr was not a terminal, so a long soak was silent.
    let output = saldo(&[
        "sim",
        "--seeds",
        "300",
        "--orders",
        "50",
        "--faults",
        "chaos",
        "--threads",
        "1",
        "--progress-every",
        "100ms",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("saldo sim: running 300 seed(s) from 0 on 1 thread(s)"),
        "{stderr}"
    );
    assert!(stderr.contains(" seeds/s, "), "a progress line: {stderr}");
}

#[test]
fn migrate_applies_once_and_then_reports_up_to_date() {
    // Proves `saldo migrate` applies every migration to a new database, then
    // nothing, and that a bad URL is one readable line with exit code 2.
    let (admin_url, name, url) = fresh_database("");
    let first = saldo(&["migrate", "--database-url", &url]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        stdout(&first)
            .lines()
            .filter(|line| line.contains("applied"))
            .count(),
        saldo_postgres::MIGRATOR.iter().count()
    );
    let second = saldo(&["migrate", "--database-url", &url]);
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );
    psql(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)"));
    let broken = saldo(&[
        "migrate",
        "--database-url",
        "postgres://nobody:wrong@127.0.0.1:1/none",
    ]);
    assert_eq!(broken.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&broken.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

/// Runs one SQL statement with psql, failing the test if it fails.
fn psql(url: &str, sql: &str) {
    let output = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A newly created, empty database: the admin URL, its name, its URL.
fn fresh_database(suffix: &str) -> (String, String, String) {
    let admin_url = std::env::var("SALDO_TEST_DATABASE_URL")
        .expect("tests/run.sh sets SALDO_TEST_DATABASE_URL");
    let name = format!("saldo_test_cli_{suffix}_{}", std::process::id());
    psql(&admin_url, &format!("DROP DATABASE IF EXISTS {name}"));
    psql(&admin_url, &format!("CREATE DATABASE {name}"));
    let url = saldo_postgres::testing::with_database(&admin_url, &name);
    (admin_url, name, url)
}

/// A fresh database with the migrations applied (by `saldo migrate`).
fn migrated_database(suffix: &str) -> (String, String, String) {
    let (admin_url, name, url) = fresh_database(suffix);
    assert_eq!(
        saldo(&["migrate", "--database-url", &url]).status.code(),
        Some(0)
    );
    (admin_url, name, url)
}

/// A migrated database for the CLI: its URL as the read-only role, and a
/// function that runs SQL in it as the owner.
fn reconcile_database(suffix: &str) -> (String, impl Fn(&str)) {
    let (_, _, url) = migrated_database(suffix);
    psql(&url, "GRANT saldo_reconcile TO CURRENT_USER");
    // Connect as the read-only role, as an operator would.
    let read_only = format!("{url}?options=-c%20role%3Dsaldo_reconcile");
    (read_only, move |sql: &str| psql(&url, sql))
}

#[test]
fn reconcile_once_exits_zero_when_clean_and_one_with_findings() {
    // Proves the one-shot report, its exit codes and its JSON form, run with
    // the read-only role.
    let (read_only, run_sql) = reconcile_database("once");
    let clean = saldo(&["reconcile", "--once", "--database-url", &read_only]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout(&clean).contains("clean"));
    run_sql(
        "INSERT INTO payment.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ('m', 'ChargePayment', 'o1', 'malformed', '\\x00', now())",
    );
    let dirty = saldo(&[
        "reconcile",
        "--once",
        "--json",
        "--database-url",
        &read_only,
    ]);
    assert_eq!(dirty.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&dirty.stdout).expect("JSON");
    assert_eq!(report["clean"], false);
    assert_eq!(report["findings"][0]["kind"], "dead_letters_present");
    assert_eq!(report["findings"][0]["ids"][0], "dead_letters:payment");
    let no_mode = saldo(&["reconcile", "--database-url", &read_only]);
    assert_eq!(no_mode.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_mode.stderr).contains("--once or --interval"));
}

/// Seals a top-up of `amount_minor` to `customer` as the first entry and
/// writes it as the payment service would: entry, legs, accounts, chain head.
fn first_top_up_sql(customer: &str, amount_minor: i64) -> String {
    use saldo_ledger::{AccountId, Entry, Memo, Posting, StoredEntry};
    use saldo_types::{Currency, CustomerId, Id128, Money, Timestamp};
    let eur = Currency::EUR;
    let wallet = AccountId::wallet(CustomerId::new(customer).expect("valid"), eur);
    let posting = Posting::transfer(
        Id128::derive("cli test", &[customer.as_bytes()]),
        AccountId::Funding { currency: eur },
        wallet.clone(),
        Money::from_minor(amount_minor, eur),
        Memo {
            purpose: "top_up".to_owned(),
            ..Memo::default()
        },
    );
    let entry = Entry::seal(None, posting, Timestamp::from_unix_ms(1_764_547_200_000));
    let stored = StoredEntry::of(&entry.posting);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let legs = stored
        .legs
        .iter()
        .map(|leg| {
            format!(
                "(1, {}, '{}', '{}', {}, '{}')",
                leg.leg, leg.account, leg.side, leg.amount_minor, leg.currency
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "BEGIN; \
         INSERT INTO payment.accounts (account_id, version, kind, currency, balance_minor, held_minor) VALUES \
             ('funding:EUR', 1, 'funding', 'EUR', {negative}, 0), ('{wallet}', 1, 'wallet', 'EUR', {amount_minor}, 0); \
         INSERT INTO payment.ledger_entries (sequence, posting_id, recorded_at, purpose, posting, previous_hash, hash) VALUES \
             (1, '{posting_id}', to_timestamp(1764547200), 'top_up', '{posting}', decode('{previous}', 'hex'), decode('{hash}', 'hex')); \
         INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) VALUES {legs}; \
         UPDATE payment.chain_head SET sequence = 1, hash = decode('{hash}', 'hex'); COMMIT",
        negative = -amount_minor,
        posting_id = stored.posting_id,
        posting = serde_json::to_string(&entry.posting).expect("encodes"),
        previous = hex(&entry.previous_hash.0),
        hash = hex(&entry.hash.0),
    )
}

#[test]
fn ledger_checkpoint_prints_the_verified_head_and_reconcile_holds_the_chain_to_it() {
    // Proves the external anchor from the command line: no checkpoint of an
    // empty ledger, the verified head as SEQUENCE:HASH, a reconciliation that
    // passes against it and reports a chain that does not match one, and a
    // malformed checkpoint refused in one line.
    let (read_only, run_sql) = reconcile_database("checkpoint");
    let empty = saldo(&["ledger", "checkpoint", "--database-url", &read_only]);
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no entries"));
    run_sql(&first_top_up_sql("alice", 5_000));
    let printed = saldo(&["ledger", "checkpoint", "--database-url", &read_only]);
    assert_eq!(
        printed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let checkpoint = stdout(&printed).trim().to_owned();
    assert!(
        checkpoint.starts_with("1:") && checkpoint.len() == 66,
        "{checkpoint}"
    );
    let held = saldo(&[
        "reconcile",
        "--once",
        "--expect-checkpoint",
        &checkpoint,
        "--database-url",
        &read_only,
    ]);
    assert_eq!(held.status.code(), Some(0), "{}", stdout(&held));
    let other = format!("1:{}", "0".repeat(64));
    let rewritten = saldo(&[
        "reconcile",
        "--once",
        "--expect-checkpoint",
        &other,
        "--database-url",
        &read_only,
    ]);
    assert_eq!(rewritten.status.code(), Some(1));
    assert!(
        stdout(&rewritten).contains("chain_rewritten"),
        "{}",
        stdout(&rewritten)
    );
    let malformed = saldo(&[
        "reconcile",
        "--once",
        "--expect-checkpoint",
        "12:nothex",
        "--database-url",
        &read_only,
    ]);
    assert_eq!(malformed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("64 lower-case hexadecimal digits"),
        "{stderr}"
    );
    // A leg forged onto the entry behind the trigger's back: the checkpoint
    // refuses to anchor a chain whose rows disagree with it.
    run_sql(
        "INSERT INTO payment.accounts (account_id, version, kind, currency, balance_minor, held_minor) VALUES ('wallet:mallory:EUR', 1, 'wallet', 'EUR', 0, 0); \
         ALTER TABLE payment.ledger_legs DISABLE TRIGGER ledger_legs_with_their_entry; \
         INSERT INTO payment.ledger_legs (sequence, leg, account_id, side, amount_minor, currency) VALUES (1, 2, 'wallet:mallory:EUR', 'credit', 1, 'EUR'); \
         ALTER TABLE payment.ledger_legs ENABLE TRIGGER ledger_legs_with_their_entry",
    );
    let forged = saldo(&["ledger", "checkpoint", "--database-url", &read_only]);
    assert_eq!(forged.status.code(), Some(1));
    assert!(stdout(&forged).is_empty());
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("entry_rows_disagree_with_posting"),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
}

#[test]
fn reconcile_as_a_service_exposes_gauges_alerts_once_and_stops_on_sigterm() {
    // Proves the periodic mode: Prometheus gauges per finding kind, one alert
    // line per new finding, and a clean exit on SIGTERM.
    use std::io::{Read, Write};
    let (read_only, run_sql) = reconcile_database("service");
    run_sql(
        "INSERT INTO inventory.dead_letters (message_id, message_type, order_id, error, payload, received_at) VALUES ('m', 'ReserveStock', 'o1', 'malformed', '\\x00', now())",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let mut service = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args([
            "reconcile",
            "--interval",
            "200ms",
            "--metrics-address",
            &address.to_string(),
            "--database-url",
            &read_only,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics within 20 s"
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .expect("writes");
            let mut body = String::new();
            stream.read_to_string(&mut body).expect("reads");
            if body.contains("saldo_reconcile_findings{kind=\"dead_letters_present\"} 1") {
                break body;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        metrics.contains("saldo_reconcile_findings{kind=\"double_charge\"} 0"),
        "every kind is reported, zeros included"
    );
    // The port Kubernetes probes (deploy/kubernetes/base/reconciler.yaml).
    for probe in ["/healthz", "/readyz"] {
        let answer = http(&address.to_string(), "GET", probe, &[], None);
        assert_eq!(answer.map(|(status, _, _)| status), Some(200), "{probe}");
    }
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = service.wait().expect("exits");
    assert_eq!(exit.code(), Some(0));
    let mut stderr = String::new();
    service
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("reads");
    assert_eq!(
        stderr.matches("ALERT").count(),
        1,
        "a persisting finding alerts once: {stderr}"
    );
    assert!(stderr.contains("dead_letters_present"));
}

/// Child processes that are killed when the test ends, however it ends.
struct Processes(Vec<(&'static str, std::process::Child)>);

impl Processes {
    fn spawn(&mut self, name: &'static str, args: &[&str], env: &[(&str, &str)]) {
        // Each process's log goes to a file named after it, kept for diagnosis.
        let log_path =
            std::env::temp_dir().join(format!("saldo-test-{}-{name}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_saldo"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts");
        self.0.push((name, child));
    }

    /// SIGTERM to `name` alone, requiring a clean exit: a participant taken
    /// down as an operator would, its consumer leaving its group.
    fn stop(&mut self, name: &str) {
        let index = self
            .0
            .iter()
            .position(|(candidate, _)| *candidate == name)
            .expect("running");
        let stopped = vec![self.0.remove(index)];
        let others = std::mem::replace(&mut self.0, stopped);
        self.stop_each();
        self.0 = others;
    }

    /// SIGKILL: no cleanup, no offset commit, no marking.
    fn kill_hard(&mut self, name: &str) {
        let index = self
            .0
            .iter()
            .position(|(candidate, _)| *candidate == name)
            .expect("running");
        let (_, mut child) = self.0.remove(index);
        child.kill().expect("killed");
        child.wait().expect("reaped");
    }

    /// Sends `signal` (a name `kill` knows, such as `USR1`) to `name`.
    fn signal(&self, name: &str, signal: &str) {
        let (_, child) = self
            .0
            .iter()
            .find(|(candidate, _)| *candidate == name)
            .expect("running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "{name} got SIG{signal}");
    }

    /// SIGTERM everything and require a clean exit. The broker is stopped
    /// last, once the others have exited: a consumer commits its offsets on
    /// the way out, and a broker that is already gone would make it wait
    /// for its socket timeout instead.
    fn stop_all(&mut self) {
        let broker: Vec<(&'static str, std::process::Child)> =
            match self.0.iter().position(|(name, _)| *name == "broker") {
                Some(index) => vec![self.0.remove(index)],
                None => Vec::new(),
            };
        self.stop_each();
        self.0 = broker;
        self.stop_each();
    }

    fn stop_each(&mut self) {
        for (_, child) in &self.0 {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill runs");
        }
        for (name, child) in &mut self.0 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().expect("waits") {
                    assert_eq!(status.code(), Some(0), "{name} exits cleanly");
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} did not stop within 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn query(url: &str, sql: &str) -> i64 {
    let output = Command::new("psql")
        .args([url, "-Atq", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql} is not a number"))
}

fn wait_until(url: &str, sql: &str, at_least: i64, within_seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(within_seconds);
    loop {
        let value = query(url, sql);
        if value >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} reached only {value} of {at_least}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn services_killed_with_sigkill_mid_flow_lose_nothing_and_charge_nothing_twice() {
    // Proves, with every service a separate process on a broker process, that
    // kill -9 of a publisher and of consumers mid-flow, then a restart, loses
    // no order and charges none twice.
    use saldo_domain::Rules;
    use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
    use saldo_domain::messages::{OrderLine, Traceparent};
    use saldo_domain::order::{PlaceOrder, decide_place_order, place_order_read_set};
    use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
    use saldo_idempotency::IdempotencyKey;
    use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku, Timestamp};
    const ORDERS: u32 = 200;

    let (admin_url, name, url) = migrated_database("kill");

    let now = Timestamp::from_unix_ms(
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = saldo_postgres::PgStore::connect(&url, 4)
            .await
            .expect("connects");
        let rules = Rules::default();
        let eur = |minor| Money::from_minor(minor, Currency::EUR);
        for customer in 0..10 {
            let request = TopUp {
                customer: CustomerId::new(format!("c{customer}")).expect("valid"),
                amount: eur(if customer < 8 { 10_000 } else { 150 }),
                idempotency_key: IdempotencyKey::new(format!("seed-{customer}")).expect("valid"),
                principal: None,
                correlation_id: CorrelationId::new("seed").expect("valid"),
                traceparent: Traceparent::root(Id128::derive("seed", &[&[customer]])),
            };
            saldo_engine::execute(&store, &top_up_read_set(&request), now, |s| {
                decide_top_up(&rules.payment, s, &request, now)
            })
            .await
            .expect("top-up");
        }
        let stock = SetStock {
            sku: Sku::new("apple").expect("valid"),
            on_hand: 250,
            unit_price: eur(100),
        };
        saldo_engine::execute(&store, &set_stock_read_set(&stock), now, |s| {
            decide_set_stock(s, &stock)
        })
        .await
        .expect("stock");
        for index in 0..ORDERS {
            let request = PlaceOrder {
                order_id: OrderId::new(format!("o{index}")).expect("valid"),
                customer: CustomerId::new(format!("c{}", index % 10)).expect("valid"),
                lines: vec![OrderLine {
                    sku: Sku::new("apple").expect("valid"),
                    quantity: 1 + index % 2,
                }],
                currency: Currency::EUR,
                idempotency_key: IdempotencyKey::new(format!("k{index}")).expect("valid"),
                principal: None,
                correlation_id: CorrelationId::new(format!("r{index}")).expect("valid"),
                traceparent: Traceparent::root(Id128::derive("kill-test", &[&index.to_be_bytes()])),
            };
            saldo_engine::execute(&store, &place_order_read_set(&request), now, |s| {
                decide_place_order(&rules.order_saga, s, &request, now)
            })
            .await
            .expect("placed");
        }
    });

    let mut processes = Processes(Vec::new());
    let broker = spawn_broker(&mut processes);
    let metrics_port = free_port();
    let order_metrics_port = free_port();
    let mut env = vec![("SALDO_DATABASE_URL", url.clone())];
    env.extend(broker.env());
    // Through the Kafka passthrough: statistics (and so the lag gauge)
    // every 200 ms instead of every 10 s.
    env.push(("SALDO_KAFKA__STATISTICS_INTERVAL_MS", "200".to_owned()));
    let start = |processes: &mut Processes, name: &'static str| {
        let args: &[&str] = match name {
            "outbox-order" => &["outbox", "--service", "order"],
            "outbox-inventory" => &["outbox", "--service", "inventory"],
            "outbox-payment" => &["outbox", "--service", "payment"],
            "order" => &["order"],
            "inventory" => &["inventory"],
            "payment" => &["payment"],
            other => panic!("unknown process {other}"),
        };
        // The inventory publisher and the order service also serve their metrics.
        let metrics = format!("127.0.0.1:{metrics_port}");
        let order_metrics = format!("127.0.0.1:{order_metrics_port}");
        let mut process_env: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        if name == "outbox-inventory" {
            process_env.push(("SALDO_METRICS_ADDRESS", metrics.as_str()));
        }
        if name == "order" {
            process_env.push(("SALDO_METRICS_ADDRESS", order_metrics.as_str()));
        }
        processes.spawn(name, args, &process_env);
    };
    for name in [
        "outbox-order",
        "outbox-inventory",
        "outbox-payment",
        "order",
        "inventory",
        "payment",
    ] {
        start(&mut processes, name);
    }
    let finished = "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'";
    wait_until(&url, finished, 20, 90);
    let scrape = |port: u16| {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("the process serves metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("writes");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("reads");
        body
    };
    let metrics = scrape(metrics_port);
    // The order service, a real process, reports its oldest running saga
    // (read at start, with every order pending and placed before it
    // started) and its group's lag per partition. (That the passthrough
    // sets the interval is proven in the Kafka crate's lag test.)
    let lag = "saldo_consumer_lag_messages{group=\"saldo-order\",topic=\"saldo.order.replies\",partition=\"";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let order_metrics = loop {
        let order_metrics = scrape(order_metrics_port);
        if order_metrics.contains(lag) {
            break order_metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lag gauge within 10 s:\n{order_metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let saga_age: f64 = order_metrics
        .lines()
        .find_map(|line| line.strip_prefix("saldo_saga_oldest_pending_seconds "))
        .unwrap_or_else(|| panic!("no saga age:\n{order_metrics}"))
        .trim()
        .parse()
        .expect("a number");
    assert!(saga_age > 0.0, "orders were pending at start: {saga_age}");
    assert!(
        metrics.contains("saldo_outbox_backlog{service=\"inventory\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("saldo_outbox_publish_lag_ms"), "{metrics}");
    processes.kill_hard("outbox-inventory");
    processes.kill_hard("payment");
    start(&mut processes, "outbox-inventory");
    start(&mut processes, "payment");
    wait_until(&url, finished, 80, 90);
    processes.kill_hard("order");
    processes.kill_hard("outbox-payment");
    start(&mut processes, "order");
    start(&mut processes, "outbox-payment");
    wait_until(&url, finished, i64::from(ORDERS), 120);

    assert_money_and_stock_invariants(&url);
    assert!(
        query(
            &url,
            "SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'"
        ) > 100,
        "most orders were affordable"
    );
    processes.stop_all();
    psql(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)"));
}

/// Starts `saldo ARGUMENTS` and waits for the first line it prints (its
/// address); its stderr is discarded.
fn spawn_with_first_line(arguments: &[&str]) -> (std::process::Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saldo"));
    command.args(arguments);
    first_line_of(command)
}

/// Spawns `command` with its stdout piped and its stderr discarded; the
/// child and the first line it prints.
fn first_line_of(mut command: Command) -> (std::process::Child, String) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("saldo starts");
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut first_line,
    )
    .expect("reads its first line");
    (child, first_line)
}

/// Partitions of every topic in the multi-process tests.
const TEST_PARTITIONS: &str = "4";

/// The broker process of a multi-process test, and what a service needs to
/// know about it.
struct Broker {
    bootstrap: String,
    /// With `SALDO_TEST_BROKER=tansu`, the tansu process (killed when this
    /// is dropped); otherwise `saldo broker` runs among the processes.
    tansu: Option<saldo_kafka::testing::TansuBroker>,
}

impl Broker {
    /// The environment that points a service at this broker. `saldo
    /// broker` made its topics (the mock cluster has no CreateTopics); on
    /// tansu the services create them at start-up (`--create-topics`), one
    /// replica each, as they would on a real Kafka.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("SALDO_KAFKA_BOOTSTRAP", self.bootstrap.clone())];
        if self.tansu.is_some() {
            env.extend([
                ("SALDO_KAFKA_CREATE_TOPICS", "true".to_owned()),
                ("SALDO_KAFKA_PARTITIONS", TEST_PARTITIONS.to_owned()),
                ("SALDO_KAFKA_REPLICATION", "1".to_owned()),
            ]);
        } else {
            env.push(("SALDO_KAFKA_CREATE_TOPICS", "false".to_owned()));
        }
        env
    }

    /// An outage: `saldo broker` refuses connections (SIGUSR1), tansu is
    /// killed with SIGKILL.
    fn go_down(&mut self, processes: &Processes) {
        match &mut self.tansu {
            Some(tansu) => tansu.kill(),
            None => processes.signal("broker", "USR1"),
        }
    }

    /// The end of the outage: `saldo broker` accepts connections again
    /// (SIGUSR2), tansu restarts over the storage it had.
    fn come_back(&mut self, processes: &Processes) {
        match &mut self.tansu {
            Some(tansu) => tansu.restart(),
            None => processes.signal("broker", "USR2"),
        }
    }
}

/// Starts the broker `SALDO_TEST_BROKER` selects: `saldo broker` (the mock
/// cluster, a process named "broker") or a tansu process.
fn spawn_broker(processes: &mut Processes) -> Broker {
    use saldo_kafka::testing::{BrokerKind, TansuBroker};
    if BrokerKind::selected() == BrokerKind::Tansu {
        let tansu = TansuBroker::start();
        return Broker {
            bootstrap: tansu.bootstrap_servers(),
            tansu: Some(tansu),
        };
    }
    let (broker, first_line) = spawn_with_first_line(&["broker", "--partitions", TEST_PARTITIONS]);
    let bootstrap = first_line
        .trim()
        .strip_prefix("bootstrap ")
        .expect("the broker prints its address")
        .to_owned();
    processes.0.push(("broker", broker));
    Broker {
        bootstrap,
        tansu: None,
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
}

/// The platform's invariants, checked with SQL against the service schemas:
/// money is conserved and every balance equals its entries; nothing is
/// charged twice; exactly the confirmed orders stay charged, each for its
/// amount; no stock is held at rest and committed stock matches confirmed
/// orders; no dead letters.
/// Asserts what must hold for every saga, however often a step was retried:
/// actions succeed in definition order, each once; an action is sent only
/// once the steps before it succeeded; compensations succeed in reverse
/// order, each once, and only for steps that succeeded or whose outcome is
/// unknown; the saga ends exactly once, last, as its status says.
fn assert_saga_history_is_sound(row: &saldo_domain::order::OrderRow) {
    use saldo_saga::{Ending, HistoryEvent, Phase};
    let order = &row.order_id;
    assert_eq!(row.saga.history_omitted(), 0, "{order}: history complete");
    let mut succeeded_actions: Vec<usize> = Vec::new();
    let mut unknown_steps: Vec<usize> = Vec::new();
    let mut compensated: Vec<usize> = Vec::new();
    let mut ended = None;
    for record in row.history() {
        assert!(
            ended.is_none(),
            "{order}: nothing after the end: {:?}",
            row.history()
        );
        match &record.event {
            HistoryEvent::Sent {
                step,
                phase: Phase::Action,
                ..
            } => {
                assert_eq!(
                    *step,
                    succeeded_actions.len(),
                    "{order}: an action is sent only after the steps before it"
                );
                assert!(
                    compensated.is_empty(),
                    "{order}: no action after compensating"
                );
            }
            HistoryEvent::Succeeded {
                step,
                phase: Phase::Action,
            } => {
                assert_eq!(
                    *step,
                    succeeded_actions.len(),
                    "{order}: actions succeed in order, each once"
                );
                succeeded_actions.push(*step);
            }
            HistoryEvent::TimedOut {
                step,
                phase: Phase::Action,
                ..
            } => unknown_steps.push(*step),
            HistoryEvent::Succeeded {
                step,
                phase: Phase::Compensation,
            } => {
                assert!(
                    succeeded_actions.contains(step) || unknown_steps.contains(step),
                    "{order}: compensates only what may have taken effect"
                );
                assert!(
                    compensated.last().is_none_or(|last| last > step),
                    "{order}: compensations in reverse order, each once: {:?}",
                    row.history()
                );
                compensated.push(*step);
            }
            HistoryEvent::Ended { ending } => ended = Some(ending.clone()),
            HistoryEvent::Sent { .. }
            | HistoryEvent::Failed { .. }
            | HistoryEvent::TimedOut { .. }
            | HistoryEvent::Intervened { .. } => {}
        }
    }
    match (row.status(), ended) {
        (saldo_domain::order::OrderStatus::Confirmed, Some(Ending::Completed)) => {
            assert_eq!(
                succeeded_actions,
                vec![0, 1, 2],
                "{order}: a confirmed order ran every step"
            );
            assert!(
                compensated.is_empty(),
                "{order}: a confirmed order compensated nothing"
            );
        }
        (saldo_domain::order::OrderStatus::Cancelled(_), Some(Ending::Compensated(_))) => {
            assert!(
                succeeded_actions.len() < 3,
                "{order}: a cancelled order did not complete every step"
            );
            for step in &succeeded_actions {
                assert!(
                    compensated.contains(step),
                    "{order}: every completed step was compensated"
                );
            }
        }
        (status, ending) => panic!("{order}: status {status:?} with ending {ending:?}"),
    }
}

fn assert_money_and_stock_invariants(url: &str) {
    let url = url.to_owned();
    assert_eq!(
        query(
            &url,
            "SELECT COALESCE(sum(balance_minor), 0)::bigint FROM payment.accounts"
        ),
        0,
        "money is conserved"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM payment.accounts a WHERE balance_minor <> (SELECT COALESCE(sum(CASE side WHEN 'credit' THEN amount_minor ELSE -amount_minor END), 0) FROM payment.ledger_legs l WHERE l.account_id = a.account_id)"
        ),
        0,
        "every balance equals its entries"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM (SELECT order_id FROM payment.ledger_entries WHERE purpose = 'charge' GROUP BY order_id HAVING count(*) > 1) doubles"
        ),
        0,
        "nothing charged twice"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM payment.ledger_entries WHERE purpose = 'charge'"
        ) - query(
            &url,
            "SELECT count(*) FROM payment.ledger_entries WHERE purpose = 'refund'"
        ),
        query(
            &url,
            "SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'"
        ),
        "exactly the confirmed orders stay charged"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM inventory.stock WHERE reserved <> 0"
        ),
        0,
        "no stock held at rest"
    );
    assert_eq!(
        query(
            &url,
            "SELECT (SELECT count(*) FROM orders.dead_letters) + (SELECT count(*) FROM inventory.dead_letters) + (SELECT count(*) FROM payment.dead_letters)"
        ),
        0
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM orders.orders o WHERE o.status = 'CONFIRMED' AND o.amount_minor IS DISTINCT FROM (SELECT l.amount_minor FROM payment.ledger_entries e JOIN payment.ledger_legs l USING (sequence) WHERE e.order_id = o.order_id AND e.purpose = 'charge' AND l.side = 'debit')"
        ),
        0,
        "every confirmed order is charged its amount"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM inventory.reservations WHERE state = 'committed'"
        ),
        query(
            &url,
            "SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'"
        ),
        "exactly the confirmed orders took stock"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM inventory.reservations WHERE state = 'held'"
        ),
        0,
        "no reservation is left held"
    );
}

/// An HTTP answer: status, headers (names in lower case), JSON body.
type Exchange = (u16, Vec<(String, String)>, serde_json::Value);

/// One HTTP/1.1 exchange over a fresh connection: status, headers (lower
/// case), body. `None` when the server cannot be reached or hangs up.
fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Option<Exchange> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    Some((status, headers, body))
}

/// Polls `GET path` until `done` holds for its body.
fn http_wait(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    within_seconds: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(within_seconds);
    loop {
        if let Some((200, _, body)) = http(address, "GET", path, headers, None)
            && done(&body)
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} did not reach the expected state in {within_seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts `saldo ARGUMENTS` (dev mode listening on port 0); returns the
/// process and the address its banner names.
fn start_saldo(arguments: &[&str]) -> (Processes, String) {
    let (child, first_line) = spawn_with_first_line(arguments);
    (Processes(vec![("dev", child)]), banner_address(&first_line))
}

/// The address `saldo dev`'s banner names on its first line.
fn banner_address(first_line: &str) -> String {
    first_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("the banner names the URL: {first_line}"))
        .to_owned()
}

#[test]
fn an_installed_binary_serves_the_page_installed_beside_it() {
    // Regression (issue #16.8): --harness defaulted to a path baked in at
    // build time, so a binary installed elsewhere served no page. Now it
    // finds BIN/../share/saldo/harness by itself.
    let root = std::env::temp_dir().join(format!("saldo-installed-{}", std::process::id()));
    let page = root.join("share/saldo/harness");
    std::fs::create_dir_all(page.join("pkg")).expect("temp dir");
    std::fs::create_dir_all(root.join("bin")).expect("temp dir");
    std::fs::write(
        page.join("index.html"),
        "<!doctype html><title>installed</title>",
    )
    .expect("writes");
    std::fs::write(page.join("pkg").join("saldo_harness_bg.wasm"), b"\0asm").expect("writes");
    let binary = root.join("bin/saldo");
    std::fs::copy(env!("CARGO_BIN_EXE_saldo"), &binary).expect("installs");
    let mut command = Command::new(&binary);
    command
        .args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(&root)
        .env_remove("SALDO_HARNESS_DIR");
    let (child, first_line) = first_line_of(command);
    let address = banner_address(&first_line);
    let mut processes = Processes(vec![("dev", child)]);
    let (status, _, body) = http(&address, "GET", "/harness/", &[], None).expect("answers");
    assert_eq!(
        (status, body.as_str()),
        (200, Some("<!doctype html><title>installed</title>"))
    );
    processes.stop_all();
    std::fs::remove_dir_all(&root).expect("cleans up");
}

#[test]
fn dev_mode_serves_the_harness_page_or_says_how_to_build_it() {
    // Proves `saldo dev` serves the browser harness's files at /harness/,
    // and names the build command when there is no build.
    let page = std::env::temp_dir().join(format!("saldo-harness-{}", std::process::id()));
    std::fs::create_dir_all(page.join("pkg")).expect("temp dir");
    std::fs::write(
        page.join("index.html"),
        "<!doctype html><title>harness</title>",
    )
    .expect("writes");
    std::fs::write(page.join("pkg").join("saldo_harness_bg.wasm"), b"\0asm").expect("writes");
    let dir = page.to_str().expect("utf-8 path");
    let (mut processes, address) =
        start_saldo(&["dev", "--listen", "127.0.0.1:0", "--harness", dir]);
    let (status, headers, _) = http(&address, "GET", "/harness", &[], None).expect("answers");
    assert_eq!(status, 308);
    assert!(headers.contains(&("location".to_owned(), "/harness/".to_owned())));
    let (status, _, body) = http(&address, "GET", "/harness/", &[], None).expect("answers");
    assert_eq!(
        (status, body.as_str()),
        (200, Some("<!doctype html><title>harness</title>"))
    );
    let (status, headers, _) = http(
        &address,
        "GET",
        "/harness/pkg/saldo_harness_bg.wasm",
        &[],
        None,
    )
    .expect("answers");
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".to_owned(), "application/wasm".to_owned())));
    processes.stop_all();

    let missing = page.join("not-built");
    let (mut processes, address) = start_saldo(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--harness",
        missing.to_str().expect("utf-8 path"),
    ]);
    let (status, _, body) = http(&address, "GET", "/harness/", &[], None).expect("answers");
    assert_eq!(status, 404);
    assert!(
        body.as_str()
            .is_some_and(|text| text.contains("bash harness/build.sh"))
    );
    processes.stop_all();
    std::fs::remove_dir_all(&page).expect("cleanup");
}

#[test]
fn dev_mode_runs_the_readme_walkthrough_to_confirmation_and_cancellation() {
    // Proves the README's first command and walkthrough: in `saldo dev`, one
    // order is confirmed and charged, one is cancelled for insufficient
    // funds, one for lack of stock; a retried key replays; SIGTERM stops it.
    let (mut processes, address) = start_saldo(&["dev", "--listen", "127.0.0.1:0"]);
    let place = |key: &str, customer: &str, sku: &str, quantity: u32| {
        place_in_dev(&address, key, customer, sku, quantity)
    };
    let terminal = |body: &serde_json::Value| body["status"] != "PENDING";

    let (confirmed, first) = place("walkthrough-1", "alice", "book", 2);
    let order = http_wait(&address, &confirmed, &[], 10, terminal);
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["amount_minor"], 3_000);
    let (_, replayed) = place("walkthrough-1", "alice", "book", 2);
    assert_eq!(replayed, first, "a retried key replays the answer");
    let wallet = http_wait(&address, "/wallets/alice", &[], 5, |_| true);
    assert_eq!(wallet["balance_minor"], 7_000, "charged once: {wallet}");
    assert_eq!(wallet["entries"][0]["purpose"], "charge");

    let (poor, _) = place("walkthrough-2", "bob", "book", 1);
    let order = http_wait(&address, &poor, &[], 10, terminal);
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("CANCELLED"), Some("insufficient_funds")),
        "{order}"
    );
    let stock = http_wait(&address, "/stock/book", &[], 5, |_| true);
    assert_eq!(
        stock["reserved"], 0,
        "the compensation released the stock: {stock}"
    );
    assert_eq!(stock["on_hand"], 98);

    let (scarce, _) = place("walkthrough-3", "alice", "lamp", 2);
    let order = http_wait(&address, &scarce, &[], 10, terminal);
    assert_eq!(order["reason"], "out_of_stock", "{order}");
    let wallet = http_wait(&address, "/wallets/alice", &[], 5, |_| true);
    assert_eq!(wallet["balance_minor"], 7_000, "nothing charged for it");
    processes.stop_all();
}

/// Places an order of `quantity` × `sku` for `customer` in `saldo dev` at
/// `address` under `key`; its Location and the answer.
fn place_in_dev(
    address: &str,
    key: &str,
    customer: &str,
    sku: &str,
    quantity: u32,
) -> (String, serde_json::Value) {
    let body = serde_json::json!({ "customer": customer, "currency": "EUR", "lines": [{ "sku": sku, "quantity": quantity }] });
    let (status, headers, answer) = http(
        address,
        "POST",
        "/orders",
        &[("Idempotency-Key", key)],
        Some(&body),
    )
    .expect("dev answers");
    assert_eq!(status, 201, "{answer}");
    let location = headers
        .iter()
        .find(|(name, _)| name == "location")
        .map(|(_, value)| value.clone())
        .expect("a Location header");
    (location, answer)
}

/// Issues a key with `saldo api-key`; the key and its keys-file entry.
fn issue_key(arguments: &[&str]) -> (String, String) {
    let mut all = vec!["api-key"];
    all.extend_from_slice(arguments);
    let issued = saldo(&all);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let key = String::from_utf8_lossy(&issued.stderr)
        .lines()
        .next()
        .expect("the key on stderr's first line")
        .to_owned();
    (key, stdout(&issued))
}

#[test]
fn the_gateway_in_dev_mode_binds_issued_keys_to_their_customers_and_namespaces() {
    // Regression for issue #14.5-7 end to end: keys issued by `saldo
    // api-key --customer` act only for their customers, read nothing their
    // scopes do not name, and two clients using one Idempotency-Key get
    // their own orders.
    use serde_json::json;
    let reading = ["--scope", "orders:write", "--scope", "orders:read"];
    let (shop_a, entry_a) = issue_key(
        &[
            &["--name", "shop-a", "--customer", "alice"][..],
            &reading[..],
        ]
        .concat(),
    );
    let (shop_b, entry_b) = issue_key(
        &[
            &[
                "--name",
                "shop-b",
                "--customer",
                "alice",
                "--customer",
                "carol",
            ][..],
            &reading[..],
        ]
        .concat(),
    );
    let (bob_app, entry_bob) = issue_key(
        &[
            &["--name", "bob-app", "--customer", "bob"][..],
            &reading[..],
        ]
        .concat(),
    );
    assert!(
        entry_b.contains("customers = [\"alice\", \"carol\"]"),
        "{entry_b}"
    );
    let keys_file =
        std::env::temp_dir().join(format!("saldo-dev-keys-{}.toml", std::process::id()));
    std::fs::write(&keys_file, format!("{entry_a}\n{entry_b}\n{entry_bob}"))
        .expect("writes the keys file");
    let keys_path = keys_file.to_str().expect("utf-8 path");
    let (mut processes, address) =
        start_saldo(&["dev", "--listen", "127.0.0.1:0", "--keys", keys_path]);
    let place = |key: &str, idempotency: &str, customer: &str| {
        let body = json!({ "customer": customer, "currency": "EUR", "lines": [{ "sku": "book", "quantity": 1 }] });
        http(
            &address,
            "POST",
            "/orders",
            &[("X-Api-Key", key), ("Idempotency-Key", idempotency)],
            Some(&body),
        )
        .expect("dev answers")
    };
    let (status, _, refused) = place(&shop_a, "k", "bob");
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("customer_forbidden"))
    );
    let (status, _, first) = place(&shop_a, "k", "alice");
    assert_eq!(status, 201, "{first}");
    let (status, _, second) = place(&shop_b, "k", "alice");
    assert_eq!(status, 201, "{second}");
    assert_ne!(
        first["order_id"], second["order_id"],
        "shop-b got its own order"
    );
    let path = format!("/orders/{}", first["order_id"].as_str().expect("an id"));
    let (status, _, own) =
        http(&address, "GET", &path, &[("X-Api-Key", &shop_a)], None).expect("answers");
    assert_eq!((status, own["customer"].as_str()), (200, Some("alice")));
    let (status, _, hidden) =
        http(&address, "GET", &path, &[("X-Api-Key", &bob_app)], None).expect("answers");
    assert_eq!(
        (status, hidden["code"].as_str()),
        (404, Some("order_not_found"))
    );
    let (status, _, wallet) = http(
        &address,
        "GET",
        "/wallets/alice",
        &[("X-Api-Key", &shop_a)],
        None,
    )
    .expect("answers");
    assert_eq!(
        (status, wallet["code"].as_str()),
        (403, Some("scope_missing"))
    );
    processes.stop_all();
    let _ = std::fs::remove_file(&keys_file);
}

#[test]
fn a_configuration_file_sets_what_flags_do_not_and_its_mistakes_are_one_line() {
    // Proves `--config FILE`: its settings apply to the subcommand, and a
    // misspelt key is one readable line with a non-zero exit.
    let directory = std::env::temp_dir().join(format!("saldo-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("a directory");
    let good = directory.join("good.toml");
    std::fs::write(&good, "[dev]\nlisten = \"127.0.0.1:0\"\nno_seed = true\n").expect("writes");
    let bad = directory.join("bad.toml");
    std::fs::write(&bad, "[dev]\nlisen = \"127.0.0.1:0\"\n").expect("writes");
    let output = saldo(&["--config", bad.to_str().expect("utf-8"), "dev"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`lisen` is not a setting of `saldo dev`"),
        "{stderr}"
    );

    let (mut processes, address) = start_saldo(&["--config", good.to_str().expect("utf-8"), "dev"]);
    let (status, _, body) = http(&address, "GET", "/stock/book", &[], None).expect("answers");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("sku_not_found")),
        "no_seed = true applied"
    );
    processes.stop_all();
}

/// The production topology, each part its own process: PostgreSQL (a
/// fresh database), a broker process, the three services with HTTP, three
/// outbox publishers and the gateway in front.
struct Production {
    processes: Processes,
    /// Dropped after the processes, so that no service outlives its broker
    /// by much and none starts without one.
    broker: Broker,
    edge: Edge,
    launcher: Launcher,
    admin_url: String,
    database: String,
}

/// How each process of the topology is started.
struct Launcher {
    keys_file: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    ports: [String; 4],
}

/// What clients need to reach the platform; shared with client threads.
struct Edge {
    url: String,
    gateway_address: String,
    api_key: String,
    /// A key with only the `admin` scope, for every customer: the operator's.
    admin_key: String,
}

/// Every process of the topology, by the name `Production::start_process` knows.
const PRODUCTION_PROCESSES: [&str; 7] = [
    "order",
    "inventory",
    "payment",
    "outbox-order",
    "outbox-inventory",
    "outbox-payment",
    "gateway",
];

impl Production {
    fn start(suffix: &str) -> Production {
        Production::start_with(suffix, Vec::new())
    }

    /// The topology with `extra` in every process's environment.
    fn start_with(suffix: &str, extra: Vec<(&'static str, String)>) -> Production {
        let (admin_url, database, url) = migrated_database(suffix);
        let issued = saldo(&[
            "api-key",
            "--name",
            "e2e",
            "--all-customers",
            "--scope",
            "*",
            "--rate-per-second",
            "100000",
            "--burst",
            "100000",
        ]);
        assert!(issued.status.success());
        let api_key = String::from_utf8_lossy(&issued.stderr)
            .lines()
            .next()
            .expect("the key on stderr's first line")
            .to_owned();
        let (admin_key, admin_entry) =
            issue_key(&["--name", "operator", "--all-customers", "--scope", "admin"]);
        let entry = format!("{}\n{admin_entry}", stdout(&issued));
        let keys_file = std::env::temp_dir().join(format!(
            "saldo-e2e-keys-{suffix}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&keys_file, entry).expect("writes the keys file");
        let mut processes = Processes(Vec::new());
        let broker = spawn_broker(&mut processes);
        let ports = [0, 1, 2, 3].map(|_| format!("127.0.0.1:{}", free_port()));
        let mut env = vec![
            ("SALDO_DATABASE_URL", url.clone()),
            ("SALDO_LOG_FORMAT", "json".to_owned()),
            // The engine logs each message it handles at debug level.
            ("SALDO_LOG", "info,saldo_engine=debug".to_owned()),
        ];
        env.extend(broker.env());
        env.extend(extra);
        let mut production = Production {
            processes,
            broker,
            edge: Edge {
                url,
                gateway_address: ports[3].clone(),
                api_key: api_key.trim().to_owned(),
                admin_key: admin_key.trim().to_owned(),
            },
            launcher: Launcher {
                keys_file,
                env,
                ports,
            },
            admin_url,
            database,
        };
        for name in PRODUCTION_PROCESSES {
            production.launcher.start(&mut production.processes, name);
        }
        let ready = http_wait(
            &production.edge.gateway_address,
            "/readyz",
            &[],
            60,
            |body| body["status"] == "ready",
        );
        assert_eq!(ready["status"], "ready");
        production
    }

    fn stop(mut self) {
        self.processes.stop_all();
        let _ = std::fs::remove_file(&self.launcher.keys_file);
        psql(
            &self.admin_url,
            &format!("DROP DATABASE {} WITH (FORCE)", self.database),
        );
    }
}

impl Launcher {
    fn start(&self, processes: &mut Processes, name: &'static str) {
        let [order, inventory, payment, gateway] = &self.ports;
        let (order_url, payment_url, inventory_url) = (
            format!("http://{order}"),
            format!("http://{payment}"),
            format!("http://{inventory}"),
        );
        let keys = self.keys_file.to_string_lossy().into_owned();
        let args: Vec<&str> = match name {
            "order" => vec!["order", "--http-address", order],
            "inventory" => vec!["inventory", "--http-address", inventory],
            "payment" => vec!["payment", "--http-address", payment],
            "outbox-order" => vec!["outbox", "--service", "order"],
            "outbox-inventory" => vec!["outbox", "--service", "inventory"],
            "outbox-payment" => vec!["outbox", "--service", "payment"],
            "gateway" => vec![
                "gateway",
                "--listen",
                gateway,
                "--order-url",
                &order_url,
                "--payment-url",
                &payment_url,
                "--inventory-url",
                &inventory_url,
                "--keys",
                &keys,
            ],
            other => panic!("unknown process {other}"),
        };
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        processes.spawn(name, &args, &env);
    }
}

impl Edge {
    /// A write through the gateway, retried with the same key until the
    /// platform answers: what a correct client does when a process dies.
    fn write(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let correlation_id = format!("e2e-{key}");
        loop {
            let headers = [
                ("X-Api-Key", self.api_key.as_str()),
                ("Idempotency-Key", key),
                ("X-Correlation-Id", correlation_id.as_str()),
            ];
            match http(&self.gateway_address, method, path, &headers, Some(body)) {
                Some((200 | 201, _, answer)) => return answer,
                Some((502..=504, _, _)) | None => {}
                Some((status, _, answer)) => panic!("{method} {path}: {status} {answer}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{method} {path} never succeeded"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stock of two SKUs and `customers` wallets, the last four too poor to pay.
    fn seed(&self, customers: usize) {
        use serde_json::json;
        self.write(
            "PUT",
            "/stock/apple",
            "-",
            &json!({ "on_hand": 5_000, "unit_price_minor": 100, "currency": "EUR" }),
        );
        self.write(
            "PUT",
            "/stock/pear",
            "-",
            &json!({ "on_hand": 60, "unit_price_minor": 300, "currency": "EUR" }),
        );
        for customer in 0..customers {
            let amount_minor = if customer + 4 < customers {
                100_000
            } else {
                150
            };
            self.write(
                "POST",
                &format!("/wallets/c{customer}/top-ups"),
                &format!("seed-{customer}"),
                &json!({ "amount_minor": amount_minor, "currency": "EUR" }),
            );
        }
    }

    /// Places orders `0..orders` of `round` from `clients` threads (every
    /// tenth key sent twice), calling `during` with the count placed so far
    /// while they run.
    fn place_round(
        &self,
        round: usize,
        orders: usize,
        clients: usize,
        customers: usize,
        during: impl FnOnce(&std::sync::atomic::AtomicUsize),
    ) {
        use serde_json::json;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let placed = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for client in 0..clients {
                let placed = &placed;
                scope.spawn(move || {
                    for index in (client..orders).step_by(clients) {
                        let mut lines = vec![json!({ "sku": "apple", "quantity": 1 + index % 2 })];
                        if index % 3 == 0 {
                            lines.push(json!({ "sku": "pear", "quantity": 1 }));
                        }
                        let body = json!({ "customer": format!("c{}", index % customers), "currency": "EUR", "lines": lines });
                        let key = format!("r{round}-{index}");
                        let answer = self.write("POST", "/orders", &key, &body);
                        if index % 10 == 0 {
                            let again = self.write("POST", "/orders", &key, &body);
                            assert_eq!(again["order_id"], answer["order_id"], "a repeated key names the same order");
                        }
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            during(&placed);
        });
    }
}

/// Waits until `placed` reaches `milestone`, or fails after a deadline (so a
/// client that panicked does not leave the test waiting forever).
fn wait_for_placed(placed: &std::sync::atomic::AtomicUsize, milestone: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while placed.load(std::sync::atomic::Ordering::Relaxed) < milestone {
        assert!(
            std::time::Instant::now() < deadline,
            "the clients placed only {} of {milestone} orders",
            placed.load(std::sync::atomic::Ordering::Relaxed)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_thousand_orders_over_http_end_balanced_then_again_under_kill_9_of_every_service() {
    // Proves production mode end to end: PostgreSQL, a broker process, every
    // service and publisher and the gateway as separate processes; 1,000
    // orders through the HTTP API (confirmed, insufficient funds, out of
    // stock, repeated keys) all end and the SQL invariants hold; then 1,000
    // more while one process of every service is killed with kill -9 and
    // restarted: still all end, none is charged twice, none is lost.
    const ORDERS_PER_ROUND: usize = 1_000;
    const CLIENTS: usize = 4;
    const CUSTOMERS: usize = 20;

    let mut production = Production::start("http");
    let url = production.edge.url.clone();
    production.edge.seed(CUSTOMERS);
    let finished = "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'";
    for round in 1..=2_usize {
        let Production {
            processes,
            edge,
            launcher,
            ..
        } = &mut production;
        edge.place_round(round, ORDERS_PER_ROUND, CLIENTS, CUSTOMERS, |placed| {
            if round == 2 {
                // One kill -9 and restart of every service's process, spread
                // over the run while orders are being placed and handled.
                for (milestone, victim) in [
                    (100, "order"),
                    (250, "payment"),
                    (400, "inventory"),
                    (550, "outbox-order"),
                    (700, "outbox-payment"),
                    (850, "outbox-inventory"),
                ] {
                    wait_for_placed(placed, milestone);
                    processes.kill_hard(victim);
                    launcher.start(processes, victim);
                }
            }
        });
        let total = i64::try_from(round * ORDERS_PER_ROUND).expect("fits");
        wait_until(&url, finished, total, 240);
        assert_eq!(
            query(&url, "SELECT count(*) FROM orders.orders"),
            total,
            "one order per key: nothing lost, nothing doubled"
        );
        assert_money_and_stock_invariants(&url);
        for reason in ["insufficient_funds", "out_of_stock"] {
            assert!(
                query(
                    &url,
                    &format!("SELECT count(*) FROM orders.orders WHERE cancel_reason = '{reason}'")
                ) > 0,
                "round {round} has orders cancelled for {reason}"
            );
        }
        assert!(
            query(
                &url,
                "SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'"
            ) > 200
        );
    }
    // The request's correlation id reached the order row, the ledger entry
    // (for every charge) and the payment consumer's log lines.
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM payment.ledger_entries e JOIN orders.orders o USING (order_id) WHERE e.purpose = 'charge' AND e.correlation_id IS DISTINCT FROM o.body->>'correlation_id'"
        ),
        0
    );
    assert!(
        query(
            &url,
            "SELECT count(*) FROM payment.ledger_entries WHERE correlation_id LIKE 'e2e-r%'"
        ) > 200
    );
    let payment_log = std::fs::read_to_string(
        std::env::temp_dir().join(format!("saldo-test-{}-payment.log", std::process::id())),
    )
    .expect("the payment service's log");
    assert!(
        payment_log.contains("\"correlation_id\":\"e2e-r1-"),
        "payment logs carry the request's correlation id"
    );
    // Resident memory of every process at the end of the run.
    for (name, child) in &production.processes.0 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let rss = status
            .lines()
            .find(|line| line.starts_with("VmRSS"))
            .unwrap_or("VmRSS: ?");
        eprintln!("{name}: {rss}");
    }
    assert_every_saga_sound(&production.edge, 2 * ORDERS_PER_ROUND);
    production.stop();
}

/// Checks what must hold for every order, however often its steps were
/// retried (after a kill, an outage): its saga ran its steps in order, each
/// action and compensation effective at most once; and what a client sees
/// agrees with the database, for an order of each ending.
fn assert_every_saga_sound(edge: &Edge, orders: usize) {
    let url = edge.url.as_str();
    let bodies = {
        let output = Command::new("psql")
            .args([url, "-Atq", "-c", "SELECT body::text FROM orders.orders"])
            .output()
            .expect("psql runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut checked = 0;
    for body in bodies.lines() {
        let row: saldo_domain::order::OrderRow =
            serde_json::from_str(body).expect("an order row decodes");
        assert_saga_history_is_sound(&row);
        checked += 1;
    }
    assert_eq!(checked, orders, "every order's history was checked");
    let auth = [("X-Api-Key", edge.api_key.as_str())];
    for status in ["CONFIRMED", "CANCELLED"] {
        let output = Command::new("psql")
            .args([
                url,
                "-Atq",
                "-c",
                &format!("SELECT order_id, jsonb_array_length(body->'saga'->'history') FROM orders.orders WHERE status = '{status}' ORDER BY order_id LIMIT 1"),
            ])
            .output()
            .expect("psql runs");
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let (order_id, length) = line.split_once('|').expect("an order of each ending");
        let shown = http_wait(
            &edge.gateway_address,
            &format!("/orders/{order_id}"),
            &auth,
            10,
            |_| true,
        );
        assert_eq!(shown["status"], status, "{shown}");
        assert_eq!(
            shown["history"].as_array().map(Vec::len),
            length.parse().ok(),
            "the API shows the stored history: {shown}"
        );
    }
}

/// Runs `saldo admin ARGUMENTS` against the gateway with the operator's
/// key, as an operator would; its exit and output.
fn admin(edge: &Edge, arguments: &[&str]) -> Output {
    let url = format!("http://{}", edge.gateway_address);
    let mut all = vec!["admin", "--url", &url, "--key", &edge.admin_key];
    all.extend_from_slice(arguments);
    saldo(&all)
}

/// Where the stuck-sagas test leaves its exported recordings for the
/// harness's browser test (`SALDO_RECORDINGS`, by default
/// `target/recordings`), emptied first.
fn recordings_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SALDO_RECORDINGS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/recordings"),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the recordings directory");
    dir
}

/// `saldo admin ARGUMENTS` that must succeed: its JSON answer (the first
/// document when it prints several).
fn admin_json(edge: &Edge, arguments: &[&str]) -> serde_json::Value {
    let output = admin(edge, &[arguments, &["--json"]].concat());
    assert!(
        output.status.success(),
        "saldo admin {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("saldo admin {arguments:?} printed no JSON"))
}

/// Polls `saldo admin ARGUMENTS` until one of its items satisfies `found`;
/// returns that item.
fn admin_wait_for(
    edge: &Edge,
    arguments: &[&str],
    within_seconds: u64,
    found: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(within_seconds);
    loop {
        let page = admin_json(edge, arguments);
        if let Some(item) = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|item| found(item))
        {
            return item.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "saldo admin {arguments:?} never listed what was expected: {page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What a dry run must leave untouched: the order's version (0 for an id no
/// order has, such as "-"), every outbox's rows of the order, every
/// schema's audit trail and dead letters.
fn written_state(url: &str, order_id: &str) -> Vec<i64> {
    let mut state = vec![query(
        url,
        &format!(
            "SELECT COALESCE(max(version), 0) FROM orders.orders WHERE order_id = '{order_id}'"
        ),
    )];
    // What an intervention (or its dry run) may write: the order row and
    // its outbox, and every service's audit trail and dead letters. The
    // participants' outboxes are left out: a participant answering a
    // re-sent command writes there while the operator looks.
    state.push(query(
        url,
        &format!("SELECT count(*) FROM orders.outbox WHERE order_id = '{order_id}'"),
    ));
    for schema in ["orders", "inventory", "payment"] {
        state.push(query(url, &format!("SELECT count(*) FROM {schema}.audit")));
        state.push(query(
            url,
            &format!("SELECT count(*) FROM {schema}.dead_letters"),
        ));
    }
    state
}

/// An operator's look, then act, on one order: `saldo admin ACTION
/// --dry-run` (which must write nothing), then the same action at the
/// version the dry run showed. A saga that moves by itself in between (its
/// own deadline re-sends the step) makes the real run `version_changed`,
/// and the operator looks again, at most three times. The dry run's and the
/// real run's answers.
fn dry_run_then_commit(
    edge: &Edge,
    url: &str,
    order_id: &str,
    action: &[&str],
) -> (serde_json::Value, serde_json::Value) {
    for _ in 0..3 {
        let before = written_state(url, order_id);
        let dry = admin_json(edge, &[action, &["--dry-run"]].concat());
        assert_eq!(dry["dry_run"], true, "{dry}");
        let after = written_state(url, order_id);
        if after[0] != before[0] {
            continue; // the saga moved by itself while the operator looked
        }
        assert_eq!(after, before, "a dry run writes nothing");
        let version = dry["expected_version"].to_string();
        let output = admin(
            edge,
            &[action, &["--expected-version", &version, "--json"]].concat(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("version_changed") {
            continue;
        }
        assert!(output.status.success(), "saldo admin {action:?}: {stderr}");
        let done = serde_json::from_slice(&output.stdout).expect("the answer is JSON");
        return (dry, done);
    }
    panic!("saldo admin {action:?}: the order kept moving for three looks")
}

/// The order row as the order service stored it.
fn order_row(url: &str, order_id: &str) -> saldo_domain::order::OrderRow {
    let output = Command::new("psql")
        .args([
            url,
            "-Atq",
            "-c",
            &format!("SELECT body::text FROM orders.orders WHERE order_id = '{order_id}'"),
        ])
        .output()
        .expect("psql runs");
    serde_json::from_slice(&output.stdout).expect("an order row decodes")
}

/// Places an order of `apples` (at 100 minor units each) through the
/// gateway with the shop's key; its id.
fn place_order(edge: &Edge, key: &str, customer: &str, apples: u32) -> String {
    let answer = edge.write(
        "POST",
        "/orders",
        key,
        &serde_json::json!({ "customer": customer, "currency": "EUR", "lines": [{ "sku": "apple", "quantity": apples }] }),
    );
    answer["order_id"]
        .as_str()
        .expect("the order's id")
        .to_owned()
}

#[test]
fn stuck_sagas_of_every_kind_are_found_and_repaired_through_the_operator_api() {
    // Proves issue #15's "done when" on PostgreSQL, `saldo broker` and the
    // gateway, each service its own process: a saga stuck on a participant
    // down past its deadline, a poison message and a lost reply are each
    // listed by `saldo admin` with what they await, dry-run without a
    // write, repaired by the fitting intervention, and every order ends
    // with money conserved and reconciliation clean.
    use saldo_saga::{HistoryEvent, Intervention, Phase};
    let started = std::time::Instant::now();
    let mut production = Production::start("stuck");
    let url = production.edge.url.clone();
    let Production {
        processes,
        broker,
        edge,
        launcher,
        ..
    } = &mut production;
    // c0 has 1,000 EUR; c4 has 1.50 EUR.
    edge.seed(5);
    // An order that ends on its own, cancelled for insufficient funds.
    let poor = place_order(edge, "poor", "c4", 2);

    // (b) A poison message: bytes that are no envelope, on the topic the
    // inventory consumer reads. It is dead-lettered after one look.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use rdkafka::producer::FutureRecord;
        let producer = saldo_kafka::producer::create(&saldo_kafka::connection::Connection::new(
            &broker.bootstrap,
        ))
        .expect("a producer");
        producer
            .send(
                FutureRecord::to(saldo_kafka::topics::consumed_by(
                    saldo_domain::messages::Service::Inventory,
                ))
                .key("poison")
                .payload(b"{\"not\": \"an envelope\"".as_slice()),
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("the poison message is published");
    });

    // Found among the dead letters, with the consumer's reason.
    let letter = admin_wait_for(edge, &["dead-letters"], 10, |letter| {
        letter["service"] == "inventory"
    });
    assert!(letter["message_id"].is_null(), "{letter}");
    assert!(
        !letter["error"].as_str().unwrap_or("").is_empty(),
        "{letter}"
    );
    let letter_id = letter["id"].to_string();
    // Discard, not redrive: the bytes are no message, so a redrive would
    // only dead-letter them again. The API refuses it, saying so.
    let redrive = admin(
        edge,
        &["redrive", "--service", "inventory", &letter_id, "--dry-run"],
    );
    assert_eq!(redrive.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&redrive.stderr).contains("not_redrivable"),
        "{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    let discard = [
        "discard",
        "--service",
        "inventory",
        letter_id.as_str(),
        "--reason",
        "not an envelope: written to the topic by hand",
    ];
    let before = written_state(&url, "-");
    let dry = admin_json(edge, &[&discard[..], &["--dry-run"]].concat());
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(written_state(&url, "-"), before, "a dry run writes nothing");
    admin_json(edge, &discard);
    assert_eq!(
        query(&url, "SELECT count(*) FROM inventory.dead_letters"),
        0,
        "the letter is settled"
    );
    assert_eq!(
        query(
            &url,
            "SELECT count(*) FROM inventory.audit WHERE action = 'discard'"
        ),
        1
    );

    // (c) A lost reply: payment charges the order and commits its reply to
    // its outbox, and the row is deleted (as the database owner) before
    // its publisher, stopped meanwhile, sends it.
    processes.stop("outbox-payment");
    let lost = place_order(edge, "lost-reply", "c0", 1);
    let reply_row = format!(
        "SELECT count(*) FROM payment.outbox WHERE order_id = '{lost}' AND message_type = 'PaymentSucceeded' AND published_at IS NULL"
    );
    wait_until(&url, &reply_row, 1, 20);
    psql(
        &url,
        &format!(
            "DELETE FROM payment.outbox WHERE order_id = '{lost}' AND message_type = 'PaymentSucceeded'"
        ),
    );
    // Payment's publisher stays stopped until the repair: should the
    // step's deadline re-send the charge meanwhile, payment's second answer
    // waits in its outbox and the saga stays stuck on the same step.
    // Found: pending, unchanged for a second, awaiting take_payment's reply.
    let listed = admin_wait_for(edge, &["orders", "--stuck", "1s"], 8, |order| {
        order["order_id"] == lost.as_str()
    });
    assert_eq!(listed["awaiting"], "action_reply", "{listed}");
    assert_eq!(listed["step_name"], "take_payment", "{listed}");
    assert_eq!(listed["phase"], "action", "{listed}");
    assert!(listed["attempt"].as_u64() >= Some(1), "{listed}");
    // The same listing as an operator reads it.
    let text = stdout(&admin(edge, &["orders", "--stuck", "1s"]));
    assert!(
        text.lines().any(|line| line.starts_with(lost.as_str())
            && line.contains("PENDING")
            && line.contains("awaiting action_reply take_payment (action, attempt")),
        "{text}"
    );
    // Its story shows why: the charge is in the ledger, and payment's
    // reply is in no outbox.
    let story = admin_json(edge, &["story", &lost]);
    assert!(
        story["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| entry["posting"]["memo"]["purpose"] == "charge"),
        "the charge was posted: {story}"
    );
    assert!(
        !story["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|message| message["message_type"] == "PaymentSucceeded"
                && !message["published_at"].is_null()),
        "the reply is lost: {story}"
    );
    // Resolve, not force-compensation: the ledger proves the charge took
    // effect, so stating "take_payment succeeded" moves the saga exactly as
    // the lost reply would have, and the customer keeps the goods paid for;
    // compensating would refund and cancel an order that went through.
    // (Waiting would also do: its deadline re-sends the charge, which
    // payment answers from its record. Resolving is what an operator does
    // who has checked the ledger and will not wait.)
    let resolve = [
        "resolve",
        lost.as_str(),
        "--step",
        "take_payment",
        "--phase",
        "action",
        "--outcome",
        "succeeded",
    ];
    let (dry, done) = dry_run_then_commit(edge, &url, &lost, &resolve);
    assert!(
        dry["decision"].to_string().contains("CommitStock"),
        "the dry run shows the next command: {dry}"
    );
    assert_eq!(done["dry_run"], false, "{done}");
    launcher.start(processes, "outbox-payment");
    assert!(
        order_row(&url, &lost)
            .history()
            .iter()
            .any(|record| matches!(
                record.event,
                HistoryEvent::Intervened {
                    action: Intervention::Resolved
                }
            )),
        "the resolution is in the saga's history"
    );

    // (a) A participant down past its deadline: inventory stops, an order's
    // reserve_stock goes unanswered past its deadline and the saga retries.
    processes.stop("inventory");
    let waiting = place_order(edge, "participant-down", "c0", 1);
    let listed = admin_wait_for(edge, &["orders", "--stuck", "1s"], 25, |order| {
        order["order_id"] == waiting.as_str()
            && order["awaiting"] == "action_reply"
            && order["attempt"].as_u64() >= Some(2)
    });
    assert_eq!(listed["step_name"], "reserve_stock", "{listed}");
    assert_eq!(listed["phase"], "action", "{listed}");
    // Retry now, as inventory comes back: the step can still succeed, and
    // the saga would otherwise send its next attempt only when this one's
    // deadline passes. Force compensation would cancel an order that can
    // go through, and reserve_stock cannot be resolved as succeeded (only
    // inventory knows the price). Inventory also finds the earlier
    // attempts on its topic; it keys its reservation by the order, so
    // answering all of them is one effect. The retry is committed while
    // inventory is still down (at the version its dry run showed; should
    // the saga's own deadline move it first, the operator looks again).
    let (dry, done) = dry_run_then_commit(edge, &url, &waiting, &["retry-now", &waiting]);
    assert!(
        dry["decision"].to_string().contains("ReserveStock"),
        "the dry run shows the command sent again: {dry}"
    );
    assert_eq!(done["dry_run"], false, "{done}");
    // Inventory comes back only now, so the retry is committed before any
    // answer can move the saga.
    launcher.start(processes, "inventory");
    let history = order_row(&url, &waiting).history().to_vec();
    let intervened = history
        .iter()
        .position(|record| {
            matches!(
                record.event,
                HistoryEvent::Intervened {
                    action: Intervention::RetriedNow
                }
            )
        })
        .expect("the retry is in the saga's history");
    let retried_attempt = history[..intervened]
        .iter()
        .rev()
        .find_map(|record| match record.event {
            HistoryEvent::Sent {
                step: 0,
                phase: Phase::Action,
                attempt,
            } => Some(u64::from(attempt) + 1),
            _ => None,
        })
        .expect("reserve_stock was sent before the retry");
    assert!(
        matches!(
            history.get(intervened + 1).map(|record| &record.event),
            Some(HistoryEvent::Sent { step: 0, phase: Phase::Action, attempt }) if u64::from(*attempt) == retried_attempt
        ),
        "the retry sent reserve_stock's next attempt at once: {history:?}"
    );

    // Every order ends: the repaired ones confirmed, the poor one cancelled.
    let orders = 3;
    wait_until(
        &url,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        orders,
        30,
    );
    for order_id in [&lost, &waiting] {
        assert_eq!(
            order_row(&url, order_id).status(),
            saldo_domain::order::OrderStatus::Confirmed,
            "{order_id}"
        );
    }
    assert!(
        matches!(
            order_row(&url, &poor).status(),
            saldo_domain::order::OrderStatus::Cancelled(_)
        ),
        "{poor}"
    );
    let audited = admin_json(edge, &["audit", "--service", "order"]);
    let actions: Vec<&str> = audited["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|record| record["actor"]["principal"] == "operator")
        .filter_map(|record| record["action"].as_str())
        .collect();
    assert_eq!(actions, ["resolve", "retry_now"], "{audited}");
    assert_money_and_stock_invariants(&url);
    assert_every_saga_sound(edge, usize::try_from(orders).expect("fits"));
    psql(&url, "GRANT saldo_reconcile TO CURRENT_USER");
    let read_only = format!("{url}?options=-c%20role%3Dsaldo_reconcile");
    let reconciled = saldo(&["reconcile", "--once", "--database-url", &read_only]);
    assert_eq!(
        reconciled.status.code(),
        Some(0),
        "{}{}",
        stdout(&reconciled),
        String::from_utf8_lossy(&reconciled.stderr)
    );
    assert!(
        stdout(&reconciled).contains("clean"),
        "{}",
        stdout(&reconciled)
    );
    // Each order exports as a recording that replays exactly through the
    // deciders (an operator's resolve, a retry after deadlines, a refusal);
    // the harness's browser test replays the same files in Chromium and
    // must show the hash printed here.
    let recordings = recordings_dir();
    for order_id in [&poor, &lost, &waiting] {
        let path = recordings.join(format!("{order_id}.jsonl"));
        let exported = admin(
            edge,
            &["export", order_id, "--output", &path.to_string_lossy()],
        );
        let said = String::from_utf8_lossy(&exported.stderr).into_owned();
        assert!(exported.status.success(), "export {order_id}: {said}");
        assert!(said.starts_with("replay: exact"), "{order_id}: {said}");
        let hash = said.trim().rsplit(' ').next().expect("a hash");
        let text = std::fs::read_to_string(&path).expect("written");
        let player = saldo_sim::recorded::RecordedPlayer::import(&text).expect("replayable");
        assert_eq!(player.verification().trace_hash, hash);
        assert!(player.verification().exact(), "{order_id}");
        std::fs::write(recordings.join(format!("{order_id}.hash")), hash).expect("written");
    }
    // With a participant down, its part of the story is missing: the export
    // is refused (503 story_incomplete, naming the service), in one line,
    // and writes no file a replay would misread.
    processes.stop("payment");
    let partial = std::env::temp_dir().join(format!("saldo-partial-{}.jsonl", std::process::id()));
    let refused = admin(
        edge,
        &["export", &poor, "--output", &partial.to_string_lossy()],
    );
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(
        said.contains("503 story_incomplete") && said.contains("payment"),
        "{said}"
    );
    assert!(!partial.exists(), "a refused export wrote {partial:?}");
    production.stop();
    eprintln!("stuck sagas repaired in {:?}", started.elapsed());
}

/// Restarts the machine's PostgreSQL in immediate mode: every connection
/// dropped at once, no clean shutdown, crash recovery on start. Only the test
/// that does this runs at that moment (tests/run.sh runs it on its own).
fn restart_postgresql_immediately() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .max_by_key(|version| version.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL version");
    let arguments = [
        "--skip-systemctl-redirect",
        version.as_str(),
        "main",
        "restart",
        "-m",
        "immediate",
    ];
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0"));
    let status = if root {
        Command::new("pg_ctlcluster").args(arguments).status()
    } else {
        Command::new("sudo")
            .arg("pg_ctlcluster")
            .args(arguments)
            .status()
    }
    .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL restarted");
}

#[test]
fn restarts_of_postgresql_and_the_broker_mid_flow_lose_nothing() {
    // Proves the engine survives its dependencies: while 600 orders are
    // placed through the gateway, PostgreSQL is restarted in immediate mode
    // (every connection of every process dropped) and later the broker goes
    // down for a few seconds and comes back. Every order still ends, money
    // is conserved, nothing is charged twice or dead-lettered, and
    // reconciliation (with the read-only role) reports nothing.
    const ORDERS: usize = 600;
    const CLIENTS: usize = 4;
    const CUSTOMERS: usize = 20;
    /// How long the broker stays down: the fault's length, not a wait.
    const BROKER_OUTAGE: std::time::Duration = std::time::Duration::from_secs(3);

    let mut production = Production::start("restarts");
    production.edge.seed(CUSTOMERS);
    let url = production.edge.url.clone();
    let Production {
        processes,
        broker,
        edge,
        ..
    } = &mut production;
    edge.place_round(1, ORDERS, CLIENTS, CUSTOMERS, |placed| {
        wait_for_placed(placed, 150);
        restart_postgresql_immediately();
        wait_for_placed(placed, 350);
        broker.go_down(processes);
        std::thread::sleep(BROKER_OUTAGE);
        broker.come_back(processes);
    });
    let orders = i64::try_from(ORDERS).expect("fits");
    wait_until(
        &url,
        "SELECT count(*) FROM orders.orders WHERE status <> 'PENDING'",
        orders,
        240,
    );
    assert_eq!(query(&url, "SELECT count(*) FROM orders.orders"), orders);
    assert_money_and_stock_invariants(&url);
    assert_every_saga_sound(&production.edge, ORDERS);
    // Reconciliation judges a settled platform: every outbox drained.
    wait_until(
        &url,
        "SELECT CASE WHEN (SELECT count(*) FROM orders.outbox WHERE published_at IS NULL) + \
         (SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL) + \
         (SELECT count(*) FROM payment.outbox WHERE published_at IS NULL) = 0 THEN 1 ELSE 0 END",
        1,
        60,
    );
    psql(&url, "GRANT saldo_reconcile TO CURRENT_USER");
    let read_only = format!("{url}?options=-c%20role%3Dsaldo_reconcile");
    let report = saldo(&["reconcile", "--once", "--database-url", &read_only]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "reconciliation is clean: {}{}",
        stdout(&report),
        String::from_utf8_lossy(&report.stderr)
    );
    production.stop();
}

#[test]
fn a_consumer_refuses_to_start_when_its_inbox_horizon_is_shorter_than_its_topics_retention() {
    // Proves (#14 point 10) a consumer whose inbox receipts would be purged
    // before its topic forgets the message exits 2 with one readable line,
    // and with a horizon that covers the retention starts and stops cleanly.
    // The mock broker does not report retention.ms, so --topic-retention stands in.
    let (admin_url, name, url) = migrated_database("horizon");
    let mut processes = Processes(Vec::new());
    let broker = spawn_broker(&mut processes);
    let bootstrap = broker.bootstrap.clone();
    let service = |horizon: &str, retention: &str| {
        vec![
            "payment".to_owned(),
            "--database-url".to_owned(),
            url.clone(),
            "--kafka-bootstrap".to_owned(),
            bootstrap.clone(),
            "--create-topics".to_owned(),
            "false".to_owned(),
            "--inbox-horizon".to_owned(),
            horizon.to_owned(),
            "--topic-retention".to_owned(),
            retention.to_owned(),
        ]
    };
    for (horizon, retention) in [("1d", "7d"), ("7d", "8d")] {
        let arguments = service(horizon, retention);
        let refused = saldo(&arguments.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(refused.status.code(), Some(2), "{stderr}");
        assert!(
            last.starts_with("saldo: inbox horizon ")
                && last.contains("is shorter than --topic-retention")
                && last.contains("saldo.payment.commands"),
            "{stderr}"
        );
    }
    let address = format!("127.0.0.1:{}", free_port());
    let mut arguments = service("7d", "7d");
    arguments.extend(["--http-address".to_owned(), address.clone()]);
    processes.spawn(
        "payment",
        &arguments.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    http_wait(&address, "/healthz", &[], 60, |_| true);
    processes.stop_all();
    psql(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)"));
}

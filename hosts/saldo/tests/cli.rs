//! The `saldo` binary as a user meets it: exit codes, error lines, output files.

use std::process::{Command, Output};

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
    ] {
        let output = saldo(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let output = saldo(&["sim", "--seeds", "abc"]);
    assert_ne!(output.status.code(), Some(0), "clap refuses non-numbers");
}

#[test]
fn migrate_applies_once_and_then_reports_up_to_date() {
    // Proves `saldo migrate` applies every migration to a new database, then
    // nothing, and that a bad URL is one readable line with exit code 2.
    let admin_url = std::env::var("SALDO_TEST_DATABASE_URL")
        .expect("tests/run.sh sets SALDO_TEST_DATABASE_URL");
    let name = format!("saldo_test_cli_{}", std::process::id());
    let psql = |sql: String| {
        Command::new("psql")
            .args([admin_url.as_str(), "-q", "-c", &sql])
            .output()
            .expect("psql runs")
    };
    psql(format!("DROP DATABASE IF EXISTS {name}"));
    assert!(psql(format!("CREATE DATABASE {name}")).status.success());
    let url = saldo_postgres::testing::with_database(&admin_url, &name);
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
    psql(format!("DROP DATABASE {name}"));
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

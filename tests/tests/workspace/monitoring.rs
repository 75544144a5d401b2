//! The Prometheus rules and the Grafana dashboard, held to the code: every
//! finding kind with its severity, and only metrics the hosts export.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use saldo_reconcile::{FindingKind, Severity};
use saldo_tests::architecture::{rust_files, workspace_root};

const RULES: &str = "deploy/prometheus/saldo-rules.yml";
const DASHBOARD: &str = "deploy/grafana/saldo-dashboard.json";
const BY_SEVERITY: &str = "saldo:reconcile_findings:by_severity";

fn read(path: &str) -> String {
    fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
    }
}

/// The rules file's rules, each as its lines (from `- record:` or
/// `- alert:` up to the next rule).
fn rules(text: &str) -> Vec<Vec<&str>> {
    let mut rules: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("- record:") || trimmed.starts_with("- alert:") {
            rules.push(Vec::new());
        }
        if trimmed.starts_with("- name:") || trimmed.starts_with('#') {
            continue;
        }
        if let Some(rule) = rules.last_mut() {
            rule.push(line);
        }
    }
    rules
}

/// The value of `key:` in a rule, with a folded (`>-`) value's lines joined.
fn field(rule: &[&str], key: &str) -> Option<String> {
    let start = rule.iter().position(|line| {
        line.trim_start()
            .trim_start_matches("- ")
            .starts_with(&format!("{key}:"))
    })?;
    let line = rule[start];
    let value = line.split_once(':').expect("a key").1.trim();
    if value != ">-" {
        return Some(value.to_owned());
    }
    let indent = line.len() - line.trim_start().len();
    let folded: Vec<&str> = rule[start + 1..]
        .iter()
        .take_while(|next| next.len() - next.trim_start().len() > indent)
        .map(|next| next.trim())
        .collect();
    Some(folded.join(" "))
}

/// Metric names in a PromQL expression: `saldo_...` (exported) and
/// `saldo:...` (recorded).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("saldo") {
        let before = &rest[..start];
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        let inside_a_name = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !inside_a_name && name.len() > "saldo".len() {
            names.insert(name.clone());
        }
        rest = &rest[start + name.len().max(1)..];
    }
    names
}

/// Every metric the hosts export, as the names Prometheus scrapes:
/// histograms are summaries, with `_sum` and `_count` series.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in rust_files(&workspace_root().join("hosts")) {
        let source = fs::read_to_string(&file).expect("a source file");
        for (macro_name, suffixes) in [
            ("metrics::counter!(", &[""][..]),
            ("metrics::gauge!(", &[""][..]),
            ("metrics::histogram!(", &["", "_sum", "_count"][..]),
        ] {
            for (_, rest) in source
                .match_indices(macro_name)
                .map(|(at, _)| source.split_at(at + macro_name.len()))
            {
                // The name may follow on the next line, as rustfmt breaks
                // a long call.
                let Some(rest) = rest.trim_start().strip_prefix('"') else {
                    continue;
                };
                let name = rest.split('"').next().expect("a name");
                for suffix in suffixes {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

#[test]
fn the_rules_give_every_finding_kind_its_severity_and_each_warning_kind_an_alert() {
    // Proves the recording rule maps each FindingKind::ALL to its severity() exactly once, and no other kind.
    let text = read(RULES);
    let rules = rules(&text);
    let mut mapped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rule in rules
        .iter()
        .filter(|rule| field(rule, "record").as_deref() == Some(BY_SEVERITY))
    {
        let expression = field(rule, "expr").expect("an expression");
        let kinds = expression
            .split_once("kind=~\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .unwrap_or_else(|| panic!("{BY_SEVERITY} selects kinds by kind=~\"...\": {expression}"))
            .0;
        let severity = field(rule, "severity").expect("a severity label");
        for kind in kinds.split('|') {
            mapped
                .entry(kind.to_owned())
                .or_default()
                .push(severity.clone());
        }
    }
    let expected: BTreeMap<String, Vec<String>> = FindingKind::ALL
        .iter()
        .map(|kind| {
            (
                kind.name().to_owned(),
                vec![severity_name(kind.severity()).to_owned()],
            )
        })
        .collect();
    assert_eq!(mapped, expected);

    let alert_expressions: Vec<String> = rules
        .iter()
        .filter(|rule| field(rule, "alert").is_some())
        .map(|rule| field(rule, "expr").expect("an expression"))
        .collect();
    for kind in FindingKind::ALL
        .iter()
        .filter(|kind| kind.severity() == Severity::Warning)
    {
        let selector = format!("kind=\"{}\"", kind.name());
        assert!(
            alert_expressions
                .iter()
                .any(|expression| expression.contains(&selector)),
            "no alert selects the warning kind {}",
            kind.name()
        );
    }
    assert!(
        alert_expressions
            .iter()
            .any(|expression| expression
                .contains(&format!("{BY_SEVERITY}{{severity=\"critical\"}}"))),
        "an alert covers every critical kind"
    );
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    // Proves each alert carries severity, summary, description and a runbook anchor that docs/operations.md has.
    let text = read(RULES);
    let operations = read("docs/operations.md");
    let alerts: Vec<Vec<&str>> = rules(&text)
        .into_iter()
        .filter(|rule| field(rule, "alert").is_some())
        .collect();
    assert!(alerts.len() >= 8, "the alerts are found ({})", alerts.len());
    for alert in &alerts {
        let name = field(alert, "alert").expect("a name");
        let severity = field(alert, "severity").unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{name}: severity {severity:?}"
        );
        assert!(field(alert, "summary").is_some(), "{name}: a summary");
        assert!(
            field(alert, "description").is_some(),
            "{name}: a description"
        );
        let runbook = field(alert, "runbook").unwrap_or_default();
        assert_eq!(
            runbook,
            format!("docs/operations.md#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            operations.contains(&format!("\n## {name}\n")),
            "docs/operations.md has a section {name}"
        );
    }
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_the_hosts_export_or_the_rules_record() {
    // Proves no rule or panel queries a metric name the code does not export (a typo or a renamed metric).
    let exported = exported_metrics();
    assert!(
        exported.contains("saldo_reconcile_findings"),
        "the exported metrics are found: {exported:?}"
    );
    let text = read(RULES);
    let rules = rules(&text);
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter_map(|rule| field(rule, "record"))
        .collect();
    let known = |name: &String| exported.contains(name) || recorded.contains(name);

    let rule_expressions: Vec<String> = rules
        .iter()
        .map(|rule| field(rule, "expr").expect("an expression"))
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    let panel_expressions: Vec<String> = panels
        .iter()
        .flat_map(|panel| {
            panel["targets"]
                .as_array()
                .expect("each panel has targets")
                .iter()
        })
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("each target has an expression")
                .to_owned()
        })
        .collect();
    assert!(
        panel_expressions.len() >= panels.len(),
        "every panel queries something"
    );

    for (source, expressions) in [(RULES, &rule_expressions), (DASHBOARD, &panel_expressions)] {
        for expression in expressions {
            let names = metric_names(expression);
            assert!(
                !names.is_empty(),
                "{source}: {expression} names a Saldo metric"
            );
            let unknown: Vec<&String> = names.iter().filter(|name| !known(name)).collect();
            assert!(
                unknown.is_empty(),
                "{source}: {expression} names {unknown:?}, which nothing exports or records"
            );
        }
    }
}

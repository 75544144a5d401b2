//! librdkafka properties passed through configuration (`[kafka]`,
//! `SALDO_KAFKA__<NAME>`, `--kafka-property`): checked before anything
//! connects, Saldo's own settings refused, secrets never shown.

use std::process::{Command, Output};

/// `saldo ARGS` with only `environment` (and an optional configuration file).
fn saldo_with(arguments: &[&str], environment: &[(&str, &str)], file: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saldo"));
    command.env_clear().envs(environment.iter().copied());
    if let Some(text) = file {
        let path = std::env::temp_dir().join(format!(
            "saldo-kafka-cli-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).expect("writes the file");
        command.arg("--config").arg(path);
    }
    command.args(arguments).output().expect("the binary runs")
}

const ORDER: [&str; 5] = [
    "--check-config",
    "order",
    "--database-url=postgres://saldo_order@db/saldo",
    "--kafka-bootstrap=broker:9092",
    "--metrics-address=127.0.0.1:9464",
];

#[test]
fn a_managed_kafka_configuration_passes_check_config_with_its_secrets_redacted() {
    // Proves SASL_SSL with SCRAM and a CA file, from the file's [kafka]
    // table and SALDO_KAFKA__ variables, is accepted (librdkafka is built
    // with TLS), shown property by property, and the password never printed.
    let output = saldo_with(
        &ORDER,
        &[
            ("SALDO_KAFKA__SASL_USERNAME", "saldo-order"),
            ("SALDO_KAFKA__SASL_PASSWORD", "hunter2-secret"),
            ("SALDO_KAFKA__CLIENT_ID", "from-the-environment"),
        ],
        Some(
            "[kafka]\nsecurity.protocol = \"SASL_SSL\"\nsasl.mechanism = \"SCRAM-SHA-512\"\n\
             ssl.ca.location = \"/etc/ssl/certs/ca-certificates.crt\"\nclient.id = \"from-the-file\"\n",
        ),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    for shown in [
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.username=saldo-order",
        "sasl.password=<redacted>",
        "client.id=from-the-environment",
    ] {
        assert!(stdout.contains(shown), "{shown} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}{stderr}"
    );
}

#[rstest::rstest]
#[case::protected_from_the_environment(&[("SALDO_KAFKA__ENABLE_IDEMPOTENCE", "false")], None, &[], "enable.idempotence")]
#[case::protected_from_the_file(&[], Some("[kafka]\nacks = \"1\"\n"), &[], "acks")]
#[case::protected_alias(&[], Some("[kafka]\n\"request.required.acks\" = 0\n"), &[], "request.required.acks")]
#[case::protected_by_flag(&[], None, &["--kafka-property", "isolation.level=read_uncommitted"], "isolation.level")]
#[case::offsets(&[("SALDO_KAFKA__ENABLE_AUTO_OFFSET_STORE", "true")], None, &[], "enable.auto.offset.store")]
#[case::set_by_a_flag(&[("SALDO_KAFKA__BOOTSTRAP_SERVERS", "elsewhere:9092")], None, &[], "--kafka-bootstrap")]
#[case::unknown(&[("SALDO_KAFKA__NO_SUCH_PROPERTY", "1")], None, &[], "No such configuration property: \"no.such.property\"")]
#[case::bad_value(&[("SALDO_KAFKA__SECURITY_PROTOCOL", "SASL_CARRIER_PIGEON")], None, &[], "security.protocol")]
#[case::no_value(&[], None, &["--kafka-property", "client.id"], "NAME=VALUE")]
fn a_refused_kafka_property_is_one_line_and_exit_2_before_anything_connects(
    #[case] environment: &[(&str, &str)],
    #[case] file: Option<&str>,
    #[case] flags: &[&str],
    #[case] expected: &str,
) {
    // Proves a protected, flag-owned, unknown or malformed property stops
    // `--check-config` and the command itself (which would connect to the
    // database and the broker first: here nothing listens) with one line
    // naming it, and never repeats a secret given beside it.
    let mut environment = environment.to_vec();
    environment.push(("SALDO_KAFKA__SASL_PASSWORD", "hunter2-secret"));
    for check in [true, false] {
        let mut arguments: Vec<&str> = if check {
            ORDER.to_vec()
        } else {
            ORDER[1..].to_vec()
        };
        if !check {
            arguments[1] = "--database-url=postgres://saldo_order@127.0.0.1:9/saldo";
            arguments[2] = "--kafka-bootstrap=127.0.0.1:9";
        }
        arguments.extend_from_slice(flags);
        let output = saldo_with(&arguments, &environment, file);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[test]
fn the_outbox_publisher_takes_the_same_properties_and_other_commands_ignore_them() {
    // Proves `saldo outbox` reads the passthrough too, and a command without
    // Kafka clients (migrate) is not disturbed by the variables or the table.
    let outbox = saldo_with(
        &[
            "--check-config",
            "outbox",
            "--service=payment",
            "--database-url=postgres://saldo_payment@db/saldo",
            "--kafka-bootstrap=broker:9092",
        ],
        &[("SALDO_KAFKA__LINGER_MS", "20")],
        None,
    );
    assert_eq!(
        outbox.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&outbox.stderr)
    );
    assert!(String::from_utf8_lossy(&outbox.stdout).contains("linger.ms=20"));
    let migrate = saldo_with(
        &[
            "--check-config",
            "migrate",
            "--database-url=postgres://x@db/saldo",
        ],
        &[("SALDO_KAFKA__ACKS", "0")],
        Some("[kafka]\nsecurity.protocol = \"SSL\"\n"),
    );
    assert_eq!(
        migrate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&migrate.stdout).trim(),
        "saldo: the configuration is valid"
    );
}

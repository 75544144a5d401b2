//! Configuration from an optional TOML file, below environment variables
//! and flags: a flag beats its environment variable, which beats the file.
//!
//! The file's top-level keys apply to every subcommand that has a setting
//! of that name; a `[subcommand]` table applies to that subcommand only.
//! Keys are the flags' names with underscores (`database_url`):
//!
//! ```toml
//! kafka_bootstrap = "127.0.0.1:9092"
//!
//! [order]
//! database_url = "postgres://saldo_order@db/saldo"
//! http_address = "127.0.0.1:8081"
//! ```
//!
//! The file is applied by turning its settings into flags placed after the
//! subcommand, so clap validates them exactly like flags and a typo is a
//! one-line error naming the key.
//!
//! librdkafka properties for every Kafka client of a subcommand that has
//! them (`--kafka-property NAME=VALUE`) come from the same three layers,
//! property by property: the flag, then an environment variable
//! `SALDO_KAFKA__<NAME>` (the name upper-cased, `.` as `_`:
//! `SALDO_KAFKA__SECURITY_PROTOCOL=SASL_SSL`), then the file's `[kafka]`
//! table (`security.protocol = "SASL_SSL"`, a dotted key as TOML writes it).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// The flag and environment variable naming the file.
pub const CONFIG_FLAG: &str = "--config";
/// The environment variable naming the file.
pub const CONFIG_ENV: &str = "SALDO_CONFIG";

/// The flag passing one librdkafka property.
pub const KAFKA_PROPERTY_FLAG: &str = "kafka-property";
/// The file's table of librdkafka properties.
pub const KAFKA_TABLE: &str = "kafka";
/// The prefix of environment variables holding librdkafka properties.
pub const KAFKA_ENV_PREFIX: &str = "SALDO_KAFKA__";

/// `argv` with the file's settings added where neither a flag nor an
/// environment variable sets them, and the librdkafka properties of the
/// environment and the file where no flag sets them.
pub fn apply(command: &clap::Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let file = match config_path(&argv) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?;
            let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
                anyhow::anyhow!("{}: {}", path.display(), error.message())
            })?;
            Some((path, table))
        }
        None => None,
    };
    // The subcommand is the first argument that is not a flag or a flag's value.
    let Some((position, name)) = subcommand_of(command, &argv) else {
        return Ok(argv);
    };
    let subcommand = command
        .find_subcommand(&name)
        .expect("subcommand_of only returns known subcommands");
    let mut added: Vec<OsString> = Vec::new();
    if let Some((path, table)) = &file {
        added.extend(file_flags(command, subcommand, &name, &argv, path, table)?);
    }
    let takes_properties = subcommand
        .get_arguments()
        .any(|argument| argument.get_long() == Some(KAFKA_PROPERTY_FLAG));
    if takes_properties {
        let from_file = match &file {
            Some((path, table)) => match table.get(KAFKA_TABLE) {
                Some(toml::Value::Table(kafka)) => file_properties(path, kafka)?,
                _ => BTreeMap::new(),
            },
            None => BTreeMap::new(),
        };
        let environment: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        added.extend(kafka_flags(&argv, &environment, from_file)?);
    }
    let mut argv = argv;
    let tail = argv.split_off(position + 1);
    argv.extend(added);
    argv.extend(tail);
    Ok(argv)
}

/// The file's settings for `name` as flags, where neither a flag nor an
/// environment variable sets them.
fn file_flags(
    command: &clap::Command,
    subcommand: &clap::Command,
    name: &str,
    argv: &[OsString],
    path: &std::path::Path,
    table: &toml::Table,
) -> anyhow::Result<Vec<OsString>> {
    let mut added: Vec<OsString> = Vec::new();
    let mut settings: Vec<(String, &toml::Value, bool)> = Vec::new();
    for (key, value) in table {
        match value {
            // Read by `apply` for the subcommands that take properties.
            toml::Value::Table(_) if key == KAFKA_TABLE => {}
            toml::Value::Table(section) => {
                if command.find_subcommand(key).is_none() {
                    bail!("{}: [{key}] is not a subcommand", path.display());
                }
                if key == name {
                    settings.extend(
                        section
                            .iter()
                            .map(|(key, value)| (key.clone(), value, true)),
                    );
                }
            }
            value => settings.push((key.clone(), value, false)),
        }
    }
    for (key, value, sectioned) in settings {
        let flag_name = key.replace('_', "-");
        let argument = subcommand
            .get_arguments()
            .find(|argument| argument.get_long() == Some(flag_name.as_str()));
        let Some(argument) = argument else {
            let known_anywhere = command.get_subcommands().any(|candidate| {
                candidate
                    .get_arguments()
                    .any(|argument| argument.get_long() == Some(flag_name.as_str()))
            });
            if sectioned || !known_anywhere {
                bail!(
                    "{}: `{key}` is not a setting of `saldo {name}`",
                    path.display()
                );
            }
            continue;
        };
        let flag = format!("--{flag_name}");
        let on_command_line = argv.iter().any(|argument| {
            let argument = argument.to_string_lossy();
            argument == flag || argument.starts_with(&format!("{flag}="))
        });
        let in_environment = argument
            .get_env()
            .is_some_and(|variable| std::env::var_os(variable).is_some());
        if on_command_line || in_environment {
            continue;
        }
        if !argument.get_action().takes_values() {
            // A switch such as `--no-seed`: present when true.
            match value {
                toml::Value::Boolean(true) => added.push(flag.into()),
                toml::Value::Boolean(false) => {}
                _ => bail!("{}: `{key}` must be true or false", path.display()),
            }
            continue;
        }
        let value = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            _ => bail!(
                "{}: `{key}` must be a string, an integer or a boolean",
                path.display()
            ),
        };
        added.push(format!("{flag}={value}").into());
    }
    Ok(added)
}

/// The `[kafka]` table's properties by name: nested tables (TOML's dotted
/// keys, `security.protocol = "SASL_SSL"`) joined with `.`.
fn file_properties(
    path: &std::path::Path,
    table: &toml::Table,
) -> anyhow::Result<BTreeMap<String, String>> {
    fn collect(
        path: &std::path::Path,
        prefix: &str,
        table: &toml::Table,
        into: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let text = match value {
                toml::Value::Table(nested) => {
                    collect(path, &name, nested, into)?;
                    continue;
                }
                toml::Value::String(text) => text.clone(),
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                _ => bail!(
                    "{}: [{KAFKA_TABLE}] `{name}` must be a string, an integer or a boolean",
                    path.display()
                ),
            };
            into.insert(name, text);
        }
        Ok(())
    }
    let mut properties = BTreeMap::new();
    collect(path, "", table, &mut properties)?;
    Ok(properties)
}

/// `--kafka-property=NAME=VALUE` for each property of `environment`
/// (`SALDO_KAFKA__<NAME>`) or else of the file that no flag in `argv`
/// sets. The values are checked when clap parses the flags.
fn kafka_flags(
    argv: &[OsString],
    environment: &[(OsString, OsString)],
    from_file: BTreeMap<String, String>,
) -> anyhow::Result<Vec<OsString>> {
    let mut properties = from_file;
    for (variable, value) in environment {
        let Some(suffix) = variable
            .to_str()
            .and_then(|variable| variable.strip_prefix(KAFKA_ENV_PREFIX))
        else {
            continue;
        };
        if suffix.is_empty() {
            bail!("{KAFKA_ENV_PREFIX} names no kafka property: write {KAFKA_ENV_PREFIX}<NAME>");
        }
        let Some(value) = value.to_str() else {
            bail!("{KAFKA_ENV_PREFIX}{suffix} is not UTF-8");
        };
        let name = suffix.to_ascii_lowercase().replace('_', ".");
        properties.insert(name, value.to_owned());
    }
    let flag = format!("--{KAFKA_PROPERTY_FLAG}");
    let mut on_command_line: Vec<String> = Vec::new();
    let mut arguments = argv.iter().map(|argument| argument.to_string_lossy());
    while let Some(argument) = arguments.next() {
        let given = if argument == flag {
            arguments.next().map(|value| value.into_owned())
        } else {
            argument
                .strip_prefix(&format!("{flag}="))
                .map(str::to_owned)
        };
        if let Some(given) = given {
            let name = given
                .split_once('=')
                .map_or(given.as_str(), |(name, _)| name);
            on_command_line.push(name.to_owned());
        }
    }
    Ok(properties
        .into_iter()
        .filter(|(name, _)| !on_command_line.contains(name))
        .map(|(name, value)| format!("{flag}={name}={value}").into())
        .collect())
}

/// One librdkafka property, as `--kafka-property NAME=VALUE` gives it.
/// Its `Debug` hides a secret's value.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    /// The property's name (`security.protocol`).
    pub name: String,
    /// Its value.
    pub value: String,
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if saldo_kafka::connection::is_secret(&self.name) {
            saldo_kafka::connection::REDACTED
        } else {
            &self.value
        };
        write!(formatter, "{}={value}", self.name)
    }
}

/// Parses `NAME=VALUE` and has librdkafka check it
/// (`saldo_kafka::connection::check`); a refusal is one line that never
/// repeats the value.
#[derive(Clone, Copy, Debug)]
pub struct KafkaPropertyParser;

impl clap::builder::TypedValueParser for KafkaPropertyParser {
    type Value = KafkaProperty;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _argument: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<KafkaProperty, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{message}\n"),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("a kafka property must be UTF-8".to_owned()))?;
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| refuse(format!("--{KAFKA_PROPERTY_FLAG} takes NAME=VALUE")))?;
        saldo_kafka::connection::check(name, value).map_err(|error| refuse(error.to_string()))?;
        Ok(KafkaProperty {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut arguments = argv.iter().skip(1);
    while let Some(argument) = arguments.next() {
        let text = argument.to_string_lossy();
        if text == CONFIG_FLAG {
            return arguments.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

fn subcommand_of(command: &clap::Command, argv: &[OsString]) -> Option<(usize, String)> {
    let mut skip_value = false;
    for (position, argument) in argv.iter().enumerate().skip(1) {
        let text = argument.to_string_lossy();
        if skip_value {
            skip_value = false;
            continue;
        }
        if text.starts_with('-') {
            // Global flags that take a separate value.
            skip_value = text == CONFIG_FLAG || text == "--log-format";
            continue;
        }
        return command
            .find_subcommand(text.as_ref())
            .map(|_| (position, text.into_owned()));
    }
    None
}

/// Parses `250ms`, `30s`, `5m`, `1h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 5m"))?;
    let ms = match unit {
        "ms" => value,
        "s" | "" => value.saturating_mul(1_000),
        "m" => value.saturating_mul(60_000),
        "h" => value.saturating_mul(3_600_000),
        "d" => value.saturating_mul(86_400_000),
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Order {
            #[arg(long, env = "SALDO_CONFIG_TEST_UNSET_URL")]
            database_url: String,
            #[arg(long, default_value_t = 1)]
            partitions: i32,
        },
        Gateway {
            #[arg(long)]
            listen: String,
        },
    }

    fn write(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "saldo-config-test-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).expect("writes");
        path
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset_and_flags_win() {
        // Proves precedence: flag > file, section > nothing, top-level keys
        // skip subcommands without that setting.
        let path =
            write("listen = \"x\"\n[order]\ndatabase_url = \"postgres://file\"\npartitions = 4\n");
        let path = path.to_string_lossy().into_owned();
        let argv = apply(
            &Cli::command(),
            args(&["saldo", "--config", &path, "order", "--partitions", "2"]),
        )
        .expect("applies");
        let cli = Cli::try_parse_from(argv).expect("parses");
        match cli.command {
            Sub::Order {
                database_url,
                partitions,
            } => {
                assert_eq!(database_url, "postgres://file");
                assert_eq!(partitions, 2);
            }
            Sub::Gateway { .. } => panic!("parsed the wrong subcommand"),
        }
    }

    #[rstest::rstest]
    #[case(
        "[order]\ncolour = \"red\"\n",
        "`colour` is not a setting of `saldo order`"
    )]
    #[case("[nope]\nx = 1\n", "[nope] is not a subcommand")]
    #[case("colour = 1\n", "`colour` is not a setting")]
    #[case("[order]\ndatabase_url = [1]\n", "must be a string")]
    #[case("[order\n", "")]
    fn mistakes_in_the_file_are_one_line_errors(#[case] text: &str, #[case] expected: &str) {
        // Proves a bad file is refused with the key and the file named.
        let path = write(text);
        let path_text = path.to_string_lossy().into_owned();
        let error = apply(
            &Cli::command(),
            args(&["saldo", "--config", &path_text, "order"]),
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains(expected), "{error}");
        assert!(error.contains(&path_text), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    fn kafka(argv: &[&str], environment: &[(&str, &str)], file: &str) -> Vec<String> {
        let path = std::path::Path::new("saldo.toml");
        let table: toml::Table = file.parse().expect("toml");
        let from_file = match table.get(KAFKA_TABLE) {
            Some(toml::Value::Table(kafka)) => file_properties(path, kafka).expect("reads"),
            _ => BTreeMap::new(),
        };
        let environment: Vec<(OsString, OsString)> = environment
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect();
        kafka_flags(&args(argv), &environment, from_file)
            .expect("layers")
            .into_iter()
            .map(|flag| flag.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn kafka_properties_layer_flag_over_environment_over_file_property_by_property() {
        // Proves each property comes from the flag, else SALDO_KAFKA__<NAME>
        // (upper case, `_` for `.`), else the [kafka] table (dotted or quoted
        // keys), and that other variables are not read as properties.
        let flags = kafka(
            &[
                "saldo",
                "order",
                "--kafka-property",
                "client.id=flag",
                "--kafka-property=linger.ms=7",
            ],
            &[
                ("SALDO_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("SALDO_KAFKA__CLIENT_ID", "environment"),
                ("SALDO_KAFKA_BOOTSTRAP", "not-a-property:9092"),
            ],
            "[kafka]\nsecurity.protocol = \"PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\nlinger.ms = 5\nsocket.keepalive.enable = true\n",
        );
        assert_eq!(
            flags,
            vec![
                "--kafka-property=sasl.mechanism=SCRAM-SHA-512",
                "--kafka-property=security.protocol=SASL_SSL",
                "--kafka-property=socket.keepalive.enable=true",
            ]
        );
    }

    #[test]
    fn a_kafka_table_value_that_is_not_a_scalar_is_refused_naming_it() {
        // Proves a list in [kafka] is a one-line error naming the property.
        let table: toml::Table = "ssl.ca.location = [1]\n".parse().expect("toml");
        let error = file_properties(std::path::Path::new("saldo.toml"), &table)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("ssl.ca.location") && error.contains("saldo.toml"),
            "{error}"
        );
    }

    #[test]
    fn a_secret_kafka_property_is_redacted_in_debug() {
        // Proves `{:?}` of the parsed arguments cannot print a password.
        let property = KafkaProperty {
            name: "sasl.password".to_owned(),
            value: "hunter2".to_owned(),
        };
        assert_eq!(format!("{property:?}"), "sasl.password=<redacted>");
    }
}

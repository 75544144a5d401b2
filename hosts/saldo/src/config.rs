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

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// The flag and environment variable naming the file.
pub const CONFIG_FLAG: &str = "--config";
/// The environment variable naming the file.
pub const CONFIG_ENV: &str = "SALDO_CONFIG";

/// `argv` with the file's settings added where neither a flag nor an
/// environment variable sets them.
pub fn apply(command: &clap::Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        anyhow::anyhow!("{}: {}", path.display(), error.message())
    })?;
    // The subcommand is the first argument that is not a flag or a flag's value.
    let Some((position, name)) = subcommand_of(command, &argv) else {
        return Ok(argv);
    };
    let subcommand = command
        .find_subcommand(&name)
        .expect("subcommand_of only returns known subcommands");
    let mut added: Vec<OsString> = Vec::new();
    let mut settings: Vec<(String, &toml::Value, bool)> = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) => {
                if command.find_subcommand(key).is_none() {
                    bail!("{}: [{key}] is not a subcommand", path.display());
                }
                if key == &name {
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
    let mut argv = argv;
    let tail = argv.split_off(position + 1);
    argv.extend(added);
    argv.extend(tail);
    Ok(argv)
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
}

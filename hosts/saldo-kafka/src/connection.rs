//! Where the broker is and how to talk to it: the bootstrap servers and the
//! librdkafka properties an operator passes through to every client Saldo
//! creates (producers, consumers, admin clients, the readiness probe).
//!
//! Any librdkafka property may be passed (`security.protocol`,
//! `sasl.mechanism`, `ssl.ca.location`, `client.id`, tuning such as
//! `linger.ms`), except the ones Saldo's correctness rests on
//! ([`PROTECTED`]) and the ones its own flags set: those are refused when
//! the property is given, never silently overridden. Every property is
//! checked by librdkafka itself as it is given (an unknown name or a bad
//! value is refused then, naming the property). How properties go together
//! (OIDC's required token endpoint, a SASL mechanism this build lacks)
//! librdkafka checks only when it creates a client, as a process starts.
//! Values of secret
//! properties ([`is_secret`]) never appear in what this module renders.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

/// The properties Saldo's correctness rests on, with why; a passthrough
/// naming one is refused.
pub const PROTECTED: [(&str, &str); 12] = [
    (
        "enable.idempotence",
        "the producer is idempotent, so a retried send is never a second copy or out of order",
    ),
    (
        "acks",
        "a message counts as published only once every in-sync replica has it",
    ),
    (
        "request.required.acks",
        "an alias of acks: a message counts as published only once every in-sync replica has it",
    ),
    (
        "enable.auto.offset.store",
        "an offset is stored only after the database commit of its message",
    ),
    (
        "enable.auto.commit",
        "stored offsets are committed in the background, on revocation and at shutdown",
    ),
    (
        "auto.offset.reset",
        "a new consumer group starts from the earliest message, so nothing sent before it is skipped",
    ),
    ("isolation.level", "consumers read only committed messages"),
    (
        "partitioner",
        "every process maps an order's key to the same partition, which keeps its messages in order",
    ),
    (
        "group.id",
        "each service's group is PREFIX-SERVICE; set the prefix with --group-prefix",
    ),
    (
        "auto.commit.enable",
        "an alias of enable.auto.commit: stored offsets are committed in the background, on revocation and at shutdown",
    ),
    (
        "queuing.strategy",
        "messages of one partition are sent in the order they were produced",
    ),
    (
        "transactional.id",
        "the producer is idempotent, not transactional: the outbox is the transaction",
    ),
];

/// Properties Saldo's own flags set; a passthrough naming one is refused.
pub const SET_BY_FLAGS: [(&str, &str); 2] = [
    ("bootstrap.servers", "--kafka-bootstrap"),
    ("metadata.broker.list", "--kafka-bootstrap"),
];

/// What stands for a secret's value wherever properties are shown.
pub const REDACTED: &str = "<redacted>";

/// Whether a property holds a secret (a password, a private key, an OAuth
/// client secret): its value is never logged or printed.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "passphrase"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("key.pem")
        || name == "sasl.oauthbearer.config"
}

/// Why a property was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyRefused {
    /// The property has no name.
    #[error("a kafka property needs a name (NAME=VALUE)")]
    NameMissing,
    /// Saldo's correctness rests on the property's value.
    #[error("kafka property {name} cannot be set: Saldo relies on its own value ({reason})")]
    Protected {
        /// The property.
        name: String,
        /// Why Saldo sets it.
        reason: &'static str,
    },
    /// One of Saldo's flags sets the property.
    #[error("kafka property {name} cannot be set: use {flag}")]
    SetByFlag {
        /// The property.
        name: String,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// librdkafka refused the name or the value.
    #[error("kafka property {name}: {reason}")]
    Refused {
        /// The property.
        name: String,
        /// librdkafka's words, with a secret value taken out.
        reason: String,
    },
}

/// Checks one property: not protected, not set by a flag, and accepted by
/// librdkafka (a known name, a valid value, a feature this build has).
pub fn check(name: &str, value: &str) -> Result<(), PropertyRefused> {
    if name.trim().is_empty() {
        return Err(PropertyRefused::NameMissing);
    }
    // librdkafka reads a topic property also under a `topic.` prefix
    // (rd_kafka_topic_conf_set strips it), so `topic.acks` is `acks`.
    let lowered = name.to_ascii_lowercase();
    let lowered = lowered.strip_prefix("topic.").unwrap_or(&lowered);
    if let Some((_, reason)) = PROTECTED.iter().find(|(known, _)| *known == lowered) {
        return Err(PropertyRefused::Protected {
            name: name.to_owned(),
            reason,
        });
    }
    if let Some((_, flag)) = SET_BY_FLAGS.iter().find(|(known, _)| *known == lowered) {
        return Err(PropertyRefused::SetByFlag {
            name: name.to_owned(),
            flag,
        });
    }
    // librdkafka's own check (rd_kafka_conf_set), without creating a client.
    match ClientConfig::new().set(name, value).create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(_, description, _, _)) => Err(PropertyRefused::Refused {
            name: name.to_owned(),
            reason: hide(&description, name, value),
        }),
        Err(other) => Err(PropertyRefused::Refused {
            name: name.to_owned(),
            reason: hide(&other.to_string(), name, value),
        }),
    }
}

/// `text` with a secret property's value replaced by [`REDACTED`], on one line.
fn hide(text: &str, name: &str, value: &str) -> String {
    let text = if is_secret(name) && !value.is_empty() {
        text.replace(value, REDACTED)
    } else {
        text.to_owned()
    };
    text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// The passed-through properties, each checked by [`check`] on the way in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    /// No properties.
    pub fn new() -> Properties {
        Properties::default()
    }

    /// Adds a property after [`check`]ing it; a later value of the same
    /// name replaces an earlier one.
    pub fn insert(&mut self, name: &str, value: &str) -> Result<(), PropertyRefused> {
        check(name, value)?;
        self.0.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The properties by name, secret values replaced by [`REDACTED`].
    pub fn redacted(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret(name) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect()
    }

    /// `text` with the value of every secret property replaced by
    /// [`REDACTED`]: for errors that librdkafka words from the configuration.
    pub fn hide_secrets(&self, text: &str) -> String {
        self.0
            .iter()
            .filter(|(name, value)| is_secret(name) && !value.is_empty())
            .fold(text.to_owned(), |text, (_, value)| {
                text.replace(value.as_str(), REDACTED)
            })
    }
}

/// `name=value, …` with secrets redacted.
impl fmt::Display for Properties {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .redacted()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        formatter.write_str(&shown.join(", "))
    }
}

/// Redacted like [`fmt::Display`], so that `{:?}` of a configuration
/// cannot print a password either.
impl fmt::Debug for Properties {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_map().entries(self.redacted()).finish()
    }
}

/// The broker and the passed-through properties: what every client is
/// configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    bootstrap_servers: String,
    properties: Properties,
}

impl Connection {
    /// `bootstrap_servers` with no passed-through properties.
    pub fn new(bootstrap_servers: &str) -> Connection {
        Connection::with_properties(bootstrap_servers, Properties::new())
    }

    /// `bootstrap_servers` with `properties` passed to every client.
    pub fn with_properties(bootstrap_servers: &str, properties: Properties) -> Connection {
        Connection {
            bootstrap_servers: bootstrap_servers.to_owned(),
            properties,
        }
    }

    /// `HOST:PORT,…`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The passed-through properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// A client configuration with the bootstrap servers and every
    /// passed-through property. The callers set their own properties after
    /// this one: a default with [`set_default`], a protected one with
    /// `set`, which [`check`] has kept out of the passthrough.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (name, value) in &self.properties.0 {
            config.set(name, value);
        }
        config
    }
}

/// Sets `name` unless the passthrough already did: Saldo's tuning
/// defaults yield to the operator's.
pub fn set_default(config: &mut ClientConfig, name: &str, value: &str) {
    if config.get(name).is_none() {
        config.set(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("enable.idempotence", "false")]
    #[case("acks", "1")]
    #[case("request.required.acks", "1")]
    #[case("enable.auto.offset.store", "true")]
    #[case("enable.auto.commit", "false")]
    #[case("auto.offset.reset", "latest")]
    #[case("isolation.level", "read_uncommitted")]
    #[case("partitioner", "random")]
    #[case("group.id", "other")]
    #[case("ACKS", "0")]
    #[case("topic.partitioner", "random")]
    #[case("topic.acks", "1")]
    #[case("topic.auto.offset.reset", "latest")]
    #[case("auto.commit.enable", "true")]
    #[case("queuing.strategy", "lifo")]
    #[case("transactional.id", "t")]
    fn a_property_saldo_relies_on_is_refused(#[case] name: &str, #[case] value: &str) {
        // Proves no passthrough can override a correctness setting, whatever its case.
        let refused = Properties::new().insert(name, value).expect_err("refused");
        assert!(
            matches!(refused, PropertyRefused::Protected { .. }),
            "{refused:?}"
        );
        let line = refused.to_string();
        assert!(line.contains(name) && !line.contains('\n'), "{line}");
    }

    #[rstest::rstest]
    #[case("bootstrap.servers")]
    #[case("metadata.broker.list")]
    fn a_property_a_flag_sets_is_refused_naming_the_flag(#[case] name: &str) {
        // Proves the broker's address has one source, the flag.
        let refused = check(name, "elsewhere:9092").expect_err("refused");
        assert!(
            refused.to_string().contains("--kafka-bootstrap"),
            "{refused}"
        );
    }

    #[rstest::rstest]
    #[case("no.such.property", "1", "No such configuration property")]
    #[case("security.protocol", "CARRIER_PIGEON", "Invalid value")]
    #[case("linger.ms", "soon", "Invalid value")]
    #[case("", "1", "needs a name")]
    fn librdkafka_refuses_what_it_does_not_know_in_one_line_naming_it(
        #[case] name: &str,
        #[case] value: &str,
        #[case] expected: &str,
    ) {
        // Proves an unknown name or a bad value is refused as it is given,
        // in librdkafka's words, on one line naming the property.
        let line = check(name, value).expect_err("refused").to_string();
        assert!(line.contains(expected), "{line}");
        assert!(line.contains(name), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn tls_and_sasl_are_built_in() {
        // Proves librdkafka is built with OpenSSL: without it, SASL_SSL and
        // SCRAM are refused ("OpenSSL not available at build time").
        let mut properties = Properties::new();
        for (name, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "saldo"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"),
        ] {
            properties.insert(name, value).expect("accepted");
        }
        // And OAUTHBEARER's mechanism name.
        check("sasl.mechanism", "OAUTHBEARER").expect("accepted");
    }

    #[test]
    fn secret_values_never_appear_in_what_is_shown() {
        // Proves passwords, private keys and OAuth secrets are redacted in
        // Display, Debug and errors, and other values are shown.
        let mut properties = Properties::new();
        properties.insert("sasl.password", "hunter2").expect("ok");
        properties
            .insert("ssl.key.password", "swordfish")
            .expect("ok");
        properties
            .insert("ssl.keystore.password", "s3cr3t")
            .expect("ok");
        properties.insert("client.id", "saldo-order").expect("ok");
        let shown = format!(
            "{properties} {properties:?} {}",
            properties.hide_secrets("failed with hunter2 and swordfish")
        );
        for secret in ["hunter2", "swordfish", "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("client.id=saldo-order"), "{shown}");
        assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
        // librdkafka's words about a secret lose its value.
        let reason = hide(
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"",
            "sasl.password",
            "hunter2",
        );
        assert!(
            !reason.contains("hunter2") && reason.contains(REDACTED),
            "{reason}"
        );
    }

    #[test]
    fn a_feature_this_build_lacks_is_refused_readably() {
        // Proves a value librdkafka was built without (zstd compression:
        // rdkafka's `zstd` feature is off) is refused at once in one line
        // naming the property and saying why.
        let line = check("compression.codec", "zstd")
            .expect_err("refused")
            .to_string();
        assert!(line.contains("compression.codec"), "{line}");
        assert!(line.contains("not available at build time"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn oauthbearer_oidc_fetches_its_token_from_the_identity_provider() {
        // Proves OAUTHBEARER with OIDC works as with any librdkafka client
        // (libcurl built in): a client made from Saldo's connection asks the
        // token endpoint for a client-credentials token, with the client's
        // id and secret, before it can talk to a broker.
        use std::io::{Read, Write};
        let provider = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let endpoint = format!(
            "http://{}/oauth2/token",
            provider.local_addr().expect("an address")
        );
        let (asked, asks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in provider.incoming() {
                let Ok(mut stream) = stream else { return };
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("a timeout");
                let mut request = vec![0_u8; 8192];
                let read = stream.read(&mut request).unwrap_or(0);
                let _ = asked.send(String::from_utf8_lossy(&request[..read]).into_owned());
                // An unsigned JWT librdkafka can read: {"sub":"saldo","exp":4102444800}.
                let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzYWxkbyIsImV4cCI6NDEwMjQ0NDgwMH0.";
                let body = format!(
                    r#"{{"access_token":"{token}","token_type":"bearer","expires_in":3600}}"#
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let mut properties = Properties::new();
        for (name, value) in [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.method", "oidc"),
            ("sasl.oauthbearer.client.id", "saldo"),
            ("sasl.oauthbearer.client.secret", "hunter2"),
            ("sasl.oauthbearer.token.endpoint.url", endpoint.as_str()),
        ] {
            properties
                .insert(name, value)
                .expect("accepted by librdkafka");
        }
        // A broker nobody listens on: only the token fetch is under test.
        let consumer: rdkafka::consumer::BaseConsumer =
            Connection::with_properties("127.0.0.1:1", properties)
                .client_config()
                .set("group.id", "oidc-test")
                .create()
                .expect("a client");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let request = loop {
            let _ = consumer.poll(std::time::Duration::from_millis(100));
            if let Ok(request) = asks.try_recv() {
                break request;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "librdkafka never asked {endpoint} for a token"
            );
        };
        assert!(request.starts_with("POST /oauth2/token"), "{request}");
        assert!(
            request.contains("grant_type=client_credentials"),
            "{request}"
        );
        // HTTP Basic of "saldo:hunter2".
        assert!(request.contains("Basic c2FsZG86aHVudGVyMg=="), "{request}");
    }

    #[test]
    fn the_passthrough_reaches_the_configuration_and_saldos_tuning_defaults_yield_to_it() {
        // Proves client_config carries every property and set_default keeps
        // the operator's value over Saldo's tuning default.
        let mut properties = Properties::new();
        properties.insert("linger.ms", "50").expect("ok");
        properties.insert("client.id", "mine").expect("ok");
        let connection = Connection::with_properties("127.0.0.1:9092", properties);
        let mut config = connection.client_config();
        set_default(&mut config, "linger.ms", "2");
        set_default(&mut config, "fetch.wait.max.ms", "10");
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(config.get("client.id"), Some("mine"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}

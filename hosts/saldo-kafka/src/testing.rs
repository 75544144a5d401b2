//! Kafka-protocol brokers for tests, chosen by `SALDO_TEST_BROKER`.
//!
//! - `mock` (the default): librdkafka's mock cluster, inside the test
//!   process. Its topics are made through its own API (it has no
//!   CreateTopics), and it takes faults (down, up) on request.
//! - `tansu`: a [tansu](https://crates.io/crates/tansu) broker process, an
//!   independent implementation of the protocol, on a free loopback port
//!   with its storage (the libsql engine, ADR 0009) in a fresh directory.
//!   Its topics are made through CreateTopics, by the same
//!   [`topics::ensure`] a service runs at start-up (`--create-topics`). The
//!   binary is `SALDO_TANSU` or `tansu` on `PATH`; `tests/run.sh` installs
//!   it.
//!
//! A broker that cannot start panics with what to do: a missing broker is a
//! broken test environment, never a reason to skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::topics;

/// The environment variable that selects the broker: `mock` or `tansu`.
pub const TEST_BROKER: &str = "SALDO_TEST_BROKER";
/// The environment variable naming the tansu binary (default: `tansu` on `PATH`).
pub const TANSU_BINARY: &str = "SALDO_TANSU";
/// The longest a tansu process may take to accept connections.
pub const TANSU_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a starting tansu is asked whether it accepts connections.
const TANSU_START_POLL: Duration = Duration::from_millis(20);
/// The database file of tansu's libsql engine, relative to its working
/// directory (tansu mangles an absolute path in a `sqlite://` URL).
const TANSU_DATABASE: &str = "tansu.db";
/// The mock cluster's name for every broker it runs.
const MOCK_ALL_BROKERS: i32 = -1;

static NEXT_TANSU: AtomicU64 = AtomicU64::new(0);

/// Which broker the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's mock cluster.
    Mock,
    /// A tansu process.
    Tansu,
}

impl BrokerKind {
    /// The broker `SALDO_TEST_BROKER` selects; unset or empty is the mock
    /// cluster. Any other value than `mock` or `tansu` panics.
    pub fn selected() -> BrokerKind {
        match std::env::var(TEST_BROKER).as_deref() {
            Err(_) | Ok("" | "mock") => BrokerKind::Mock,
            Ok("tansu") => BrokerKind::Tansu,
            Ok(other) => panic!("{TEST_BROKER}={other:?}: expected \"mock\" or \"tansu\""),
        }
    }
}

/// A tansu broker process on a loopback port, its storage in a directory
/// of its own; killed and its directory removed when dropped.
#[derive(Debug)]
pub struct TansuBroker {
    child: Option<Child>,
    directory: PathBuf,
    port: u16,
}

impl TansuBroker {
    /// Starts tansu on a free loopback port with empty storage and waits
    /// (at most [`TANSU_START_TIMEOUT`]) until it accepts connections.
    pub fn start() -> TansuBroker {
        let directory = std::env::temp_dir().join(format!(
            "saldo-tansu-{}-{}",
            std::process::id(),
            NEXT_TANSU.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&directory)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", directory.display()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut broker = TansuBroker {
            child: None,
            directory,
            port,
        };
        broker.restart();
        broker
    }

    /// `HOST:PORT` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file tansu logs to (kept after the test, for diagnosis).
    pub fn log_path(&self) -> PathBuf {
        self.directory.with_extension("log")
    }

    /// SIGKILL: the broker is gone at once, with whatever it had stored.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts tansu again (after [`TansuBroker::kill`]) on the same port
    /// over the same storage, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "tansu is already running");
        let binary = std::env::var(TANSU_BINARY).unwrap_or_else(|_| "tansu".to_owned());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("tansu's log file");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&binary)
            .current_dir(&self.directory)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &format!("sqlite://{TANSU_DATABASE}")])
            .env("RUST_LOG", std::env::var("SALDO_TANSU_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {binary:?} ({error}): {TEST_BROKER}=tansu needs tansu 0.6 with the libsql engine; `bash tests/run.sh` installs it and sets {TANSU_BINARY}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + TANSU_START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                panic!(
                    "tansu exited with {status} before accepting connections; see {}",
                    self.log_path().display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not accept connections within {TANSU_START_TIMEOUT:?}; see {}",
                self.log_path().display()
            );
            std::thread::sleep(TANSU_START_POLL);
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The broker of one test, with Saldo's topics.
pub enum TestBroker {
    /// librdkafka's mock cluster, in this process.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A tansu process.
    Tansu(TansuBroker),
}

impl TestBroker {
    /// Starts the broker [`BrokerKind::selected`] names, with every Saldo
    /// topic at `partitions` partitions.
    pub async fn start(partitions: i32) -> TestBroker {
        match BrokerKind::selected() {
            BrokerKind::Mock => {
                let cluster = MockCluster::new(1).expect("the mock cluster starts");
                for topic in topics::ALL {
                    cluster
                        .create_topic(topic, partitions, 1)
                        .expect("the mock cluster creates the topic");
                }
                TestBroker::Mock(cluster)
            }
            BrokerKind::Tansu => {
                let broker = tokio::task::spawn_blocking(TansuBroker::start)
                    .await
                    .expect("tansu starts");
                topics::ensure(
                    &crate::connection::Connection::new(&broker.bootstrap_servers()),
                    partitions,
                    1,
                )
                .await
                .expect("tansu creates Saldo's topics");
                TestBroker::Tansu(broker)
            }
        }
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        match self {
            TestBroker::Mock(_) => BrokerKind::Mock,
            TestBroker::Tansu(_) => BrokerKind::Tansu,
        }
    }

    /// `HOST:PORT` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        match self {
            TestBroker::Mock(cluster) => cluster.bootstrap_servers(),
            TestBroker::Tansu(broker) => broker.bootstrap_servers(),
        }
    }

    /// An outage: the mock cluster refuses connections, tansu is killed
    /// with SIGKILL.
    pub fn go_down(&mut self) {
        match self {
            TestBroker::Mock(cluster) => cluster
                .broker_down(MOCK_ALL_BROKERS)
                .expect("the mock broker goes down"),
            TestBroker::Tansu(broker) => broker.kill(),
        }
    }

    /// The end of an outage: the mock cluster accepts connections again,
    /// tansu restarts over the storage it had.
    pub fn come_back(&mut self) {
        match self {
            TestBroker::Mock(cluster) => cluster
                .broker_up(MOCK_ALL_BROKERS)
                .expect("the mock broker comes back"),
            TestBroker::Tansu(broker) => broker.restart(),
        }
    }
}

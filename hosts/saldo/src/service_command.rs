//! The service processes: consumers, outbox publishers, the dev broker.
//!
//! Each stops taking work on SIGTERM or SIGINT, finishes the message in
//! hand, commits its offsets and exits 0.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use saldo_domain::Rules;
use saldo_domain::messages::Service;
use saldo_domain::retention::Horizons;
use saldo_engine::{OperatorStore, Store, retention, timers, wall_clock, watch_saga_age};
use saldo_kafka::connection::{Connection, Properties};
use saldo_kafka::consumer::ConsumerRunner;
use saldo_kafka::publisher::OutboxPublisher;
use saldo_kafka::topics;
use saldo_postgres::{PgOutbox, PgStore};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use saldo_http::admin::AdminAccess;
use saldo_http::api::{Api, Check};

use crate::config::{KafkaProperty, KafkaPropertyParser, parse_duration};
use crate::tls_flags::ListenerTls;

/// The longest a publisher waits between empty rounds: commits wake it at
/// once through their notification, so this only bounds a missed one.
pub const PUBLISHER_IDLE_MAX: Duration = Duration::from_millis(250);

/// Database connections per service process: the consumer's batches, the
/// timers and the HTTP API share them.
pub const CONNECTIONS_MAX: u32 = 8;

/// Where a service finds its database and the broker.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// PostgreSQL URL (the service's own role in production).
    #[arg(long, env = "SALDO_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SALDO_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: String,
    /// A librdkafka property for every Kafka client of the process
    /// (repeatable), such as security.protocol=SASL_SSL; also read from
    /// SALDO_KAFKA__<NAME> variables (SALDO_KAFKA__SASL_MECHANISM) and the
    /// file's [kafka] table. The settings Saldo's correctness rests on
    /// (enable.idempotence, acks, the offset handling, isolation.level,
    /// partitioner, group.id) are refused.
    #[arg(long = "kafka-property", value_name = "NAME=VALUE", value_parser = KafkaPropertyParser)]
    kafka_property: Vec<KafkaProperty>,
    /// Consumer group prefix; the group is PREFIX-SERVICE.
    #[arg(long, default_value = "saldo", env = "SALDO_KAFKA_GROUP_PREFIX")]
    group_prefix: String,
    /// Create Saldo's topics at startup when they are absent.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "SALDO_KAFKA_CREATE_TOPICS")]
    create_topics: bool,
    /// Partitions for topics created at startup.
    #[arg(long, default_value_t = topics::PARTITIONS_DEFAULT, env = "SALDO_KAFKA_PARTITIONS")]
    partitions: i32,
    /// Replicas for topics created at startup.
    #[arg(long, default_value_t = 3, env = "SALDO_KAFKA_REPLICATION")]
    replication: i32,
    /// Serve Prometheus metrics (outbox backlog and publish lag, messages
    /// handled, dead letters) on this address.
    #[arg(long, env = "SALDO_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Serve this service's HTTP API (with /healthz, /readyz and /metrics)
    /// on this address: orders for `order`, wallets for `payment`, stock
    /// for `inventory`.
    #[arg(long, env = "SALDO_HTTP_ADDRESS")]
    http_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: ListenerTls,
    /// Serve the operator API (/admin) also to requests that no gateway
    /// forwarded, audited as "direct". For tests and development only:
    /// whoever reaches the HTTP port becomes an operator. Without it /admin
    /// answers only principals saldo gateway forwards with the admin scope
    /// (403 admin_scope_required otherwise).
    #[arg(long, env = "SALDO_ADMIN_WITHOUT_GATEWAY")]
    admin_without_gateway: bool,
    /// How long inbox receipts are kept before the purge deletes them (ADR
    /// 0015). A consumer refuses to start when this is shorter than the
    /// retention.ms of the topic it consumes.
    #[arg(long, default_value = "7d", value_parser = parse_duration, env = "SALDO_INBOX_HORIZON")]
    inbox_horizon: Duration,
    /// The retention assumed for a consumed topic whose retention.ms the
    /// broker does not report (librdkafka's mock cluster, a broker that
    /// refuses DescribeConfigs); the inbox horizon must cover it too.
    #[arg(long, default_value = "7d", value_parser = parse_duration, env = "SALDO_TOPIC_RETENTION")]
    topic_retention: Duration,
}

impl ServiceArgs {
    /// The broker and the properties passed to every client.
    pub fn connection(&self) -> Connection {
        let mut properties = Properties::new();
        for property in &self.kafka_property {
            properties
                .insert(&property.name, &property.value)
                .expect("the flag's parser checked the property");
        }
        Connection::with_properties(&self.kafka_bootstrap, properties)
    }

    fn horizons(&self) -> Horizons {
        Horizons {
            inbox_ms: millis(self.inbox_horizon),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Refuses to start a consumer whose inbox horizon is shorter than the
/// retention of the topic it consumes (the rule is the sdk's).
async fn check_inbox_horizon(service: Service, args: &ServiceArgs) -> anyhow::Result<()> {
    let topic = topics::consumed_by(service);
    let connection = args.connection();
    let retentions = topics::retention_of(&connection, &[topic])
        .await
        .map_err(|error| {
            kafka_failure(
                &connection,
                "read the retention of the consumed topic",
                &error,
            )
        })?;
    let stated = millis(args.topic_retention);
    let assumed =
        saldo_domain::retention::check_inbox_horizon(&args.horizons(), stated, &retentions)?;
    for topic in assumed {
        tracing::warn!(
            topic,
            topic_retention_ms = stated,
            "the broker did not report the topic's retention.ms; assuming --topic-retention"
        );
    }
    Ok(())
}

/// Installs the metrics recorder when anything will serve it, and serves
/// it on `--metrics-address` when that is set, with `/healthz` and
/// `/readyz` (the broker answers) for an orchestrator's probes.
async fn serve_metrics(args: &ServiceArgs) -> anyhow::Result<Option<PrometheusHandle>> {
    if args.metrics_address.is_none() && args.http_address.is_none() {
        return Ok(None);
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    if let Some(address) = args.metrics_address {
        let mut probes = Api::new(wall_clock);
        probes.checks.push(broker_check(args)?);
        probes.metrics = Some(handle.clone());
        serve_probes(address, probes).await?;
    }
    Ok(Some(handle))
}

/// Serves `probes` (an [`Api`] with no service: health, readiness and
/// metrics) on `address` until SIGTERM or SIGINT.
pub(crate) async fn serve_probes(address: std::net::SocketAddr, probes: Api) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    tokio::spawn(saldo_http::serve(listener, probes.router(), shutdown()));
    Ok(())
}

/// A Kafka failure as one line, without the value of any secret property.
fn kafka_failure(
    connection: &Connection,
    what: &str,
    error: &dyn std::fmt::Display,
) -> anyhow::Error {
    let text = connection.properties().hide_secrets(&error.to_string());
    anyhow!(
        "cannot {what}: {}",
        text.lines().collect::<Vec<_>>().join(" ")
    )
}

/// Logs the passed-through properties (secrets redacted) once at start.
fn log_properties(connection: &Connection) {
    if !connection.properties().is_empty() {
        tracing::info!(properties = %connection.properties(), "passing Kafka properties to every client");
    }
}

/// The readiness check that the broker answers a metadata request.
fn broker_check(args: &ServiceArgs) -> anyhow::Result<Arc<dyn Check>> {
    let connection = args.connection();
    let probe: BaseConsumer = connection
        .client_config()
        .create()
        .map_err(|error| kafka_failure(&connection, "create the broker probe", &error))?;
    Ok(Arc::new(BrokerCheck(Arc::new(probe))))
}

/// `/readyz`'s broker check: the cluster answers a metadata request.
struct BrokerCheck(Arc<BaseConsumer>);

#[async_trait::async_trait]
impl Check for BrokerCheck {
    fn name(&self) -> &'static str {
        "broker"
    }

    async fn check(&self) -> Result<(), String> {
        let client = self.0.clone();
        tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(None, Duration::from_secs(2))
                .map(drop)
                .map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| error.to_string())?
    }
}

/// Serves `service`'s HTTP API until `stop` resolves.
async fn serve_api(
    service: Service,
    address: std::net::SocketAddr,
    store: PgStore,
    args: &ServiceArgs,
    metrics: Option<PrometheusHandle>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let mut api = Api::new(wall_clock);
    api.operator = Some(Arc::new(store.clone()));
    if args.admin_without_gateway {
        tracing::warn!(%service, "serving /admin without a gateway (--admin-without-gateway): anyone who reaches the HTTP port is an operator");
        api.admin_access = AdminAccess::WithoutGateway;
    } else if !args.tls.admits_only_named_clients() {
        tracing::warn!(%service, "the HTTP port trusts the gateway's principal headers from anyone who reaches it: give --tls-client-ca and --tls-client-name so that only the gateway can (docs/operations.md)");
    }
    let backend: Arc<dyn Store> = Arc::new(store);
    match service {
        Service::Order => api.order = Some(backend),
        Service::Payment => api.payment = Some(backend),
        Service::Inventory => api.inventory = Some(backend),
    }
    api.checks.push(broker_check(args)?);
    api.metrics = metrics;
    let tls = args.tls.server_config()?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(%service, "serving HTTP on {}://{address}", args.tls.scheme());
    Ok(tokio::spawn(saldo_http::serve_with_tls(
        listener,
        api.router(),
        saldo_http::Limits::default(),
        tls,
        stop,
    )))
}

/// Creates missing topics when configured to; a failure is a warning (the
/// topics may exist already or be created by the broker on first use).
async fn prepare_topics(args: &ServiceArgs) {
    if !args.create_topics {
        return;
    }
    let connection = args.connection();
    match topics::ensure(&connection, args.partitions, args.replication).await {
        Ok(created) if created.is_empty() => {}
        Ok(created) => tracing::info!(?created, "created topics"),
        Err(error) => tracing::warn!(
            error = connection.properties().hide_secrets(&error.to_string()),
            "could not create topics; continuing with what the broker has"
        ),
    }
}

/// Arguments of `saldo outbox`.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// Which service's outbox: order, inventory or payment.
    #[arg(long, value_parser = parse_service)]
    service: Service,
    #[command(flatten)]
    pub connection: ServiceArgs,
}

impl OutboxArgs {
    /// The name of the service whose outbox it publishes.
    pub fn service_name(&self) -> &'static str {
        self.service.name()
    }
}

/// Arguments of `saldo broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Partitions per topic.
    #[arg(long, default_value_t = topics::PARTITIONS_DEFAULT)]
    partitions: i32,
}

fn parse_service(name: &str) -> Result<Service, String> {
    Service::ALL
        .into_iter()
        .find(|service| service.name() == name)
        .ok_or_else(|| format!("{name:?} is not a service (order, inventory, payment)"))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a process that has printed
/// its banner (and so may be told to stop) must not die of a SIGTERM that
/// arrives before its server first polls the future. Call it inside the
/// runtime.
pub(crate) fn shutdown() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// Runs a service's consumer (and, for the order service, its deadline
/// timers). If either stops by itself, the process exits with an error so
/// that its supervisor restarts it: a service that consumes nothing must
/// not look alive.
pub fn run_consumer(service: Service, args: &ServiceArgs) -> anyhow::Result<ExitCode> {
    if args.tls.is_set() && args.http_address.is_none() {
        bail!("the TLS flags apply to the HTTP API: give --http-address too");
    }
    if args.admin_without_gateway && args.http_address.is_none() {
        bail!("--admin-without-gateway applies to the HTTP API: give --http-address too");
    }
    // Certificate files are read before anything connects, so that a
    // missing one is the first and only error.
    args.tls.server_config()?;
    runtime()?.block_on(async {
        // Signal handlers before anything can be told to stop: a SIGTERM
        // right after start must stop the service cleanly, not kill it.
        let stop_requested = shutdown();
        let connection = args.connection();
        log_properties(&connection);
        let store = PgStore::connect(&args.database_url, CONNECTIONS_MAX)
            .await
            .context("cannot connect to the database")?;
        prepare_topics(args).await;
        check_inbox_horizon(service, args).await?;
        let metrics = serve_metrics(args).await?;
        let metered = metrics.is_some();
        let group = format!("{}-{}", args.group_prefix, service.name());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shared: Arc<dyn Store> = Arc::new(store.clone());
        let rules = Arc::new(Rules::default());
        let runner = ConsumerRunner::new(
            &connection,
            &group,
            service,
            shared.clone(),
            rules.clone(),
            stopped.clone(),
        )
        .map_err(|error| kafka_failure(&connection, "create the Kafka consumer", &error))?;
        tracing::info!(%service, group, topic = topics::consumed_by(service), "consuming");
        let until_stopped = |stopped: &tokio::sync::watch::Receiver<bool>| {
            let mut receiver = stopped.clone();
            async move {
                let _ = receiver.wait_for(|stopped| *stopped).await;
            }
        };
        let mut http = match args.http_address {
            Some(address) => Some(
                serve_api(
                    service,
                    address,
                    store.clone(),
                    args,
                    metrics,
                    until_stopped(&stopped),
                )
                .await?,
            ),
            None => None,
        };
        // The order service's saga age, read every SAGA_AGE_INTERVAL while
        // something serves the gauge.
        let saga_age = (service == Service::Order && metered).then(|| {
            let operator: Arc<dyn OperatorStore> = Arc::new(store.clone());
            tokio::spawn(watch_saga_age(operator, wall_clock, stopped.clone()))
        });
        let mut consumer = tokio::spawn(runner.run(stopped.clone()));
        let mut purge = tokio::spawn(retention::run(
            shared.clone(),
            service,
            args.horizons(),
            stopped.clone(),
        ));
        let mut deadlines = tokio::spawn({
            let (store, rules, stopped) = (shared, rules, stopped.clone());
            async move {
                if service == Service::Order {
                    timers::run(store, rules, stopped).await;
                } else {
                    let mut stopped = stopped;
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                }
            }
        });
        let http_ended = async {
            match &mut http {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop_requested => {}
            ended = http_ended => {
                ended.context("HTTP task")?.context("HTTP server")?;
                bail!("the HTTP server stopped by itself");
            }
            ended = &mut consumer => {
                ended.context("consumer task")?.context("consumer")?;
                bail!("the consumer stopped by itself");
            }
            ended = &mut deadlines => {
                ended.context("timer task")?;
                bail!("the deadline timers stopped by themselves");
            }
            ended = &mut purge => {
                ended.context("purge task")?;
                bail!("the purge stopped by itself");
            }
        }
        tracing::info!(%service, "stopping: finishing requests and messages in flight");
        stop.send_replace(true);
        if let Some(http) = http {
            http.await.context("HTTP task")?.context("HTTP server")?;
        }
        consumer
            .await
            .context("consumer task")?
            .context("consumer")?;
        deadlines.await.context("timer task")?;
        purge.await.context("purge task")?;
        if let Some(saga_age) = saga_age {
            saga_age.await.context("saga age task")?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs one service's outbox publisher.
pub fn run_outbox(args: &OutboxArgs) -> anyhow::Result<ExitCode> {
    if let Some(address) = args.connection.http_address {
        bail!(
            "saldo outbox has no HTTP API (--http-address {address}); serve its metrics with --metrics-address"
        );
    }
    if args.connection.tls.is_set() {
        bail!("saldo outbox has no HTTP API, so no TLS flags");
    }
    if args.connection.admin_without_gateway {
        bail!("saldo outbox has no HTTP API, so no --admin-without-gateway");
    }
    runtime()?.block_on(async {
        let stop_requested = shutdown();
        let connection = args.connection.connection();
        log_properties(&connection);
        prepare_topics(&args.connection).await;
        serve_metrics(&args.connection).await?;
        let producer = saldo_kafka::producer::create(&connection)
            .map_err(|error| kafka_failure(&connection, "create the Kafka producer", &error))?;
        let outbox = PgOutbox::connect(&args.connection.database_url, args.service)
            .await
            .context("cannot connect to the database")?;
        let publisher = OutboxPublisher::new(Box::new(outbox), producer);
        tracing::info!(service = %args.service, "publishing the outbox");
        publisher
            .run(PUBLISHER_IDLE_MAX, stop_requested)
            .await
            .context("publisher")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The mock cluster's name for every broker it runs.
const ALL_BROKERS: i32 = -1;

/// Runs librdkafka's mock cluster with Saldo's topics until SIGTERM/SIGINT.
/// It speaks the Kafka protocol on loopback; its first line on stdout is
/// `bootstrap HOST:PORT`. SIGUSR1 takes the broker down (connections are
/// refused, nothing is lost) and SIGUSR2 brings it back: an outage for
/// tests and drills.
pub fn run_broker(args: &BrokerArgs) -> anyhow::Result<ExitCode> {
    if args.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let cluster = rdkafka::mocking::MockCluster::new(1).context("cannot start the mock cluster")?;
    for topic in topics::ALL {
        cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("cannot create {topic}"))?;
    }
    println!("bootstrap {}", cluster.bootstrap_servers());
    use std::io::Write;
    std::io::stdout().flush().context("stdout")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut down = signal(SignalKind::user_defined1()).context("SIGUSR1")?;
        let mut up = signal(SignalKind::user_defined2()).context("SIGUSR2")?;
        let stop = shutdown();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok::<_, anyhow::Error>(()),
                _ = down.recv() => {
                    cluster.broker_down(ALL_BROKERS).context("cannot take the broker down")?;
                    tracing::info!("broker down (SIGUSR1)");
                }
                _ = up.recv() => {
                    cluster.broker_up(ALL_BROKERS).context("cannot bring the broker up")?;
                    tracing::info!("broker up (SIGUSR2)");
                }
            }
        }
    })?;
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}

//! Where a process's logs and traces go: logs to stderr, filtered by
//! `SALDO_LOG`; spans over OTLP/HTTP (protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! names a collector (ADR 0020). Without one, no exporter, no layer and no
//! span bookkeeping exist.

use anyhow::{Context as _, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The variables that name a collector, the traces-only one first.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// The variables that choose the protocol, the traces-only one first.
const PROTOCOL_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
/// TLS settings the exporter does not take (refused, not ignored).
const UNSUPPORTED_VARIABLES: [&str; 6] = [
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
];
/// The one protocol this build speaks.
const PROTOCOL: &str = "http/protobuf";
/// How long a stopping process waits for its last spans to be exported: a
/// collector that does not answer must not hold up a restart.
pub const FLUSH_AT_EXIT_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// The exporter, kept so that its last spans are flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (a stopped process's last spans),
    /// waiting at most [`FLUSH_AT_EXIT_MAX`].
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_AT_EXIT_MAX)
        {
            tracing::warn!(%error, "the trace exporter did not flush its last spans");
        }
    }
}

/// The first non-empty value of `names`.
fn first_set(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| ((*name).to_owned(), value))
    })
}

/// Whether spans are to be exported: an endpoint is named and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise.
/// Refuses a protocol other than http/protobuf, in one line.
fn wanted() -> anyhow::Result<bool> {
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER")
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("none"));
    if disabled || first_set(&ENDPOINT_VARIABLES).is_none() {
        return Ok(false);
    }
    if let Some((name, value)) = first_set(&PROTOCOL_VARIABLES)
        && value.trim() != PROTOCOL
    {
        bail!(
            "{name}={value:?} is not supported: saldo exports OTLP over {PROTOCOL} \
             (a collector's HTTP receiver, port 4318 by default)"
        );
    }
    if let Some((name, value)) = first_set(&["OTEL_TRACES_EXPORTER"])
        && value.trim() != "otlp"
    {
        bail!("{name}={value:?} is not supported: saldo exports traces over otlp, or none");
    }
    if let Some((name, value)) = first_set(&ENDPOINT_VARIABLES) {
        // The SDK reads the raw value, and one it cannot parse (no scheme,
        // a trailing newline from a ConfigMap) as no address at all: it
        // sends to localhost. Refuse it instead.
        let valid = !value.chars().any(char::is_whitespace)
            && ["http://", "https://"]
                .iter()
                .any(|scheme| value.len() > scheme.len() && value.starts_with(scheme))
            && value.parse::<axum::http::Uri>().is_ok();
        if !valid {
            bail!(
                "{name}={value:?} is not a URL: name the collector as http://HOST:4318 or https://…"
            );
        }
    }
    if let Some((name, _)) = first_set(&UNSUPPORTED_VARIABLES) {
        bail!(
            "{name} is not supported: saldo's exporter trusts the built-in Mozilla roots and \
             presents no client certificate; run a collector beside the process for that"
        );
    }
    Ok(true)
}

/// Checks the `OTEL_*` settings as [`init`] would, building the exporter
/// (which reads the SDK's own variables) and connecting to nothing
/// (`--check-config`).
pub fn check() -> anyhow::Result<()> {
    if wanted()? {
        exporter()?;
    }
    Ok(())
}

/// The OTLP/HTTP exporter the `OTEL_*` variables describe; building it
/// sends nothing.
fn exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .context("the OTLP trace exporter")
}

/// The exporter and provider, named `service` unless `OTEL_SERVICE_NAME`
/// names it. The endpoint, headers, timeout and batch settings come from
/// the standard `OTEL_*` variables, which the SDK reads.
fn provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = exporter()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_by_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| {
        attributes
            .split(',')
            .any(|pair| pair.trim_start().starts_with("service.name="))
    });
    if first_set(&["OTEL_SERVICE_NAME"]).is_none() && !named_by_attributes {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// `url` without a `user:password@` part, for the log.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<redacted>@{host}{path}"),
        None => url.to_owned(),
    }
}

/// Installs the log and (when wanted) trace layers for a process that
/// `service` names in traces (`None` for short commands, which export
/// nothing). A refused setting is an error before anything starts.
pub fn init(format: &str, service: Option<&str>) -> anyhow::Result<Telemetry> {
    let provider = match service {
        Some(service) if wanted()? => Some(provider(service)?),
        _ => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SALDO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    // Saldo's own spans only, whatever SALDO_LOG keeps: the exporter's own
    // log (and any library's spans) never feed back into it.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(saldo_engine::telemetry::SCOPE))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.is_span()
                    && metadata.name() != saldo_engine::telemetry::UNTRACED_SPAN
                    && metadata.target().starts_with("saldo")
                    && *metadata.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        saldo_engine::telemetry::enable();
        tracing::info!(
            service,
            endpoint = first_set(&ENDPOINT_VARIABLES).map(|(_, value)| without_userinfo(&value)),
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::without_userinfo;

    #[test]
    fn the_logged_endpoint_never_shows_credentials() {
        assert_eq!(
            without_userinfo("https://user:secret@collector.example.com:4318/v1/traces"),
            "https://<redacted>@collector.example.com:4318/v1/traces"
        );
        assert_eq!(
            without_userinfo("http://collector:4318/a@b"),
            "http://collector:4318/a@b"
        );
        assert_eq!(
            without_userinfo("http://collector:4318"),
            "http://collector:4318"
        );
    }
}

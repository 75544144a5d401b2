//! OpenTelemetry traces (ADR 0020): every process of the production
//! topology exports over OTLP/HTTP to a receiver here, which decodes the
//! protocol's protobuf with its own generated types; one order's spans must
//! form one connected tree across the processes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use super::{
    Processes, Production, banner_address, first_line_of, http_wait, place_in_dev, place_order,
};

/// How long the spans of one order may take to arrive.
const TRACE_WITHIN: Duration = Duration::from_secs(60);

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1 (`POST /v1/traces`, protobuf bodies).
struct Collector {
    address: String,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        use axum::body::Bytes;
        use axum::http::StatusCode;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0_usize));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binds");
        let address = listener.local_addr().expect("an address").to_string();
        let (kept, counted) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let (kept, counted) = (kept.clone(), counted.clone());
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    *counted.lock().expect("unpoisoned") += 1;
                    let mut kept = kept.lock().expect("unpoisoned");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|resource| &resource.attributes)
                            .find(|attribute| attribute.key == "service.name")
                            .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                            .map(|value| match value {
                                Value::StringValue(name) => name.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.push(Received {
                                    service: service.clone(),
                                    name: span.name,
                                    trace_id: hex(&span.trace_id),
                                    span_id: hex(&span.span_id),
                                    parent_span_id: hex(&span.parent_span_id),
                                });
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse: full success.
                    (StatusCode::OK, Vec::new())
                }
            }),
        );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            address,
            spans,
            requests,
            _runtime: runtime,
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .expect("unpoisoned")
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// Why `spans` are not yet one connected tree holding every hop, if they are not.
fn missing(spans: &[Received]) -> Option<String> {
    let ids: BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|span| span.parent_span_id.is_empty())
        .collect();
    if roots.len() != 1 {
        return Some(format!("{} roots", roots.len()));
    }
    if let Some(orphan) = spans
        .iter()
        .find(|span| !span.parent_span_id.is_empty() && !ids.contains(span.parent_span_id.as_str()))
    {
        return Some(format!("{orphan:?} has no parent among the spans"));
    }
    let have: BTreeSet<(&str, &str)> = spans
        .iter()
        .map(|span| (span.service.as_str(), span.name.as_str()))
        .collect();
    let wanted = [
        ("saldo-gateway", "POST /orders"),
        ("saldo-order", "POST /orders"),
        ("saldo-order", "emit ReserveStock"),
        ("saldo-outbox-order", "publish ReserveStock"),
        ("saldo-inventory", "consume ReserveStock"),
        ("saldo-inventory", "emit StockReserved"),
        ("saldo-outbox-inventory", "publish StockReserved"),
        ("saldo-order", "consume StockReserved"),
        ("saldo-order", "emit ChargePayment"),
        ("saldo-payment", "consume ChargePayment"),
        ("saldo-payment", "ledger append"),
        ("saldo-payment", "emit PaymentSucceeded"),
        ("saldo-outbox-payment", "publish PaymentSucceeded"),
        ("saldo-order", "consume PaymentSucceeded"),
        ("saldo-order", "emit CommitStock"),
        ("saldo-inventory", "consume CommitStock"),
        ("saldo-order", "emit OrderConfirmed"),
        ("saldo-outbox-order", "publish OrderConfirmed"),
    ];
    wanted
        .iter()
        .find(|hop| !have.contains(*hop))
        .map(|hop| format!("no {hop:?} span yet"))
}

#[test]
fn one_orders_spans_form_one_connected_trace_across_every_process() {
    let collector = Collector::start();
    let production = Production::start_with(
        "traces",
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", collector.address),
            ),
            // Export every 100 ms, not every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    );
    production.edge.seed(5);
    let order_id = place_order(&production.edge, "traced-1", "c0", 1);
    let auth = [("X-Api-Key", production.edge.api_key.as_str())];
    let order = http_wait(
        &production.edge.gateway_address,
        &format!("/orders/{order_id}"),
        &auth,
        60,
        |body| body["status"] == "CONFIRMED",
    );
    let traceparent = order["traceparent"].as_str().expect("a traceparent");
    let trace_id = traceparent[3..35].to_owned();
    let deadline = Instant::now() + TRACE_WITHIN;
    loop {
        let spans = collector.of_trace(&trace_id);
        match missing(&spans) {
            None => break,
            Some(why) => assert!(
                Instant::now() < deadline,
                "trace {trace_id} is not one connected tree of every hop after {TRACE_WITHIN:?}: {why}\n{spans:#?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever arrives later (the last replies, a second export) must keep
    // the tree whole: look again once every process has exported twice more.
    std::thread::sleep(Duration::from_millis(500));
    let spans = collector.of_trace(&trace_id);
    if let Some(why) = missing(&spans) {
        panic!("trace {trace_id} broke after it was whole: {why}\n{spans:#?}");
    }
    // Health checks and scrapes (the test's /readyz polls) are not traced.
    assert!(
        !collector
            .spans
            .lock()
            .expect("unpoisoned")
            .iter()
            .any(|span| span.name.contains("/readyz") || span.name.contains("/healthz")),
        "a probe was traced"
    );
    // The root is the gateway's request, and the order row names the order
    // service's request span, a child of it.
    let by_id: HashMap<&str, &Received> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let root = spans
        .iter()
        .find(|span| span.parent_span_id.is_empty())
        .expect("one root");
    assert_eq!(
        (root.service.as_str(), root.name.as_str()),
        ("saldo-gateway", "POST /orders")
    );
    let placed = by_id
        .get(&traceparent[36..52])
        .expect("the order's traceparent names an exported span");
    assert_eq!(
        (placed.service.as_str(), placed.parent_span_id.as_str()),
        ("saldo-order", root.span_id.as_str())
    );
    // Each message's span is the one its traceparent names (derived from
    // its id by the sdk): its consumer's span hangs from it.
    for consumed in spans
        .iter()
        .filter(|span| span.name.starts_with("consume "))
    {
        let emitted = by_id
            .get(consumed.parent_span_id.as_str())
            .expect("a consumer's parent is exported");
        assert_eq!(
            emitted.name.replacen("emit ", "consume ", 1),
            consumed.name,
            "{consumed:?} hangs from {emitted:?}"
        );
    }
    // A span is exported once: no id twice.
    let unique: BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    assert_eq!(unique.len(), spans.len(), "a span id exported twice");
    assert!(*collector.requests.lock().expect("unpoisoned") > 0);
    production.stop();
}

#[test]
fn a_collector_that_never_answers_slows_no_order_and_no_stop() {
    // The flaky network: the endpoint accepts connections and never
    // answers. Orders still end as fast as ever, and SIGTERM still stops
    // the process promptly (the last flush is bounded).
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let endpoint = format!("http://{}", black_hole.local_addr().expect("an address"));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_saldo"));
    command
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let (child, first_line) = first_line_of(command);
    let mut processes = Processes(vec![("dev", child)]);
    let address = banner_address(&first_line);
    for index in 0..20 {
        let (location, _) =
            place_in_dev(&address, &format!("black-hole-{index}"), "alice", "book", 1);
        let order = http_wait(&address, &location, &[], 10, |body| {
            body["status"] != "PENDING"
        });
        assert!(
            order["status"] == "CONFIRMED" || order["status"] == "CANCELLED",
            "{order}"
        );
    }
    // The exporter did reach the collector that never answers.
    black_hole.set_nonblocking(true).expect("non-blocking");
    assert!(
        black_hole.accept().is_ok(),
        "no export ever reached {endpoint}"
    );
    let stopping = Instant::now();
    processes.stop_all();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopping took {:?} with a collector that never answers",
        stopping.elapsed()
    );
    drop(black_hole);
}

#[test]
fn otlp_settings_saldo_cannot_honour_are_one_line_and_exit_2() {
    // Each refused before anything connects, by the command and by
    // --check-config: a protocol it does not speak, an endpoint the SDK
    // would silently replace with localhost, TLS files it would ignore.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT=\"otel-collector:4318\" is not a URL",
        ),
        (
            &[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://otel-collector:4318\n",
            )],
            "is not a URL",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/tls/ca.pem")],
            "OTEL_EXPORTER_OTLP_CERTIFICATE is not supported",
        ),
    ];
    for (environment, said) in cases {
        for check in [false, true] {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_saldo"));
            if check {
                command.arg("--check-config");
            }
            let output = command
                .args([
                    "reconcile",
                    "--once",
                    "--database-url",
                    "postgres://127.0.0.1:1/none",
                ])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
                .envs(environment.iter().copied())
                .output()
                .expect("saldo runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{environment:?}, --check-config: {check}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(said), "{stderr}");
        }
    }
}

//! What every request carries: its correlation id and W3C trace context,
//! a tracing span, request metrics, and a size-limited JSON body reader.

use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::body::{Body, to_bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use saldo_domain::messages::Traceparent;
use saldo_types::{CorrelationId, Id128};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::problem::Problem;

/// The header carrying the correlation id, echoed on every response.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The most bytes a request body may have (413 above).
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The request's identity in logs, messages and ledger entries.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// From `X-Correlation-Id`, or generated.
    pub correlation_id: CorrelationId,
    /// From `traceparent`, or a new trace when absent or malformed (as
    /// the W3C recommendation says).
    pub traceparent: Traceparent,
}

/// A new random 128-bit id, for generated correlation ids, traces and order ids.
pub fn random_id() -> Id128 {
    Id128::from_hex(&uuid::Uuid::new_v4().simple().to_string()).expect("a uuid is 32 hex digits")
}

impl RequestContext {
    /// Reads the context from headers; a malformed correlation id is the
    /// client's error (422), a malformed traceparent starts a new trace.
    pub fn from_headers(headers: &HeaderMap) -> Result<RequestContext, Problem> {
        let correlation_id = match headers.get(&CORRELATION_ID) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|text| CorrelationId::new(text).ok())
                .ok_or_else(|| {
                    Problem::invalid_field(
                        "X-Correlation-Id",
                        "X-Correlation-Id must be 1 to 64 letters, digits or . _ : -",
                    )
                })?,
            None => CorrelationId::new(format!("req-{}", random_id().to_hex()))
                .expect("a generated id is valid"),
        };
        let traceparent =
            incoming_traceparent(headers).unwrap_or_else(|| Traceparent::root(random_id()));
        Ok(RequestContext {
            correlation_id,
            traceparent,
        })
    }

    /// Continues the request's trace in `span` (ADR 0020): when spans are
    /// exported, `span` becomes a child of the incoming traceparent (or a
    /// new trace's root) and the context carries `span`'s own traceparent,
    /// so proxied requests and the rows this request writes hang from it.
    pub fn trace_in(&mut self, span: &tracing::Span, headers: &HeaderMap) {
        if !saldo_engine::telemetry::exporting() {
            return;
        }
        if let Some(incoming) = incoming_traceparent(headers) {
            saldo_engine::telemetry::continue_trace(span, incoming.as_str());
        }
        if let Some(own) = saldo_engine::telemetry::traceparent_of(span) {
            self.traceparent = own;
        }
    }

    /// Writes the context into outgoing headers (responses, proxied requests).
    pub fn write_to(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(self.correlation_id.as_str()) {
            headers.insert(CORRELATION_ID, value);
        }
        if let Ok(value) = HeaderValue::from_str(self.traceparent.as_str()) {
            headers.insert(TRACEPARENT, value);
        }
    }
}

/// The request's own `traceparent`, when it has a valid one.
fn incoming_traceparent(headers: &HeaderMap) -> Option<Traceparent> {
    headers
        .get(&TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| Traceparent::parse(text).ok())
}

/// Middleware: attaches the [`RequestContext`], runs the request in a span
/// carrying it, echoes it on the response (while exporting, the traceparent
/// of the request's own span, ADR 0020), and records metrics and a log line.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || ROUTE_UNMATCHED.to_owned(),
        |path| path.as_str().to_owned(),
    );
    let mut context = match RequestContext::from_headers(request.headers()) {
        Ok(context) => context,
        Err(problem) => return problem.into_response(),
    };
    // Health checks and metrics scrapes are logged like any request but
    // never traced: a probe every few seconds per pod would bury the
    // orders' traces under single-span ones.
    let traced = saldo_engine::telemetry::exporting() && !PROBE_ROUTES.contains(&route.as_str());
    let span = if traced {
        tracing::info_span!(
            "http",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            method = %method,
            route = %route,
            correlation_id = %context.correlation_id,
            trace_id = tracing::field::Empty,
        )
    } else if saldo_engine::telemetry::exporting() {
        tracing::info_span!(
            saldo_engine::telemetry::UNTRACED_SPAN,
            method = %method,
            route = %route,
            correlation_id = %context.correlation_id,
            trace_id = tracing::field::Empty,
        )
    } else {
        tracing::info_span!(
            "http",
            method = %method,
            route = %route,
            correlation_id = %context.correlation_id,
            trace_id = tracing::field::Empty,
        )
    };
    if traced {
        context.trace_in(&span, request.headers());
    }
    span.record("trace_id", context.traceparent.trace_id());
    request.extensions_mut().insert(context.clone());
    let mut response = next.run(request).instrument(span.clone()).await;
    context.write_to(response.headers_mut());
    let status = response.status().as_u16();
    if traced {
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });
    let labels = [
        ("method", method_label(&method).to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("saldo_http_requests_total", &labels).increment(1);
    metrics::histogram!("saldo_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    response
}

/// The routes of probes and scrapes, which are never traced.
pub const PROBE_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The metrics label of every request no route matched: one label for
/// every invented path, so that clients cannot grow the metrics page.
pub const ROUTE_UNMATCHED: &str = "unmatched";

/// The metrics label of a method: the methods of RFC 9110 by name, every
/// other one as `other`, so that the label set is closed.
pub fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::CONNECT, "CONNECT"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::PATCH, "PATCH"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// A route's one path parameter, as text. axum's own rejection is a
/// `text/plain` 400; this one is a problem like every other error: a
/// parameter that is not UTF-8 is 422 `field_invalid` naming it.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    use axum::extract::path::ErrorKind;
    match rejection {
        PathRejection::FailedToDeserializePathParams(error) => match error.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                Problem::invalid_field(key.clone(), format!("{key} is not UTF-8 text"))
            }
            _ => Problem::new(
                StatusCode::BAD_REQUEST,
                "path_invalid",
                "The request path is invalid",
                error.body_text(),
            ),
        },
        // Only a route without its parameter gets here: the server's bug.
        other => {
            tracing::error!(alert = true, rejection = %other, "a route lacks its path parameter");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "The server failed to handle the request",
                "operators have the details",
            )
        }
    }
}

/// A JSON request body: `application/json`, at most [`BODY_BYTES_MAX`]
/// bytes, unknown fields refused, every error naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let timeout = body_read_timeout(request.extensions());
        let bytes = read_body(request.into_body(), timeout).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// 415 unless the request says its body is JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The body must be JSON",
            "send Content-Type: application/json",
        ))
    }
}

/// How long the listener lets this request's body take (see
/// [`crate::Limits`]; a router served without them gets the default).
pub fn body_read_timeout(extensions: &Extensions) -> Duration {
    extensions
        .get::<crate::Limits>()
        .map_or(crate::BODY_READ_TIMEOUT, |limits| limits.body_read_timeout)
}

/// Reads a whole body within `timeout` (408 past it), refusing more than
/// [`BODY_BYTES_MAX`] bytes (413): at once when the declared length says
/// so, before a byte of the body is read.
pub async fn read_body(body: Body, timeout: Duration) -> Result<axum::body::Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "The request body is too large",
            format!("the body may have at most {BODY_BYTES_MAX} bytes"),
        )
    };
    // hyper reports a declared Content-Length as the body's exact size.
    let declared_bytes = HttpBody::size_hint(&body).lower();
    if declared_bytes > u64::try_from(BODY_BYTES_MAX).unwrap_or(u64::MAX) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, to_bytes(body, BODY_BYTES_MAX)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "The request body did not arrive in time",
            format!(
                "the whole body must arrive within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// Parses JSON into `T`: malformed JSON is 400; a wrong, missing or unknown
/// field is 422 naming it by its JSON path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let malformed = |error: serde_json::Error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "json_malformed",
            "The body is not valid JSON",
            error.to_string(),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return malformed(inner);
        }
        let message = inner.to_string();
        // serde puts an unknown field in the path but names a missing one
        // only in its message.
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(missing) if path == "." => missing.to_owned(),
            Some(missing) => format!("{path}.{missing}"),
            None => path,
        };
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        Problem::invalid_field(field.clone(), format!("{field}: {message}"))
    })?;
    deserializer.end().map_err(malformed)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        lines: Vec<Line>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: u32,
    }

    #[rstest::rstest]
    #[case(br#"{"name":"a","lines":[{"quantity":-1}]}"#, 422, "lines[0].quantity")]
    #[case(br#"{"name":"a","lines":[],"extra":1}"#, 422, "extra")]
    #[case(br#"{"name":"a","lines":[{"quantity":1,"x":2}]}"#, 422, "lines[0].x")]
    #[case(br#"{"lines":[]}"#, 422, "name")]
    #[case(br#"{"name":"a","#, 400, "")]
    #[case(br#"{"name":"a","lines":[]} trailing"#, 400, "")]
    fn json_errors_name_the_field(#[case] body: &[u8], #[case] status: u16, #[case] field: &str) {
        // Proves every JSON error says which field is wrong (422) or that
        // the body is not JSON at all (400).
        let problem = parse_json::<Body>(body).expect_err("refused");
        assert_eq!(problem.status, status, "{problem:?}");
        if status == 422 {
            assert_eq!(problem.field.as_deref(), Some(field), "{problem:?}");
        }
    }
}

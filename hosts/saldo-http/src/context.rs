//! What every request carries: its correlation id and W3C trace context,
//! a tracing span, request metrics, and a size-limited JSON body reader.

use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
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
        let traceparent = headers
            .get(&TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Traceparent::parse(text).ok())
            .unwrap_or_else(|| Traceparent::root(random_id()));
        Ok(RequestContext {
            correlation_id,
            traceparent,
        })
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

/// Middleware: attaches the [`RequestContext`], runs the request in a span
/// carrying it, echoes it on the response, and records metrics and a log line.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let context = match RequestContext::from_headers(request.headers()) {
        Ok(context) => context,
        Err(problem) => return problem.into_response(),
    };
    let span = tracing::info_span!(
        "http",
        method = %method,
        route = %route,
        correlation_id = %context.correlation_id,
        trace_id = %context.traceparent.trace_id(),
    );
    request.extensions_mut().insert(context.clone());
    let mut response = next.run(request).instrument(span.clone()).await;
    context.write_to(response.headers_mut());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    });
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("saldo_http_requests_total", &labels).increment(1);
    metrics::histogram!("saldo_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    response
}

/// A JSON request body: `application/json`, at most [`BODY_BYTES_MAX`]
/// bytes, unknown fields refused, every error naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let bytes = read_body(request.into_body()).await?;
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

/// Reads a whole body, refusing more than [`BODY_BYTES_MAX`] bytes.
pub async fn read_body(body: Body) -> Result<axum::body::Bytes, Problem> {
    to_bytes(body, BODY_BYTES_MAX).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "The request body is too large",
            format!("the body may have at most {BODY_BYTES_MAX} bytes"),
        )
    })
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

//! Errors as `application/problem+json` (RFC 9457) with a stable `code`.
//!
//! Clients branch on `code`, never on `title` or `detail`; the codes are
//! listed in `openapi.json` and never change meaning.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One error answer. Its `type` member is `urn:saldo:problem:<code>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A short human summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What exactly went wrong with this request.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: &'static str,
    /// The offending field (JSON path, header or path parameter), if one.
    pub field: Option<String>,
    /// Seconds to wait before retrying, for 409, 429 and 503.
    pub retry_after_seconds: Option<u64>,
}

/// The wire form (RFC 9457 members plus Saldo's).
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

impl Problem {
    /// A problem of `code` with its status and title.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            field: None,
            retry_after_seconds: None,
        }
    }

    /// Names the offending field.
    pub fn field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    /// Asks the client to retry after `milliseconds` (rounded up to seconds).
    pub fn retry_after_ms(mut self, milliseconds: u64) -> Problem {
        self.retry_after_seconds = Some(milliseconds.div_ceil(1_000).max(1));
        self
    }

    /// 422 for a request field that is invalid.
    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "field_invalid",
            "A field of the request is invalid",
            detail,
        )
        .field(field)
    }

    /// 400 for a write without an `Idempotency-Key` header.
    pub fn idempotency_key_missing() -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "An Idempotency-Key header is required",
            "send a unique Idempotency-Key per logical request; repeat it to retry safely",
        )
        .field("Idempotency-Key")
    }

    /// 400 for a request carrying more than one `Idempotency-Key` header:
    /// which one the client meant is not ours to guess.
    pub fn idempotency_key_repeated() -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_repeated",
            "Exactly one Idempotency-Key header is allowed",
            "the request carries several Idempotency-Key headers; send one",
        )
        .field("Idempotency-Key")
    }

    /// 403 for a request acting for a customer its API key does not act for.
    /// The answer depends only on the request and the key, never on what is
    /// stored, so it reveals nothing about the customer.
    pub fn customer_forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "customer_forbidden",
            "The API key may not act for this customer",
            detail,
        )
    }

    /// 404 for a resource that does not exist.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, "Not found", detail)
    }

    /// 503 when the store or broker cannot be reached. The `cause` (a
    /// database error's text, row keys) is logged for operators and never
    /// sent to the client.
    pub fn unavailable(cause: impl std::fmt::Display) -> Problem {
        tracing::warn!(%cause, "a dependency is unavailable");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "A dependency is unavailable; nothing was written",
            "the service could not reach its database or broker; retry later",
        )
        .retry_after_ms(1_000)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_seconds;
        let body = serde_json::to_vec(&Wire {
            kind: format!("urn:saldo:problem:{}", self.code),
            title: self.title,
            status: self.status,
            detail: &self.detail,
            code: self.code,
            field: self.field.as_deref(),
            retry_after_seconds: self.retry_after_seconds,
        })
        .expect("a problem serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        // Proves a client is never told to retry sooner than the server asked.
        assert_eq!(
            Problem::unavailable("x")
                .retry_after_ms(1_001)
                .retry_after_seconds,
            Some(2)
        );
        assert_eq!(
            Problem::unavailable("x")
                .retry_after_ms(0)
                .retry_after_seconds,
            Some(1)
        );
    }
}

//! Traces across processes (ADR 0020): OpenTelemetry spans that continue
//! the W3C traceparent every request, row and message already carries.
//!
//! The sdk derives each message's traceparent from its id (`Traceparent::
//! child`), so the span that stands for a message has that id as its span
//! id. The process whose commit emits a message exports that span (`emit
//! TYPE`, from the decision to the commit) under the span of the decision;
//! the publisher (`publish TYPE`) and the consumer (`consume TYPE`) hang
//! theirs under it. So one order's spans form one tree across every
//! process, with ids the replay of a recording derives exactly as
//! production did.
//!
//! Nothing here exports anything until the binary installs an exporter and
//! calls [`enable`]; until then every function returns at its first check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, global};
use saldo_domain::decision::Decision;
use saldo_domain::messages::{Envelope, Traceparent};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope of every span Saldo exports.
pub const SCOPE: &str = "saldo";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns exporting on; the binary calls it once it has installed the
/// global tracer provider and the tracing layer.
pub fn enable() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span context a traceparent names, as a remote parent.
fn remote(traceparent: &str) -> Option<SpanContext> {
    let parsed = Traceparent::parse(traceparent).ok()?;
    let text = parsed.as_str();
    let trace_id = TraceId::from_hex(&text[3..35]).ok()?;
    let span_id = SpanId::from_hex(&text[36..52]).ok()?;
    let flags = u8::from_str_radix(&text[53..55], 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// A context whose active span is the one `traceparent` names.
fn remote_context(traceparent: &str) -> Option<Context> {
    remote(traceparent).map(|parent| Context::new().with_remote_span_context(parent))
}

/// The traceparent of a span context.
fn traceparent_of_context(context: &SpanContext) -> Option<Traceparent> {
    if !context.is_valid() {
        return None;
    }
    Traceparent::parse(&format!(
        "00-{:032x}-{:016x}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
    .ok()
}

/// Makes `span` a child of the span `traceparent` names. Call it before the
/// span is first entered.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if !exporting() {
        return;
    }
    if let Some(parent) = remote_context(traceparent) {
        // A span the exporting layer does not see (filtered out) has no
        // parent to set; it exports nothing either.
        let _ = span.set_parent(parent);
    }
}

/// The traceparent that names `span` itself, when it is exported: what a
/// request continues downstream (proxied requests, the rows it writes).
pub fn traceparent_of(span: &tracing::Span) -> Option<Traceparent> {
    if !exporting() {
        return None;
    }
    traceparent_of_context(span.context().span().span_context())
}

/// The span a decision's exported spans hang from.
#[derive(Debug, Clone, Default)]
pub enum Parent {
    /// A span of this process: the request's, the consumed message's.
    Span(tracing::Span),
    /// A span named by a traceparent (a saga deadline hangs from the
    /// order's placement).
    Traceparent(Traceparent),
    /// Nothing (benchmarks, inputs outside any trace).
    #[default]
    None,
}

impl Parent {
    /// The current tracing span, when exporting.
    pub fn current() -> Parent {
        if exporting() {
            Parent::Span(tracing::Span::current())
        } else {
            Parent::None
        }
    }

    fn context(&self) -> Option<Context> {
        let context = match self {
            Parent::Span(span) => span.context(),
            Parent::Traceparent(traceparent) => remote_context(traceparent.as_str())?,
            Parent::None => return None,
        };
        context.span().span_context().is_valid().then_some(context)
    }
}

/// What a decision will show in its trace once committed: the messages it
/// emits and the ledger postings it seals.
#[derive(Debug)]
pub(crate) struct Traced {
    started: SystemTime,
    messages: Vec<(Traceparent, &'static str, String, String)>,
    postings: Vec<(String, String, usize)>,
}

impl Traced {
    /// What `decision` would show; `None` when not exporting.
    pub(crate) fn of(decision: &Decision, started: SystemTime) -> Option<Traced> {
        if !exporting() {
            return None;
        }
        Some(Traced {
            started,
            messages: decision
                .outbox
                .iter()
                .map(|envelope: &Envelope| {
                    (
                        envelope.traceparent.clone(),
                        envelope.message_type(),
                        envelope.message_id.to_hex(),
                        envelope.order_id.as_str().to_owned(),
                    )
                })
                .collect(),
            postings: decision
                .postings
                .iter()
                .map(|posting| {
                    (
                        posting.id.to_hex(),
                        posting.memo.purpose.clone(),
                        posting.legs.len(),
                    )
                })
                .collect(),
        })
    }

    /// Exports the decision's spans, committed at `committed`, under `parent`.
    pub(crate) fn export(self, parent: &Parent, committed: SystemTime) {
        let tracer = global::tracer(SCOPE);
        let parent_context = parent.context();
        for (traceparent, message_type, message_id, order_id) in self.messages {
            let Some(own) = remote(traceparent.as_str()) else {
                continue;
            };
            let mut builder = SpanBuilder::from_name(format!("emit {message_type}"))
                .with_kind(SpanKind::Producer)
                .with_trace_id(own.trace_id())
                .with_span_id(own.span_id())
                .with_start_time(self.started)
                .with_attributes([
                    KeyValue::new("messaging.message.id", message_id),
                    KeyValue::new("saldo.message.type", message_type),
                    KeyValue::new("saldo.order.id", order_id),
                ]);
            // The message's span belongs to the message's trace. A decision
            // of another trace (an operator's request acting on an order)
            // is linked to, not adopted as the parent.
            let context = match &parent_context {
                Some(context) if context.span().span_context().trace_id() == own.trace_id() => {
                    context.clone()
                }
                Some(context) => {
                    builder = builder.with_links(vec![Link::with_context(
                        context.span().span_context().clone(),
                    )]);
                    Context::new()
                }
                None => Context::new(),
            };
            tracer
                .build_with_context(builder, &context)
                .end_with_timestamp(committed);
        }
        let Some(context) = parent_context else {
            return;
        };
        for (posting_id, purpose, legs) in self.postings {
            let builder = SpanBuilder::from_name("ledger append")
                .with_start_time(self.started)
                .with_attributes([
                    KeyValue::new("saldo.posting.id", posting_id),
                    KeyValue::new("saldo.posting.purpose", purpose),
                    KeyValue::new(
                        "saldo.posting.legs",
                        i64::try_from(legs).unwrap_or(i64::MAX),
                    ),
                ]);
            tracer
                .build_with_context(builder, &context)
                .end_with_timestamp(committed);
        }
    }
}

/// Exports a span of `kind` from `started` to `ended` under the span
/// `traceparent` names (the publisher's hop of an outbox row).
pub fn export_span(
    traceparent: &str,
    name: String,
    kind: SpanKind,
    started: SystemTime,
    ended: SystemTime,
    attributes: Vec<KeyValue>,
) {
    if !exporting() {
        return;
    }
    let Some(parent) = remote_context(traceparent) else {
        return;
    };
    let tracer = global::tracer(SCOPE);
    let builder = SpanBuilder::from_name(name)
        .with_kind(kind)
        .with_start_time(started)
        .with_attributes(attributes);
    tracer
        .build_with_context(builder, &parent)
        .end_with_timestamp(ended);
}

/// The span of one consumed message, a child of the message's own span.
pub fn consume_span(envelope: &Envelope) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("consume {}", envelope.message_type()),
        otel.kind = "consumer",
        messaging.message.id = %envelope.message_id.to_hex(),
        saldo.order.id = %envelope.order_id,
    );
    continue_trace(&span, envelope.traceparent.as_str());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_a_span_context() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = remote(text).expect("a valid traceparent");
        assert!(context.is_remote());
        assert!(context.is_sampled());
        assert_eq!(
            traceparent_of_context(&context).expect("valid").as_str(),
            text
        );
        assert!(remote("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01").is_none());
        assert!(remote("not a traceparent").is_none());
    }

    #[test]
    fn nothing_is_traced_while_exporting_is_off() {
        assert!(!exporting());
        assert!(Traced::of(&Decision::default(), SystemTime::now()).is_none());
        assert!(matches!(Parent::current(), Parent::None));
        assert!(traceparent_of(&tracing::Span::current()).is_none());
    }
}

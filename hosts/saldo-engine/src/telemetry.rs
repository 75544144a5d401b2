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
use saldo_domain::decision::{Decision, Row};
use saldo_domain::messages::{Envelope, Traceparent};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope of every span Saldo exports.
pub const SCOPE: &str = "saldo";

/// The name of spans that are logged but never exported: health checks
/// and metrics scrapes while exporting.
pub const UNTRACED_SPAN: &str = "probe";

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

/// One message a decision publishes, as its trace shows it.
#[derive(Debug)]
struct Shown {
    traceparent: Traceparent,
    message_type: &'static str,
    message_id: String,
    order_id: String,
}

/// What a decision will show in its trace once committed: the messages it
/// emits (or publishes again, for a redrive) and the ledger postings it
/// seals.
#[derive(Debug)]
pub(crate) struct Traced {
    started: SystemTime,
    messages: Vec<Shown>,
    /// True when the messages are published again, as they first were (a
    /// redrive settling its dead letter): their spans exist already.
    again: bool,
    /// The traceparents of the order rows it writes: an operator's decision
    /// hangs the order's messages from the order's own trace.
    orders: Vec<Traceparent>,
    postings: Vec<(String, String, usize)>,
}

impl Traced {
    /// What `decision` would show; `None` when not exporting.
    pub(crate) fn of(decision: &Decision, started: SystemTime) -> Option<Traced> {
        exporting().then(|| Traced::collect(decision, started))
    }

    fn collect(decision: &Decision, started: SystemTime) -> Traced {
        Traced {
            started,
            messages: decision
                .outbox
                .iter()
                .map(|envelope: &Envelope| Shown {
                    traceparent: envelope.traceparent.clone(),
                    message_type: envelope.message_type(),
                    message_id: envelope.message_id.to_hex(),
                    order_id: envelope.order_id.as_str().to_owned(),
                })
                .collect(),
            again: decision.settle_dead_letter.is_some(),
            orders: decision
                .writes
                .iter()
                .filter_map(|write| match &write.row {
                    Row::Order(row) => Some(row.traceparent.clone()),
                    _ => None,
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
        }
    }

    /// The spans the decision exports, committed at `committed`, under
    /// `parent`: what [`Traced::export`] hands the tracer.
    fn spans(self, parent: &Parent, committed: SystemTime) -> Vec<(SpanBuilder, Context)> {
        let parent_context = parent.context();
        let mut spans = Vec::new();
        for shown in self.messages {
            let Some(own) = remote(shown.traceparent.as_str()) else {
                continue;
            };
            let attributes = [
                KeyValue::new("messaging.message.id", shown.message_id),
                KeyValue::new("saldo.message.type", shown.message_type),
                KeyValue::new("saldo.order.id", shown.order_id),
            ];
            let same_trace = parent_context
                .as_ref()
                .filter(|context| context.span().span_context().trace_id() == own.trace_id());
            // A decision of another trace (an operator's request acting on
            // an order) is linked to, not adopted as the parent.
            let links: Vec<Link> = match (&parent_context, same_trace) {
                (Some(context), None) => {
                    vec![Link::with_context(context.span().span_context().clone())]
                }
                _ => Vec::new(),
            };
            if self.again {
                // A redrive publishes the message as it first was: its span
                // is exported already; the redrive hangs from it.
                let builder = SpanBuilder::from_name(format!("redrive {}", shown.message_type))
                    .with_kind(SpanKind::Producer)
                    .with_start_time(self.started)
                    .with_end_time(committed)
                    .with_attributes(attributes)
                    .with_links(links);
                spans.push((builder, Context::new().with_remote_span_context(own)));
                continue;
            }
            let builder = SpanBuilder::from_name(format!("emit {}", shown.message_type))
                .with_kind(SpanKind::Producer)
                .with_trace_id(own.trace_id())
                .with_span_id(own.span_id())
                .with_start_time(self.started)
                .with_end_time(committed)
                .with_attributes(attributes)
                .with_links(links);
            let context = match same_trace {
                Some(context) => context.clone(),
                // Outside the decision's trace: under the order's own span
                // (its placement), which the order row names.
                None => self
                    .orders
                    .iter()
                    .filter_map(|traceparent| remote_context(traceparent.as_str()))
                    .find(|context| context.span().span_context().trace_id() == own.trace_id())
                    .unwrap_or_default(),
            };
            spans.push((builder, context));
        }
        if let Some(context) = parent_context {
            for (posting_id, purpose, legs) in self.postings {
                let builder = SpanBuilder::from_name("ledger append")
                    .with_start_time(self.started)
                    .with_end_time(committed)
                    .with_attributes([
                        KeyValue::new("saldo.posting.id", posting_id),
                        KeyValue::new("saldo.posting.purpose", purpose),
                        KeyValue::new(
                            "saldo.posting.legs",
                            i64::try_from(legs).unwrap_or(i64::MAX),
                        ),
                    ]);
                spans.push((builder, context.clone()));
            }
        }
        spans
    }

    /// Exports the decision's spans, committed at `committed`, under `parent`.
    pub(crate) fn export(self, parent: &Parent, committed: SystemTime) {
        let tracer = global::tracer(SCOPE);
        for (builder, context) in self.spans(parent, committed) {
            let end = builder.end_time.unwrap_or(committed);
            tracer
                .build_with_context(builder, &context)
                .end_with_timestamp(end);
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
    use saldo_domain::Rules;
    use saldo_domain::decision::Snapshot;
    use saldo_domain::messages::{OrderLine, Service};
    use saldo_domain::operator::DeadLetterRef;
    use saldo_domain::order::{PlaceOrder, decide_place_order};
    use saldo_idempotency::IdempotencyKey;
    use saldo_types::{CorrelationId, Currency, CustomerId, OrderId, Sku, Timestamp};

    use super::*;

    const PLACED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const OPERATOR: &str = "00-11111111111111111111111111111111-2222222222222222-01";

    /// A placement's decision: the order row (its traceparent `PLACED`) and
    /// its first message.
    fn placement() -> Decision {
        let request = PlaceOrder {
            order_id: OrderId::new("o-1").expect("valid"),
            customer: CustomerId::new("alice").expect("valid"),
            lines: vec![OrderLine {
                sku: Sku::new("book").expect("valid"),
                quantity: 1,
            }],
            currency: Currency::EUR,
            idempotency_key: IdempotencyKey::new("k-1").expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new("c-1").expect("valid"),
            traceparent: Traceparent::parse(PLACED).expect("valid"),
        };
        decide_place_order(
            &Rules::default().order_saga,
            &Snapshot::default(),
            &request,
            Timestamp::from_unix_ms(1_700_000_000_000),
        )
        .expect("placed")
        .decision
    }

    fn context_of(context: &Context) -> (String, String) {
        let span = context.span();
        let span = span.span_context();
        (
            format!("{:032x}", span.trace_id()),
            format!("{:016x}", span.span_id()),
        )
    }

    #[test]
    fn a_messages_span_has_the_id_its_traceparent_names_and_hangs_from_its_decision() {
        let decision = placement();
        let message = decision.outbox[0].traceparent.as_str().to_owned();
        let spans = Traced::collect(&decision, SystemTime::now()).spans(
            &Parent::Traceparent(Traceparent::parse(PLACED).expect("valid")),
            SystemTime::now(),
        );
        let (builder, parent) = &spans[0];
        assert_eq!(builder.name, "emit ReserveStock");
        assert_eq!(
            format!("{:016x}", builder.span_id.expect("its own id")),
            message[36..52]
        );
        assert_eq!(
            context_of(parent),
            (PLACED[3..35].to_owned(), PLACED[36..52].to_owned())
        );
        assert!(builder.links.as_ref().is_none_or(Vec::is_empty));
    }

    #[test]
    fn an_operators_decision_hangs_the_orders_messages_from_the_order_and_links_itself() {
        // The operator's request is another trace: the message's span stays
        // in the order's trace, under the order row's span, linked.
        let decision = placement();
        let spans = Traced::collect(&decision, SystemTime::now()).spans(
            &Parent::Traceparent(Traceparent::parse(OPERATOR).expect("valid")),
            SystemTime::now(),
        );
        let (builder, parent) = &spans[0];
        assert_eq!(
            context_of(parent),
            (PLACED[3..35].to_owned(), PLACED[36..52].to_owned())
        );
        let links = builder.links.as_ref().expect("linked");
        assert_eq!(
            format!("{:016x}", links[0].span_context.span_id()),
            OPERATOR[36..52]
        );
    }

    #[test]
    fn a_redrive_exports_no_span_id_again_and_hangs_from_the_message() {
        let mut decision = placement();
        decision.settle_dead_letter = Some(DeadLetterRef {
            service: Service::Inventory,
            id: 7,
        });
        let message = decision.outbox[0].traceparent.as_str().to_owned();
        let spans = Traced::collect(&decision, SystemTime::now()).spans(
            &Parent::Traceparent(Traceparent::parse(OPERATOR).expect("valid")),
            SystemTime::now(),
        );
        let (builder, parent) = &spans[0];
        assert_eq!(builder.name, "redrive ReserveStock");
        assert!(builder.span_id.is_none(), "a new id, not the message's");
        assert_eq!(
            context_of(parent),
            (message[3..35].to_owned(), message[36..52].to_owned())
        );
    }

    #[test]
    fn a_traceparent_round_trips_through_a_span_context() {
        let context = remote(PLACED).expect("a valid traceparent");
        assert!(context.is_remote());
        assert!(context.is_sampled());
        assert_eq!(
            traceparent_of_context(&context).expect("valid").as_str(),
            PLACED
        );
        assert!(remote("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01").is_none());
        assert!(remote("not a traceparent").is_none());
    }

    #[test]
    fn nothing_is_traced_while_exporting_is_off() {
        assert!(!exporting());
        assert!(Traced::of(&placement(), SystemTime::now()).is_none());
        assert!(matches!(Parent::current(), Parent::None));
        assert!(traceparent_of(&tracing::Span::current()).is_none());
    }
}

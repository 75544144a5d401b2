//! The operator API (docs/adr/0017), under `/admin`, behind the gateway's
//! `admin` scope.
//!
//! Each service serves its own part under `/admin/{service}` (`order`,
//! `inventory`, `payment`), reading only its own schema:
//!
//! - `GET /admin/order/orders?status=&awaiting=&older_than_ms=&after=&limit=`
//! - `POST /admin/order/orders/{order_id}`: an intervention (`retry_now`,
//!   `force_compensation`, `resolve`), `"dry_run": true` to see its decision
//! - `GET /admin/{service}/orders/{order_id}/story?received=ID,ID`
//! - `GET /admin/{service}/dead-letters?after=&limit=`
//! - `POST /admin/{service}/dead-letters/{id}`: `redrive` or `discard`
//! - `GET /admin/{service}/audit?after=&limit=`
//!
//! A process that has every service (`saldo dev`), like the gateway, also
//! serves `GET /admin/orders/{order_id}/story`: the parts gathered, merged
//! in causal order by the sdk, with reconciliation's findings for the order;
//! and `GET /admin/orders/{order_id}/export`: the same story as a recording
//! the browser harness replays (docs/adr/0019).
//!
//! Who may call it is [`AdminAccess`]: by default only requests the gateway
//! forwarded for a principal with the `admin` scope (or `*`) that acts for
//! every customer; anything else is 403 `admin_scope_required` (or
//! `customer_forbidden`) before a handler runs. The forwarded principal is
//! the actor its audit records name.
//!
//! Handlers translate only: every intervention is the sdk's decision,
//! shown as data on a dry run and committed through the engine otherwise.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use saldo_domain::Rules;
use saldo_domain::decision::Version;
use saldo_domain::messages::{MessageId, Service};
use saldo_domain::operator::{
    Actor, DeadLetterAction, DeadLetterRefused, Intervened, OrderAction, OrderIntervention,
    OrderInterventionRefused, Resolution, Run, decide_dead_letter, decide_order_intervention,
    order_intervention_read_set, order_summary,
};
use saldo_domain::order::OrderStatus;
use saldo_domain::story::{STORY_ITEMS_MAX, Story, StoryPart};
use saldo_engine::{OperatorStore, OrderQuery, PAGE_MAX, Store, execute, read};
use saldo_saga::Phase;
use saldo_types::{Id128, OrderId, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::context::{JsonBody, PathParam, observe};
use crate::gateway::Forwarded;
use crate::problem::Problem;

/// The awaited states an order listing may filter by (`SagaState::name`).
pub const AWAITING_NAMES: [&str; 5] = [
    "action_reply",
    "action_retry",
    "compensation_reply",
    "compensation_retry",
    "nothing",
];

/// Who may call a process's operator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminAccess {
    /// Only requests forwarded by a gateway for a principal with the `admin`
    /// scope (or `*`) acting for every customer. A request without a
    /// forwarded principal is refused: the default for a service, which
    /// cannot tell a client that reached it directly from an operator.
    #[default]
    Gateway,
    /// Requests without a forwarded principal too, audited as `direct`
    /// (`--admin-without-gateway`; `saldo dev` without keys): for tests and
    /// development only, where whoever reaches the port is the operator. A
    /// forwarded principal is still checked as under [`AdminAccess::Gateway`].
    WithoutGateway,
}

/// What the operator API of one process serves.
#[derive(Clone)]
pub struct Admin {
    /// The reads, over every service this process has.
    pub reader: Arc<dyn OperatorStore>,
    /// Each served service's store, for interventions.
    pub stores: Vec<(Service, Arc<dyn Store>)>,
    /// The deciders' configuration.
    pub rules: Arc<Rules>,
    /// The wall clock.
    pub clock: fn() -> Timestamp,
    /// Who may call it.
    pub access: AdminAccess,
}

type Shared = State<Arc<Admin>>;

impl Admin {
    fn store(&self, service: Service) -> &dyn Store {
        self.stores
            .iter()
            .find(|(served, _)| *served == service)
            .map(|(_, store)| store.as_ref())
            .expect("a service's admin routes are served only with its store")
    }

    /// The router of `/admin`, with its own state and request context.
    pub fn router(self) -> Router {
        let mut router: Router<Arc<Admin>> = Router::new();
        let services: Vec<Service> = self.stores.iter().map(|(service, _)| *service).collect();
        for service in &services {
            let service = *service;
            let base = format!("/admin/{}", service.name());
            router = router
                .route(
                    &format!("{base}/dead-letters"),
                    get(move |state: Shared, query: RawQuery| dead_letters(state, service, query)),
                )
                .route(
                    &format!("{base}/dead-letters/{{id}}"),
                    axum::routing::post(
                        move |state: Shared,
                              id: PathParam,
                              actor: Extension<Actor>,
                              body: JsonBody<DeadLetterRequest>| {
                            settle_dead_letter(state, service, id, actor, body)
                        },
                    ),
                )
                .route(
                    &format!("{base}/audit"),
                    get(move |state: Shared, query: RawQuery| audit(state, service, query)),
                )
                .route(
                    &format!("{base}/orders/{{order_id}}/story"),
                    get(move |state: Shared, id: PathParam, query: RawQuery| {
                        story_part(state, service, id, query)
                    }),
                );
        }
        if services.contains(&Service::Order) {
            router = router.route("/admin/order/orders", get(orders)).route(
                "/admin/order/orders/{order_id}",
                axum::routing::post(intervene),
            );
        }
        if Service::ALL
            .iter()
            .all(|service| services.contains(service))
        {
            router = router
                .route("/admin/orders/{order_id}/story", get(story_gathered))
                .route("/admin/orders/{order_id}/export", get(export_gathered));
        }
        let access = self.access;
        router
            .route_layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    admit(access, request, next)
                },
            ))
            .layer(axum::middleware::from_fn(observe))
            .with_state(Arc::new(self))
    }
}

/// The operator API's door: the actor of an admitted request goes into its
/// extensions for the handlers; anything else is answered here.
async fn admit(
    access: AdminAccess,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match actor_of(access, request.headers()) {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(problem) => problem.into_response(),
    }
}

/// The query's `name=value` pairs, as sent (values here are ids, numbers
/// and names, none of which needs percent-decoding).
fn query_pairs(query: &Option<String>) -> Vec<(&str, &str)> {
    query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect()
}

fn query_value<'a>(pairs: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| *value)
}

fn query_number(pairs: &[(&str, &str)], name: &str) -> Result<Option<u64>, Problem> {
    query_value(pairs, name)
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                Problem::invalid_field(name, format!("{name} must be a non-negative integer"))
            })
        })
        .transpose()
}

/// The page size asked for: 1 to [`PAGE_MAX`], [`PAGE_MAX`] when unset.
fn page_limit(pairs: &[(&str, &str)]) -> Result<usize, Problem> {
    match query_number(pairs, "limit")? {
        None => Ok(PAGE_MAX),
        Some(limit) if (1..=PAGE_MAX as u64).contains(&limit) => Ok(limit as usize),
        Some(_) => Err(Problem::invalid_field(
            "limit",
            format!("limit must be 1 to {PAGE_MAX}"),
        )),
    }
}

/// One name out of `allowed`, or 422 naming the field.
fn one_of(
    pairs: &[(&str, &str)],
    name: &str,
    allowed: &[&'static str],
) -> Result<Option<&'static str>, Problem> {
    let Some(text) = query_value(pairs, name) else {
        return Ok(None);
    };
    allowed
        .iter()
        .find(|candidate| candidate.eq_ignore_ascii_case(text))
        .copied()
        .map(Some)
        .ok_or_else(|| {
            Problem::invalid_field(
                name,
                format!("{name} must be one of {}", allowed.join(", ")),
            )
        })
}

/// A page of items with the cursor of the next one, if the page was full.
fn page(items: Vec<Value>, limit: usize, cursor: impl Fn(&Value) -> Value) -> Response {
    let next = (items.len() == limit)
        .then(|| items.last().map(&cursor))
        .flatten();
    axum::Json(json!({ "items": items, "next": next })).into_response()
}

fn admin_scope_required(detail: String) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "admin_scope_required",
        "The operator API needs a key with the admin scope, through the gateway",
        detail,
    )
}

/// Who is acting: the principal the gateway forwarded, whose name is also
/// its key's name (ADR 0013), if it may use the operator API; `direct` when
/// no gateway is in front and `access` allows that.
fn actor_of(access: AdminAccess, headers: &HeaderMap) -> Result<Actor, Problem> {
    let Some(forwarded) = Forwarded::from_headers(headers)? else {
        return match access {
            AdminAccess::WithoutGateway => Ok(Actor {
                principal: "direct".to_owned(),
                key: "none".to_owned(),
            }),
            AdminAccess::Gateway => Err(admin_scope_required(
                "this service serves /admin only to requests saldo gateway forwards for a key with the admin scope; --admin-without-gateway (tests and development only) admits direct requests".to_owned(),
            )),
        };
    };
    let principal = forwarded.principal.as_str();
    if !forwarded.scopes.iter().any(|scope| scope.grants_admin()) {
        return Err(admin_scope_required(format!(
            "key {principal:?} has neither the admin scope nor *"
        )));
    }
    if !forwarded.is_admin() {
        return Err(Problem::customer_forbidden(format!(
            "key {principal:?} acts for some customers only; the operator API needs a key for all of them"
        )));
    }
    Ok(Actor {
        principal: principal.to_owned(),
        key: principal.to_owned(),
    })
}

async fn orders(State(admin): Shared, RawQuery(query): RawQuery) -> Result<Response, Problem> {
    let pairs = query_pairs(&query);
    let limit = page_limit(&pairs)?;
    let now = (admin.clock)();
    let query = OrderQuery {
        status: one_of(&pairs, "status", &OrderStatus::NAMES)?,
        awaiting: one_of(&pairs, "awaiting", &AWAITING_NAMES)?,
        updated_before: query_number(&pairs, "older_than_ms")?
            .map(|age_ms| Timestamp::from_unix_ms(now.unix_ms().saturating_sub(age_ms))),
        after: query_value(&pairs, "after")
            .map(|id| {
                OrderId::new(id).map_err(|error| Problem::invalid_field("after", error.to_string()))
            })
            .transpose()?,
        limit,
    };
    let found = admin
        .reader
        .orders(&query)
        .await
        .map_err(Problem::unavailable)?;
    let items = found
        .iter()
        .map(|order| order_summary(&admin.rules.order_saga, order.version, &order.value))
        .collect();
    Ok(page(items, limit, |last| last["order_id"].clone()))
}

/// `POST /admin/order/orders/{order_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterventionRequest {
    action: String,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    phase: Option<Phase>,
    #[serde(default)]
    outcome: Option<Resolution>,
    #[serde(default)]
    expected_version: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

fn order_action(request: &InterventionRequest) -> Result<OrderAction, Problem> {
    let resolving = (&request.step, request.phase, request.outcome);
    match (request.action.as_str(), resolving) {
        ("retry_now", (None, None, None)) => Ok(OrderAction::RetryNow),
        ("force_compensation", (None, None, None)) => Ok(OrderAction::ForceCompensation),
        ("resolve", (Some(step), Some(phase), Some(outcome))) => Ok(OrderAction::Resolve {
            step: step.clone(),
            phase,
            outcome,
        }),
        ("resolve", _) => Err(Problem::invalid_field(
            "step",
            "resolve names the awaited step (its step_name), its phase (\"action\" or \"compensation\") and the outcome (\"succeeded\" or \"failed\")",
        )),
        ("retry_now" | "force_compensation", _) => Err(Problem::invalid_field(
            "outcome",
            "only resolve takes a step, a phase and an outcome",
        )),
        _ => Err(Problem::invalid_field(
            "action",
            "action must be retry_now, force_compensation or resolve",
        )),
    }
}

fn intervention_problem(refused: OrderInterventionRefused) -> Problem {
    let status = match refused {
        OrderInterventionRefused::OrderNotFound(_) => StatusCode::NOT_FOUND,
        OrderInterventionRefused::VersionRequired
        | OrderInterventionRefused::UnknownStep(_)
        | OrderInterventionRefused::NeedsParticipantReply => StatusCode::UNPROCESSABLE_ENTITY,
        OrderInterventionRefused::VersionChanged { .. } | OrderInterventionRefused::Saga(_) => {
            StatusCode::CONFLICT
        }
    };
    Problem::new(
        status,
        refused.code(),
        "The intervention was refused; nothing was written",
        refused.to_string(),
    )
}

/// What an intervention answers: its decision as data, and whether it was
/// only shown (a dry run) or committed.
fn intervened(dry_run: bool, done: Intervened) -> Response {
    axum::Json(json!({
        "dry_run": dry_run,
        "target": done.target,
        "action": done.action,
        "expected_version": done.decided_on,
        "decision": done.decision,
    }))
    .into_response()
}

/// Commits `decide`'s decision through the engine, or on a dry run decides
/// it from the same live rows and writes nothing.
async fn decide_or_commit<E: Send>(
    store: &dyn Store,
    read_set: &saldo_domain::decision::ReadSet,
    dry_run: bool,
    now: Timestamp,
    decide: impl Fn(
        &saldo_domain::decision::Snapshot,
    ) -> Result<saldo_domain::decision::Decided<Intervened>, E>
    + Send,
    refused: impl FnOnce(E) -> Problem,
) -> Result<Intervened, Problem> {
    if dry_run {
        let snapshot = read(store, read_set).await.map_err(Problem::unavailable)?;
        return decide(&snapshot)
            .map(|decided| decided.reply)
            .map_err(refused);
    }
    execute(store, read_set, now, decide)
        .await
        .map_err(|failure| match failure {
            saldo_engine::InputFailure::Rejected(error) => refused(error),
            saldo_engine::InputFailure::Conflict(conflict) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The rows changed while the intervention was decided; nothing was written",
                conflict.to_string(),
            ),
            saldo_engine::InputFailure::Unavailable(error) => Problem::unavailable(error),
            saldo_engine::InputFailure::Refused(reason) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "commit_refused",
                "The intervention was decided but could not be stored; nothing was written",
                reason,
            ),
        })
}

async fn intervene(
    State(admin): Shared,
    PathParam(order_id): PathParam,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<InterventionRequest>,
) -> Result<Response, Problem> {
    let order_id = OrderId::new(order_id)
        .map_err(|error| Problem::invalid_field("order_id", error.to_string()))?;
    let intervention = OrderIntervention {
        order_id,
        action: order_action(&request)?,
        expected_version: request.expected_version,
    };
    let read_set = order_intervention_read_set(&intervention.order_id);
    let store = admin.store(Service::Order);
    let now = (admin.clock)();
    let definition = &admin.rules.order_saga;
    let run = if request.dry_run {
        Run::DryRun
    } else {
        Run::Commit
    };
    let done = decide_or_commit(
        store,
        &read_set,
        request.dry_run,
        now,
        |snapshot| decide_order_intervention(definition, snapshot, &intervention, run, &actor, now),
        intervention_problem,
    )
    .await?;
    if !request.dry_run {
        tracing::warn!(alert = false, principal = %actor.principal, action = %done.action, target = %done.target, "operator intervention committed");
    }
    Ok(intervened(request.dry_run, done))
}

/// `POST /admin/{service}/dead-letters/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterRequest {
    action: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

fn dead_letter_problem(refused: DeadLetterRefused) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        refused.code(),
        "The intervention was refused; nothing was written",
        refused.to_string(),
    )
}

async fn settle_dead_letter(
    State(admin): Shared,
    service: Service,
    PathParam(id): PathParam,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<DeadLetterRequest>,
) -> Result<Response, Problem> {
    let id: u64 = id
        .parse()
        .map_err(|_| Problem::invalid_field("id", "a dead letter's id is a positive integer"))?;
    let action = match (request.action.as_str(), request.reason) {
        ("redrive", None) => DeadLetterAction::Redrive,
        ("discard", reason) => DeadLetterAction::Discard {
            reason: reason.unwrap_or_default(),
        },
        _ => {
            return Err(Problem::invalid_field(
                "action",
                "action must be redrive, or discard with a reason",
            ));
        }
    };
    let letter = admin
        .reader
        .dead_letter(service, id)
        .await
        .map_err(Problem::unavailable)?
        .ok_or_else(|| {
            Problem::not_found(
                "dead_letter_not_found",
                format!("{service} has no dead letter {id}"),
            )
        })?;
    let now = (admin.clock)();
    let done = decide_or_commit(
        admin.store(service),
        &saldo_domain::decision::ReadSet::default(),
        request.dry_run,
        now,
        |_| decide_dead_letter(&letter, &action, &actor, now),
        dead_letter_problem,
    )
    .await?;
    Ok(intervened(request.dry_run, done))
}

async fn dead_letters(
    State(admin): Shared,
    service: Service,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(&query);
    let limit = page_limit(&pairs)?;
    let letters = admin
        .reader
        .dead_letters(service, query_number(&pairs, "after")?, limit)
        .await
        .map_err(Problem::unavailable)?;
    let items = letters
        .iter()
        .map(|letter| serde_json::to_value(letter).expect("a dead letter serialises"))
        .collect();
    Ok(page(items, limit, |last| last["id"].clone()))
}

async fn audit(
    State(admin): Shared,
    service: Service,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(&query);
    let limit = page_limit(&pairs)?;
    let entries = admin
        .reader
        .audit(service, query_number(&pairs, "after")?, limit)
        .await
        .map_err(Problem::unavailable)?;
    let items = entries
        .iter()
        .map(|entry| {
            let mut value =
                serde_json::to_value(&entry.record).expect("an audit record serialises");
            value["id"] = json!(entry.id);
            value
        })
        .collect();
    Ok(page(items, limit, |last| last["id"].clone()))
}

/// The message ids of `received=ID,ID` (at most [`STORY_ITEMS_MAX`]).
fn received_ids(pairs: &[(&str, &str)]) -> Result<Vec<MessageId>, Problem> {
    let Some(list) = query_value(pairs, "received") else {
        return Ok(Vec::new());
    };
    let ids: Vec<&str> = list.split(',').filter(|id| !id.is_empty()).collect();
    if ids.len() > STORY_ITEMS_MAX {
        return Err(Problem::invalid_field(
            "received",
            format!("received names at most {STORY_ITEMS_MAX} message ids"),
        ));
    }
    ids.into_iter()
        .map(|id| {
            Id128::from_hex(id)
                .map_err(|error| Problem::invalid_field("received", error.to_string()))
        })
        .collect()
}

async fn story_part(
    State(admin): Shared,
    service: Service,
    PathParam(order_id): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(&query);
    let order_id = OrderId::new(order_id)
        .map_err(|error| Problem::invalid_field("order_id", error.to_string()))?;
    let part = admin
        .reader
        .story_part(service, &order_id, &received_ids(&pairs)?)
        .await
        .map_err(Problem::unavailable)?;
    Ok(axum::Json(part).into_response())
}

/// How many times [`gather`] reads an order that moves while it is read
/// before it answers with the last reading.
pub const GATHER_ROUNDS_MAX: usize = 3;

/// Gathers an order's story from `fetch` (one service's part, with the
/// receipts of the given messages): a first round finds every message,
/// a second asks each service which of them it handled. When the order
/// moved between the two (a row's version or the messages differ), both
/// are read again, at most [`GATHER_ROUNDS_MAX`] times, so that a story,
/// and a recording made of it, is one moment's. A part that fails is left
/// out and named in `missing`.
pub async fn gather<F, Fut>(order_id: OrderId, fetch: F) -> Story
where
    F: Fn(Service, Vec<MessageId>) -> Fut,
    Fut: Future<Output = Result<StoryPart, String>>,
{
    let moment = |parts: &[StoryPart]| {
        let mut seen: Vec<(Service, Vec<Version>, Vec<String>)> = parts
            .iter()
            .map(|part| {
                let versions = part.rows.iter().map(|row| row.version).collect();
                (part.service, versions, part.message_ids())
            })
            .collect();
        seen.sort();
        seen
    };
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut first = Vec::new();
        for service in Service::ALL {
            if let Ok(part) = fetch(service, Vec::new()).await {
                first.push(part);
            }
        }
        let sent: Vec<String> = first.iter().flat_map(StoryPart::message_ids).collect();
        // The receipts are asked for at most a part's bound of messages; a
        // story with more is cut, and says so.
        let cut = sent.len() > STORY_ITEMS_MAX;
        let ids: Vec<MessageId> = sent
            .iter()
            .take(STORY_ITEMS_MAX)
            .filter_map(|id| Id128::from_hex(id).ok())
            .collect();
        let mut parts = Vec::new();
        for service in Service::ALL {
            match fetch(service, ids.clone()).await {
                Ok(part) => parts.push(part),
                Err(error) => tracing::warn!(%service, %error, "a story part is missing"),
            }
        }
        if moment(&first) != moment(&parts) && rounds < GATHER_ROUNDS_MAX {
            continue;
        }
        let mut story = Story::merge(order_id, parts);
        story.truncated |= cut;
        return story;
    }
}

/// The story as the API shows it: the merged parts and reconciliation's
/// findings about the order at `now`.
pub fn story_view(story: &Story, now: Timestamp) -> Value {
    let findings =
        saldo_reconcile::story::findings(story, now, &saldo_reconcile::Settings::default());
    let mut value = serde_json::to_value(story).expect("a story serialises");
    value["findings"] = serde_json::to_value(findings).expect("findings serialise");
    value
}

async fn gathered(admin: &Admin, order_id: String) -> Result<Story, Problem> {
    let order_id = OrderId::new(order_id)
        .map_err(|error| Problem::invalid_field("order_id", error.to_string()))?;
    let reader = admin.reader.clone();
    let story = gather(order_id.clone(), |service, received| {
        let reader = reader.clone();
        let order_id = order_id.clone();
        async move {
            reader
                .story_part(service, &order_id, &received)
                .await
                .map_err(|error| error.to_string())
        }
    })
    .await;
    if story.rows.is_empty() && story.messages.is_empty() {
        return Err(Problem::not_found(
            "order_not_found",
            format!("no service knows order {order_id}"),
        ));
    }
    Ok(story)
}

async fn story_gathered(
    State(admin): Shared,
    PathParam(order_id): PathParam,
) -> Result<Response, Problem> {
    let story = gathered(&admin, order_id).await?;
    Ok(axum::Json(story_view(&story, (admin.clock)())).into_response())
}

async fn export_gathered(
    State(admin): Shared,
    PathParam(order_id): PathParam,
) -> Result<Response, Problem> {
    export_response(&gathered(&admin, order_id).await?)
}

/// `GET /admin/orders/{order_id}/export`: the story as a recording the
/// browser harness replays (docs/adr/0019), one JSON line. A story that a
/// replay could not use is refused: one with a service's part missing
/// (503 `story_incomplete`: export again) or cut at its bound (422
/// `story_too_long`).
pub fn export_response(story: &Story) -> Result<Response, Problem> {
    if !story.missing.is_empty() {
        let missing: Vec<&str> = story.missing.iter().map(|service| service.name()).collect();
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "story_incomplete",
            "A service did not answer; the recording would be incomplete",
            format!("no part from {}; export again", missing.join(", ")),
        )
        .retry_after_ms(1_000));
    }
    if story.truncated {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "story_too_long",
            "The order's story is longer than a recording holds",
            format!(
                "a part reached {STORY_ITEMS_MAX} items; read it with GET /admin/orders/{}/story",
                story.order_id
            ),
        ));
    }
    let disposition = format!(
        "attachment; filename=\"saldo-order-{}.jsonl\"",
        story.order_id
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        saldo_sim::recorded::export(story),
    )
        .into_response())
}

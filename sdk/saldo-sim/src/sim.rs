//! The simulation loop.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use saldo_domain::batch::{Batch, BatchReadSet, Commit};
use saldo_domain::decision::{Decided, ReadSet, Row, Snapshot};
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Envelope, Service, Traceparent};
use saldo_domain::order::{
    self, OrderStatus, PlaceOrder, decide_place_order, place_order_read_set,
};
use saldo_domain::payment::{TopUp, decide_top_up, top_up_read_set};
use saldo_domain::store::execute;
use saldo_domain::{ConsumeError, MemoryStore, MessageOutcome, Rules};
use saldo_idempotency::IdempotencyKey;
use saldo_types::{CorrelationId, Id128, OrderId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::config::{Faults, Profile, SimConfig};
use crate::fault::{Armed, Fault, FaultError};
use crate::invariants::{Checker, Violation};
use crate::replay::{Injection, Source, TraceHeader};
use crate::rng::Rng;
use crate::scenario::{CURRENCY, OrderSetup, Scenario, ScenarioError};
use crate::trace::{CrashPoint, DeliveryOutcome, Trace, TraceEvent, TraceRecord};

/// The signature of [`saldo_domain::decide_message`].
pub type DecideMessage = fn(
    &Rules,
    Service,
    &Snapshot,
    &Envelope,
    Timestamp,
) -> Result<Decided<MessageOutcome>, ConsumeError>;

/// The decide and commit functions the simulator drives. [`Handlers::REAL`]
/// is the production code; tests swap in deliberately broken variants to
/// prove the invariants catch them.
#[derive(Debug, Clone, Copy)]
pub struct Handlers {
    /// Decides a consumed message (the production entry point is
    /// [`saldo_domain::decide_message`]).
    pub decide_message: DecideMessage,
    /// Splits a batch's commit into the transactions that commit it:
    /// production commits one batch in one transaction.
    pub split_commit: fn(Commit) -> Vec<Commit>,
}

fn one_transaction(commit: Commit) -> Vec<Commit> {
    vec![commit]
}

/// The most messages a consumer takes and decides as one batch; each
/// delivery step draws its batch size from the seed, from one up to this.
pub const CONSUME_BATCH_MAX: u64 = 8;

/// The most due timers fired as one batch.
pub const TIMER_BATCH_MAX: usize = 8;

fn delivery_outcome(outcome: MessageOutcome) -> DeliveryOutcome {
    match outcome {
        MessageOutcome::Applied => DeliveryOutcome::Applied,
        MessageOutcome::Duplicate => DeliveryOutcome::Duplicate,
        MessageOutcome::Ignored(_) => DeliveryOutcome::Ignored,
    }
}

impl Handlers {
    /// The production deciders and one transaction per decision.
    pub const REAL: Handlers = Handlers {
        decide_message: saldo_domain::decide_message,
        split_commit: one_transaction,
    };
}

/// Counters for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Steps taken.
    pub steps: u64,
    /// Orders that ended confirmed.
    pub orders_confirmed: u64,
    /// Orders that ended cancelled.
    pub orders_cancelled: u64,
    /// Messages put on the broker (duplicates included).
    pub messages_published: u64,
    /// Messages handled by a consumer.
    pub messages_delivered: u64,
    /// Deliveries the inbox recognised as duplicates.
    pub duplicates_absorbed: u64,
    /// Duplicates the broker was made to deliver.
    pub duplicates_injected: u64,
    /// Crashes of services and publishers.
    pub crashes_injected: u64,
    /// Client requests repeated with the same idempotency key.
    pub client_retries: u64,
    /// Deadlines handled.
    pub timers_fired: u64,
    /// Invariant checks run.
    pub invariant_checks: u64,
    /// Virtual milliseconds simulated.
    pub simulated_ms: u64,
}

impl Stats {
    /// Adds another run's counters to these.
    pub fn absorb(&mut self, other: &Stats) {
        self.steps += other.steps;
        self.orders_confirmed += other.orders_confirmed;
        self.orders_cancelled += other.orders_cancelled;
        self.messages_published += other.messages_published;
        self.messages_delivered += other.messages_delivered;
        self.duplicates_absorbed += other.duplicates_absorbed;
        self.duplicates_injected += other.duplicates_injected;
        self.crashes_injected += other.crashes_injected;
        self.client_retries += other.client_retries;
        self.timers_fired += other.timers_fired;
        self.invariant_checks += other.invariant_checks;
        self.simulated_ms += other.simulated_ms;
    }
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationReport {
    /// The run's seed.
    pub seed: u64,
    /// The step at which the invariant broke.
    pub step: u64,
    /// The invariant and what is wrong.
    pub violation: Violation,
    /// The events leading to it, oldest first.
    pub recent: Vec<TraceRecord>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration that reproduces it.
    pub config: SimConfig,
    /// Counters.
    pub stats: Stats,
    /// The trace hash (32 hex digits).
    pub trace_hash: String,
    /// The broken invariant, if any.
    pub violation: Option<Box<ViolationReport>>,
    /// The trace as JSON lines, when it was kept.
    pub trace_json_lines: Option<Vec<u8>>,
}

/// What one [`Simulation::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// There is more to do.
    Running,
    /// Nothing is left to do and every invariant holds.
    Quiescent,
    /// An invariant broke; the run cannot continue.
    Violated,
}

impl StepOutcome {
    /// `running`, `quiescent` or `violated`.
    pub fn name(&self) -> &'static str {
        match self {
            StepOutcome::Running => "running",
            StepOutcome::Quiescent => "quiescent",
            StepOutcome::Violated => "violated",
        }
    }
}

/// A request the client will send (again) at `not_before`.
#[derive(Debug, Clone, Copy)]
struct PendingRequest {
    index: usize,
    attempt: u32,
    not_before: Timestamp,
}

/// The first virtual instant of every run.
pub const START: Timestamp = Timestamp::from_unix_ms(1_767_225_600_000);

fn index_of(service: Service) -> usize {
    match service {
        Service::Order => 0,
        Service::Inventory => 1,
        Service::Payment => 2,
    }
}

/// The whole platform in one value, stepped one action at a time.
pub struct Simulation {
    config: SimConfig,
    faults: Faults,
    rules: Rules,
    handlers: Handlers,
    rng: Rng,
    now: Timestamp,
    store: MemoryStore,
    broker: Broker,
    checker: Checker,
    down_until: [Option<Timestamp>; 3],
    publisher_down_until: [Option<Timestamp>; 3],
    planned: Vec<OrderSetup>,
    next_new: usize,
    next_arrival: Timestamp,
    retries: VecDeque<PendingRequest>,
    faults_active: bool,
    fault_steps_left: u64,
    steps_max: u64,
    stats: Stats,
    trace: Trace,
    violation: Option<Box<ViolationReport>>,
    finished: bool,
    source: Source,
    armed: Armed,
    injections: Vec<Injection>,
}

impl Simulation {
    /// Sets up a run: wallets, stock and the client's orders, all drawn from the seed.
    pub fn new(config: SimConfig, handlers: Handlers, keep_trace: bool) -> Simulation {
        let mut rng = Rng::new(config.seed);
        let world = Scenario::drawn(&config, &mut rng);
        let source = Source::Seeded(config.clone());
        Simulation::build(config, rng, world, handlers, keep_trace, source)
            .expect("a drawn world is valid")
    }

    /// Sets up a run of a scenario: its world, then its faults, injected
    /// before the first step. The run's own choices come from the
    /// scenario's seed; no fault is drawn at random.
    pub fn from_scenario(
        scenario: &Scenario,
        keep_trace: bool,
    ) -> Result<Simulation, ScenarioError> {
        scenario.validate()?;
        let orders = u32::try_from(scenario.orders.len())
            .map_err(|_| ScenarioError::OrderCount(scenario.orders.len()))?;
        let mut config = SimConfig::new(scenario.seed, orders, Profile::None);
        // One partition per topic keeps a walkthrough's sequence easy to follow.
        config.partitions = 1;
        let source = Source::Scenario(scenario.clone());
        let rng = Rng::new(scenario.seed);
        let mut simulation = Simulation::build(
            config,
            rng,
            scenario.clone(),
            Handlers::REAL,
            keep_trace,
            source,
        )?;
        for fault in &scenario.faults {
            simulation.apply(*fault);
        }
        Ok(simulation)
    }

    fn build(
        config: SimConfig,
        rng: Rng,
        world: Scenario,
        handlers: Handlers,
        keep_trace: bool,
        source: Source,
    ) -> Result<Simulation, ScenarioError> {
        let rules = Rules::default();
        let mut store = MemoryStore::new();
        let now = START;
        for (index, wallet) in world.wallets.into_iter().enumerate() {
            let request = TopUp {
                amount: wallet.amount,
                idempotency_key: IdempotencyKey::new(format!("top-up-{index}")).expect("valid key"),
                principal: None,
                correlation_id: CorrelationId::new(format!("setup-{index}")).expect("valid id"),
                traceparent: Traceparent::root(Id128::derive(
                    "sim-setup",
                    &[&(index as u64).to_be_bytes()],
                )),
                customer: wallet.customer,
            };
            let policy = rules.payment;
            execute(&mut store, &top_up_read_set(&request), now, |snapshot| {
                decide_top_up(&policy, snapshot, &request, now)
            })
            .map_err(|error| ScenarioError::Refused {
                what: format!("wallet {}", request.customer),
                reason: error.to_string(),
            })?;
        }
        for stock in world.stock {
            let request = SetStock {
                sku: stock.sku,
                on_hand: stock.on_hand,
                unit_price: stock.unit_price,
            };
            execute(&mut store, &set_stock_read_set(&request), now, |snapshot| {
                decide_set_stock(snapshot, &request)
            })
            .map_err(|error| ScenarioError::Refused {
                what: format!("stock {}", request.sku),
                reason: error.to_string(),
            })?;
        }
        let orders = u64::from(config.orders);
        Ok(Simulation {
            faults: config.profile.faults(),
            broker: Broker::new(config.partitions),
            fault_steps_left: orders * 40 + 100,
            steps_max: orders * 4_000 + 100_000,
            config,
            rules,
            handlers,
            rng,
            now,
            store,
            checker: Checker::default(),
            down_until: [None; 3],
            publisher_down_until: [None; 3],
            planned: world.orders,
            next_new: 0,
            next_arrival: now,
            retries: VecDeque::new(),
            faults_active: true,
            stats: Stats::default(),
            trace: Trace::new(keep_trace),
            violation: None,
            finished: false,
            source,
            armed: Armed::default(),
            injections: Vec::new(),
        })
    }

    /// Injects a fault now, between two steps, and records it in the trace.
    pub fn inject(&mut self, fault: Fault) -> Result<(), FaultError> {
        fault.validate()?;
        if self.finished {
            return Err(FaultError::Ended);
        }
        self.apply(fault);
        self.injections.push(Injection {
            step: self.stats.steps,
            fault,
        });
        Ok(())
    }

    fn apply(&mut self, fault: Fault) {
        self.record(TraceEvent::FaultInjected { fault });
        match fault {
            Fault::Stall { consumer, ms } => {
                let until = self.now.plus_ms(ms);
                for partition in 0..self.config.partitions {
                    self.broker.stall(consumer, partition, until);
                }
            }
            Fault::ClockJump { ms } => self.now = self.now.plus_ms(ms),
            armed => self.armed.push(armed),
        }
    }

    /// The configuration (for a scenario: its seed and order count, no
    /// random faults).
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The rules the deciders run with.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Where the run's world came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Faults injected with [`Simulation::inject`], with their steps.
    pub fn injections(&self) -> &[Injection] {
        &self.injections
    }

    /// Injected faults still waiting for their moment.
    pub fn armed(&self) -> &[Fault] {
        self.armed.faults()
    }

    /// The simulated broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// When `service` comes back from a crash, if it is down.
    pub fn down_until(&self, service: Service) -> Option<Timestamp> {
        self.down_until[index_of(service)]
    }

    /// When `service`'s publisher comes back from a crash, if it is down.
    pub fn publisher_down_until(&self, service: Service) -> Option<Timestamp> {
        self.publisher_down_until[index_of(service)]
    }

    /// Orders the client has not sent yet, and requests it will send again.
    pub fn client_backlog(&self) -> (usize, usize) {
        (self.planned.len() - self.next_new, self.retries.len())
    }

    /// The invariant that broke, if one did.
    pub fn violation(&self) -> Option<&ViolationReport> {
        self.violation.as_deref()
    }

    /// Where the run stands: running, quiescent or violated.
    pub fn outcome(&self) -> StepOutcome {
        match (self.finished, &self.violation) {
            (false, _) => StepOutcome::Running,
            (true, None) => StepOutcome::Quiescent,
            (true, Some(_)) => StepOutcome::Violated,
        }
    }

    /// The trace file: a header line that reproduces the run, then one JSON
    /// line per event. `None` unless the trace was kept.
    pub fn trace_file(&self) -> Option<Vec<u8>> {
        let records = self.trace.records()?;
        let header = TraceHeader::new(self.source.clone(), self.injections.clone());
        let mut bytes = Vec::with_capacity(records.len() * 160 + 256);
        serde_json::to_writer(&mut bytes, &header).expect("the header serialises");
        bytes.push(b'\n');
        for record in records {
            serde_json::to_writer(&mut bytes, record).expect("trace records serialise");
            bytes.push(b'\n');
        }
        Some(bytes)
    }

    /// The store, for inspection.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        while self.step() == StepOutcome::Running {}
        self.report()
    }

    /// The report of the run so far.
    pub fn report(&self) -> Report {
        let mut stats = self.stats.clone();
        stats.invariant_checks = self.checker.checks();
        stats.simulated_ms = self.now.ms_since(START);
        Report {
            config: self.config.clone(),
            stats,
            trace_hash: self.trace.hash_hex(),
            violation: self.violation.clone(),
            trace_json_lines: self.trace_file(),
        }
    }

    fn record(&mut self, event: TraceEvent) {
        self.trace.record(TraceRecord {
            step: self.stats.steps,
            now_ms: self.now.unix_ms(),
            event,
        });
    }

    /// True when `armed` was injected and now hits, or when the profile
    /// draws this fault.
    fn fault(&mut self, armed: Fault, per_million: u32) -> bool {
        self.armed.take(armed) || self.chance(per_million)
    }

    fn chance(&mut self, per_million: u32) -> bool {
        self.faults_active && self.rng.chance(per_million)
    }

    fn up(&self, service: Service) -> bool {
        self.down_until[index_of(service)].is_none()
    }

    fn fail(&mut self, violation: Violation) -> StepOutcome {
        self.violation = Some(Box::new(ViolationReport {
            seed: self.config.seed,
            step: self.stats.steps,
            violation,
            recent: self.trace.recent(),
        }));
        self.finished = true;
        StepOutcome::Violated
    }

    /// Takes one action. Call until it returns something other than `Running`.
    pub fn step(&mut self) -> StepOutcome {
        if self.finished {
            return self.outcome();
        }
        self.stats.steps += 1;
        if self.stats.steps > self.steps_max {
            let detail = format!("no quiescence after {} steps", self.steps_max);
            return self.fail(Violation {
                invariant: "every_order_terminal",
                detail,
            });
        }
        self.restart_due();
        if self.faults_active {
            if self.fault_steps_left == 0 {
                self.stop_faults();
            } else {
                self.fault_steps_left -= 1;
            }
        }
        if self.chance(self.faults.clock_jump_ppm) {
            let ms = self.rng.between(1_000, 60_000);
            self.now = self.now.plus_ms(ms);
            self.record(TraceEvent::ClockJumped { ms });
        }
        if self.chance(self.faults.stall_ppm) {
            let consumer = Service::ALL[self.rng.index(3)];
            let partition = self.rng.below(u64::from(self.config.partitions)) as u32;
            let until = self.now.plus_ms(self.rng.between(1_000, 15_000));
            self.broker.stall(consumer, partition, until);
            self.record(TraceEvent::Stalled {
                consumer,
                partition,
                until_ms: until.unix_ms(),
            });
        }
        let actions = self.enabled_actions();
        let result = if actions.is_empty() {
            self.idle()
        } else {
            let action = actions[self.rng.index(actions.len())];
            self.act(action)
        };
        self.now = self.now.plus_ms(self.rng.below(2));
        match result {
            Ok(outcome) => outcome,
            Err(violation) => self.fail(violation),
        }
    }

    fn stop_faults(&mut self) {
        self.faults_active = false;
        self.record(TraceEvent::FaultsStopped);
    }

    fn restart_due(&mut self) {
        for service in Service::ALL {
            let index = index_of(service);
            if self.down_until[index].is_some_and(|until| until <= self.now) {
                self.down_until[index] = None;
                self.record(TraceEvent::Restarted { service });
            }
            if self.publisher_down_until[index].is_some_and(|until| until <= self.now) {
                self.publisher_down_until[index] = None;
            }
        }
    }

    fn enabled_actions(&self) -> Vec<Action> {
        let mut actions = Vec::with_capacity(8);
        if self.up(Service::Order) && self.client_request_ready() {
            actions.push(Action::Place);
        }
        for service in Service::ALL {
            if self.up(service)
                && self.publisher_down_until[index_of(service)].is_none()
                && self.store.outbox_backlog(service) > 0
            {
                actions.push(Action::Publish(service));
            }
            if self.up(service) && self.broker.has_deliverable(service, self.now) {
                actions.push(Action::Deliver(service));
            }
        }
        if self.up(Service::Order) && self.store.next_timer().is_some_and(|due| due <= self.now) {
            actions.push(Action::Timers);
        }
        actions
    }

    fn client_request_ready(&self) -> bool {
        let retry_ready = self
            .retries
            .front()
            .is_some_and(|request| request.not_before <= self.now);
        retry_ready || (self.next_new < self.planned.len() && self.next_arrival <= self.now)
    }

    /// Nothing can run now: wait for the next thing that will, or finish.
    fn idle(&mut self) -> Result<StepOutcome, Violation> {
        let mut wake: Vec<Timestamp> = Vec::new();
        wake.extend(self.down_until.iter().flatten());
        wake.extend(self.publisher_down_until.iter().flatten());
        wake.extend(self.broker.next_unstall(self.now));
        wake.extend(self.store.next_timer());
        wake.extend(self.retries.iter().map(|request| request.not_before).min());
        if self.next_new < self.planned.len() {
            wake.push(self.next_arrival);
        }
        if let Some(next) = wake.into_iter().min() {
            self.now = next.max(self.now.plus_ms(1));
            return Ok(StepOutcome::Running);
        }
        if self.faults_active {
            // Quiescence is judged once faults have stopped.
            self.stop_faults();
            return Ok(StepOutcome::Running);
        }
        self.checker.at_quiescence(&self.store)?;
        // Reconciliation, run as an operator would, must find nothing at rest.
        let findings = saldo_reconcile::memory::reconcile(
            &self.store,
            self.now,
            &saldo_reconcile::Settings::default(),
        );
        if let Some(finding) = findings.first() {
            let detail = format!(
                "{} finding(s), first {} {:?}: {}",
                findings.len(),
                finding.kind.name(),
                finding.ids,
                finding.detail
            );
            return Err(Violation {
                invariant: "reconciliation_clean",
                detail,
            });
        }
        for (_, versioned) in self.store.rows() {
            if let Row::Order(order) = &versioned.value {
                match order.status() {
                    OrderStatus::Confirmed => self.stats.orders_confirmed += 1,
                    OrderStatus::Cancelled(_) => self.stats.orders_cancelled += 1,
                    OrderStatus::Pending => {}
                }
            }
        }
        self.record(TraceEvent::Quiescent);
        self.finished = true;
        Ok(StepOutcome::Quiescent)
    }

    fn act(&mut self, action: Action) -> Result<StepOutcome, Violation> {
        match action {
            Action::Place => self.place(),
            Action::Publish(service) => self.publish(service),
            Action::Deliver(service) => self.deliver(service),
            Action::Timers => self.fire_timers(),
        }?;
        Ok(StepOutcome::Running)
    }

    fn crash(&mut self, service: Service, point: CrashPoint) {
        let until = self.now.plus_ms(self.rng.between(100, 5_000));
        self.stats.crashes_injected += 1;
        if point == CrashPoint::AfterPublish {
            self.publisher_down_until[index_of(service)] = Some(until);
        } else {
            self.down_until[index_of(service)] = Some(until);
            self.broker.rewind(service);
        }
        self.record(TraceEvent::Crashed {
            service,
            point,
            until_ms: until.unix_ms(),
        });
    }

    /// Commits a decision or a batch the way `service` would, with crash
    /// faults. Returns false when a crash lost (part of) it.
    fn commit(&mut self, service: Service, commit: impl Into<Commit>) -> Result<bool, Violation> {
        for part in (self.handlers.split_commit)(commit.into()) {
            if self.fault(
                Fault::CrashBeforeCommit { service },
                self.faults.crash_before_commit_ppm,
            ) {
                self.crash(service, CrashPoint::BeforeCommit);
                return Ok(false);
            }
            let before = self.checker.before(&self.store, &part);
            let postings = if part.postings.is_empty() {
                Vec::new()
            } else {
                part.postings.clone()
            };
            if let Err(conflict) = self.store.commit(part, self.now) {
                // Single-threaded, nothing changes between load and commit: a
                // conflict means the decision contradicts its own snapshot.
                return Err(Violation {
                    invariant: "decisions_match_their_snapshot",
                    detail: format!("{service}: {conflict}"),
                });
            }
            self.checker.after_commit(&self.store, before, &postings)?;
        }
        Ok(true)
    }

    fn place(&mut self) -> Result<(), Violation> {
        let request = match self.retries.front() {
            Some(request) if request.not_before <= self.now => {
                self.retries.pop_front().expect("checked")
            }
            _ => {
                let request = PendingRequest {
                    index: self.next_new,
                    attempt: 0,
                    not_before: self.now,
                };
                self.next_new += 1;
                self.next_arrival = self.now.plus_ms(self.rng.below(3));
                request
            }
        };
        let planned = &self.planned[request.index];
        let order_id = if request.attempt == 0 {
            format!("o{}", request.index)
        } else {
            format!("o{}-r{}", request.index, request.attempt)
        };
        let place = PlaceOrder {
            order_id: OrderId::new(order_id.clone()).expect("valid id"),
            customer: planned.customer.clone(),
            lines: planned.lines.clone(),
            currency: CURRENCY,
            idempotency_key: IdempotencyKey::new(format!("k{}", request.index)).expect("valid key"),
            principal: None,
            correlation_id: CorrelationId::new(format!("r{}", request.index)).expect("valid id"),
            traceparent: Traceparent::root(Id128::derive(
                "sim-request",
                &[
                    &self.config.seed.to_be_bytes(),
                    &(request.index as u64).to_be_bytes(),
                ],
            )),
        };
        let snapshot = self.store.load(&place_order_read_set(&place));
        let decided = decide_place_order(&self.rules.order_saga, &snapshot, &place, self.now)
            .map_err(|error| Violation {
                invariant: "valid_requests_accepted",
                detail: format!("order {order_id}: {error}"),
            })?;
        let replayed = decided.reply.replayed;
        let committed = self.commit(Service::Order, decided.decision)?;
        let outcome = match (committed, replayed) {
            (false, _) => "crashed",
            (true, true) => "replayed",
            (true, false) => "accepted",
        };
        self.record(TraceEvent::OrderRequested {
            order_id,
            idempotency_key: place.idempotency_key.as_str().to_owned(),
            outcome: outcome.to_owned(),
        });
        let retry = !committed || self.fault(Fault::ClientRetry, self.faults.client_retry_ppm);
        if retry {
            if committed {
                self.stats.client_retries += 1;
            }
            let not_before = self.now.plus_ms(self.rng.between(1, 500));
            self.retries.push_back(PendingRequest {
                index: request.index,
                attempt: request.attempt + 1,
                not_before,
            });
        }
        Ok(())
    }

    fn publish(&mut self, service: Service) -> Result<(), Violation> {
        let rows = self
            .store
            .outbox_pending(service, self.config.publish_batch_max as usize);
        let mut sequences = Vec::with_capacity(rows.len());
        for row in rows {
            sequences.push(row.sequence);
            let envelope = row.envelope;
            let (partition, duplicated) = match envelope.payload.consumer() {
                Some(consumer) => {
                    let partition = self.broker.publish(consumer, Arc::clone(&envelope));
                    let duplicated =
                        self.fault(Fault::Duplicate { service }, self.faults.duplicate_ppm);
                    if duplicated {
                        self.broker.publish(consumer, Arc::clone(&envelope));
                        self.stats.duplicates_injected += 1;
                    }
                    (Some(partition), duplicated)
                }
                None => (None, false),
            };
            self.stats.messages_published += 1 + u64::from(duplicated);
            self.record(TraceEvent::Published {
                service,
                message_id: envelope.message_id,
                message_type: Cow::Borrowed(envelope.message_type()),
                order_id: envelope.order_id.clone(),
                partition,
                duplicated,
            });
        }
        if self.fault(
            Fault::CrashAfterPublish { service },
            self.faults.crash_after_publish_ppm,
        ) {
            // Published but not marked: the batch goes out again later.
            self.crash(service, CrashPoint::AfterPublish);
            return Ok(());
        }
        self.store.mark_published(service, &sequences);
        Ok(())
    }

    /// Takes a batch of messages for `consumer` (its size drawn from the
    /// seed), decides them in order against one overlay, commits them in one
    /// transaction and only then acknowledges them: the production
    /// consumer's rhythm. A crash before the commit loses the whole batch.
    fn deliver(&mut self, consumer: Service) -> Result<(), Violation> {
        let wanted = self.rng.between(1, CONSUME_BATCH_MAX);
        let mut deliveries = Vec::new();
        while (deliveries.len() as u64) < wanted {
            match self.broker.take(consumer, self.now, &mut self.rng) {
                Some(delivery) => deliveries.push(delivery),
                None => break,
            }
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        let read_sets: Vec<ReadSet> = deliveries
            .iter()
            .map(|delivery| saldo_domain::message_read_set(consumer, &delivery.envelope))
            .collect();
        let mut batch = Batch::new(self.store.load_batch(&BatchReadSet::of(&read_sets)));
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for (delivery, read_set) in deliveries.iter().zip(&read_sets) {
            self.stats.messages_delivered += 1;
            let envelope = &delivery.envelope;
            let decided = batch.decide(read_set, |snapshot| {
                (self.handlers.decide_message)(&self.rules, consumer, snapshot, envelope, self.now)
            });
            match decided {
                Ok(outcome) => outcomes.push(delivery_outcome(outcome)),
                Err(error) => {
                    self.record(delivered(consumer, delivery, DeliveryOutcome::DeadLettered));
                    return Err(Violation {
                        invariant: "nothing_dead_lettered",
                        detail: format!(
                            "{consumer} refused {} for order {}: {error}",
                            envelope.message_type(),
                            envelope.order_id
                        ),
                    });
                }
            }
        }
        if !self.commit(consumer, batch.finish())? {
            for delivery in &deliveries {
                self.record(delivered(consumer, delivery, DeliveryOutcome::Crashed));
            }
            return Ok(());
        }
        if self.fault(
            Fault::CrashBeforeAck { service: consumer },
            self.faults.crash_before_ack_ppm,
        ) {
            for delivery in &deliveries {
                self.record(delivered(consumer, delivery, DeliveryOutcome::Crashed));
            }
            self.crash(consumer, CrashPoint::BeforeAck);
            return Ok(());
        }
        for (delivery, outcome) in deliveries.iter().zip(outcomes) {
            self.broker
                .commit_offset(consumer, delivery.partition, delivery.offset);
            if outcome == DeliveryOutcome::Duplicate {
                self.stats.duplicates_absorbed += 1;
            }
            self.record(delivered(consumer, delivery, outcome));
        }
        if self.fault(
            Fault::CrashBeforePublish { service: consumer },
            self.faults.crash_before_publish_ppm,
        ) {
            self.crash(consumer, CrashPoint::BeforePublish);
        }
        Ok(())
    }

    /// Fires due deadlines as one batch, committed once.
    fn fire_timers(&mut self) -> Result<(), Violation> {
        let due = self.store.due_timers(self.now, TIMER_BATCH_MAX);
        if due.is_empty() {
            return Ok(());
        }
        let read_sets: Vec<ReadSet> = due.iter().map(order::deadline_read_set).collect();
        let mut batch = Batch::new(self.store.load_batch(&BatchReadSet::of(&read_sets)));
        let mut outcomes = Vec::with_capacity(due.len());
        for (order_id, read_set) in due.iter().zip(&read_sets) {
            let outcome = batch.decide(read_set, |snapshot| {
                Ok::<_, std::convert::Infallible>(order::decide_deadline(
                    &self.rules.order_saga,
                    snapshot,
                    order_id,
                    self.now,
                ))
            });
            let Ok(outcome) = outcome;
            outcomes.push(delivery_outcome(outcome));
            self.stats.timers_fired += 1;
        }
        let committed = self.commit(Service::Order, batch.finish())?;
        for (order_id, outcome) in due.into_iter().zip(outcomes) {
            self.record(TraceEvent::TimerFired {
                order_id,
                outcome: if committed {
                    outcome
                } else {
                    DeliveryOutcome::Crashed
                },
            });
        }
        Ok(())
    }
}

/// The trace event of one delivery.
fn delivered(
    consumer: Service,
    delivery: &crate::broker::Delivery,
    outcome: DeliveryOutcome,
) -> TraceEvent {
    let envelope = &delivery.envelope;
    TraceEvent::Delivered {
        consumer,
        partition: delivery.partition,
        offset: delivery.offset,
        message_id: envelope.message_id,
        message_type: Cow::Borrowed(envelope.message_type()),
        order_id: envelope.order_id.clone(),
        outcome,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Place,
    Publish(Service),
    Deliver(Service),
    Timers,
}

/// Runs one configuration with the production handlers.
pub fn run(config: SimConfig, keep_trace: bool) -> Report {
    Simulation::new(config, Handlers::REAL, keep_trace).run()
}

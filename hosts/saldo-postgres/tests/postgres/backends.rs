//! The two backends behind one interface, and a driver that runs whole
//! flows on either.

use saldo_domain::decision::{Decided, Decision, ReadSet, Snapshot};
use saldo_domain::inventory::{SetStock, decide_set_stock, set_stock_read_set};
use saldo_domain::messages::{Envelope, OrderLine, Service, Traceparent};
use saldo_domain::order::{
    OrderAccepted, PlaceOrder, PlaceOrderError, decide_place_order, place_order_read_set,
};
use saldo_domain::payment::{TopUp, TopUpApplied, TopUpError, decide_top_up, top_up_read_set};
use saldo_domain::store::CommitError;
use saldo_domain::{
    ConsumeError, MemoryStore, MessageOutcome, Rules, decide_message, message_read_set,
};
use saldo_engine::{CommitFailure, ExecuteFailure, MemoryBackend, Store};
use saldo_idempotency::IdempotencyKey;
use saldo_postgres::Dump;
use saldo_postgres::testing::TestDatabase;
use saldo_types::{CorrelationId, Currency, CustomerId, Id128, Money, OrderId, Sku, Timestamp};

pub const NOW: Timestamp = Timestamp::from_unix_ms(1_767_225_600_000);
pub const EUR: Currency = Currency::EUR;

pub fn eur(amount_minor: i64) -> Money {
    Money::from_minor(amount_minor, EUR)
}

pub fn line(sku: &str, quantity: u32) -> OrderLine {
    OrderLine {
        sku: Sku::new(sku).expect("valid"),
        quantity,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Postgres,
}

pub enum Backend {
    Memory(MemoryBackend),
    Postgres(TestDatabase),
}

impl Backend {
    pub async fn new(kind: Kind) -> Backend {
        match kind {
            Kind::Memory => Backend::Memory(MemoryBackend::new()),
            Kind::Postgres => Backend::Postgres(TestDatabase::create().await),
        }
    }

    /// The engine's storage port, on either backend.
    pub fn store(&self) -> &dyn Store {
        match self {
            Backend::Memory(store) => store,
            Backend::Postgres(database) => &database.store,
        }
    }

    pub async fn load(&self, read_set: &ReadSet) -> Snapshot {
        saldo_engine::read(self.store(), read_set)
            .await
            .expect("loads")
    }

    pub async fn commit(&self, decision: Decision, now: Timestamp) -> Result<(), CommitError> {
        match self.store().commit(decision.into(), now).await {
            Ok(()) => Ok(()),
            Err(CommitFailure::Conflict(conflict)) => Err(conflict),
            Err(CommitFailure::Unavailable(error)) => panic!("database failure: {error}"),
            Err(CommitFailure::Refused(reason)) => panic!("commit refused: {reason}"),
        }
    }

    /// The rhythm, on either backend: the engine's one re-decide loop.
    pub async fn execute<R: Send, E: Send>(
        &self,
        read_set: &ReadSet,
        now: Timestamp,
        decide: impl FnMut(&Snapshot) -> Result<Decided<R>, E> + Send,
    ) -> Result<R, Outcome<E>> {
        saldo_engine::execute(self.store(), read_set, now, decide)
            .await
            .map_err(Outcome::from)
    }

    pub async fn dump(&self) -> Dump {
        match self {
            Backend::Memory(store) => memory_dump(&store.lock()),
            Backend::Postgres(database) => database.store.dump().await.expect("dumps"),
        }
    }
}

/// Why the rhythm gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<E> {
    Rejected(E),
    Conflict(CommitError),
}

impl<E> From<ExecuteFailure<E>> for Outcome<E> {
    fn from(error: ExecuteFailure<E>) -> Self {
        match error {
            ExecuteFailure::Rejected(error) => Outcome::Rejected(error),
            ExecuteFailure::Conflict(conflict) => Outcome::Conflict(conflict),
            ExecuteFailure::Unavailable(error) => panic!("database failure: {error}"),
            ExecuteFailure::Refused(reason) => panic!("commit refused: {reason}"),
        }
    }
}

pub fn memory_dump(store: &MemoryStore) -> Dump {
    let mut rows: Vec<_> = store
        .rows()
        .map(|(key, row)| (key.clone(), row.version, row.value.clone()))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut inbox: Vec<_> = store.inbox_receipts().cloned().collect();
    inbox.sort_by_key(|receipt| (receipt.consumer, receipt.message_id));
    let outbox = Service::ALL
        .into_iter()
        .flat_map(|service| {
            store
                .outbox_pending(service, usize::MAX)
                .into_iter()
                .map(move |row| (service, (*row.envelope).clone()))
        })
        .collect();
    let idempotency = store
        .idempotency_records()
        .map(|(service, key, record)| {
            (
                service,
                key.to_string(),
                record.version,
                record.value.clone(),
            )
        })
        .collect();
    Dump {
        rows,
        entries: store.entries().to_vec(),
        inbox,
        outbox,
        idempotency,
    }
}

/// Runs flows the way the hosts do, on one backend.
pub struct Driver {
    pub backend: Backend,
    pub rules: Rules,
    pub now: Timestamp,
}

impl Driver {
    pub async fn new(kind: Kind) -> Driver {
        Driver {
            backend: Backend::new(kind).await,
            rules: Rules::default(),
            now: NOW,
        }
    }

    pub async fn top_up(
        &self,
        customer: &str,
        amount: Money,
        key: &str,
    ) -> Result<TopUpApplied, Outcome<TopUpError>> {
        let request = TopUp {
            customer: CustomerId::new(customer).expect("valid"),
            amount,
            idempotency_key: IdempotencyKey::new(key).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new(format!("c-{key}")).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("test", &[key.as_bytes()])),
        };
        let policy = self.rules.payment;
        self.backend
            .execute(&top_up_read_set(&request), self.now, |snapshot| {
                decide_top_up(&policy, snapshot, &request, self.now)
            })
            .await
    }

    pub async fn set_stock(&self, sku: &str, on_hand: u64, unit_price: Money) {
        let request = SetStock {
            sku: Sku::new(sku).expect("valid"),
            on_hand,
            unit_price,
        };
        self.backend
            .execute(&set_stock_read_set(&request), self.now, |snapshot| {
                decide_set_stock(snapshot, &request)
            })
            .await
            .expect("stock set");
    }

    pub async fn place(
        &self,
        order: &str,
        customer: &str,
        lines: Vec<OrderLine>,
        key: &str,
    ) -> Result<OrderAccepted, Outcome<PlaceOrderError>> {
        let request = PlaceOrder {
            order_id: OrderId::new(order).expect("valid"),
            customer: CustomerId::new(customer).expect("valid"),
            lines,
            currency: EUR,
            idempotency_key: IdempotencyKey::new(key).expect("valid"),
            principal: None,
            correlation_id: CorrelationId::new(format!("c-{key}")).expect("valid"),
            traceparent: Traceparent::root(Id128::derive("test", &[key.as_bytes()])),
        };
        let definition = self.rules.order_saga.clone();
        self.backend
            .execute(&place_order_read_set(&request), self.now, |snapshot| {
                decide_place_order(&definition, snapshot, &request, self.now)
            })
            .await
    }

    pub async fn deliver(
        &self,
        envelope: &Envelope,
    ) -> Result<MessageOutcome, Outcome<ConsumeError>> {
        let consumer = envelope.payload.consumer().expect("consumed");
        let rules = &self.rules;
        let now = self.now;
        self.backend
            .execute(&message_read_set(consumer, envelope), now, |snapshot| {
                decide_message(rules, consumer, snapshot, envelope, now)
            })
            .await
    }

    /// Pending outbox messages of every service, oldest first per service.
    pub async fn pending(&self) -> Vec<Envelope> {
        self.backend
            .dump()
            .await
            .outbox
            .into_iter()
            .map(|(_, envelope)| envelope)
            .filter(|envelope| envelope.payload.consumer().is_some())
            .collect()
    }

    /// Delivers every pending message (each exactly once, or twice when
    /// `twice` says so) until nothing new is published; returns the outcomes.
    pub async fn pump(&self, twice: impl Fn(usize) -> bool) -> Vec<String> {
        let mut outcomes = Vec::new();
        let mut delivered = std::collections::BTreeSet::new();
        let mut index = 0;
        loop {
            let fresh: Vec<Envelope> = self
                .pending()
                .await
                .into_iter()
                .filter(|envelope| !delivered.contains(&envelope.message_id))
                .collect();
            if fresh.is_empty() {
                return outcomes;
            }
            for envelope in fresh {
                delivered.insert(envelope.message_id);
                outcomes.push(format!(
                    "{} {:?}",
                    envelope.message_type(),
                    self.deliver(&envelope).await
                ));
                if twice(index) {
                    outcomes.push(format!("again {:?}", self.deliver(&envelope).await));
                }
                index += 1;
            }
        }
    }
}

//! A saga that is not Saldo's order: a trip booking, built only from
//! `saldo-saga`, `saldo-idempotency` and `saldo-ledger` (with their
//! vocabulary, `saldo-types`), driven on a small in-memory store. Run:
//! `cargo run -p saldo-examples --example trip_booking`.
//!
//! The trip books a flight and a hotel (each undone by a cancellation),
//! charges the traveller's wallet (the pivot: once paid, the trip goes
//! ahead) and rents a car (retriable: past the pivot it is retried until a
//! car is free). Each partner deduplicates the commands it receives with
//! `saldo-idempotency`, so a command delivered twice books once. The
//! example asserts what it shows: the first trip completes with the car
//! retried, the second is refused at the pivot and its bookings are
//! cancelled in reverse order.

use std::collections::{BTreeMap, VecDeque};

use saldo_idempotency::{Fingerprint, IdempotencyRecord, Verdict, decide};
use saldo_ledger::{AccountId, Applied, Ledger, Memo, Posting, Rejection, verify_chain};
use saldo_saga::{
    Definition, Ending, Failure, Ignored, Outcome, Phase, Reply, RetryPolicy, SagaCommand,
    SagaInput, SagaInstance, StepSpec,
};
use saldo_types::{Currency, CustomerId, Id128, Money, Timestamp};

/// What the trip saga asks its partners to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TripCommand {
    BookFlight,
    CancelFlight,
    BookHotel,
    CancelHotel,
    ChargeTraveller,
    RentCar,
}

/// Why a partner refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    InsufficientFunds,
    NoCarFree,
}

/// How long a partner remembers a command it handled (one day).
const COMMAND_RETENTION_MS: u64 = 86_400_000;
/// The most inputs one trip's driver handles before giving up: a bound on
/// the loop, far above what a trip needs.
const DRIVER_STEPS_MAX: usize = 100;

/// The steps, in order; the saga's commands name their step by index.
fn trip_saga() -> Definition<TripCommand> {
    Definition::builder("trip")
        .step(
            StepSpec::new("book_flight", TripCommand::BookFlight)
                .compensate_with(TripCommand::CancelFlight)
                .deadline_ms(30_000),
        )
        .step(
            StepSpec::new("book_hotel", TripCommand::BookHotel)
                .compensate_with(TripCommand::CancelHotel)
                .deadline_ms(30_000),
        )
        .step(
            StepSpec::new("charge_traveller", TripCommand::ChargeTraveller)
                .pivot()
                .deadline_ms(30_000)
                .retry(RetryPolicy::exponential(5, 1_000, 60_000)),
        )
        .step(
            StepSpec::new("rent_car", TripCommand::RentCar)
                .retriable()
                .deadline_ms(30_000)
                .retry(RetryPolicy::exponential(10, 60_000, 900_000)),
        )
        .build()
        .expect("the trip saga is a safe shape")
}

/// The partners' state: the ledger, each booking's count per trip, and
/// every command's idempotency record.
struct Store {
    ledger: Ledger,
    bookings: BTreeMap<(TripCommand, String), u32>,
    records: BTreeMap<Id128, IdempotencyRecord<Outcome<Refusal>>>,
    /// How many more times the car partner answers "no car free".
    cars_busy_for: u32,
}

/// One trip: who travels and what it costs.
struct Trip {
    id: String,
    traveller: AccountId,
    price: Money,
}

impl Store {
    fn booked(&self, kind: TripCommand, trip: &Trip) -> u32 {
        self.bookings
            .get(&(kind, trip.id.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// A partner handling one command: a redelivered command (same id) is
    /// answered from its record and has no second effect.
    fn deliver(
        &mut self,
        trip: &Trip,
        command: &SagaCommand<TripCommand>,
        now: Timestamp,
    ) -> Reply<Refusal> {
        let phase = match command.phase {
            Phase::Action => b"action".as_slice(),
            Phase::Compensation => b"compensation".as_slice(),
        };
        let step = u32::try_from(command.step).expect("a handful of steps");
        let id = Id128::derive(
            "trip-command",
            &[
                trip.id.as_bytes(),
                &step.to_be_bytes(),
                phase,
                &command.attempt.to_be_bytes(),
            ],
        );
        let fingerprint = Fingerprint::of_parts(&[
            trip.id.as_bytes(),
            format!("{:?}", command.command).as_bytes(),
        ]);
        let replayed = match decide(self.records.get(&id), &fingerprint, now) {
            Verdict::Replay(outcome) => Some(outcome.clone()),
            Verdict::Fresh | Verdict::Expired => None,
            other => panic!("a command id is used once, by one command: {other:?}"),
        };
        let outcome = replayed.unwrap_or_else(|| {
            let outcome = self.apply(trip, command.command, now);
            let record = IdempotencyRecord::completed(
                fingerprint,
                outcome.clone(),
                now,
                COMMAND_RETENTION_MS,
            );
            self.records.insert(id, record);
            outcome
        });
        Reply {
            step: command.step,
            phase: command.phase,
            outcome,
        }
    }

    /// The command's effect, done once.
    fn apply(&mut self, trip: &Trip, command: TripCommand, now: Timestamp) -> Outcome<Refusal> {
        let count = |kind| (kind, trip.id.clone());
        match command {
            TripCommand::BookFlight | TripCommand::BookHotel => {
                *self.bookings.entry(count(command)).or_default() += 1;
            }
            TripCommand::CancelFlight | TripCommand::CancelHotel => {
                let booked = if command == TripCommand::CancelFlight {
                    TripCommand::BookFlight
                } else {
                    TripCommand::BookHotel
                };
                let held = self.bookings.entry(count(booked)).or_default();
                *held = held
                    .checked_sub(1)
                    .expect("a cancellation follows its booking");
            }
            TripCommand::ChargeTraveller => {
                let revenue = AccountId::MerchantRevenue {
                    currency: trip.price.currency(),
                };
                let charge = Posting::transfer(
                    Id128::derive("posting", &[b"trip", trip.id.as_bytes()]),
                    trip.traveller.clone(),
                    revenue,
                    trip.price,
                    Memo {
                        purpose: "trip".to_owned(),
                        ..Memo::default()
                    },
                );
                match self.ledger.post(charge, now) {
                    Ok(Applied::Created) => {}
                    Err(Rejection::InsufficientFunds { .. }) => {
                        return Outcome::Failed(Refusal::InsufficientFunds);
                    }
                    other => panic!("the trip's charge is posted once: {other:?}"),
                }
            }
            TripCommand::RentCar => {
                if self.cars_busy_for > 0 {
                    self.cars_busy_for -= 1;
                    return Outcome::Failed(Refusal::NoCarFree);
                }
                *self.bookings.entry(count(command)).or_default() += 1;
            }
        }
        Outcome::Succeeded
    }
}

/// Runs one trip's saga to its end: each command is delivered to its
/// partner and the reply handed back; when nothing is in flight, the clock
/// moves to the saga's next deadline (a retry's backoff). The hotel's
/// command is delivered twice, as a broker may. Returns the saga and every
/// command sent, in order.
fn book(
    store: &mut Store,
    trip: &Trip,
    now: &mut Timestamp,
) -> (SagaInstance<Refusal>, Vec<(TripCommand, u32)>) {
    let definition = trip_saga();
    let (mut saga, started) = SagaInstance::start(&definition, *now);
    let mut in_flight: VecDeque<SagaCommand<TripCommand>> = started.commands.into();
    let mut sent = Vec::new();
    for _ in 0..DRIVER_STEPS_MAX {
        if saga.ending().is_some() {
            return (saga, sent);
        }
        let Some(command) = in_flight.pop_front() else {
            *now = saga
                .deadline()
                .expect("a running saga waits for a deadline");
            let transition = saga.handle(&definition, *now, SagaInput::DeadlineReached);
            in_flight.extend(transition.commands);
            continue;
        };
        println!(
            "  {}: {:?} (attempt {})",
            trip.id, command.command, command.attempt
        );
        sent.push((command.command, command.attempt));
        let reply = store.deliver(trip, &command, *now);
        let transition = saga.handle(&definition, *now, SagaInput::Reply(reply));
        in_flight.extend(transition.commands);
        if command.command == TripCommand::BookHotel {
            let again = store.deliver(trip, &command, *now);
            let transition = saga.handle(&definition, *now, SagaInput::Reply(again));
            assert_eq!(transition.ignored, Some(Ignored::Duplicate));
            assert!(transition.commands.is_empty());
        }
    }
    panic!("{} did not end within {DRIVER_STEPS_MAX} inputs", trip.id);
}

fn main() {
    let mut now = Timestamp::from_unix_ms(1_764_000_000_000);
    let eur = Currency::EUR;
    let wallet = |name: &str| AccountId::wallet(CustomerId::new(name).expect("valid id"), eur);
    let funding = AccountId::Funding { currency: eur };
    let mut store = Store {
        ledger: Ledger::new(),
        bookings: BTreeMap::new(),
        records: BTreeMap::new(),
        cars_busy_for: 1,
    };
    for account in [
        wallet("ada"),
        wallet("bo"),
        funding.clone(),
        AccountId::MerchantRevenue { currency: eur },
    ] {
        store.ledger.open_account(account);
    }
    for (name, amount) in [("ada", "1000"), ("bo", "300")] {
        let top_up = Posting::transfer(
            Id128::derive("posting", &[b"top_up", name.as_bytes()]),
            funding.clone(),
            wallet(name),
            Money::parse(amount, eur).expect("amount"),
            Memo {
                purpose: "top_up".to_owned(),
                ..Memo::default()
            },
        );
        store.ledger.post(top_up, now).expect("a top-up");
    }
    let price = Money::parse("800", eur).expect("amount");

    println!("trip-1: Ada can pay; the first car rental finds no car free");
    let lisbon = Trip {
        id: "trip-1".to_owned(),
        traveller: wallet("ada"),
        price,
    };
    let (saga, sent) = book(&mut store, &lisbon, &mut now);
    assert_eq!(saga.ending(), Some(Ending::Completed));
    assert_eq!(
        sent,
        [
            (TripCommand::BookFlight, 1),
            (TripCommand::BookHotel, 1),
            (TripCommand::ChargeTraveller, 1),
            (TripCommand::RentCar, 1),
            (TripCommand::RentCar, 2),
        ],
        "the car, past the pivot, is retried until a car is free"
    );
    for kind in [
        TripCommand::BookFlight,
        TripCommand::BookHotel,
        TripCommand::RentCar,
    ] {
        assert_eq!(store.booked(kind, &lisbon), 1, "{kind:?} booked once");
    }
    println!("  completed: flight, hotel (delivered twice, booked once), paid, car on attempt 2");

    println!("trip-2: Bo cannot pay; the pivot refuses and the saga turns back");
    let oslo = Trip {
        id: "trip-2".to_owned(),
        traveller: wallet("bo"),
        price,
    };
    let (saga, sent) = book(&mut store, &oslo, &mut now);
    assert_eq!(
        saga.ending(),
        Some(Ending::Compensated(Failure::Rejected {
            step: 2,
            reason: Refusal::InsufficientFunds,
        }))
    );
    assert_eq!(
        sent,
        [
            (TripCommand::BookFlight, 1),
            (TripCommand::BookHotel, 1),
            (TripCommand::ChargeTraveller, 1),
            (TripCommand::CancelHotel, 1),
            (TripCommand::CancelFlight, 1),
        ],
        "compensations run in reverse order, once each; no car is rented"
    );
    assert_eq!(saga.compensated_steps(), [1, 0]);
    for kind in [
        TripCommand::BookFlight,
        TripCommand::BookHotel,
        TripCommand::RentCar,
    ] {
        assert_eq!(store.booked(kind, &oslo), 0, "nothing of {kind:?} is held");
    }
    println!("  compensated: hotel cancelled, then flight; nothing charged");

    let balance = |account: &AccountId| {
        store
            .ledger
            .book()
            .account(account)
            .map(|account| account.balance)
            .expect("an open account")
    };
    assert_eq!(
        balance(&wallet("ada")),
        Money::parse("200", eur).expect("amount")
    );
    assert_eq!(
        balance(&wallet("bo")),
        Money::parse("300", eur).expect("amount")
    );
    let verified = verify_chain(None, store.ledger.entries()).expect("the hash chain is intact");
    println!(
        "ledger: Ada {}, Bo {}; hash chain verified over {verified} entries",
        balance(&wallet("ada")),
        balance(&wallet("bo"))
    );
}

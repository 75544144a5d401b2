//! A sans-IO saga engine.
//!
//! A [`Definition`] is data: ordered steps, each with its action command, its
//! [`Recovery`] (a compensating command, or the `Pivot` / `Retriable` marker),
//! a deadline and a bounded [`RetryPolicy`]. [`DefinitionBuilder::build`]
//! refuses unsafe shapes before anything runs.
//!
//! A [`SagaInstance`] is a state machine over one definition. It takes input
//! through [`SagaInstance::handle`] (`now` is a parameter; nothing here reads
//! a clock) and hands out the commands to send and the next deadline in the
//! returned [`Transition`]. The host persists the instance (it is serde),
//! sends the commands with ids derived from `(step, phase, attempt)`, and sets
//! one timer.
//!
//! Contract, checked after every transition:
//! - steps complete in order, each at most once;
//! - on a rejection the completed steps are compensated in reverse order; on a
//!   timeout the timed-out step (whose effect is unknown) is compensated first;
//! - each compensation runs exactly once and is retried until it succeeds;
//! - duplicate, late and out-of-order replies, and early timers, are
//!   [`Ignored`] and change nothing.
//!
//! Retry bounds: a compensable action gives up after `attempts_max` attempts
//! and the saga turns back. A pivot or retriable action, and every
//! compensation, is retried until it is answered, with capped backoff: there
//! is no safe way to give up on them. Reconciliation reports such a saga as
//! stuck once it is past its deadline.
//!
//! # Example
//!
//! A two-step saga whose second step is refused: the first is compensated.
//!
//! ```
//! use saldo_saga::{
//!     Definition, Ending, Failure, Outcome, Phase, Reply, SagaInput, SagaInstance, StepSpec,
//! };
//! use saldo_types::Timestamp;
//!
//! let definition = Definition::builder("transfer")
//!     .step(StepSpec::new("debit", "Debit").compensate_with("Credit").deadline_ms(5_000))
//!     .step(StepSpec::new("deposit", "Deposit").pivot().deadline_ms(5_000))
//!     .build()
//!     .expect("a safe shape");
//! let now = Timestamp::from_unix_ms(0);
//! let (mut saga, started) = SagaInstance::<&str>::start(&definition, now);
//! assert_eq!(started.commands[0].command, "Debit");
//!
//! let succeeded = Reply { step: 0, phase: Phase::Action, outcome: Outcome::Succeeded };
//! let next = saga.handle(&definition, now, SagaInput::Reply(succeeded));
//! assert_eq!(next.commands[0].command, "Deposit");
//!
//! let refused = Reply { step: 1, phase: Phase::Action, outcome: Outcome::Failed("closed") };
//! let back = saga.handle(&definition, now, SagaInput::Reply(refused));
//! assert_eq!(back.commands[0].command, "Credit");
//! assert_eq!(back.commands[0].phase, Phase::Compensation);
//!
//! let undone = Reply { step: 0, phase: Phase::Compensation, outcome: Outcome::Succeeded };
//! saga.handle(&definition, now, SagaInput::Reply(undone));
//! assert_eq!(
//!     saga.ending(),
//!     Some(Ending::Compensated(Failure::Rejected { step: 1, reason: "closed" }))
//! );
//! ```

mod definition;
mod instance;

pub use definition::{
    BACKOFF_LIMIT_MS, Definition, DefinitionBuilder, DefinitionError, RETRY_ATTEMPTS_LIMIT,
    Recovery, RetryPolicy, Step, StepSpec,
};
pub use instance::{
    Ending, Failure, HISTORY_LENGTH_MAX, HistoryEvent, HistoryRecord, Ignored, Intervention,
    InterventionRefused, Outcome, Phase, Reply, SagaCommand, SagaInput, SagaInstance, SagaState,
    Transition,
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mutants_tests;

#[cfg(test)]
mod intervention_tests;

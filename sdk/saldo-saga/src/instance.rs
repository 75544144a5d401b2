use saldo_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::definition::{Definition, Recovery};

/// The most history records one instance keeps. Compensations retry without
/// an attempt limit, so without a bound a long outage would grow the record
/// without end; records past the bound are counted instead of kept.
pub const HISTORY_LENGTH_MAX: usize = 256;

/// Which half of a step a command or reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl Phase {
    /// The phase's stable name (its serde form).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

/// What an instance waits for. Named for the awaited thing, as in rustls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "awaiting", rename_all = "snake_case")]
pub enum SagaState {
    /// The action of `step` was sent (attempt number `attempt`); a reply is due by `deadline`.
    ActionReply {
        /// The step index.
        step: usize,
        /// The attempt last sent, starting at 1.
        attempt: u32,
        /// When the attempt times out.
        deadline: Timestamp,
    },
    /// The action of `step` timed out; attempt `attempt + 1` is sent at `resume_at`.
    ActionRetry {
        /// The step index.
        step: usize,
        /// The attempt last sent.
        attempt: u32,
        /// When the next attempt is sent.
        resume_at: Timestamp,
    },
    /// The compensation of `step` was sent; a reply is due by `deadline`.
    CompensationReply {
        /// The step index.
        step: usize,
        /// The attempt last sent.
        attempt: u32,
        /// When the attempt times out.
        deadline: Timestamp,
    },
    /// The compensation of `step` failed or timed out; it is sent again at `resume_at`.
    CompensationRetry {
        /// The step index.
        step: usize,
        /// The attempt last sent.
        attempt: u32,
        /// When the next attempt is sent.
        resume_at: Timestamp,
    },
    /// Terminal: every step succeeded.
    Nothing,
}

impl SagaState {
    /// The state's name, as serialised (`action_reply`, ..., `nothing`).
    pub fn name(&self) -> &'static str {
        match self {
            SagaState::ActionReply { .. } => "action_reply",
            SagaState::ActionRetry { .. } => "action_retry",
            SagaState::CompensationReply { .. } => "compensation_reply",
            SagaState::CompensationRetry { .. } => "compensation_retry",
            SagaState::Nothing => "nothing",
        }
    }

    /// The step and phase awaited, if any.
    pub fn step_and_phase(&self) -> Option<(usize, Phase)> {
        match self {
            SagaState::ActionReply { step, .. } | SagaState::ActionRetry { step, .. } => {
                Some((*step, Phase::Action))
            }
            SagaState::CompensationReply { step, .. }
            | SagaState::CompensationRetry { step, .. } => Some((*step, Phase::Compensation)),
            SagaState::Nothing => None,
        }
    }
}

/// Why a saga turned back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure<F> {
    /// A participant rejected the step's action.
    Rejected {
        /// The step index.
        step: usize,
        /// The participant's reason.
        reason: F,
    },
    /// The step's action went unanswered through every attempt; its effect is
    /// unknown, so it is compensated too.
    TimedOut {
        /// The step index.
        step: usize,
    },
    /// An operator forced the saga back while `step`'s action was awaited
    /// ([`SagaInstance::force_compensation`]); its effect is unknown, so it
    /// is compensated too, like a timeout.
    Forced {
        /// The step whose action was awaited.
        step: usize,
    },
}

impl<F> Failure<F> {
    /// The step at which the saga turned back.
    pub fn step(&self) -> usize {
        match self {
            Failure::Rejected { step, .. }
            | Failure::TimedOut { step }
            | Failure::Forced { step } => *step,
        }
    }
}

/// What an operator did to an instance (recorded in its history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intervention {
    /// The awaited command was sent again at once ([`SagaInstance::retry_now`]).
    RetriedNow,
    /// The saga was turned back ([`SagaInstance::force_compensation`]).
    CompensationForced,
    /// The operator stated the awaited step's outcome ([`SagaInstance::resolve`]).
    Resolved,
}

/// Why an operator's intervention was refused; the instance is unchanged.
/// Checked in this order: `Finished` first, then the action's own rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum InterventionRefused {
    /// The saga has ended: there is nothing to retry, compensate or resolve.
    #[error("the saga has ended")]
    Finished,
    /// The awaited step is at or past the point of no return (a pivot or a
    /// retriable step): it has no compensation, so the saga can only go on.
    #[error("step {step} is past the point of no return: the saga can only go forward")]
    PastPivot {
        /// The awaited step.
        step: usize,
    },
    /// The saga is already compensating; each compensation runs once.
    #[error("the saga is already compensating")]
    AlreadyCompensating,
    /// A resolution names the step and phase it answers, and the saga
    /// awaits another: the operator looked at a saga that has moved on
    /// since, or named the wrong step.
    #[error("the saga does not await the {} of step {step}", phase.name())]
    NotAwaited {
        /// The step the operator named.
        step: usize,
        /// The phase the operator named.
        phase: Phase,
    },
    /// A compensation can only be resolved as succeeded: compensations must
    /// eventually succeed, a failed one would be retried anyway.
    #[error("a compensation can only be resolved as succeeded")]
    CompensationMustSucceed,
}

/// How a finished saga ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending<F> {
    /// Every step succeeded.
    Completed,
    /// The saga turned back and every needed compensation succeeded.
    Compensated(Failure<F>),
}

/// A reply from a participant about one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<F> {
    /// The step index the reply is about.
    pub step: usize,
    /// Whether it answers the action or the compensation.
    pub phase: Phase,
    /// What happened.
    pub outcome: Outcome<F>,
}

/// A participant's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome<F> {
    /// The command took effect (or had already).
    Succeeded,
    /// The command was refused, for this reason.
    Failed(F),
}

/// Input to [`SagaInstance::handle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaInput<F> {
    /// A participant replied.
    Reply(Reply<F>),
    /// The host's timer for [`SagaInstance::deadline`] fired.
    DeadlineReached,
}

/// A command the host must send, identified by step, phase and attempt so its
/// message id can be derived deterministically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCommand<C> {
    /// The step index.
    pub step: usize,
    /// Action or compensation.
    pub phase: Phase,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// The command from the definition.
    pub command: C,
}

/// Why an input had no effect. Each is expected under at-least-once delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// A reply about something already settled (a redelivery).
    Duplicate,
    /// A reply that arrived after the saga moved past its step.
    Late,
    /// A reply about a step or compensation not started yet.
    OutOfOrder,
    /// A reply naming a step the definition does not have.
    StepUnknown,
    /// A timer that fired before the current deadline (a stale or early timer).
    DeadlineNotDue,
    /// The saga has ended.
    Finished,
}

/// What handling one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition<C> {
    /// Commands to send, in order.
    pub commands: Vec<SagaCommand<C>>,
    /// The instance's next deadline, if it is still running.
    pub next_deadline: Option<Timestamp>,
    /// `None` when the input moved the instance, otherwise why it did not.
    pub ignored: Option<Ignored>,
}

/// One line of an instance's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord<F> {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub event: HistoryEvent<F>,
}

/// The events recorded in an instance's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HistoryEvent<F> {
    /// A command was sent.
    Sent {
        /// The step index.
        step: usize,
        /// Action or compensation.
        phase: Phase,
        /// Attempt number.
        attempt: u32,
    },
    /// A command succeeded.
    Succeeded {
        /// The step index.
        step: usize,
        /// Action or compensation.
        phase: Phase,
    },
    /// A command was refused.
    Failed {
        /// The step index.
        step: usize,
        /// Action or compensation.
        phase: Phase,
        /// The participant's reason.
        reason: F,
    },
    /// An attempt went unanswered past its deadline.
    TimedOut {
        /// The step index.
        step: usize,
        /// Action or compensation.
        phase: Phase,
        /// Attempt number.
        attempt: u32,
    },
    /// The saga ended.
    Ended {
        /// How it ended.
        ending: Ending<F>,
    },
    /// An operator intervened (the commands it caused follow as `sent`).
    Intervened {
        /// What the operator did.
        action: Intervention,
    },
}

/// A running or finished saga.
///
/// Drive it sans-IO: create it with [`SagaInstance::start`], send the returned
/// commands, then feed every reply and every due deadline to
/// [`SagaInstance::handle`] and send what each transition returns. The host
/// keeps one timer, for [`SagaInstance::deadline`]. The instance never reads
/// a clock: `now` is always a parameter.
///
/// Invariants:
/// - Steps complete in definition order; a step's action is only accepted
///   while that step is awaited.
/// - When the saga turns back, it compensates the completed steps in reverse
///   order (plus a step whose outcome is unknown because it timed out), each
///   exactly once, and retries each compensation until it succeeds.
/// - Replies that are duplicated, late or out of order change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaInstance<F> {
    awaiting: SagaState,
    completed_steps: Vec<usize>,
    compensations_pending: Vec<usize>,
    compensated_steps: Vec<usize>,
    failure: Option<Failure<F>>,
    history: Vec<HistoryRecord<F>>,
    history_omitted: u32,
}

impl<F: Clone> SagaInstance<F> {
    /// Starts a saga: sends the first step's action.
    pub fn start<C: Clone>(definition: &Definition<C>, now: Timestamp) -> (Self, Transition<C>) {
        let mut instance = SagaInstance {
            awaiting: SagaState::Nothing,
            completed_steps: Vec::new(),
            compensations_pending: Vec::new(),
            compensated_steps: Vec::new(),
            failure: None,
            history: Vec::new(),
            history_omitted: 0,
        };
        let mut commands = Vec::with_capacity(1);
        instance.awaiting = instance.send_action(definition, now, 0, 1, &mut commands);
        let transition = instance.transition(commands, None);
        (instance, transition)
    }

    /// What the instance waits for.
    pub fn awaiting(&self) -> &SagaState {
        &self.awaiting
    }

    /// When the host must call `handle(now, DeadlineReached)`, if still running.
    pub fn deadline(&self) -> Option<Timestamp> {
        match self.awaiting {
            SagaState::ActionReply { deadline, .. }
            | SagaState::CompensationReply { deadline, .. } => Some(deadline),
            SagaState::ActionRetry { resume_at, .. }
            | SagaState::CompensationRetry { resume_at, .. } => Some(resume_at),
            SagaState::Nothing => None,
        }
    }

    /// How the saga ended, or `None` while it runs.
    pub fn ending(&self) -> Option<Ending<F>> {
        match (&self.awaiting, &self.failure) {
            (SagaState::Nothing, None) => Some(Ending::Completed),
            (SagaState::Nothing, Some(failure)) => Some(Ending::Compensated(failure.clone())),
            _ => None,
        }
    }

    /// Why the saga is turning (or turned) back, if it is.
    pub fn failure(&self) -> Option<&Failure<F>> {
        self.failure.as_ref()
    }

    /// Steps whose action succeeded, in order.
    pub fn completed_steps(&self) -> &[usize] {
        &self.completed_steps
    }

    /// Steps whose compensation succeeded, in the order they were compensated.
    pub fn compensated_steps(&self) -> &[usize] {
        &self.compensated_steps
    }

    /// The recorded history, oldest first.
    pub fn history(&self) -> &[HistoryRecord<F>] {
        &self.history
    }

    /// How many history records were dropped past [`HISTORY_LENGTH_MAX`].
    pub fn history_omitted(&self) -> u32 {
        self.history_omitted
    }

    /// Handles one input and returns the commands to send.
    pub fn handle<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        input: SagaInput<F>,
    ) -> Transition<C> {
        let mut commands = Vec::new();
        // Transitions consume the old state; `Nothing` is only a placeholder
        // while the next state is computed.
        let awaiting = std::mem::replace(&mut self.awaiting, SagaState::Nothing);
        let outcome = match input {
            SagaInput::Reply(reply) => {
                self.on_reply(definition, now, awaiting, reply, &mut commands)
            }
            SagaInput::DeadlineReached => {
                self.on_deadline(definition, now, awaiting, &mut commands)
            }
        };
        let (next, ignored) = match outcome {
            Ok(next) => (next, None),
            Err((unchanged, reason)) => (unchanged, Some(reason)),
        };
        self.awaiting = next;
        self.check_invariants(definition);
        self.transition(commands, ignored)
    }

    /// Operator: sends the awaited action or compensation again now, as the
    /// next attempt, without waiting for its deadline or backoff. The
    /// participant's effect is keyed by the order, so a second attempt has
    /// no second effect.
    pub fn retry_now<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
    ) -> Result<Transition<C>, InterventionRefused> {
        let mut commands = Vec::with_capacity(1);
        let next = match self.awaiting.clone() {
            SagaState::Nothing => return Err(InterventionRefused::Finished),
            SagaState::ActionReply { step, attempt, .. }
            | SagaState::ActionRetry { step, attempt, .. } => {
                self.record(
                    now,
                    HistoryEvent::Intervened {
                        action: Intervention::RetriedNow,
                    },
                );
                self.send_action(
                    definition,
                    now,
                    step,
                    attempt.saturating_add(1),
                    &mut commands,
                )
            }
            SagaState::CompensationReply { step, attempt, .. }
            | SagaState::CompensationRetry { step, attempt, .. } => {
                self.record(
                    now,
                    HistoryEvent::Intervened {
                        action: Intervention::RetriedNow,
                    },
                );
                self.send_compensation(
                    definition,
                    now,
                    step,
                    attempt.saturating_add(1),
                    &mut commands,
                )
            }
        };
        self.awaiting = next;
        self.check_invariants(definition);
        assert_eq!(
            commands.len(),
            1,
            "a retry sends exactly the awaited command"
        );
        Ok(self.transition(commands, None))
    }

    /// Operator: turns the saga back while an action is awaited, with the
    /// compensations a timeout would run: the awaited step (its effect is
    /// unknown) and then the completed steps, in reverse, once each. Refused
    /// at or past the point of no return.
    pub fn force_compensation<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
    ) -> Result<Transition<C>, InterventionRefused> {
        let step = match &self.awaiting {
            SagaState::Nothing => return Err(InterventionRefused::Finished),
            SagaState::CompensationReply { .. } | SagaState::CompensationRetry { .. } => {
                return Err(InterventionRefused::AlreadyCompensating);
            }
            SagaState::ActionReply { step, .. } | SagaState::ActionRetry { step, .. } => *step,
        };
        if !matches!(definition.steps()[step].recovery, Recovery::Compensate(_)) {
            return Err(InterventionRefused::PastPivot { step });
        }
        assert!(
            self.failure.is_none(),
            "a saga awaiting an action has not turned back"
        );
        self.record(
            now,
            HistoryEvent::Intervened {
                action: Intervention::CompensationForced,
            },
        );
        let to_compensate = std::iter::once(step)
            .chain(self.completed_steps.iter().rev().copied())
            .collect();
        let mut commands = Vec::new();
        self.awaiting = self.turn_back(
            definition,
            now,
            Failure::Forced { step },
            to_compensate,
            &mut commands,
        );
        self.check_invariants(definition);
        Ok(self.transition(commands, None))
    }

    /// Operator: states the outcome of the awaited step (its action or its
    /// compensation) for a participant that cannot answer; the saga then
    /// moves exactly as if the participant had replied so. The operator
    /// names the step and phase the outcome answers, so a saga that moved on
    /// since they looked is refused rather than answered for the wrong step.
    /// A compensation can only be resolved as succeeded.
    pub fn resolve<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        named: (usize, Phase),
        outcome: Outcome<F>,
    ) -> Result<Transition<C>, InterventionRefused> {
        let Some(awaited) = self.awaiting.step_and_phase() else {
            return Err(InterventionRefused::Finished);
        };
        if named != awaited {
            return Err(InterventionRefused::NotAwaited {
                step: named.0,
                phase: named.1,
            });
        }
        let (step, phase) = awaited;
        if phase == Phase::Compensation && matches!(outcome, Outcome::Failed(_)) {
            return Err(InterventionRefused::CompensationMustSucceed);
        }
        self.record(
            now,
            HistoryEvent::Intervened {
                action: Intervention::Resolved,
            },
        );
        let transition = self.handle(
            definition,
            now,
            SagaInput::Reply(Reply {
                step,
                phase,
                outcome,
            }),
        );
        assert!(
            transition.ignored.is_none(),
            "a resolution answers the awaited step, so it is never ignored"
        );
        Ok(transition)
    }

    fn transition<C>(
        &self,
        commands: Vec<SagaCommand<C>>,
        ignored: Option<Ignored>,
    ) -> Transition<C> {
        Transition {
            commands,
            next_deadline: self.deadline(),
            ignored,
        }
    }

    fn on_reply<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        awaiting: SagaState,
        reply: Reply<F>,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> Result<SagaState, (SagaState, Ignored)> {
        let Reply {
            step,
            phase,
            outcome,
        } = reply;
        if step >= definition.steps().len() {
            return Err((awaiting, Ignored::StepUnknown));
        }
        match (awaiting, phase) {
            (
                SagaState::ActionReply {
                    step: current,
                    attempt,
                    ..
                }
                | SagaState::ActionRetry {
                    step: current,
                    attempt,
                    ..
                },
                Phase::Action,
            ) if current == step => {
                Ok(self.on_action_outcome(definition, now, step, attempt, outcome, commands))
            }
            (
                SagaState::CompensationReply {
                    step: current,
                    attempt,
                    ..
                }
                | SagaState::CompensationRetry {
                    step: current,
                    attempt,
                    ..
                },
                Phase::Compensation,
            ) if current == step => {
                Ok(self.on_compensation_outcome(definition, now, step, attempt, outcome, commands))
            }
            (awaiting, phase) => {
                let reason = self.classify_stray_reply(&awaiting, step, phase);
                Err((awaiting, reason))
            }
        }
    }

    fn on_action_outcome<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        step: usize,
        attempt: u32,
        outcome: Outcome<F>,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        match outcome {
            Outcome::Succeeded => {
                self.record(
                    now,
                    HistoryEvent::Succeeded {
                        step,
                        phase: Phase::Action,
                    },
                );
                self.completed_steps.push(step);
                if step + 1 < definition.steps().len() {
                    self.send_action(definition, now, step + 1, 1, commands)
                } else {
                    self.record(
                        now,
                        HistoryEvent::Ended {
                            ending: Ending::Completed,
                        },
                    );
                    SagaState::Nothing
                }
            }
            Outcome::Failed(reason) => {
                self.record(
                    now,
                    HistoryEvent::Failed {
                        step,
                        phase: Phase::Action,
                        reason: reason.clone(),
                    },
                );
                match definition.steps()[step].recovery {
                    // Past the point of no return a refusal cannot turn the
                    // saga back: try again after the backoff.
                    Recovery::Retriable => SagaState::ActionRetry {
                        step,
                        attempt,
                        resume_at: now.plus_ms(
                            definition.steps()[step]
                                .retry
                                .backoff_ms(attempt.saturating_add(1)),
                        ),
                    },
                    // A refused action had no effect, so only the steps before
                    // it are compensated.
                    Recovery::Compensate(_) | Recovery::Pivot => {
                        let to_compensate = self.completed_steps.iter().rev().copied().collect();
                        self.turn_back(
                            definition,
                            now,
                            Failure::Rejected { step, reason },
                            to_compensate,
                            commands,
                        )
                    }
                }
            }
        }
    }

    fn on_compensation_outcome<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        step: usize,
        attempt: u32,
        outcome: Outcome<F>,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        match outcome {
            Outcome::Succeeded => {
                self.record(
                    now,
                    HistoryEvent::Succeeded {
                        step,
                        phase: Phase::Compensation,
                    },
                );
                self.compensated_steps.push(step);
                self.next_compensation(definition, now, commands)
            }
            Outcome::Failed(reason) => {
                // Compensations must eventually succeed; a refusal is retried.
                self.record(
                    now,
                    HistoryEvent::Failed {
                        step,
                        phase: Phase::Compensation,
                        reason,
                    },
                );
                SagaState::CompensationRetry {
                    step,
                    attempt,
                    resume_at: now.plus_ms(
                        definition
                            .compensation_retry()
                            .backoff_ms(attempt.saturating_add(1)),
                    ),
                }
            }
        }
    }

    fn on_deadline<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        awaiting: SagaState,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> Result<SagaState, (SagaState, Ignored)> {
        if awaiting == SagaState::Nothing {
            return Err((awaiting, Ignored::Finished));
        }
        let due = match &awaiting {
            SagaState::ActionReply { deadline, .. }
            | SagaState::CompensationReply { deadline, .. } => *deadline,
            SagaState::ActionRetry { resume_at, .. }
            | SagaState::CompensationRetry { resume_at, .. } => *resume_at,
            SagaState::Nothing => unreachable!("handled above"),
        };
        if now < due {
            return Err((awaiting, Ignored::DeadlineNotDue));
        }
        Ok(match awaiting {
            SagaState::ActionReply { step, attempt, .. } => {
                self.record(
                    now,
                    HistoryEvent::TimedOut {
                        step,
                        phase: Phase::Action,
                        attempt,
                    },
                );
                let definition_step = &definition.steps()[step];
                let bounded = matches!(definition_step.recovery, Recovery::Compensate(_));
                if bounded && attempt >= definition_step.retry.attempts_max {
                    // The effect is unknown: compensate this step first, then
                    // the completed ones in reverse.
                    let to_compensate = std::iter::once(step)
                        .chain(self.completed_steps.iter().rev().copied())
                        .collect();
                    self.turn_back(
                        definition,
                        now,
                        Failure::TimedOut { step },
                        to_compensate,
                        commands,
                    )
                } else {
                    let next_attempt = attempt.saturating_add(1);
                    let backoff_ms = definition_step.retry.backoff_ms(next_attempt);
                    if backoff_ms == 0 {
                        self.send_action(definition, now, step, next_attempt, commands)
                    } else {
                        SagaState::ActionRetry {
                            step,
                            attempt,
                            resume_at: now.plus_ms(backoff_ms),
                        }
                    }
                }
            }
            SagaState::ActionRetry { step, attempt, .. } => {
                self.send_action(definition, now, step, attempt.saturating_add(1), commands)
            }
            SagaState::CompensationReply { step, attempt, .. } => {
                self.record(
                    now,
                    HistoryEvent::TimedOut {
                        step,
                        phase: Phase::Compensation,
                        attempt,
                    },
                );
                let next_attempt = attempt.saturating_add(1);
                let backoff_ms = definition.compensation_retry().backoff_ms(next_attempt);
                if backoff_ms == 0 {
                    self.send_compensation(definition, now, step, next_attempt, commands)
                } else {
                    SagaState::CompensationRetry {
                        step,
                        attempt,
                        resume_at: now.plus_ms(backoff_ms),
                    }
                }
            }
            SagaState::CompensationRetry { step, attempt, .. } => {
                self.send_compensation(definition, now, step, attempt.saturating_add(1), commands)
            }
            SagaState::Nothing => unreachable!("handled above"),
        })
    }

    fn turn_back<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        failure: Failure<F>,
        to_compensate: Vec<usize>,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        assert!(self.failure.is_none(), "a saga turns back at most once");
        self.failure = Some(failure);
        // Stored reversed so the next compensation is popped from the end.
        self.compensations_pending = to_compensate.into_iter().rev().collect();
        self.next_compensation(definition, now, commands)
    }

    fn next_compensation<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        match self.compensations_pending.pop() {
            Some(step) => self.send_compensation(definition, now, step, 1, commands),
            None => {
                let failure = self
                    .failure
                    .clone()
                    .expect("compensating implies a failure");
                self.record(
                    now,
                    HistoryEvent::Ended {
                        ending: Ending::Compensated(failure),
                    },
                );
                SagaState::Nothing
            }
        }
    }

    fn send_action<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        step: usize,
        attempt: u32,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        let definition_step = &definition.steps()[step];
        self.record(
            now,
            HistoryEvent::Sent {
                step,
                phase: Phase::Action,
                attempt,
            },
        );
        commands.push(SagaCommand {
            step,
            phase: Phase::Action,
            attempt,
            command: definition_step.action.clone(),
        });
        SagaState::ActionReply {
            step,
            attempt,
            deadline: now.plus_ms(definition_step.deadline_ms),
        }
    }

    fn send_compensation<C: Clone>(
        &mut self,
        definition: &Definition<C>,
        now: Timestamp,
        step: usize,
        attempt: u32,
        commands: &mut Vec<SagaCommand<C>>,
    ) -> SagaState {
        let Recovery::Compensate(compensation) = &definition.steps()[step].recovery else {
            panic!(
                "step {step} is compensated but has no compensation; the definition builder forbids this"
            );
        };
        self.record(
            now,
            HistoryEvent::Sent {
                step,
                phase: Phase::Compensation,
                attempt,
            },
        );
        commands.push(SagaCommand {
            step,
            phase: Phase::Compensation,
            attempt,
            command: compensation.clone(),
        });
        SagaState::CompensationReply {
            step,
            attempt,
            deadline: now.plus_ms(definition.compensation_deadline_ms()),
        }
    }

    fn classify_stray_reply(&self, awaiting: &SagaState, step: usize, phase: Phase) -> Ignored {
        let settled = match phase {
            Phase::Action => self.completed_steps.contains(&step),
            Phase::Compensation => self.compensated_steps.contains(&step),
        };
        if settled {
            return Ignored::Duplicate;
        }
        match (awaiting, phase) {
            (SagaState::Nothing, _) => Ignored::Late,
            (
                SagaState::ActionReply { step: current, .. }
                | SagaState::ActionRetry { step: current, .. },
                Phase::Action,
            ) => {
                if step > *current {
                    Ignored::OutOfOrder
                } else {
                    Ignored::Late
                }
            }
            // No compensation has been sent while actions run.
            (
                SagaState::ActionReply { .. } | SagaState::ActionRetry { .. },
                Phase::Compensation,
            ) => Ignored::OutOfOrder,
            // Once the saga turns back, action replies come too late to matter.
            (
                SagaState::CompensationReply { .. } | SagaState::CompensationRetry { .. },
                Phase::Action,
            ) => Ignored::Late,
            (
                SagaState::CompensationReply { .. } | SagaState::CompensationRetry { .. },
                Phase::Compensation,
            ) => {
                if self.compensations_pending.contains(&step) {
                    Ignored::OutOfOrder
                } else {
                    Ignored::Late
                }
            }
        }
    }

    fn record(&mut self, at: Timestamp, event: HistoryEvent<F>) {
        let ends = matches!(event, HistoryEvent::Ended { .. });
        // The final record is always kept so the ending stays visible.
        if self.history.len() < HISTORY_LENGTH_MAX || ends {
            self.history.push(HistoryRecord { at, event });
        } else {
            self.history_omitted = self.history_omitted.saturating_add(1);
        }
    }

    fn check_invariants<C>(&self, definition: &Definition<C>) {
        let steps = definition.steps().len();
        assert!(
            self.completed_steps
                .iter()
                .enumerate()
                .all(|(index, step)| index == *step),
            "steps complete in definition order: {:?}",
            self.completed_steps
        );
        assert!(
            self.completed_steps.len() <= steps,
            "no step completes twice"
        );
        let mut compensated = self.compensated_steps.clone();
        compensated.sort_unstable();
        compensated.dedup();
        assert_eq!(
            compensated.len(),
            self.compensated_steps.len(),
            "each compensation runs exactly once"
        );
        assert!(
            self.failure.is_some() || self.compensated_steps.is_empty(),
            "only a saga that turned back compensates"
        );
    }
}

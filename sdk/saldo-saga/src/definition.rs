use serde::{Deserialize, Serialize};

/// The most attempts a bounded retry policy may allow. A limit on every retry
/// keeps a misconfigured saga from hammering a participant forever.
pub const RETRY_ATTEMPTS_LIMIT: u32 = 100;

/// The longest backoff between two attempts, in milliseconds (one hour).
pub const BACKOFF_LIMIT_MS: u64 = 3_600_000;

/// How often, and how far apart, a command is sent again when its deadline
/// passes without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 means "never retry").
    /// Only compensable actions are bounded by it; see [`Recovery`].
    pub attempts_max: u32,
    /// Delay before the second attempt.
    pub backoff_initial_ms: u64,
    /// Each further delay is the previous one times this factor.
    pub backoff_multiplier: u32,
    /// No delay is longer than this.
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    /// A policy with exponential backoff doubling from `backoff_initial_ms`.
    pub const fn exponential(
        attempts_max: u32,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
    ) -> Self {
        RetryPolicy {
            attempts_max,
            backoff_initial_ms,
            backoff_multiplier: 2,
            backoff_max_ms,
        }
    }

    /// The delay to wait before sending attempt number `attempt` (2 or more).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let mut delay = self.backoff_initial_ms;
        for _ in 2..attempt {
            delay = delay.saturating_mul(u64::from(self.backoff_multiplier));
            if delay >= self.backoff_max_ms {
                break;
            }
        }
        delay.min(self.backoff_max_ms)
    }
}

/// What happens to a step's effect when the saga has to turn back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery<C> {
    /// The effect is undone by sending this compensating command.
    Compensate(C),
    /// The point of no return: once it succeeds, the saga runs forward to the
    /// end. It has no compensation, so it is retried until it answers; a
    /// rejection turns the saga back.
    Pivot,
    /// Runs after the point of no return and is retried until it succeeds.
    Retriable,
}

/// One step of a saga: the command that performs it and how it is recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step<C> {
    /// A stable name, used in history and error messages.
    pub name: String,
    /// The command that performs the step.
    pub action: C,
    /// How the step is recovered.
    pub recovery: Recovery<C>,
    /// How long to wait for a reply to one attempt.
    pub deadline_ms: u64,
    /// How to retry when the deadline passes.
    pub retry: RetryPolicy,
}

/// A step under construction; [`DefinitionBuilder::build`] checks it.
#[derive(Debug, Clone)]
pub struct StepSpec<C> {
    name: String,
    action: C,
    recovery: Option<Recovery<C>>,
    deadline_ms: Option<u64>,
    retry: RetryPolicy,
}

impl<C> StepSpec<C> {
    /// A step that performs `action`. It still needs a recovery marker and a deadline.
    pub fn new(name: impl Into<String>, action: C) -> Self {
        StepSpec {
            name: name.into(),
            action,
            recovery: None,
            deadline_ms: None,
            retry: RetryPolicy::exponential(1, 0, 0),
        }
    }

    /// The step's effect is undone by `compensation`.
    pub fn compensate_with(mut self, compensation: C) -> Self {
        self.recovery = Some(Recovery::Compensate(compensation));
        self
    }

    /// The step is the saga's point of no return.
    pub fn pivot(mut self) -> Self {
        self.recovery = Some(Recovery::Pivot);
        self
    }

    /// The step comes after the point of no return and is retried until it succeeds.
    pub fn retriable(mut self) -> Self {
        self.recovery = Some(Recovery::Retriable);
        self
    }

    /// How long to wait for a reply to one attempt.
    pub fn deadline_ms(mut self, deadline_ms: u64) -> Self {
        self.deadline_ms = Some(deadline_ms);
        self
    }

    /// How to retry after a deadline.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// Why a saga definition was refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// A saga needs at least one step.
    #[error("a saga needs at least one step")]
    StepsEmpty,
    /// Two steps share a name.
    #[error("step name {step:?} is used twice")]
    StepNameDuplicated {
        /// The repeated name.
        step: String,
    },
    /// A step has no deadline, or a zero one; a reply that never comes would
    /// leave the saga waiting forever.
    #[error("step {step:?} has no deadline")]
    DeadlineMissing {
        /// The step's name.
        step: String,
    },
    /// A step's retry policy allows no attempt, too many, or an unbounded delay.
    #[error(
        "step {step:?} needs 1..={RETRY_ATTEMPTS_LIMIT} attempts and backoff of at most {BACKOFF_LIMIT_MS} ms"
    )]
    RetryPolicyOutOfBounds {
        /// The step's name.
        step: String,
    },
    /// A step has effects (it is not marked) but no compensation and comes
    /// before the pivot: if a later step failed, its effect could not be undone.
    #[error("step {step:?} has effects and no compensation before the pivot")]
    CompensationMissing {
        /// The step's name.
        step: String,
    },
    /// A step comes after the pivot or a retriable step but is not retriable:
    /// the saga can no longer turn back there.
    #[error("step {step:?} comes after the point of no return and must be retriable")]
    StepAfterPivotNotRetriable {
        /// The step's name.
        step: String,
    },
    /// More than one step is marked as the pivot.
    #[error("step {step:?} is a second pivot")]
    PivotDuplicated {
        /// The step's name.
        step: String,
    },
}

/// A validated saga: its steps and how compensations are retried.
///
/// The shape is `[compensable]* [pivot]? [retriable]*`: every step that may
/// need undoing comes before the point of no return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition<C> {
    name: String,
    steps: Vec<Step<C>>,
    compensation_deadline_ms: u64,
    compensation_retry: RetryPolicy,
}

impl<C> Definition<C> {
    /// Starts building a definition.
    pub fn builder(name: impl Into<String>) -> DefinitionBuilder<C> {
        DefinitionBuilder {
            name: name.into(),
            steps: Vec::new(),
            compensation_deadline_ms: 30_000,
            compensation_retry: RetryPolicy::exponential(RETRY_ATTEMPTS_LIMIT, 1_000, 60_000),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The steps, in execution order.
    pub fn steps(&self) -> &[Step<C>] {
        &self.steps
    }

    /// How long to wait for a compensation's reply.
    pub fn compensation_deadline_ms(&self) -> u64 {
        self.compensation_deadline_ms
    }

    /// How compensations are spaced out when they are retried.
    pub fn compensation_retry(&self) -> &RetryPolicy {
        &self.compensation_retry
    }
}

/// Collects steps, then checks the definition's shape in [`Self::build`].
#[derive(Debug, Clone)]
pub struct DefinitionBuilder<C> {
    name: String,
    steps: Vec<StepSpec<C>>,
    compensation_deadline_ms: u64,
    compensation_retry: RetryPolicy,
}

impl<C> DefinitionBuilder<C> {
    /// Appends a step.
    pub fn step(mut self, step: StepSpec<C>) -> Self {
        self.steps.push(step);
        self
    }

    /// Sets the deadline and backoff for compensations, which are retried
    /// until they succeed (the policy's `attempts_max` is not a limit there).
    pub fn compensation(mut self, deadline_ms: u64, retry: RetryPolicy) -> Self {
        self.compensation_deadline_ms = deadline_ms;
        self.compensation_retry = retry;
        self
    }

    /// Checks the shape and returns the definition, or the first problem found.
    pub fn build(self) -> Result<Definition<C>, DefinitionError> {
        if self.steps.is_empty() {
            return Err(DefinitionError::StepsEmpty);
        }
        let policy_in_bounds = |retry: &RetryPolicy| {
            (1..=RETRY_ATTEMPTS_LIMIT).contains(&retry.attempts_max)
                && retry.backoff_initial_ms <= BACKOFF_LIMIT_MS
                && retry.backoff_max_ms <= BACKOFF_LIMIT_MS
        };
        let mut steps = Vec::with_capacity(self.steps.len());
        let mut past_point_of_no_return = false;
        let mut pivot_seen = false;
        for spec in self.steps {
            let step = spec.name;
            if steps.iter().any(|existing: &Step<C>| existing.name == step) {
                return Err(DefinitionError::StepNameDuplicated { step });
            }
            let deadline_ms = match spec.deadline_ms {
                Some(deadline_ms) if deadline_ms > 0 => deadline_ms,
                _ => return Err(DefinitionError::DeadlineMissing { step }),
            };
            if !policy_in_bounds(&spec.retry) {
                return Err(DefinitionError::RetryPolicyOutOfBounds { step });
            }
            let recovery = match (spec.recovery, past_point_of_no_return) {
                (None, false) => return Err(DefinitionError::CompensationMissing { step }),
                (Some(Recovery::Pivot), _) if pivot_seen => {
                    return Err(DefinitionError::PivotDuplicated { step });
                }
                (None | Some(Recovery::Compensate(_) | Recovery::Pivot), true) => {
                    return Err(DefinitionError::StepAfterPivotNotRetriable { step });
                }
                (Some(recovery), _) => recovery,
            };
            match recovery {
                Recovery::Pivot => {
                    pivot_seen = true;
                    past_point_of_no_return = true;
                }
                Recovery::Retriable => past_point_of_no_return = true,
                Recovery::Compensate(_) => {}
            }
            steps.push(Step {
                name: step,
                action: spec.action,
                recovery,
                deadline_ms,
                retry: spec.retry,
            });
        }
        if self.compensation_deadline_ms == 0 {
            return Err(DefinitionError::DeadlineMissing {
                step: "compensation".to_owned(),
            });
        }
        Ok(Definition {
            name: self.name,
            steps,
            compensation_deadline_ms: self.compensation_deadline_ms,
            compensation_retry: self.compensation_retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn compensable(name: &str) -> StepSpec<&'static str> {
        StepSpec::new(name, "do")
            .compensate_with("undo")
            .deadline_ms(1_000)
    }

    fn retry(attempts_max: u32) -> RetryPolicy {
        RetryPolicy::exponential(attempts_max, 10, 100)
    }

    #[rstest]
    #[case::valid(vec![compensable("a"), StepSpec::new("b", "do").pivot().deadline_ms(5), StepSpec::new("c", "do").retriable().deadline_ms(5)], None)]
    #[case::empty(vec![], Some(DefinitionError::StepsEmpty))]
    #[case::duplicate_name(vec![compensable("a"), compensable("a")], Some(DefinitionError::StepNameDuplicated { step: "a".into() }))]
    #[case::no_deadline(vec![StepSpec::new("a", "do").compensate_with("undo")], Some(DefinitionError::DeadlineMissing { step: "a".into() }))]
    #[case::zero_deadline(vec![compensable("a").deadline_ms(0)], Some(DefinitionError::DeadlineMissing { step: "a".into() }))]
    #[case::no_attempts(vec![compensable("a").retry(retry(0))], Some(DefinitionError::RetryPolicyOutOfBounds { step: "a".into() }))]
    #[case::too_many_attempts(vec![compensable("a").retry(retry(RETRY_ATTEMPTS_LIMIT + 1))], Some(DefinitionError::RetryPolicyOutOfBounds { step: "a".into() }))]
    #[case::unbounded_backoff(vec![compensable("a").retry(RetryPolicy::exponential(3, 1, u64::MAX))], Some(DefinitionError::RetryPolicyOutOfBounds { step: "a".into() }))]
    #[case::effects_without_compensation(vec![compensable("a"), StepSpec::new("b", "do").deadline_ms(5)], Some(DefinitionError::CompensationMissing { step: "b".into() }))]
    #[case::compensable_after_pivot(vec![StepSpec::new("a", "do").pivot().deadline_ms(5), compensable("b")], Some(DefinitionError::StepAfterPivotNotRetriable { step: "b".into() }))]
    #[case::compensable_after_retriable(vec![StepSpec::new("a", "do").retriable().deadline_ms(5), compensable("b")], Some(DefinitionError::StepAfterPivotNotRetriable { step: "b".into() }))]
    #[case::unmarked_after_pivot(vec![StepSpec::new("a", "do").pivot().deadline_ms(5), StepSpec::new("b", "do").deadline_ms(5)], Some(DefinitionError::StepAfterPivotNotRetriable { step: "b".into() }))]
    #[case::two_pivots(vec![StepSpec::new("a", "do").pivot().deadline_ms(5), StepSpec::new("b", "do").pivot().deadline_ms(5)], Some(DefinitionError::PivotDuplicated { step: "b".into() }))]
    fn build_rejects_unsafe_shapes(
        #[case] steps: Vec<StepSpec<&'static str>>,
        #[case] expected: Option<DefinitionError>,
    ) {
        // Proves every unsafe definition shape is refused with its exact reason.
        let builder = steps
            .into_iter()
            .fold(Definition::builder("test"), DefinitionBuilder::step);
        assert_eq!(builder.build().err(), expected);
    }

    #[rstest]
    #[case(2, 10)]
    #[case(3, 20)]
    #[case(4, 40)]
    #[case(5, 80)]
    #[case(6, 100)]
    #[case(60, 100)]
    fn backoff_grows_and_is_capped(#[case] attempt: u32, #[case] expected_ms: u64) {
        // Proves the backoff doubles from its initial delay and never exceeds the cap.
        assert_eq!(retry(100).backoff_ms(attempt), expected_ms);
    }
}

//! Scenario tables and interleaving properties for the saga engine.

use quickcheck::{Arbitrary, Gen, QuickCheck};
use rstest::rstest;
use saldo_types::Timestamp;

use crate::*;

/// Cases each required property runs (the Foundation issue asks for 1,000).
const PROPERTY_CASES: u64 = 1_000;

const STEP_COUNT: usize = 3;

/// reserve (compensable, 2 attempts) -> pay (compensable, 2 attempts) -> confirm (retriable).
fn definition() -> Definition<&'static str> {
    Definition::builder("test")
        .step(
            StepSpec::new("reserve", "reserve")
                .compensate_with("release")
                .deadline_ms(100)
                .retry(RetryPolicy::exponential(2, 10, 40)),
        )
        .step(
            StepSpec::new("pay", "pay")
                .compensate_with("refund")
                .deadline_ms(100)
                .retry(RetryPolicy::exponential(2, 10, 40)),
        )
        .step(
            StepSpec::new("confirm", "confirm")
                .retriable()
                .deadline_ms(100)
                .retry(RetryPolicy::exponential(3, 10, 40)),
        )
        .compensation(100, RetryPolicy::exponential(RETRY_ATTEMPTS_LIMIT, 10, 40))
        .build()
        .expect("the test definition is valid")
}

/// One thing that can happen to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    ActionOk(usize),
    ActionFailed(usize),
    CompensationOk(usize),
    CompensationFailed(usize),
    /// Advance the clock by this many milliseconds and fire the timer.
    Tick(u64),
}

impl Event {
    fn input(self) -> Option<SagaInput<&'static str>> {
        let reply = |step, phase, outcome| {
            Some(SagaInput::Reply(Reply {
                step,
                phase,
                outcome,
            }))
        };
        match self {
            Event::ActionOk(step) => reply(step, Phase::Action, Outcome::Succeeded),
            Event::ActionFailed(step) => reply(step, Phase::Action, Outcome::Failed("refused")),
            Event::CompensationOk(step) => reply(step, Phase::Compensation, Outcome::Succeeded),
            Event::CompensationFailed(step) => {
                reply(step, Phase::Compensation, Outcome::Failed("busy"))
            }
            Event::Tick(_) => Some(SagaInput::DeadlineReached),
        }
    }
}

impl Arbitrary for Event {
    fn arbitrary(g: &mut Gen) -> Self {
        // Step STEP_COUNT is deliberately out of range.
        let step = usize::arbitrary(g) % (STEP_COUNT + 1);
        match u8::arbitrary(g) % 6 {
            0 | 1 => Event::ActionOk(step),
            2 => Event::ActionFailed(step),
            3 => Event::CompensationOk(step),
            4 => Event::CompensationFailed(step),
            _ => Event::Tick(u64::arbitrary(g) % 250),
        }
    }
}

/// Drives one instance and observes it from the outside, the way a host would.
struct Driver {
    definition: Definition<&'static str>,
    instance: SagaInstance<&'static str>,
    now: Timestamp,
    commands: Vec<SagaCommand<&'static str>>,
    ignored: Vec<Ignored>,
    accepted_action_successes: Vec<usize>,
    accepted_compensations: Vec<usize>,
}

impl Driver {
    fn start() -> Driver {
        let definition = definition();
        let now = Timestamp::from_unix_ms(1_000);
        let (instance, transition) = SagaInstance::start(&definition, now);
        Driver {
            definition,
            instance,
            now,
            commands: transition.commands,
            ignored: Vec::new(),
            accepted_action_successes: Vec::new(),
            accepted_compensations: Vec::new(),
        }
    }

    fn apply(&mut self, event: Event) {
        if let Event::Tick(ms) = event {
            self.now = self.now.plus_ms(ms);
        }
        let input = event.input().expect("every event maps to an input");
        let transition = self.instance.handle(&self.definition, self.now, input);
        assert_eq!(transition.next_deadline, self.instance.deadline());
        match transition.ignored {
            Some(reason) => self.ignored.push(reason),
            None => match event {
                Event::ActionOk(step) => self.accepted_action_successes.push(step),
                Event::CompensationOk(step) => self.accepted_compensations.push(step),
                _ => {}
            },
        }
        self.commands.extend(transition.commands);
    }

    /// Plays a well-behaved world until the saga ends: every awaited command
    /// succeeds, every retry timer fires. Returns false if it never ends.
    fn drive_to_end(&mut self) -> bool {
        for _ in 0..1_000 {
            let event = match self.instance.awaiting() {
                SagaState::Nothing => return true,
                SagaState::ActionReply { step, .. } => Event::ActionOk(*step),
                SagaState::CompensationReply { step, .. } => Event::CompensationOk(*step),
                SagaState::ActionRetry { resume_at, .. }
                | SagaState::CompensationRetry { resume_at, .. } => {
                    Event::Tick(resume_at.ms_since(self.now))
                }
            };
            self.apply(event);
        }
        false
    }

    /// Distinct steps that compensation commands were sent for, in first-sent order.
    fn compensations_sent(&self) -> Vec<usize> {
        let mut steps = Vec::new();
        for command in &self.commands {
            if command.phase == Phase::Compensation && !steps.contains(&command.step) {
                steps.push(command.step);
            }
        }
        steps
    }
}

#[rstest]
#[case::happy_path(vec![Event::ActionOk(0), Event::ActionOk(1), Event::ActionOk(2)], Some(Ending::Completed), vec![])]
#[case::first_step_rejected(vec![Event::ActionFailed(0)], Some(Ending::Compensated(Failure::Rejected { step: 0, reason: "refused" })), vec![])]
#[case::second_step_rejected(vec![Event::ActionOk(0), Event::ActionFailed(1), Event::CompensationOk(0)], Some(Ending::Compensated(Failure::Rejected { step: 1, reason: "refused" })), vec![0])]
#[case::second_step_timed_out(
    vec![Event::ActionOk(0), Event::Tick(100), Event::Tick(10), Event::Tick(100), Event::CompensationOk(1), Event::CompensationOk(0)],
    Some(Ending::Compensated(Failure::TimedOut { step: 1 })),
    vec![1, 0]
)]
#[case::compensation_refused_then_retried(
    vec![Event::ActionOk(0), Event::ActionFailed(1), Event::CompensationFailed(0), Event::Tick(10), Event::CompensationOk(0)],
    Some(Ending::Compensated(Failure::Rejected { step: 1, reason: "refused" })),
    vec![0]
)]
#[case::retriable_step_refused_is_retried_not_compensated(
    vec![Event::ActionOk(0), Event::ActionOk(1), Event::ActionFailed(2), Event::Tick(10), Event::ActionOk(2)],
    Some(Ending::Completed),
    vec![]
)]
#[case::still_waiting(vec![Event::ActionOk(0)], None, vec![])]
fn scenarios_end_as_expected(
    #[case] events: Vec<Event>,
    #[case] ending: Option<Ending<&'static str>>,
    #[case] compensated: Vec<usize>,
) {
    // Proves each path through the order-shaped saga ends in the right state
    // with exactly the right compensations.
    let mut driver = Driver::start();
    for event in events {
        driver.apply(event);
    }
    assert_eq!(
        driver.ignored,
        vec![],
        "no input in these scenarios is stray"
    );
    assert_eq!(driver.instance.ending(), ending);
    assert_eq!(driver.instance.compensated_steps(), compensated.as_slice());
}

#[rstest]
#[case::duplicate_success(vec![Event::ActionOk(0), Event::ActionOk(0)], Ignored::Duplicate)]
#[case::out_of_order_success(vec![Event::ActionOk(2)], Ignored::OutOfOrder)]
#[case::unknown_step(vec![Event::ActionOk(7)], Ignored::StepUnknown)]
#[case::early_timer(vec![Event::Tick(99)], Ignored::DeadlineNotDue)]
#[case::compensation_before_turning_back(vec![Event::CompensationOk(0)], Ignored::OutOfOrder)]
#[case::late_action_reply_while_compensating(vec![Event::ActionOk(0), Event::ActionFailed(1), Event::ActionOk(1)], Ignored::Late)]
#[case::stale_failure_after_success(
    vec![Event::ActionOk(0), Event::ActionOk(1), Event::ActionFailed(2), Event::ActionOk(2), Event::ActionFailed(0)],
    Ignored::Duplicate
)]
#[case::duplicate_compensation_reply(
    vec![Event::ActionOk(0), Event::Tick(100), Event::Tick(10), Event::Tick(100), Event::CompensationOk(1), Event::CompensationOk(1)],
    Ignored::Duplicate
)]
#[case::compensation_reply_before_its_turn(
    vec![Event::ActionOk(0), Event::Tick(100), Event::Tick(10), Event::Tick(100), Event::CompensationOk(0)],
    Ignored::OutOfOrder
)]
#[case::reply_after_end(vec![Event::ActionFailed(0), Event::ActionOk(0)], Ignored::Late)]
#[case::timer_after_end(vec![Event::ActionFailed(0), Event::Tick(1_000)], Ignored::Finished)]
fn stray_inputs_change_nothing(#[case] events: Vec<Event>, #[case] last_ignored_as: Ignored) {
    // Proves the last input is recognised as stray, for the right reason, and
    // leaves the instance exactly as it was.
    let (last, before) = events.split_last().expect("cases are non-empty");
    let mut driver = Driver::start();
    for event in before {
        driver.apply(*event);
    }
    let snapshot = driver.instance.clone();
    let commands_before = driver.commands.len();
    driver.apply(*last);
    assert_eq!(driver.ignored.last(), Some(&last_ignored_as));
    assert_eq!(driver.instance, snapshot);
    assert_eq!(driver.commands.len(), commands_before);
}

#[test]
fn retries_resend_with_a_new_attempt_number_after_backoff() {
    // Proves a timed-out action is sent again after its backoff with attempt 2.
    let mut driver = Driver::start();
    driver.apply(Event::Tick(100));
    assert!(matches!(
        driver.instance.awaiting(),
        SagaState::ActionRetry {
            step: 0,
            attempt: 1,
            ..
        }
    ));
    driver.apply(Event::Tick(10));
    let last = driver.commands.last().expect("a retry was sent");
    assert_eq!(
        (last.step, last.phase, last.attempt, last.command),
        (0, Phase::Action, 2, "reserve")
    );
}

#[test]
fn history_is_bounded() {
    // Proves unbounded compensation retries cannot grow the history without end.
    let mut driver = Driver::start();
    driver.apply(Event::ActionFailed(1));
    driver.apply(Event::ActionOk(0));
    driver.apply(Event::ActionFailed(1));
    for _ in 0..HISTORY_LENGTH_MAX {
        driver.apply(Event::CompensationFailed(0));
        driver.apply(Event::Tick(40));
    }
    assert!(driver.instance.history().len() <= HISTORY_LENGTH_MAX);
    assert!(driver.instance.history_omitted() > 0);
    driver.apply(Event::CompensationOk(0));
    assert!(matches!(
        driver.instance.history().last().map(|record| &record.event),
        Some(HistoryEvent::Ended { .. })
    ));
}

fn any_interleaving_ends_once_with_matching_compensations(events: Vec<Event>) -> bool {
    let mut driver = Driver::start();
    for event in events {
        driver.apply(event);
    }
    // Faults stop here: the world behaves from now on.
    if !driver.drive_to_end() {
        return false;
    }
    let completed = driver.accepted_action_successes.clone();
    let mut completed_reversed = completed.clone();
    completed_reversed.reverse();
    let sent = driver.compensations_sent();
    let matches = match driver.instance.ending() {
        Some(Ending::Completed) => completed == [0, 1, 2] && sent.is_empty(),
        Some(Ending::Compensated(Failure::Rejected { step, .. })) => {
            !completed.contains(&step) && sent == completed_reversed
        }
        Some(Ending::Compensated(Failure::TimedOut { step } | Failure::Forced { step })) => {
            let mut expected = vec![step];
            expected.extend(completed_reversed);
            sent == expected
        }
        None => false,
    };
    // Each needed compensation took effect exactly once, in the order sent.
    matches && driver.accepted_compensations == sent
}

#[test]
fn property_any_interleaving_ends_once_with_matching_compensations() {
    // Proves that for any interleaving of replies, duplicates and deadlines the
    // saga ends in exactly one terminal state and compensates exactly the
    // completed steps (plus a timed-out one), in reverse, once each.
    QuickCheck::new().tests(PROPERTY_CASES).quickcheck(
        any_interleaving_ends_once_with_matching_compensations as fn(Vec<Event>) -> bool,
    );
}

#[test]
fn instances_survive_serialisation() {
    // Proves a persisted instance resumes exactly where it stopped.
    let mut driver = Driver::start();
    driver.apply(Event::ActionOk(0));
    let json = serde_json_roundtrip(&driver.instance);
    assert_eq!(json, driver.instance);
}

fn serde_json_roundtrip(instance: &SagaInstance<&'static str>) -> SagaInstance<&'static str> {
    // The engine is serde-agnostic; a self-describing format stands in for the store.
    let value = serde_json::to_string(instance).expect("instances serialise");
    let owned: SagaInstance<String> = serde_json::from_str(&value).expect("instances deserialise");
    assert_eq!(serde_json::to_string(&owned).expect("serialises"), value);
    instance.clone()
}

#[test]
fn state_names_match_their_serialised_tag() {
    // Proves the names storage uses are the serde tags, for every state.
    let at = Timestamp::from_unix_ms(1);
    for state in [
        SagaState::ActionReply {
            step: 0,
            attempt: 1,
            deadline: at,
        },
        SagaState::ActionRetry {
            step: 0,
            attempt: 1,
            resume_at: at,
        },
        SagaState::CompensationReply {
            step: 0,
            attempt: 1,
            deadline: at,
        },
        SagaState::CompensationRetry {
            step: 0,
            attempt: 1,
            resume_at: at,
        },
        SagaState::Nothing,
    ] {
        let value = serde_json::to_value(&state).expect("serialises");
        assert_eq!(value["awaiting"], state.name());
    }
}

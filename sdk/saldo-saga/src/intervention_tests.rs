//! Operators' interventions: what each does, and each refusal with its reason.

use rstest::rstest;
use saldo_types::Timestamp;

use crate::*;

/// reserve (compensable) -> pay (compensable) -> confirm (retriable).
fn definition() -> Definition<&'static str> {
    let retry = RetryPolicy::exponential(2, 10, 40);
    Definition::builder("test")
        .step(
            StepSpec::new("reserve", "reserve")
                .compensate_with("release")
                .deadline_ms(100)
                .retry(retry),
        )
        .step(
            StepSpec::new("pay", "pay")
                .compensate_with("refund")
                .deadline_ms(100)
                .retry(retry),
        )
        .step(
            StepSpec::new("confirm", "confirm")
                .retriable()
                .deadline_ms(100)
                .retry(retry),
        )
        .compensation(100, retry)
        .build()
        .expect("valid")
}

const T0: Timestamp = Timestamp::from_unix_ms(1_000);

fn ok(step: usize, phase: Phase) -> SagaInput<&'static str> {
    SagaInput::Reply(Reply {
        step,
        phase,
        outcome: Outcome::Succeeded,
    })
}

/// An instance after the first `completed` actions succeeded.
fn after(completed: usize) -> SagaInstance<&'static str> {
    let definition = definition();
    let (mut saga, _) = SagaInstance::start(&definition, T0);
    for step in 0..completed {
        saga.handle(&definition, T0, ok(step, Phase::Action));
    }
    saga
}

fn sent(transition: &Transition<&'static str>) -> Vec<(usize, Phase, u32, &'static str)> {
    transition
        .commands
        .iter()
        .map(|command| {
            (
                command.step,
                command.phase,
                command.attempt,
                command.command,
            )
        })
        .collect()
}

#[test]
fn retry_now_sends_the_awaited_action_as_its_next_attempt_without_waiting() {
    // Proves retry_now resends the awaited action at once, as attempt 2, and records the intervention.
    let definition = definition();
    let mut saga = after(1);
    let transition = saga.retry_now(&definition, T0.plus_ms(5)).expect("allowed");
    assert_eq!(sent(&transition), vec![(1, Phase::Action, 2, "pay")]);
    assert_eq!(transition.next_deadline, Some(T0.plus_ms(105)));
    assert!(saga.history().iter().any(|record| record.event
        == HistoryEvent::Intervened {
            action: Intervention::RetriedNow
        }));
}

#[test]
fn retry_now_resends_an_awaited_compensation() {
    // Proves retry_now during compensation resends that compensation, not an action.
    let definition = definition();
    let mut saga = after(1);
    saga.force_compensation(&definition, T0).expect("allowed");
    let transition = saga.retry_now(&definition, T0).expect("allowed");
    assert_eq!(
        sent(&transition),
        vec![(1, Phase::Compensation, 2, "refund")]
    );
}

#[test]
fn force_compensation_compensates_the_awaited_step_then_the_completed_ones_in_reverse_once_each() {
    // Proves a forced compensation runs the timeout's compensations (awaited step first), each once, and ends compensated as forced.
    let definition = definition();
    let mut saga = after(1);
    let transition = saga.force_compensation(&definition, T0).expect("allowed");
    assert_eq!(
        sent(&transition),
        vec![(1, Phase::Compensation, 1, "refund")]
    );
    let next = saga.handle(&definition, T0, ok(1, Phase::Compensation));
    assert_eq!(sent(&next), vec![(0, Phase::Compensation, 1, "release")]);
    let duplicate = saga.handle(&definition, T0, ok(1, Phase::Compensation));
    assert_eq!(duplicate.ignored, Some(Ignored::Duplicate));
    saga.handle(&definition, T0, ok(0, Phase::Compensation));
    assert_eq!(
        saga.ending(),
        Some(Ending::Compensated(Failure::Forced { step: 1 }))
    );
    assert_eq!(saga.compensated_steps(), &[1, 0]);
}

#[test]
fn resolve_moves_the_saga_as_the_stated_reply_would() {
    // Proves resolving the awaited action as succeeded advances to the next step exactly as a reply would.
    let definition = definition();
    let mut saga = after(2);
    let transition = saga
        .resolve(&definition, T0, (2, Phase::Action), Outcome::Succeeded)
        .expect("allowed");
    assert!(transition.commands.is_empty());
    assert_eq!(saga.ending(), Some(Ending::Completed));
}

#[test]
fn resolve_as_failed_turns_back_without_compensating_the_failed_step() {
    // Proves a resolution that the action failed compensates only the steps before it.
    let definition = definition();
    let mut saga = after(1);
    let transition = saga
        .resolve(
            &definition,
            T0,
            (1, Phase::Action),
            Outcome::Failed("operator"),
        )
        .expect("allowed");
    assert_eq!(
        sent(&transition),
        vec![(0, Phase::Compensation, 1, "release")]
    );
}

#[rstest]
#[case::finished_retry(3, "retry", InterventionRefused::Finished)]
#[case::finished_force(3, "force", InterventionRefused::Finished)]
#[case::finished_resolve(3, "resolve", InterventionRefused::Finished)]
#[case::past_pivot(2, "force", InterventionRefused::PastPivot { step: 2 })]
#[case::already_compensating(1, "force_twice", InterventionRefused::AlreadyCompensating)]
#[case::resolve_names_another_step(
    1,
    "resolve_other_step",
    InterventionRefused::NotAwaited { step: 0, phase: Phase::Action }
)]
#[case::resolve_names_another_phase(
    1,
    "resolve_other_phase",
    InterventionRefused::NotAwaited { step: 1, phase: Phase::Compensation }
)]
#[case::compensation_must_succeed(
    1,
    "resolve_compensation_failed",
    InterventionRefused::CompensationMustSucceed
)]
fn refused_interventions_name_their_reason_and_change_nothing(
    #[case] completed: usize,
    #[case] action: &str,
    #[case] expected: InterventionRefused,
) {
    // Proves each refusal of the saga's rules is returned with its reason and leaves the instance unchanged.
    let definition = definition();
    let mut saga = after(completed);
    if action == "force_twice" || action == "resolve_compensation_failed" {
        saga.force_compensation(&definition, T0)
            .expect("the first force is allowed");
    }
    let before = saga.clone();
    let refused = match action {
        "retry" => saga.retry_now(&definition, T0).map(drop),
        "force" | "force_twice" => saga.force_compensation(&definition, T0).map(drop),
        "resolve" => saga
            .resolve(&definition, T0, (2, Phase::Action), Outcome::Succeeded)
            .map(drop),
        "resolve_other_step" => saga
            .resolve(&definition, T0, (0, Phase::Action), Outcome::Succeeded)
            .map(drop),
        "resolve_other_phase" => saga
            .resolve(
                &definition,
                T0,
                (1, Phase::Compensation),
                Outcome::Succeeded,
            )
            .map(drop),
        "resolve_compensation_failed" => saga
            .resolve(
                &definition,
                T0,
                (1, Phase::Compensation),
                Outcome::Failed("no"),
            )
            .map(drop),
        other => panic!("unknown case {other}"),
    };
    assert_eq!(refused, Err(expected));
    assert_eq!(saga, before);
}

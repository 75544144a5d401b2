//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): what a definition and an instance report to the host that
//! persists and schedules them. See `docs/testing.md`.

use saldo_types::Timestamp;

use crate::*;

fn at(unix_ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(unix_ms)
}

/// reserve (compensable, 2 attempts, 100 ms) -> pay (compensable, 100 ms);
/// compensations wait 250 ms.
fn definition() -> Definition<&'static str> {
    reserve_then_pay(
        "checkout",
        2,
        250,
        RetryPolicy::exponential(RETRY_ATTEMPTS_LIMIT, 10, 40),
    )
}

/// reserve -> pay, both compensable with 100 ms deadlines and `attempts`
/// attempts each; compensations wait `compensation_ms` and retry by
/// `compensation_retry`.
fn reserve_then_pay(
    name: &str,
    attempts: u32,
    compensation_ms: u64,
    compensation_retry: RetryPolicy,
) -> Definition<&'static str> {
    Definition::builder(name)
        .step(
            StepSpec::new("reserve", "reserve")
                .compensate_with("release")
                .deadline_ms(100)
                .retry(RetryPolicy::exponential(attempts, 10, 40)),
        )
        .step(
            StepSpec::new("pay", "pay")
                .compensate_with("refund")
                .deadline_ms(100)
                .retry(RetryPolicy::exponential(attempts, 10, 40)),
        )
        .compensation(compensation_ms, compensation_retry)
        .build()
        .expect("valid")
}

fn reply(step: usize, phase: Phase, outcome: Outcome<&'static str>) -> SagaInput<&'static str> {
    SagaInput::Reply(Reply {
        step,
        phase,
        outcome,
    })
}

#[test]
fn a_definition_reports_its_name_and_compensation_deadline() {
    // Proves the values a host logs and schedules compensations by are the
    // ones the definition was built with, and the documented default.
    let definition = definition();
    assert_eq!(definition.name(), "checkout");
    assert_eq!(definition.compensation_deadline_ms(), 250);
    let default = Definition::builder("plain")
        .step(
            StepSpec::new("only", "only")
                .compensate_with("undo")
                .deadline_ms(100),
        )
        .build()
        .expect("valid");
    assert_eq!(default.compensation_deadline_ms(), 30_000);
}

#[test]
fn the_deadline_is_the_timer_the_host_must_set_and_none_once_ended() {
    // Proves `deadline()` names the reply deadline, then the retry time,
    // then nothing once the saga has ended, always agreeing with the
    // transition's `next_deadline`.
    let definition = definition();
    let (mut instance, started) = SagaInstance::<&'static str>::start(&definition, at(1_000));
    assert_eq!(instance.deadline(), Some(at(1_100)));
    assert_eq!(started.next_deadline, instance.deadline());
    assert_eq!(instance.history_omitted(), 0);

    let timed_out = instance.handle(&definition, at(1_100), SagaInput::DeadlineReached);
    assert!(matches!(instance.awaiting(), SagaState::ActionRetry { .. }));
    assert_eq!(
        instance.deadline(),
        Some(at(1_110)),
        "resume after 10 ms of backoff"
    );
    assert_eq!(timed_out.next_deadline, instance.deadline());

    instance.handle(&definition, at(1_110), SagaInput::DeadlineReached);
    instance.handle(
        &definition,
        at(1_120),
        reply(0, Phase::Action, Outcome::Succeeded),
    );
    assert_eq!(instance.completed_steps(), &[0]);
    instance.handle(
        &definition,
        at(1_130),
        reply(1, Phase::Action, Outcome::Succeeded),
    );
    assert_eq!(instance.completed_steps(), &[0, 1]);
    assert_eq!(instance.ending(), Some(Ending::Completed));
    assert_eq!(instance.deadline(), None);
    assert_eq!(instance.failure(), None);
}

#[test]
fn a_rejection_is_reported_as_the_failure_while_turning_back() {
    // Proves `failure()` names the rejected step and reason as soon as the
    // saga turns back, and the completed steps are those to compensate.
    let definition = definition();
    let (mut instance, _) = SagaInstance::<&'static str>::start(&definition, at(0));
    instance.handle(
        &definition,
        at(10),
        reply(0, Phase::Action, Outcome::Succeeded),
    );
    let turned = instance.handle(
        &definition,
        at(20),
        reply(1, Phase::Action, Outcome::Failed("declined")),
    );
    let failure = Failure::Rejected {
        step: 1,
        reason: "declined",
    };
    assert_eq!(instance.failure(), Some(&failure));
    assert_eq!(instance.completed_steps(), &[0]);
    assert_eq!(
        instance.deadline(),
        Some(at(270)),
        "compensations wait 250 ms"
    );
    assert_eq!(turned.next_deadline, Some(at(270)));
    instance.handle(
        &definition,
        at(30),
        reply(0, Phase::Compensation, Outcome::Succeeded),
    );
    assert_eq!(instance.ending(), Some(Ending::Compensated(failure)));
}

#[test]
fn a_compensation_without_backoff_is_resent_at_its_timeout() {
    // Proves a compensation whose retry policy has no delay is sent again
    // in the same transition that sees it time out, not parked for 0 ms.
    let definition = reserve_then_pay(
        "eager",
        1,
        100,
        RetryPolicy::exponential(RETRY_ATTEMPTS_LIMIT, 0, 0),
    );
    let (mut instance, _) = SagaInstance::<&'static str>::start(&definition, at(0));
    instance.handle(
        &definition,
        at(10),
        reply(0, Phase::Action, Outcome::Succeeded),
    );
    instance.handle(
        &definition,
        at(20),
        reply(1, Phase::Action, Outcome::Failed("declined")),
    );
    assert!(matches!(
        instance.awaiting(),
        SagaState::CompensationReply {
            step: 0,
            attempt: 1,
            ..
        }
    ));
    let resent = instance.handle(&definition, at(120), SagaInput::DeadlineReached);
    assert_eq!(
        resent.commands,
        vec![SagaCommand {
            step: 0,
            phase: Phase::Compensation,
            attempt: 2,
            command: "release",
        }]
    );
    assert_eq!(instance.deadline(), Some(at(220)));
}

#[test]
fn the_history_records_every_event_of_a_short_saga() {
    // Proves history keeps each send, outcome and the ending, in order,
    // while it is below its bound.
    let definition = definition();
    let (mut instance, _) = SagaInstance::<&'static str>::start(&definition, at(0));
    instance.handle(
        &definition,
        at(10),
        reply(0, Phase::Action, Outcome::Succeeded),
    );
    instance.handle(
        &definition,
        at(20),
        reply(1, Phase::Action, Outcome::Succeeded),
    );
    let events: Vec<HistoryEvent<&'static str>> = instance
        .history()
        .iter()
        .map(|record| record.event.clone())
        .collect();
    assert_eq!(
        events,
        vec![
            HistoryEvent::Sent {
                step: 0,
                phase: Phase::Action,
                attempt: 1
            },
            HistoryEvent::Succeeded {
                step: 0,
                phase: Phase::Action
            },
            HistoryEvent::Sent {
                step: 1,
                phase: Phase::Action,
                attempt: 1
            },
            HistoryEvent::Succeeded {
                step: 1,
                phase: Phase::Action
            },
            HistoryEvent::Ended {
                ending: Ending::Completed
            },
        ]
    );
    assert_eq!(instance.history_omitted(), 0);
}

#[test]
#[should_panic(expected = "steps complete in definition order")]
fn a_persisted_instance_with_steps_out_of_order_stops_at_its_next_transition() {
    // Proves the invariants are checked after every transition: an instance
    // read back from storage with a step completed out of order is not
    // carried on.
    let definition = definition();
    let (instance, _) = SagaInstance::<&'static str>::start(&definition, at(0));
    let mut stored = serde_json::to_value(&instance).expect("serialises");
    stored["completed_steps"] = serde_json::json!([1]);
    let text = stored.to_string();
    let mut tampered: SagaInstance<String> = serde_json::from_str(&text).expect("parses");
    tampered.handle(&definition, at(10), SagaInput::DeadlineReached);
}

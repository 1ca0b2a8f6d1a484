"""Pure functions of the worker: what a handler's outcome becomes, and when retries run."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest

from commandbus import (
    BusinessRuleError,
    Command,
    Config,
    PermanentCommandError,
    TransientCommandError,
)
from commandbus.engine.worker.outcomes import Outcome, OutcomeBuilder, TsqReason
from commandbus.engine.worker.retry_policy import ErrorKind, RetryPolicy, classify

CONFIG = Config(
    backoff_base=timedelta(seconds=1),
    backoff_multiplier=3.0,
    backoff_max=timedelta(seconds=5),
)


def command(max_attempts: int = 3, reply_to: str | None = "replies") -> Command:
    cid = uuid4()
    return Command(
        domain="payments",
        command_id=cid,
        command_type="Charge",
        data={},
        correlation_id=cid,
        max_attempts=max_attempts,
        reply_to=reply_to,
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (BusinessRuleError("no"), ErrorKind.BUSINESS),
        (PermanentCommandError("bad"), ErrorKind.PERMANENT),
        (TransientCommandError("later"), ErrorKind.TRANSIENT),
        (ValueError("any other exception"), ErrorKind.TRANSIENT),
        (ConnectionError("lost"), ErrorKind.TRANSIENT),
    ],
)
def test_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(CONFIG)
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 3, 5, 5]


def test_jitter_stays_within_its_bound() -> None:
    policy = RetryPolicy(
        Config(backoff_base=timedelta(seconds=1), backoff_jitter=timedelta(seconds=2))
    )
    delays = {policy.delay(1).total_seconds() for _ in range(50)}
    assert all(1 <= d <= 3 for d in delays) and len(delays) > 1


def decide(exc: BaseException, *, attempt: int, max_attempts: int = 3) -> tuple[Outcome, dict]:
    d = OutcomeBuilder(RetryPolicy(CONFIG)).failure(
        command(max_attempts), exc, attempt=attempt, version=1, msg_id=7, prefix=[]
    )
    return d.outcome, dict(d.transition.events[-1].data)


def test_a_transient_failure_with_attempts_left_is_retried_with_the_policy_delay() -> None:
    outcome, data = decide(TransientCommandError("x"), attempt=2)
    assert outcome is Outcome.RETRIED and data["delay_seconds"] == 3


def test_a_transient_failure_on_the_last_attempt_goes_to_the_tsq() -> None:
    outcome, data = decide(TransientCommandError("x"), attempt=3)
    assert outcome is Outcome.TROUBLESHOOTING
    assert data["reason"] == TsqReason.ATTEMPTS_EXHAUSTED == "attempts_exhausted"


def test_a_business_failure_is_final_and_replies_failed() -> None:
    d = OutcomeBuilder(RetryPolicy(CONFIG)).failure(
        command(), BusinessRuleError("no"), attempt=1, version=1, msg_id=7, prefix=[]
    )
    assert d.outcome is Outcome.FAILED
    assert d.transition.reply is not None and d.transition.reply.message["outcome"] == "FAILED"


def test_a_permanent_failure_goes_to_the_tsq_at_once() -> None:
    outcome, data = decide(PermanentCommandError("bad"), attempt=1)
    assert outcome is Outcome.TROUBLESHOOTING and data["reason"] == "permanent"


def test_deliveries_past_max_attempts_record_the_lost_ones_and_go_to_the_tsq() -> None:
    cmd = command(max_attempts=2)
    d = OutcomeBuilder(RetryPolicy(CONFIG)).deliveries_exhausted(
        cmd, deliveries=5, version=1, msg_id=7, recorded=0
    )
    types = [e.event_type for e in d.transition.events]
    # never more lost attempts than max_attempts, whatever the delivery count
    assert types == [
        "CommandAttemptLost",
        "CommandAttemptLost",
        "CommandMovedToTroubleshootingQueue",
    ]
    assert d.transition.events[-1].data["attempt"] == 2
    assert d.transition.events[-1].data["deliveries"] == 5

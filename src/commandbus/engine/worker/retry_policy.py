"""Retry decisions: which errors are transient, and when the next attempt runs.

Delays come from tenacity's wait strategies built from the config; the worker makes
them durable by moving the message's visibility time, never by sleeping.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

import tenacity
from tenacity.wait import wait_base

from commandbus.config import Config
from commandbus.errors import (
    BusinessRuleError,
    CommandBusError,
    PermanentCommandError,
)


class RetryPolicy:
    """Backoff for attempt ``n`` (1-based): base * multiplier**(n-1), capped, plus jitter."""

    def __init__(self, config: Config) -> None:
        wait: wait_base = tenacity.wait_exponential(
            multiplier=config.backoff_base.total_seconds(),
            exp_base=config.backoff_multiplier,
            max=config.backoff_max.total_seconds(),
        )
        jitter = config.backoff_jitter.total_seconds()
        if jitter > 0:
            wait = wait + tenacity.wait_random(0, jitter)
        self._wait = wait

    def delay(self, attempt: int) -> timedelta:
        # tenacity's wait strategies read the attempt number from a call state
        state = tenacity.RetryCallState(_RETRYING, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return timedelta(seconds=self._wait(state))


# the retrying object a call state belongs to (its settings are never used here)
_RETRYING = tenacity.Retrying()


class ErrorKind(StrEnum):
    """What an exception raised by a handler means for its command."""

    BUSINESS = "business"  # final at once: CommandFailed
    PERMANENT = "permanent"  # the TSQ at once
    TRANSIENT = "transient"  # retried while attempts last, then the TSQ
    UNKNOWN_COMMAND_TYPE = "unknown_command_type"  # no handler: the TSQ at once


def classify(exc: BaseException) -> ErrorKind:
    """``business``, ``permanent`` or ``transient`` for an error raised by a handler.

    Unknown exceptions count as transient: they are retried, then land in the
    troubleshooting queue when attempts run out.
    """
    if isinstance(exc, BusinessRuleError):
        return ErrorKind.BUSINESS
    if isinstance(exc, PermanentCommandError):
        return ErrorKind.PERMANENT
    if isinstance(exc, CommandBusError) and not exc.retryable:
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT

"""Retry decisions: which errors are transient, and when the next attempt runs.

Delays come from tenacity's wait strategies built from the config; the worker makes
them durable by moving the message's visibility time, never by sleeping.
"""

from __future__ import annotations

from datetime import timedelta

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
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return timedelta(seconds=self._wait(state))


def classify(exc: BaseException) -> str:
    """``business``, ``permanent`` or ``transient`` for an error raised by a handler.

    Unknown exceptions count as transient: they are retried, then land in the
    troubleshooting queue when attempts run out.
    """
    if isinstance(exc, BusinessRuleError):
        return "business"
    if isinstance(exc, PermanentCommandError):
        return "permanent"
    if isinstance(exc, CommandBusError) and not exc.retryable:
        return "permanent"
    return "transient"

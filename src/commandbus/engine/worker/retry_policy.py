"""Retry decisions: when the next attempt runs (which errors are retried: failures.py).

Delays come from tenacity's wait strategies built from the config; the worker makes
them durable by moving the message's visibility time, never by sleeping.
"""

from __future__ import annotations

from datetime import timedelta

import tenacity
from tenacity.wait import wait_base

from commandbus.config import Config
from commandbus.engine.worker.failures import ErrorKind, classify

__all__ = ["ErrorKind", "RetryPolicy", "classify"]  # the kinds live in failures.py


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

"""Where a command's latency goes: wall-clock stamps of each step, per command.

The latency scenario's worker processes install these probes (``--timeline
PATH``); they stamp, with ``time.time()``, the moments a message passes through:

* library worker: the listener takes a wake-up NOTIFY (the consumer's wake-up
  event is set), a read statement starts and returns, the handler starts, the
  outcome statement starts and returns (committed: the flusher is in autocommit);
* raw consumer: a ``pgmq.read`` starts and returns, a ``pgmq.archive`` starts and
  returns.

The sender stamps when its send returned (its commit seen). Server timestamps
(the ``CommandSent`` event's ``recorded_at``, PGMQ's ``enqueued_at``) are on the
same clock: the benchmarks run on the database's host (``127.0.0.1``). Probes
wrap functions by module attribute, so the library runs its own code unchanged;
they cost a few microseconds per batch.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The steps of a command's latency, as (key, label, library only). "of which"
#: steps are the first part of the step above them; the others follow each other.
STEPS = (
    ("send", "send -> the sender sees its commit", False),
    ("to_read", "send -> the read statement starts", False),
    ("wakeup", "  of which: send -> the worker takes the NOTIFY", True),
    ("read", "the read statement (round trip)", False),
    ("to_record", "read returned -> the outcome statement starts", False),
    ("to_handler", "  of which: read returned -> the handler starts", True),
    ("record", "the outcome statement, with its commit", False),
)


class Timeline:
    """Stamps collected in one process, written as JSON at its end."""

    def __init__(self) -> None:
        self.wakeups: list[float] = []
        #: per command id (library) or message id (raw): step -> time
        self.stamps: dict[str, dict[str, float]] = {}

    def stamp(self, key: object, step: str, at: float | None = None) -> None:
        self.stamps.setdefault(str(key), {})[step] = time.time() if at is None else at

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({"wakeups": self.wakeups, "stamps": self.stamps}))


class _StampedEvent(asyncio.Event):
    """An :class:`asyncio.Event` that notes when it is set."""

    def __init__(self, times: list[float]) -> None:
        super().__init__()
        self._times = times

    def set(self) -> None:
        self._times.append(time.time())
        super().set()


def probe_library(timeline: Timeline, worker: Any) -> None:
    """Stamp a commandbus worker's wake-ups, reads and outcome statements."""
    from commandbus.engine.commands import recording, store

    # each consumer's wake-up event: its listener sets it for each NOTIFY
    for domain in worker._domains:
        consumer = domain.consumer
        consumer._wake = consumer._listener._wake = _StampedEvent(timeline.wakeups)
    read_batch = store.read_batch
    record_transitions = recording.record_transitions

    async def timed_read(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        msgs = await read_batch(*args, **kwargs)
        ended = time.time()
        for m in msgs:
            key = m.message.get("command_id") if isinstance(m.message, dict) else None
            if key is not None:
                timeline.stamp(key, "read_start", started)
                timeline.stamp(key, "read_end", ended)
        return msgs

    async def timed_record(conn: Any, transitions: Sequence[Any], **kwargs: Any) -> Any:
        started = time.time()
        result = await record_transitions(conn, transitions, **kwargs)
        ended = time.time()
        for t in transitions:
            timeline.stamp(t.command_id, "record_start", started)
            timeline.stamp(t.command_id, "record_end", ended)
        return result

    store.read_batch = timed_read
    recording.record_transitions = timed_record


def timed(
    timeline: Timeline,
    step: str,
    fn: Callable[..., Awaitable[Any]],
    keys: Callable[[tuple[Any, ...], Any], Iterable[object]],
) -> Callable[..., Awaitable[Any]]:
    """Wrap a raw consumer's call: stamp ``<step>_start`` and ``<step>_end`` for each
    message it handled, ``keys(args, result)``."""

    async def call(*args: Any) -> Any:
        started = time.time()
        result = await fn(*args)
        ended = time.time()
        for key in keys(args, result):
            timeline.stamp(key, f"{step}_start", started)
            timeline.stamp(key, f"{step}_end", ended)
        return result

    return call


# -- the parent's side: steps per command, and their medians ------------------------------


def library_steps(
    recorded: Mapping[str, float], sent: Mapping[str, float], data: dict[str, Any]
) -> dict[str, list[float]]:
    """Per step, its duration (ms) for every command read after a NOTIFY.

    ``recorded``: the send statement's start (``recorded_at``) per command id;
    ``sent``: when the sender saw its commit; ``data``: the worker's timeline.
    """
    wakeups = sorted(data["wakeups"])
    out: dict[str, list[float]] = {k: [] for k, _label, _lib in STEPS}
    for key, t0 in recorded.items():
        s = data["stamps"].get(key)
        if not s or key not in sent or not {"read_start", "handler", "record_end"} <= s.keys():
            continue
        # the wake-up that led to this read: the last one before it started
        i = bisect.bisect_right(wakeups, s["read_start"]) - 1
        if i < 0 or wakeups[i] < t0:
            continue  # read by a poll or a settle read, not woken for it
        for k, v in (
            ("send", sent[key] - t0),
            ("to_read", s["read_start"] - t0),
            ("wakeup", wakeups[i] - t0),
            ("read", s["read_end"] - s["read_start"]),
            ("to_record", s["record_start"] - s["read_end"]),
            ("to_handler", s["handler"] - s["read_end"]),
            ("record", s["record_end"] - s["record_start"]),
        ):
            out[k].append(v * 1000)
    return out


def raw_steps(
    enqueued: Mapping[str, float], sent: Mapping[str, float], data: dict[str, Any]
) -> dict[str, list[float]]:
    """As :func:`library_steps`, for the raw consumer (keys are message ids)."""
    out: dict[str, list[float]] = {k: [] for k, _label, lib in STEPS if not lib}
    for key, t0 in enqueued.items():
        s = data["stamps"].get(key)
        if not s or key not in sent or not {"read_start", "archive_end"} <= s.keys():
            continue
        for k, v in (
            ("send", sent[key] - t0),
            ("to_read", s["read_start"] - t0),
            ("read", s["read_end"] - s["read_start"]),
            ("to_record", s["archive_start"] - s["read_end"]),
            ("record", s["archive_end"] - s["archive_start"]),
        ):
            out[k].append(v * 1000)
    return out


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.5 * len(ordered)) - 1)]

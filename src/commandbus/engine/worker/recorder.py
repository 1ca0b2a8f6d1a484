"""Recording a worker's decisions in groups: ONE statement per group of outcomes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from commandbus.engine.commands import store as command_store
from commandbus.engine.db.connect import ResilientConnection
from commandbus.engine.worker.outcomes import Decision, Outcome, OutcomeBuilder
from commandbus.engine.worker.stats import WorkerStats
from commandbus.errors import PayloadError

log = logging.getLogger("commandbus.worker")


class Recorder:
    """Records decisions (events, projection, queue actions, replies) and counts them.

    One outcome the database refuses must not take its group, or the worker, down
    with it: the group is retried one by one and the refused one goes to the TSQ.
    """

    def __init__(self, stats: WorkerStats, outcomes: OutcomeBuilder) -> None:
        self._stats = stats
        self._outcomes = outcomes

    async def record(self, flusher: ResilientConnection, batch: Sequence[Decision]) -> None:
        """Record a group of decisions in ONE statement."""
        seen: set[str] = set()
        unique: list[Decision] = []
        clashing: list[Decision] = []
        for d in batch:
            sid = d.transition.stream_id
            (clashing if sid in seen else unique).append(d)
            seen.add(sid)
        transitions = [d.transition for d in unique]
        try:
            ok = await flusher.run(lambda c: command_store.record_transitions(c, transitions))
        except (psycopg.Error, PayloadError) as exc:
            # Not a lost connection (those are retried): one outcome the database
            # refuses must not take its group, or the worker, down with it.
            if len(unique) > 1:
                for d in unique:
                    await self.record(flusher, [d])
                ok = set()
                unique = []
            else:
                await self._record_unrecordable(flusher, unique[0], exc)
                return
        for d in unique:
            self.count(d, recorded=d.transition.stream_id in ok)
        for d in clashing:
            self.count(d, recorded=False)

    async def _record_unrecordable(
        self, flusher: ResilientConnection, d: Decision, exc: BaseException
    ) -> None:
        """Send a command whose outcome the database refused to the TSQ, saying why."""
        t = d.transition
        log.error("outcome of command %s could not be recorded: %s", t.command_id, exc)
        fallback = self._outcomes.unrecordable(t, exc)
        try:
            ok = await flusher.run(
                lambda c: command_store.record_transitions(c, [fallback.transition])
            )
            self.count(fallback, recorded=t.stream_id in ok)
        except psycopg.Error:
            log.exception("command %s: not even its failure could be recorded", t.command_id)

    def count(self, d: Decision, *, recorded: bool) -> None:
        if not recorded:
            self._stats.duplicate_deliveries += 1
            log.warning(
                "outcome for command %s not recorded: its stream moved on "
                "(another delivery of the same message recorded first)",
                d.transition.command_id,
            )
            return
        stats = self._stats
        if d.outcome is Outcome.COMPLETED:
            stats.completed += 1
        elif d.outcome is Outcome.FAILED:
            stats.failed += 1
        elif d.outcome is Outcome.RETRIED:
            stats.retried += 1
        else:
            stats.troubleshooting += 1

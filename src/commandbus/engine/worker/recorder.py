"""Recording a worker's decisions in groups: ONE statement per group of outcomes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import psycopg

from commandbus.engine.commands import recording
from commandbus.engine.commands.store import Transition, release_claimed
from commandbus.engine.db.connect import Conn, ResilientConnection
from commandbus.engine.db.script import Script, run_all_applied_rows
from commandbus.engine.worker.handoff import Claims
from commandbus.engine.worker.inline import InlineReplies, Taken
from commandbus.engine.worker.outcomes import Decision, Outcome, OutcomeBuilder
from commandbus.engine.worker.stats import WorkerStats
from commandbus.errors import (
    CommandBusError,
    ConcurrencyError,
    DatabaseUnavailableError,
    PayloadError,
)

log = logging.getLogger("commandbus.worker")


class Recorder:
    """Records decisions (events, projection, queue actions, replies) and counts them.

    One outcome the database refuses must not take its group, or the worker, down
    with it: the group is retried one by one and the refused one goes to the TSQ.
    """

    def __init__(
        self,
        stats: WorkerStats,
        outcomes: OutcomeBuilder,
        inline: InlineReplies | None,
        url: str,
    ) -> None:
        self._stats = stats
        self._outcomes = outcomes
        self._inline = inline
        self._url = url  # the database: claims go to consumers of the same one

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
            ok = await self._record(flusher, transitions)
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

    async def _record(
        self, flusher: ResilientConnection, transitions: list[Transition]
    ) -> set[str]:
        """Record transitions; replies for :attr:`_inline` are acted on in the same
        transaction where it can (else sent, as they would have been)."""
        inline = self._inline
        if inline is None or not any(
            t.reply is not None and t.reply.queue == inline.queue for t in transitions
        ):
            return await flusher.run(lambda c: recording.record_transitions(c, transitions))
        claims = Claims(self._url)
        try:
            try:
                done = await flusher.run(lambda c: _record_at_once(c, transitions, inline, claims))
                if done is None:  # a saga moved meanwhile, say: once more, step by step
                    done = await flusher.run(lambda c: _record_taking(c, transitions, inline))
                ok, taken = done
            except ConcurrencyError:
                # a saga moved since this worker last saw it (its kept state is
                # forgotten now): once more, with the sagas read afresh
                ok, taken = await flusher.run(lambda c: _record_taking(c, transitions, inline))
        except (psycopg.Error, CommandBusError) as exc:
            if isinstance(exc, DatabaseUnavailableError):
                raise
            # a concurrent writer moved a saga first, or something refused (a saga's
            # commands' payloads, say): the outcomes are recorded with their replies,
            # for the coordinator to act on
            log.log(
                logging.INFO if isinstance(exc, ConcurrencyError) else logging.WARNING,
                "replies to %s could not be acted on with their outcomes (%s: %s); "
                "they are sent instead",
                inline.queue,
                type(exc).__name__,
                exc,
            )
            return await flusher.run(lambda c: recording.record_transitions(c, transitions))
        taken.committed()
        self._stats.inline_replies += len(taken.taken)
        if claims.sent is not None:
            await self._hand_over(flusher, claims)
        return ok

    async def _hand_over(self, flusher: ResilientConnection, claims: Claims) -> None:
        """Hand the messages claimed as they were sent to their consumers; those a
        consumer does not take (it stopped, or filled up) are made visible at once."""
        assert claims.sent is not None
        for domain, msg_ids in claims.hand_over(*claims.sent).items():
            log.info(
                "%d messages claimed for domain %s go back to its queue (its consumer "
                "stopped, or has no room)",
                len(msg_ids),
                domain,
            )
            try:
                release = functools.partial(release_claimed, domain=domain, msg_ids=msg_ids)
                await flusher.run(release)
            except (psycopg.Error, CommandBusError) as exc:
                # they come back after their visibility timeout instead
                log.warning("claimed messages of %s not released: %s", domain, exc)

    async def _record_unrecordable(
        self, flusher: ResilientConnection, d: Decision, exc: BaseException
    ) -> None:
        """Send a command whose outcome the database refused to the TSQ, saying why."""
        t = d.transition
        log.error("outcome of command %s could not be recorded: %s", t.command_id, exc)
        fallback = self._outcomes.unrecordable(t, exc)
        try:
            ok = await flusher.run(lambda c: recording.record_transitions(c, [fallback.transition]))
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


async def _record_at_once(
    conn: Conn, transitions: list[Transition], inline: InlineReplies, claims: Claims
) -> tuple[set[str], Taken] | None:
    """What :func:`_record_taking` does, in ONE round trip: the outcomes, what
    ``inline`` does with their replies and the replies it does not take, sent as one
    script (one transaction, see :class:`Script`) whose statements each apply in full
    or undo it all. None when that did not happen: a saga or a command moved
    meanwhile, or ``inline`` cannot plan these replies; nothing is written then.
    The commands it sends to domains served in this process are claimed for them
    (``claims``, handed over by the caller once this returns)."""
    replies = [
        t.reply for t in transitions if t.reply is not None and t.reply.queue == inline.queue
    ]
    claims.reset()
    planned = await inline.plan(conn, replies, claims)
    if planned is None:
        claims.reset()
        return None
    statements, taken = planned
    script = Script()
    script.add(
        *recording.record_transitions_all_applied(transitions, without_replies_to=inline.queue)
    )
    first = len(script)
    for statement in statements:
        script.add(*statement)
    rest = [r for i, r in enumerate(replies) if i not in taken.taken]
    for statement in recording.send_replies_statements(rest):
        script.add(*statement)
    rows = await run_all_applied_rows(script, conn)
    if isinstance(rows, str):
        log.info("a group could not be recorded at once (%s); recorded step by step", rows)
        claims.reset()
        return None
    if claims.statement is not None:
        _applied, command_ids, msg_ids = rows[first + claims.statement][0]
        claims.sent = (command_ids, msg_ids)
    return {t.stream_id for t in transitions}, taken


async def _record_taking(
    conn: Conn, transitions: list[Transition], inline: InlineReplies
) -> tuple[set[str], Taken]:
    """One transaction: the outcomes, then what ``inline`` does with their replies,
    then the replies it did not take, as messages."""
    # statement by statement: which outcomes were recorded decides which replies are
    # acted on, and which sagas moved decides what goes to the coordinator instead
    async with conn.transaction():
        ok = await recording.record_transitions(conn, transitions, without_replies_to=inline.queue)
        replies = [
            t.reply
            for t in transitions
            if t.reply is not None and t.reply.queue == inline.queue and t.stream_id in ok
        ]
        taken = await inline.take(conn, replies)
        rest = [r for i, r in enumerate(replies) if i not in taken.taken]
        if rest:
            await recording.send_replies(conn, rest)
    return ok, taken

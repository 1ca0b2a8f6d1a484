"""Sagas under contention and crashes: two coordinators racing, a projection rebuilt
while sagas run, a coordinator process killed mid-run. No transition is lost or
done twice: every saga ends as its handlers decide, each command is sent once,
every stream is contiguous and the saga rows equal their replay."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any
from uuid import UUID

import pytest

from commandbus import CommandBus, SagaClient, SagaStart, SagaStatus
from saga_apps import COORDINATOR_APP, LINE, PARALLEL, assert_consistent, running
from support import FAST, wait_for

# each test runs with the coordinator moving sagas, then with the workers doing it
pytestmark = pytest.mark.usefixtures("saga_path")

TESTS = Path(__file__).parent

# What each kind of saga must end as, and the commands it must have sent (each once).
KINDS: dict[str, tuple[Any, dict[str, Any], SagaStatus, list[str]]] = {
    "fanout-ok": (PARALLEL, {}, SagaStatus.COMPLETED, ["Reserve", "Email", "Charge", "Ship"]),
    "fanout-undone": (
        PARALLEL,
        {"Charge": "business"},
        SagaStatus.COMPENSATED,
        ["Reserve", "Email", "Charge", "Sms", "Release"],
    ),
    "line-ok": (LINE, {}, SagaStatus.COMPLETED, ["Reserve", "Charge", "Ship"]),
    "line-undone": (
        LINE,
        {"Ship": "business"},
        SagaStatus.COMPENSATED,
        ["Reserve", "Charge", "Ship", "Refund", "Release"],
    ),
}


async def start_mix(sagas: SagaClient, n: int, extra: dict[str, str] | None = None) -> dict:
    """``n`` sagas, a quarter of each kind; returns saga id -> kind."""
    kinds = list(KINDS)
    out: dict[UUID, str] = {}
    for name in kinds:
        definition, behaviour, _status, _cmds = KINDS[name]
        mine = [i for i in range(n) if kinds[i % len(kinds)] == name]
        started = await sagas.start_sagas(
            definition,
            [
                SagaStart(
                    input={"order_id": f"{name}-{i}", "behaviour": {**(extra or {}), **behaviour}}
                )
                for i in mine
            ],
        )
        out.update({s.saga_id: name for s in started})
    return out


async def all_final(sagas: SagaClient, n: int) -> bool:
    counts = await sagas.status_counts()
    return sum(v for k, v in counts.items() if SagaStatus(k).is_final) == n


async def check_outcomes(h: Any, kinds: dict[UUID, str], *, ignored_ok: bool = False) -> None:
    """Each saga ended as its kind says, having sent its commands exactly once."""
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT saga_id, status FROM commandbus.saga WHERE saga_id = ANY(%s)", (list(kinds),)
        )
        statuses = dict(await cur.fetchall())
        cur = await c.execute(
            "SELECT saga_id, array_agg(command_type) FROM commandbus.command"
            " WHERE saga_id = ANY(%s) GROUP BY saga_id",
            (list(kinds),),
        )
        commands = dict(await cur.fetchall())
        cur = await c.execute(
            "SELECT substr(stream_id, 6)::uuid, event_type, data->>'step', count(*)"
            "  FROM commandbus.event WHERE stream_id LIKE 'saga:%%'"
            " GROUP BY 1, 2, 3"
        )
        events = await cur.fetchall()
        cur = await c.execute("SELECT count(*) FROM pgmq.q_commandbus_sagas")
        left = await cur.fetchone()
    assert left == (0,)  # every reply consumed
    for sid, kind in kinds.items():
        _d, _b, status, cmds = KINDS[kind]
        assert statuses[sid] == status.value, (sid, kind, statuses[sid])
        assert Counter(commands[sid]) == Counter(cmds), (sid, kind, commands[sid])
    doubled = [
        (sid, t, step, n)
        for sid, t, step, n in events
        if n > 1 and t not in ("SagaReplyIgnored", "SagaBlocked")
    ]
    assert doubled == []  # no step started, completed or compensated twice
    ignored = [(sid, n) for sid, t, _s, n in events if t == "SagaReplyIgnored"]
    assert ignored_ok or ignored == []  # no reply was seen twice
    ends = Counter(sid for sid, t, _s, _n in events if t in ("SagaCompleted", "SagaCompensated"))
    assert set(ends.values()) == {1} and len(ends) == len(kinds)


async def test_two_coordinators_race_over_200_sagas(dsn: str, saga_path: bool) -> None:
    """Inline (``saga_path``): the workers race the coordinators too (the members of
    a parallel group finish in different workers at once; the loser's reply goes
    to a coordinator)."""
    async with running(dsn, LINE, PARALLEL, coordinators=2, batch_size=10) as h:
        kinds = await start_mix(h.sagas, 200)
        await wait_for(lambda: all_final(h.sagas, 200), timeout=90, interval=0.1)
        await check_outcomes(h, kinds)
        await assert_consistent(h)
        stats = [c.stats for c in h.coordinators]
    # together they decided every reply exactly once
    replies = sum(len(KINDS[k][3]) for k in kinds.values())
    taken = sum(w.stats.inline_replies for w in h.workers)
    assert sum(s.messages for s in stats) + taken == replies
    if saga_path:
        assert taken > replies // 2, (taken, replies)
    else:
        assert taken == 0
        assert all(s.transitions > 0 for s in stats), stats  # both took part
        assert sum(s.completed + s.compensated for s in stats) == 200
    per_order = Counter((t, o) for _d, t, o in h.journal.calls)
    assert set(per_order.values()) == {1}  # each handler ran once per saga


async def test_rebuilding_the_live_rows_while_sagas_run_loses_nothing(dsn: str) -> None:
    async with running(dsn, LINE, PARALLEL, coordinators=2, batch_size=10) as h:
        kinds = await start_mix(h.sagas, 100)
        rebuilds = 0
        # five rebuilds at least: on a fast machine the first 100 can all end before
        while rebuilds < 5 or not await all_final(h.sagas, len(kinds)):
            # sagas start while the live rows are being replaced, too
            starting = asyncio.ensure_future(start_mix(h.sagas, 4)) if rebuilds < 5 else None
            assert await h.sagas.rebuild_projection(replace_live=True) >= 100
            rebuilds += 1
            if starting is not None:
                kinds.update(await starting)
            await asyncio.sleep(0.05)
        # one more while nothing moves, into a table of its own: the same rows
        assert await h.sagas.rebuild_projection(table="saga_rebuild") == 120
        async with h.bus.pool.connection() as c:
            cur = await c.execute(
                "SELECT count(*) FROM commandbus.saga l"
                " FULL JOIN commandbus.saga_rebuild r USING (saga_id)"
                " WHERE l.state IS DISTINCT FROM r.state OR l.status IS DISTINCT FROM r.status"
                "    OR l.version IS DISTINCT FROM r.version"
                "    OR l.updated_at IS DISTINCT FROM r.updated_at"
                "    OR l.ended_at IS DISTINCT FROM r.ended_at"
            )
            assert await cur.fetchone() == (0,)
        await check_outcomes(h, kinds)
        await assert_consistent(h)
    assert len(kinds) == 120
    assert rebuilds >= 5


# -- a coordinator process killed --------------------------------------------------------------


def start_process(dsn: str, log: IO[str]) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = dsn
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "saga_process"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


async def until_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "ready", line


async def finished(h: Any) -> int:
    counts = await h.sagas.status_counts()
    return sum(v for k, v in counts.items() if SagaStatus(k).is_final)


@pytest.mark.slow
async def test_a_coordinator_killed_mid_run_and_restarted_loses_nothing(dsn: str) -> None:
    n = 80
    with tempfile.TemporaryFile("w+") as log:
        async with CommandBus(dsn, config=FAST) as bus:
            h = SimpleNamespace(bus=bus, sagas=SagaClient(bus))
            kinds: dict[UUID, str] = {}
            # killed twice, at different points of the run
            for at in (10, 35):
                proc = start_process(dsn, log)
                try:
                    await until_ready(proc)
                    if not kinds:
                        kinds = await start_mix(
                            h.sagas, n, extra={"Reserve": "sleep", "Ship": "sleep"}
                        )
                    await wait_for(lambda at=at: _at_least(h, at), timeout=60, interval=0.05)
                finally:
                    proc.send_signal(signal.SIGKILL)  # no cleanup at all
                    proc.communicate()  # reap it and close its pipe
                assert await finished(h) < n, "the kill came too late to be mid-run"
            last = start_process(dsn, log)
            try:
                await until_ready(last)
                await wait_for(lambda: _at_least(h, n), timeout=90, interval=0.1)
            finally:
                last.send_signal(signal.SIGTERM)
                await asyncio.to_thread(last.communicate, timeout=30)
            log.seek(0)
            assert last.returncode == 0, log.read()[-3000:]
            await check_outcomes(h, kinds)
            await assert_consistent(h)  # type: ignore[arg-type]


async def _at_least(h: Any, n: int) -> bool:
    return await finished(h) >= n


async def test_a_slow_step_does_not_hold_another_saga_s_step_in_the_same_domain(
    dsn: str,
) -> None:
    async with running(dsn, LINE) as h:
        slow = await h.sagas.start_saga(LINE, {"order_id": "s1", "behaviour": {"Charge": "gate"}})
        await wait_for(lambda: "Charge" in h.journal.of("s1"))
        quick = await h.sagas.start_saga(LINE, {"order_id": "s2"})
        try:
            await wait_for(lambda: _is_final(h, quick.saga_id), timeout=5)
        finally:
            h.journal.gate("s1").set()
        assert slow.created


async def _is_final(h: Any, saga_id: UUID) -> bool:
    rec = await h.sagas.get_saga(saga_id)
    return rec is not None and rec.status.is_final


async def test_coordinator_sessions_cut_mid_run_lose_nothing(dsn: str) -> None:
    """The coordinators' connections are terminated again and again while sagas run:
    a transition whose commit was cut is decided again (at worst a reply it already
    recorded is recorded as ignored), never sent twice."""
    async with running(dsn, LINE, PARALLEL, coordinators=2, batch_size=10) as h:
        kinds = await start_mix(h.sagas, 120, extra={"Reserve": "sleep"})
        cuts = 0
        while not await all_final(h.sagas, 120):
            async with h.bus.pool.connection() as c:
                cur = await c.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s AND datname = current_database()",
                    (COORDINATOR_APP,),
                )
                row = await cur.fetchone()
            cuts += row[0] if row else 0
            await asyncio.sleep(0.3)
        await check_outcomes(h, kinds, ignored_ok=True)
        await assert_consistent(h)
    assert cuts >= 4

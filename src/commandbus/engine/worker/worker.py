"""The worker: serves one or several domains' commands with the handlers of a registry.

Each domain is served by its own :class:`~commandbus.engine.worker.domain.DomainConsumer`
(one shared :class:`~commandbus.engine.queues.consumer.QueueConsumer` each: a
reader, a listener, flushers and up to ``concurrency`` running handlers); the
handlers of every domain share one connection pool. This module is the
lifecycle: starting them together, one readiness, one stop, one set of stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

from commandbus.arguments import bool_arg, int_arg
from commandbus.config import MAX_VISIBILITY_TIMEOUT, MIN_VISIBILITY_TIMEOUT, Config
from commandbus.engine.db.connect import Conn, configure
from commandbus.engine.db.embedded import resolve_database_url
from commandbus.engine.observability import tracing
from commandbus.engine.queues.block import BlockRun
from commandbus.engine.queues.stopping import DEFAULT_GRACE, FINAL_SECONDS
from commandbus.engine.worker.domain import DomainConsumer, DomainSettings
from commandbus.engine.worker.inline import InlineSource
from commandbus.engine.worker.outcomes import OutcomeBuilder
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.retry_policy import RetryPolicy
from commandbus.engine.worker.stats import WorkerStats
from commandbus.errors import ValidationError

log = logging.getLogger("commandbus.worker")


def domains_arg(domain: object, domains: object) -> tuple[str, ...]:
    """The domains a worker serves: ``domain=`` or ``domains=``, each given once."""
    if domain is not None and domains is not None:
        raise ValidationError("give domain= or domains=, not both")
    if domains is None:
        if domain is None:
            raise ValidationError("give the domain to serve: domain= (or domains= for several)")
        return (domain,)  # type: ignore[return-value]  # checked with the registry
    if isinstance(domains, str | bytes) or not isinstance(domains, Sequence | set | frozenset):
        raise ValidationError(f"domains must be a list of domain names, got {domains!r:.60}")
    names = tuple(domains)
    if not names:
        raise ValidationError("domains must name at least one domain")
    seen: set[object] = set()
    for name in names:
        if name in seen:
            raise ValidationError(f"domain {name!r} is given twice")
        seen.add(name)
    return names


class Worker:
    """Processes commands with the handlers of a registry: one domain's
    (``domain="payments"``) or several at once, in one process
    (``domains=["payments", "shipping"]``).

    Each domain has its own reader, listener and flushers, and up to
    ``concurrency`` handlers running (per domain, so a busy domain never starves
    another); the handlers of all domains share one connection pool.

    ``sagas=`` (a :class:`~commandbus.sagas.SagaRegistry`): a step's outcome moves
    its saga in the same transaction (the saga's events, its next commands), so a
    step costs one hop instead of two through the coordinator. The coordinator
    still runs: timers, operators' requests, and any reply the worker leaves to it
    (a saga it does not know, one a concurrent writer moved first) are its.
    """

    def __init__(
        self,
        url: str | None,
        registry: HandlerRegistry,
        *,
        domain: str | None = None,
        domains: Sequence[str] | None = None,
        concurrency: int = 10,
        visibility_timeout: timedelta | None = None,
        batch_size: int = 100,
        config: Config | None = None,
        archive_completed: bool = False,
        reconnect_timeout: timedelta = timedelta(minutes=5),
        flushers: int = 2,
        sagas: InlineSource | None = None,
    ) -> None:
        concurrency = int_arg(concurrency, "concurrency", low=1, high=10_000)
        flushers = int_arg(flushers, "flushers", low=1, high=16)
        batch_size = int_arg(batch_size, "batch_size", low=1, high=10_000)
        archive_completed = bool_arg(archive_completed, "archive_completed")
        if not isinstance(reconnect_timeout, timedelta) or reconnect_timeout < timedelta(0):
            raise ValidationError(
                f"reconnect_timeout must be a timedelta >= 0, got {reconnect_timeout!r}"
            )
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ValidationError(f"url must be a connection string or None, got {url!r:.60}")
        if not isinstance(registry, HandlerRegistry):
            raise ValidationError(f"registry must be a HandlerRegistry, got {registry!r:.60}")
        if config is not None and not isinstance(config, Config):
            raise ValidationError(f"config must be a Config, got {config!r:.60}")
        if sagas is not None and not callable(getattr(sagas, "inline_replies", None)):
            raise ValidationError(f"sagas must be a SagaRegistry, got {sagas!r:.60}")
        names = domains_arg(domain, domains)
        for name in names:
            registry.validate_for(name)
        self.config = config or Config.from_env()
        #: the domains served, in the order given
        self.domains: tuple[str, ...] = names
        #: the domain served (the domains, comma-separated, when there are several)
        self.domain = ",".join(names)
        self.registry = registry
        #: handlers running at once, per domain
        self.concurrency = concurrency
        vt = self.config.visibility_timeout if visibility_timeout is None else visibility_timeout
        if (
            not isinstance(vt, timedelta)
            or not MIN_VISIBILITY_TIMEOUT <= vt <= MAX_VISIBILITY_TIMEOUT
        ):
            raise ValidationError(
                f"visibility_timeout must be a timedelta from 1 s to 7 days, got {vt!r}"
            )
        self._vt = vt.total_seconds()
        # None: DATABASE_URL, else the embedded server (joined now, for the process)
        self._url = url = resolve_database_url(url, self.config)
        # A worker holds up to two batches per domain (the next is read while the
        # last is handled and recorded): keep 2 * batch_size * handler time /
        # concurrency well under the visibility timeout.
        settings = DomainSettings(
            url=url,
            registry=registry,
            outcomes=OutcomeBuilder(RetryPolicy(self.config), archive_completed=archive_completed),
            vt_seconds=self._vt,
            concurrency=concurrency,
            batch_size=batch_size,
            flushers=flushers,
            poll_interval=self.config.poll_interval.total_seconds(),
            reconnect_timeout=reconnect_timeout.total_seconds(),
            pool=self._handler_pool,
            max_result_bytes=self.config.max_payload_bytes,
            stop_worker=self.request_stop,
            inline=None if sagas is None else sagas.inline_replies(self.config),
        )
        self._domains = [DomainConsumer(name, settings) for name in names]
        self._ready = asyncio.Event()  # several domains: set once all are ready
        if len(self._domains) > 1:
            for d in self._domains:  # and none reads before: ready comes before any work
                d.consumer.reads_after = self._ready
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._block = BlockRun(f"commandbus-worker-{self.domain}")

    # -- public lifecycle -------------------------------------------------------------------

    @property
    def ready(self) -> asyncio.Event:
        """Set once the worker is connected and listening for new messages (every domain)."""
        if len(self._domains) == 1:
            return self._domains[0].consumer.ready
        return self._ready

    @property
    def stats(self) -> WorkerStats:
        """What the worker did so far: the sums over its domains, each in ``by_domain``."""
        if len(self._domains) == 1:
            return self._domains[0].stats
        return WorkerStats.combine([d.stats for d in self._domains])

    def request_stop(self, timeout: timedelta | float | None = None) -> None:
        """Ask the worker to stop (safe from signal handlers, idempotent).

        Running handlers get ``timeout`` (default 30 s) from now to finish; a
        later call with a shorter ``timeout`` cuts the wait short, even while it
        is under way (``0``: cancel them now). Every domain stops.
        """
        for d in self._domains:
            d.consumer.request_stop(timeout)

    async def stop(self, timeout: timedelta | float = DEFAULT_GRACE) -> None:  # noqa: ASYNC109
        """Stop gracefully and wait for it: in-flight handlers get ``timeout`` to finish.

        Idempotent, and callable before :meth:`run` (which then returns at once).
        The whole stop takes at most ``timeout`` plus about a second (recording
        what finished and handing back the rest), whatever the database does.
        """
        self.request_stop(timeout)
        for d in self._domains:
            await d.consumer.stop(timeout)

    async def __aenter__(self) -> Worker:
        """``async with Worker(...) as w:`` runs the worker in a task until the block ends.

        The block starts once the worker is connected and listening; a start-up
        failure (say :class:`~commandbus.errors.SchemaNotReadyError`) is raised here.
        A handler's SystemExit or KeyboardInterrupt stops the worker gracefully,
        interrupts the block and is raised by the ``async with``.
        """
        await self._block.enter(self.run, self.ready, lambda: self.request_stop(0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._block.exit(self.request_stop)

    async def run(self) -> WorkerStats:
        """Run until :meth:`stop` (or a signal, via the CLI); returns the stats.

        Cancelling the task that runs it stops the worker at once (handlers are
        cancelled, what finished is recorded, the rest handed back to the queue),
        and then re-raises the cancellation. Every task it started has ended by
        the time it returns or raises. If one domain cannot go on (it cannot
        start, or a side task died), every domain stops and its error is raised.
        """
        if any(d.consumer.running for d in self._domains):
            raise RuntimeError("this worker is already running")
        started = time.monotonic()
        for d in self._domains:
            d.stats.started_at = started
            d.stats.stopped_at = None
        if all(d.consumer.stop_requested for d in self._domains):
            self._stopped()
            return self.stats
        tracing.configure_tracing_from_env(
            service_name=f"commandbus-worker-{'-'.join(self.domains)}"
        )
        # Every runner may hold a handler transaction; two more connections are
        # always there for ``extend_visibility`` and quarantines, so a handler
        # holding one never waits on another that cannot come.
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=0,
            max_size=self.concurrency * len(self._domains) + 2,
            kwargs={"autocommit": True},
            configure=configure,
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        try:
            await self._pool.open()
            if len(self._domains) == 1:
                only = self._domains[0]
                await only.consumer.run(opened=only.opened)
            else:
                await self._run_all()
        finally:
            await self._pool.close(timeout=FINAL_SECONDS)
            self._stopped()
        stats = self.stats
        log.info("%s", stats.summary())  # a failed start says why instead
        ended = next((d.consumer.exit for d in self._domains if d.consumer.exit), None)
        if ended is not None:
            raise ended  # a handler's SystemExit or KeyboardInterrupt, after a graceful stop
        return stats

    # -- internals --------------------------------------------------------------------------

    def _handler_pool(self) -> AsyncConnectionPool[Conn]:
        assert self._pool is not None, "the pool opens when the worker runs"
        return self._pool

    def _stopped(self) -> None:
        now = time.monotonic()
        for d in self._domains:
            d.closed()
            d.stats.released = d.consumer.released
            d.stats.stopped_at = now

    async def _run_all(self) -> None:
        """Run every domain's consumer; the first to fail stops the others."""
        self._ready.clear()
        tasks = [
            asyncio.create_task(
                d.consumer.run(opened=d.opened), name=f"commandbus-worker-{d.domain}"
            )
            for d in self._domains
        ]
        announcer = asyncio.create_task(self._all_ready(), name="commandbus-worker-ready")
        cancelled = False
        try:
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:
                cancelled = True
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if cancelled or failed:
                self.request_stop(0)
            pending = {t for t in tasks if not t.done()}
            while pending:  # each stop is bounded; a second cancellation only waits
                try:
                    _, pending = await asyncio.wait(pending)
                except asyncio.CancelledError:
                    cancelled = True
                    self.request_stop(0)
        finally:
            announcer.cancel()
            await asyncio.gather(announcer, return_exceptions=True)
        errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if cancelled:
            raise asyncio.CancelledError()
        if errors:
            raise errors[0]  # the first domain's error (each was logged where it happened)

    async def _all_ready(self) -> None:
        for d in self._domains:
            await d.consumer.ready.wait()
        self._ready.set()

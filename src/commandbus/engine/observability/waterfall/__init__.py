"""A flow as a waterfall, from the audit stream alone (no tracing backend needed).

A flow is everything with one correlation id: the commands sent (and those their
handlers sent), their attempts, sagas with their steps and compensations.
:func:`load_flow` reads its events in ONE query (given a correlation id or a saga
id); :func:`build_waterfall` turns them into rows (a tree: saga, step, command,
attempt) with start and end times; :func:`render_waterfall` draws them as text
bars on a common time axis, with ANSI colour when asked. An attempt's bar shows
its wait in the queue (from when the message became visible to when the worker
started handling it) and its run, from the ``timing`` the worker puts in each
outcome event's metadata (older events without it show the attempt as one
piece). :meth:`Waterfall.to_json` is the same data for a web view.

Imports nothing of the engine (it is its lowest layer): the connection is any
psycopg async connection.

Modules: ``flow`` (the query and the data), ``build`` (events to rows),
``render`` (rows to text).
"""

from commandbus.engine.observability.waterfall.build import build_waterfall
from commandbus.engine.observability.waterfall.flow import (
    DEFAULT_LIMIT,
    FLOW_EVENTS,
    Row,
    Waterfall,
    load_flow,
)
from commandbus.engine.observability.waterfall.render import render_waterfall

__all__ = [
    "DEFAULT_LIMIT",
    "FLOW_EVENTS",
    "Row",
    "Waterfall",
    "build_waterfall",
    "load_flow",
    "render_waterfall",
]

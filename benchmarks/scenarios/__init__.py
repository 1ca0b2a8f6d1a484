"""The benchmark scenarios. Each module registers its function(s) with
:func:`benchmarks.core.scenario`; :data:`MODULES` is the run order. To add a
scenario, write a module here and append its name."""

from __future__ import annotations

import importlib

MODULES = ("send", "batch", "drain", "latency", "memory", "sagas", "tracing", "dashboard")

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")

"""Benchmarks of commandbus against raw PGMQ (``python -m benchmarks.run all``).

Scenarios live in :mod:`benchmarks.scenarios`, one module each, registered with
:func:`benchmarks.core.scenario`; :mod:`benchmarks.run` is the command line.
"""

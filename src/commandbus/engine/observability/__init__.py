"""Tracing and logging: the only place that imports OpenTelemetry.

Imports nothing else of the engine.
"""

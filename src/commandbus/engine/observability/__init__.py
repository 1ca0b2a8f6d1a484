"""Observability: tracing (the only package that imports OpenTelemetry), logging, waterfalls.

Imports nothing else of the engine (the waterfall reads the audit stream on any connection).
"""

"""Asynchronous projectors over the event log (commit order, checkpoints): next.

Reads the engine's event store; no write path imports it. The command and batch
status projections are written with their events, in engine.commands.
"""

"""The append-only event store: streams, expected versions, reads.

Imports engine.db and the root vocabulary; never commands, worker or sagas.
"""

"""The worker: handlers, their context, outcomes, retry policy, grouped recording.

Imports commands, queues, eventstore, db and the root vocabulary; never sagas.
"""

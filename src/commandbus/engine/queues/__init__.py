"""PGMQ queues: tables, wake-ups, and the batched consumer workers and coordinators share.

Imports engine.db and the root vocabulary; never commands, worker or sagas.
"""

"""Commands: sending, the command store and its status projection, reads, replay, the TSQ.

Imports eventstore, queues, db, migrations and the root vocabulary; never worker or sagas.
"""

"""The engine, by concept: db, eventstore, queues, commands, worker, observability.

Lower packages never import higher ones (checked by import-linter; see pyproject.toml).
"""

"""Sagas: definitions, the coordinator (a queue consumer over reply queues), their store.

May import the engine's commands, queues, eventstore and db; the engine never imports it.
"""

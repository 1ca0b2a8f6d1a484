"""Connections: connect, borrow, reconnect with backoff, and the embedded server.

Imports only the vocabulary modules at the package root (errors, config...).
"""

"""New ids: time-ordered UUIDs (version 7, RFC 9562) for commands, batches and sagas.

A version 7 UUID starts with its creation time in milliseconds, so ids made one
after another sort in creation order and land at the right edge of the indexes
they key (the status rows' primary keys, the events' stream ids) instead of at
random leaves: inserts touch few pages and stay cached as the tables grow. The
rest is random, so ids stay unguessable and unique across processes.
"""

from __future__ import annotations

from uuid import UUID

from uuid_utils.compat import uuid7


def new_id() -> UUID:
    """A new time-ordered id (a standard :class:`uuid.UUID`, version 7)."""
    return uuid7()

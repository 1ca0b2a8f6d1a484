"""Schema migrations: versioned SQL files applied by ``commandbus migrate``."""

from commandbus.migrations.runner import (
    MIGRATION_LOCK_KEY,
    Migration,
    applied_migrations,
    available_migrations,
    ensure_schema_current,
    migrate,
    pending_migrations,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "applied_migrations",
    "available_migrations",
    "ensure_schema_current",
    "migrate",
    "pending_migrations",
]

"""SQL of the command listings (the bus's ``list_commands`` and ``find``): keyset
paging over the status projection's indexes. The rest of the commands' SQL is in
:mod:`commandbus.engine.commands.sql`."""

from __future__ import annotations

from typing import Final, LiteralString

from commandbus.engine.commands.sql import COMMAND_COLUMNS

# -- listing commands: keyset paging over (created_at, command_id, domain) ----------------
#
# Every listing is an index range scan that stops at the page's end. With a
# correlation id (command_correlation_idx: correlation_id, created_at, command_id)
# or a batch id (command_batch_idx) it is one scan of that key (LIST_KEYED); else
# one scan of command_domain_status_idx (domain, status, created_at, command_id) per
# (domain, status), each at most a page long, merged (LIST_MERGED): the domain
# given, or every domain (LIST_EVERY_DOMAIN: a loose scan of the primary key, one
# probe per domain), times the status given or every status. {where} is the
# LIST_* filters given (each "AND ..."), {after} LIST_KEYSET when a page follows
# another (else empty), {order} LIST_ASC or LIST_DESC. The same id in
# two domains may share a created_at (send_batch), so the domain breaks that tie.

LIST_KEYED: Final[LiteralString] = (
    "SELECT"
    + COMMAND_COLUMNS
    + """
  FROM commandbus.command c
 WHERE {key} = %(key)s{where}{after}
 ORDER BY {order}
 LIMIT %(limit)s
"""
)

LIST_MERGED: Final[LiteralString] = (
    """
WITH RECURSIVE {domains}
SELECT c.*
  FROM domains d
 CROSS JOIN unnest(%(statuses)s::text[]) AS s(status)
 CROSS JOIN LATERAL (
        SELECT"""
    + COMMAND_COLUMNS
    + """
          FROM commandbus.command c
         WHERE c.domain = d.domain AND c.status = s.status{where}{after}
         ORDER BY {order}
         LIMIT %(limit)s
       ) c
 WHERE d.domain IS NOT NULL
 ORDER BY {order}
 LIMIT %(limit)s
"""
)

LIST_ONE_DOMAIN: Final[LiteralString] = "domains(domain) AS (SELECT %(domain)s::text)"

# The distinct domains of commandbus.command, one primary-key probe each.
LIST_EVERY_DOMAIN: Final[LiteralString] = """domains(domain) AS (
    (SELECT domain FROM commandbus.command ORDER BY domain LIMIT 1)
    UNION ALL
    SELECT (SELECT c.domain FROM commandbus.command c
             WHERE c.domain > d.domain ORDER BY c.domain LIMIT 1)
      FROM domains d
     WHERE d.domain IS NOT NULL
)"""

LIST_KEY_CORRELATION: Final[LiteralString] = "c.correlation_id"
LIST_KEY_BATCH: Final[LiteralString] = "c.batch_id"
LIST_DOMAIN: Final[LiteralString] = "\n   AND c.domain = %(domain)s"
LIST_STATUS: Final[LiteralString] = "\n   AND c.status = %(status)s"
LIST_TYPE: Final[LiteralString] = "\n   AND c.command_type = %(command_type)s"
LIST_CORRELATION: Final[LiteralString] = "\n   AND c.correlation_id = %(correlation_id)s"
LIST_BATCH: Final[LiteralString] = "\n   AND c.batch_id = %(batch_id)s"
# a literal, case-insensitive substring of the error's message (no wildcards)
LIST_ERROR: Final[LiteralString] = (
    "\n   AND strpos(lower(c.last_error->>'message'), lower(%(error)s::text)) > 0"
)

# {cmp}: > oldest first, < newest first
LIST_KEYSET: Final[LiteralString] = """
   AND (c.created_at, c.command_id, c.domain)
       {cmp} (%(after_ts)s::timestamptz, %(after_id)s::uuid, %(after_domain)s::text)"""

LIST_ASC: Final[LiteralString] = "created_at, command_id, domain"
LIST_DESC: Final[LiteralString] = "created_at DESC, command_id DESC, domain DESC"

# The commands with one id, in every domain (one primary-key probe per domain).
FIND_COMMANDS: Final[LiteralString] = (
    "WITH RECURSIVE "
    + LIST_EVERY_DOMAIN
    + """
SELECT c.*
  FROM domains d
 CROSS JOIN LATERAL (
        SELECT"""
    + COMMAND_COLUMNS
    + """
          FROM commandbus.command c
         WHERE c.domain = d.domain AND c.command_id = %(command_id)s
       ) c
 ORDER BY c.domain
"""
)

"""The statements that read and mark ``wa_dead``, and a DLQ filter translated into SQL.

Every value of a filter is a query parameter (``Params``); only this module's fixed fragments
of SQL are put together. Counts come from ``wa_dead_groups`` (the counters of the rows in
state ``dead`` per fingerprint, tenant and type) unless the filter needs the rows themselves
(ids, times): the same statements run on either ``Source``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..dlq.record import UNREADABLE

if TYPE_CHECKING:
    from ..dlq.filters import Filter

#: Length of a whole fingerprint (``dlq.record.fingerprint``); shorter ones are prefixes.
FINGERPRINT_CHARS: Final = 10
_WHOLE = re.compile(rf"[0-9a-f]{{{FINGERPRINT_CHARS}}}")


class Params:
    """Query parameters, numbered as they are added."""

    def __init__(self, first: Sequence[Any] = ()) -> None:
        self.values: list[Any] = list(first)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where counts come from: the counters, or the rows (each row weighs 1)."""

    table: str
    live: str  # the condition for what counts
    weight: str
    counters: bool


COUNTERS: Final = Source("wa_dead_groups w", "w.dead > 0", "w.dead", counters=True)
ROWS: Final = Source("wa_dead w", "w.state = 'dead'", "1", counters=False)


def needs_rows(f: Filter) -> bool:
    """Whether ``f`` needs the rows themselves (ids, times), not the per-group counters."""
    return bool(f.ids) or f.since is not None or f.before is not None


def whole(prints: Sequence[str]) -> bool:
    """Whether these are whole fingerprints, not prefixes."""
    return all(_WHOLE.fullmatch(p) for p in prints)


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def filter_sql(f: Filter, params: Params, *, counters: bool = False) -> str:
    """``f`` as SQL conditions on ``wa_dead w`` (``counters``: on ``wa_dead_groups w``).

    ``TRUE`` for the empty filter; every value goes into ``params``.
    """
    if counters and needs_rows(f):
        raise ValueError("ids and times are not in wa_dead_groups")
    out: list[str] = []
    if f.tenants:
        out.append(f"w.tenant_id = ANY({params.add(sorted(f.tenants))}::text[])")
    if f.categories:
        out.append(f"w.category = ANY({params.add(sorted(f.categories))}::text[])")
    if f.codes:
        out.append(f"w.code = ANY({params.add(sorted(f.codes))}::text[])")
    if f.types:
        cond = f"w.type = ANY({params.add(sorted(f.types - {UNREADABLE}))}::text[])"
        if UNREADABLE in f.types:  # what a pass over the queue calls a body it cannot read
            unread = "w.type = ''" if counters else "w.type IS NULL"
            cond = f"({cond} OR {unread})"
        out.append(cond)
    if f.fingerprints:
        prints = sorted(set(f.fingerprints))
        if not whole(prints):
            patterns = params.add([_like(p) for p in prints])
            out.append(f"w.fingerprint LIKE ANY({patterns}::text[])")
        elif len(prints) == 1:  # an equality the group index answers in id order
            out.append(f"w.fingerprint = {params.add(prints[0])}")
        else:
            out.append(f"w.fingerprint = ANY({params.add(prints)}::text[])")
    if f.ids:
        out.append(f"w.internal_id = ANY({params.add(sorted(f.ids))}::text[])")
    if f.since is not None:
        out.append(f"w.died_at >= {params.add(f.since)}")
    if f.before is not None:
        out.append(f"w.died_at < {params.add(f.before)}")
    return " AND ".join(out) or "TRUE"


ROW: Final = """w.id, w.tenant_id, w.internal_id, w.fingerprint, w.category, w.code, w.message,
    w.type, w.phone_number_id, w.died_at, w.retries, w.replays, w.subcode, w.routing_key"""

# -- counts (on either source: {table}, {live}, {weight}) ----------------------------------

COUNT = "SELECT COALESCE(sum({weight}), 0)::bigint FROM {table} WHERE {live} AND {where}"
# Each dimension's counts in one pass: GROUPING() tells which set a row is of.
BREAKDOWN = """
SELECT GROUPING(w.category, w.code, w.tenant_id, w.type) AS set,
    w.category, w.code, NULLIF(w.tenant_id, '') AS tenant_id, NULLIF(w.type, '') AS type,
    sum({weight})::bigint AS n
FROM {table} WHERE {live} AND {where}
GROUP BY GROUPING SETS ((w.category), (w.code), (w.tenant_id), (w.type))
"""
# Grouping-set bitmasks (category is the highest bit): which dimension a BREAKDOWN row counts.
BY_CATEGORY, BY_CODE, BY_TENANT, BY_TYPE = 0b0111, 0b1011, 0b1101, 0b1110
# The largest groups, and how many there are in all.
GROUPS = """
SELECT w.fingerprint, min(w.category) AS category, min(w.code) AS code,
    sum({weight})::bigint AS n, count(DISTINCT NULLIF(w.tenant_id, '')) AS tenants,
    count(*) OVER () AS groups
FROM {table} WHERE {live} AND {where}
GROUP BY w.fingerprint
ORDER BY n DESC, w.fingerprint
LIMIT {limit}
"""
# The few largest tenants of each group, and all its types.
TENANTS = """
SELECT fingerprint, tenant_id FROM (
    SELECT w.fingerprint, NULLIF(w.tenant_id, '') AS tenant_id,
        row_number() OVER (PARTITION BY w.fingerprint
                           ORDER BY sum({weight}) DESC, w.tenant_id) AS r
    FROM {table} WHERE {live} AND w.fingerprint = ANY({prints}::text[]) AND {where}
    GROUP BY w.fingerprint, w.tenant_id
) AS t
WHERE t.r <= {top} AND t.tenant_id IS NOT NULL
ORDER BY fingerprint, r
"""
TYPES = """
SELECT w.fingerprint, NULLIF(w.type, '') AS type, sum({weight})::bigint AS n
FROM {table} WHERE {live} AND w.fingerprint = ANY({prints}::text[]) AND {where}
GROUP BY 1, 2
ORDER BY 1, 3 DESC, 2
"""
# A sample text per fingerprint: the one of its largest counter.
SAMPLES = """
SELECT DISTINCT ON (fingerprint) fingerprint, message
FROM wa_dead_groups WHERE fingerprint = ANY($1::text[])
ORDER BY fingerprint, dead DESC
"""
PRINTS = "SELECT DISTINCT w.fingerprint FROM wa_dead_groups w WHERE w.dead > 0 AND {where}"

# -- rows ----------------------------------------------------------------------------------

OLDEST = """
SELECT w.internal_id, w.died_at FROM wa_dead w
WHERE w.state = 'dead' AND {where}
ORDER BY w.died_at LIMIT 1
"""
# First and last death of each group: two probes of the index (fingerprint, died_at) each.
SEEN = """
SELECT g.fingerprint,
    (SELECT min(w.died_at) FROM wa_dead w
     WHERE w.state = 'dead' AND w.fingerprint = g.fingerprint AND {where}) AS first_seen,
    (SELECT max(w.died_at) FROM wa_dead w
     WHERE w.state = 'dead' AND w.fingerprint = g.fingerprint AND {where}) AS last_seen
FROM unnest({prints}::text[]) AS g (fingerprint)
"""
HOURLY = """
SELECT w.fingerprint, floor(date_part('epoch', now() - w.died_at) / 3600)::int AS ago,
    count(*) AS n
FROM wa_dead w
WHERE w.state = 'dead' AND w.fingerprint = ANY({prints}::text[])
  AND w.died_at > now() - interval '24 hours' AND {where}
GROUP BY 1, 2
"""
PAGE = """
SELECT {row} FROM wa_dead w
WHERE w.state = 'dead' AND {where}
ORDER BY w.id DESC
LIMIT {limit} OFFSET {offset}
"""
BY_ID = f"""
SELECT {ROW}, w.body, w.body_bytes, w.headers, w.state, w.resolution, w.resolved_at
FROM wa_dead w WHERE w.id = $1
"""  # noqa: S608 - built from this module's constants; the id is a parameter
BY_KEY = f"""
SELECT {ROW} FROM wa_dead w
WHERE w.state = 'dead' AND w.internal_id = $1 AND ($2::text IS NULL OR w.tenant_id = $2)
ORDER BY w.id
"""  # noqa: S608 - built from this module's constants; the key is a parameter
ATTEMPTS = "SELECT * FROM wa_attempts WHERE tenant_id = $1 AND internal_id = $2 ORDER BY id"
RECORD = "SELECT * FROM wa_messages WHERE tenant_id = $1 AND internal_id = $2"

# -- marks ---------------------------------------------------------------------------------

# Rows out of state 'dead', and their counters down, in one statement. The counters change
# in key order, as the daemon's insert changes them (dead_write): no deadlock between them.
MARK = """
WITH picked AS ({pick}), marked AS (
    UPDATE wa_dead w SET state = {state}, resolved_at = now(), resolution = {resolution}
    WHERE w.id IN (SELECT id FROM picked) AND w.state = 'dead'
    RETURNING w.fingerprint, w.tenant_id, w.type, w.category, w.code, w.message
), counted AS (
    INSERT INTO wa_dead_groups AS g (fingerprint, tenant_id, type, category, code, message, dead)
    SELECT fingerprint, COALESCE(tenant_id, ''), COALESCE(type, ''), min(category), min(code),
        min(message), -count(*)
    FROM marked
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (fingerprint, tenant_id, type) DO UPDATE SET dead = g.dead + EXCLUDED.dead
)
SELECT count(*) FROM marked
"""
PICK_IDS = "SELECT unnest($1::bigint[]) AS id"
# One row per DLQ message: the k-th message with a key takes the k-th oldest row of it. A
# NULL tenant matches the rows with none (bodies that named none); a NULL fingerprint (a
# message the broker dead-lettered, with no reason of ours) matches any. A row with more
# replays than the message is a later death (of a replayed copy, already back in the DLQ),
# never this message's.
PICK_KEYS = """
    SELECT p.id
    FROM (
        SELECT k.tenant_id, k.internal_id, k.fingerprint, k.replays,
            row_number() OVER (PARTITION BY k.tenant_id, k.internal_id, k.fingerprint
                               ORDER BY k.n) AS r
        FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) WITH ORDINALITY
            AS k (tenant_id, internal_id, fingerprint, replays, n)
    ) AS k
    CROSS JOIN LATERAL (
        SELECT w.id FROM wa_dead w
        WHERE w.state = 'dead' AND w.internal_id = k.internal_id
          AND w.tenant_id IS NOT DISTINCT FROM k.tenant_id
          AND (k.fingerprint IS NULL OR w.fingerprint = k.fingerprint)
          AND w.replays <= k.replays
        ORDER BY w.id
        OFFSET k.r - 1 LIMIT 1
    ) AS p
"""
TIDY = "DELETE FROM wa_dead_groups WHERE dead <= 0"

#!/usr/bin/env python3
"""What the DLQ's mirror in the ledger (``wa_dead``) costs to read at a million dead rows.

Fills a scratch database (created and dropped) with ``--rows`` dead rows across ~200
fingerprints (a few large groups, a long tail) and ~50 tenants, spread over 30 days, plus
``--resolved`` rows already replayed or purged; then times what ``dlq stats | list | show``
and the console ask (``wa_consumer.ledger.dead.DeadLetters``, one connection as the CLI
uses), each ``--repeat`` times, and reports the median and the slowest. For comparison it
times the group list aggregated from the rows themselves (no ``wa_dead_groups``), and the
write path: deaths through ``PostgresLedger.dead`` as the daemon records them.

    .venv/bin/python scripts/dead_letters_bench.py --rows 1000000 --repeat 15
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from benchlib.database import scratch_database

from wa_consumer.dlq.filters import Filter
from wa_consumer.dlq.record import fingerprint
from wa_consumer.ledger.dead import DeadLetters
from wa_consumer.ledger.migrate import migrate
from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.outcomes import Failure
from wa_consumer.seams import Death

GROUPS = 200
TENANTS = 50
SLOTS = 1000  # a row's group is one of these slots, filled by weight (Zipf-like)
TYPES = ["text", "template", "image", "document", "interactive"]
CAUSES = [
    ("permanent", "131026", "(#131026) Message undeliverable to {n} variant {k}"),
    ("account", "131031", "(#131031) Business account locked, case {k}"),
    ("retries_exhausted", "131016", "transient after 5 retries: (#131016) overloaded {k}"),
    ("invalid", "invalid", "wabaPayload.text.body: field {k} too long"),
    ("expired", "expired", "expiresAt {t} has passed, rule {k}"),
    ("permanent", "131047", "(#131047) Re-engagement window closed, template {k}"),
    ("tenant_unknown", "tenant_unknown", "tenant service: unknown tenant kind {k}"),
]

_FILL = """
INSERT INTO wa_dead (tenant_id, internal_id, fingerprint, category, code, message, type,
    phone_number_id, routing_key, retries, replays, headers, body, body_bytes, died_at, state,
    resolved_at, resolution)
SELECT t.tenant, 'm-' || i, g.fp, g.category, g.code, g.message,
    ($8::text[])[((i * 31) % cardinality($8::text[]))::int + 1],
    '10654035' || (i % 20), 'outbound.processed.' || t.tenant, i % 3, (i % 7 = 0)::int,
    jsonb_build_object('x-retry-count', i % 3, 'x-error-category', g.category,
        'x-error-code', g.code, 'x-error-message', g.message, 'x-tenant-id', t.tenant,
        'x-failed-at', to_char($9::timestamptz - (($10 - i) * $11::interval),
                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'x-original-routing-key', 'outbound.processed.' || t.tenant),
    convert_to('{"metadata":{"tenantId":"' || t.tenant || '","internalId":"m-' || i
        || '"},"wabaPayload":{"messaging_product":"whatsapp","to":"2782'
        || lpad((i % 9999999)::text, 7, '0') || '","type":"text","text":{"body":"Your order '
        || i || ' is ready for collection"}}}', 'UTF8'),
    190, $9::timestamptz - (($10 - i) * $11::interval),
    CASE WHEN i > $10 THEN (ARRAY['replayed', 'resolved'])[i % 2 + 1] ELSE 'dead' END,
    CASE WHEN i > $10 THEN $9::timestamptz END,
    CASE WHEN i > $10 AND i % 2 = 1 THEN 'purged by the bench' END
FROM generate_series($1::bigint, $2::bigint) AS i
CROSS JOIN LATERAL (
    SELECT ($3::text[])[k] AS fp, ($4::text[])[k] AS category, ($5::text[])[k] AS code,
        ($6::text[])[k] AS message
    FROM (SELECT ((i * 7919) % $12)::int + 1 AS k) AS slot
) AS g
CROSS JOIN LATERAL (
    SELECT ($7::text[])[((i * 104729) % cardinality($7::text[]))::int + 1] AS tenant
) AS t
"""
_COUNTERS = """
INSERT INTO wa_dead_groups (fingerprint, tenant_id, type, category, code, message, dead)
SELECT fingerprint, COALESCE(tenant_id, ''), COALESCE(type, ''), min(category), min(code),
    min(message), count(*)
FROM wa_dead WHERE state = 'dead' GROUP BY 1, 2, 3
"""
# What the group list costs without the counters: every dead row aggregated.
_RAW_GROUPS = """
SELECT fingerprint, count(*), min(died_at), max(died_at), count(DISTINCT tenant_id)
FROM wa_dead WHERE state = 'dead' GROUP BY fingerprint ORDER BY 2 DESC LIMIT 50
"""


def causes() -> list[tuple[str, str, str, str]]:
    """(fingerprint, category, code, message) of ``GROUPS`` distinct causes."""
    out = []
    for k in range(GROUPS):
        category, code, text = CAUSES[k % len(CAUSES)]
        # The k in words, so normalise() keeps the causes apart (digits become <n>).
        word = "".join(chr(ord("a") + int(d)) for d in str(k))
        message = text.format(n=27820000000 + k, k=word, t="2026-11-24T12:00:00Z")
        out.append((fingerprint(category, code, message), category, code, message))
    return out


def slots(groups: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """``SLOTS`` picks of the groups, the k-th weighted 1/(k+1): a few large, a long tail."""
    weights = [1 / (k + 1) for k in range(len(groups))]
    total = sum(weights)
    out: list[tuple[str, str, str, str]] = []
    for k, w in enumerate(weights):
        out += [groups[k]] * max(1, round(w / total * SLOTS))
    return out[:SLOTS]


async def fill(url: str, rows: int, resolved: int) -> dict[str, Any]:
    connection = await asyncpg.connect(url)
    try:
        await migrate(connection)
        picks = slots(causes())
        tenants = [f"tenant-{n:02d}" for n in range(TENANTS)]
        now = datetime.now(UTC)
        step = timedelta(days=30) / rows
        started = time.perf_counter()
        chunk = 100_000
        for first in range(1, rows + resolved + 1, chunk):
            last = min(first + chunk - 1, rows + resolved)
            await connection.execute(
                _FILL, first, last,
                [p[0] for p in picks], [p[1] for p in picks], [p[2] for p in picks],
                [p[3] for p in picks], tenants, TYPES, now, rows, step, len(picks),
            )  # fmt: skip
            print(f"  filled {last:,} rows", file=sys.stderr)
        await connection.execute(_COUNTERS)
        await connection.execute("VACUUM ANALYZE wa_dead")
        await connection.execute("VACUUM ANALYZE wa_dead_groups")
        filled = time.perf_counter() - started
        size = await connection.fetchval("SELECT pg_total_relation_size('wa_dead')")
        big = await connection.fetchrow(
            "SELECT fingerprint, sum(dead) AS dead FROM wa_dead_groups GROUP BY 1"
            " ORDER BY 2 DESC LIMIT 1"
        )
        small = await connection.fetchrow(
            "SELECT fingerprint, sum(dead) AS dead FROM wa_dead_groups GROUP BY 1"
            " ORDER BY 2 LIMIT 1"
        )
        deep = await connection.fetchval(
            "SELECT id FROM wa_dead WHERE state = 'dead' AND fingerprint = $1"
            " ORDER BY id DESC OFFSET 40000 LIMIT 1",
            big["fingerprint"],
        )
        return {
            "filled_s": filled,
            "bytes": size,
            "big": big["fingerprint"],
            "big_n": big["dead"],
            "small": small["fingerprint"],
            "small_n": small["dead"],
            "deep": deep,
            "some_id": await connection.fetchval("SELECT max(id) / 2 FROM wa_dead"),
        }
    finally:
        await connection.close()


async def timed(work: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float, Any]:
    result = await work()  # warm: the plan and the pages it reads
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


def _rows(r: Any) -> str:
    return f"{len(r)} rows"


def _groups(r: Any) -> str:
    return f"{len(r)} groups"


def _dead(r: Any) -> str:
    return f"{r.total:,} dead"


async def reads(
    url: str, facts: dict[str, Any], repeat: int
) -> list[tuple[str, float, float, str]]:
    connection = await asyncpg.connect(url)
    dead = DeadLetters(connection)
    tenant = Filter(tenants=frozenset({"tenant-07"}))
    big = Filter(fingerprints=(facts["big"],))
    small = Filter(fingerprints=(facts["small"],))
    prefix = Filter(fingerprints=(facts["big"][:6],))
    account = Filter(categories=frozenset({"account"}))
    day = Filter(since=datetime.now(UTC) - timedelta(days=1))
    some = facts["some_id"]
    checks: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], str]]] = [
        ("group list (50 groups, all tenants)", lambda: dead.groups(Filter()), _groups),
        ("group list, one tenant", lambda: dead.groups(tenant), _groups),
        (f"group page, first (group of {facts['big_n']:,})", lambda: dead.page(big), _rows),
        (
            "group page, deep (40,000 rows in)",
            lambda: dead.page(big, before_id=facts["deep"]),
            _rows,
        ),
        (f"group page, first (group of {facts['small_n']:,})", lambda: dead.page(small), _rows),
        ("group page by a 6-character prefix", lambda: dead.page(prefix), _rows),
        ("list --category account (first page)", lambda: dead.page(account), _rows),
        ("list, no filter (first page)", lambda: dead.page(Filter()), _rows),
        ("list, one tenant (first page)", lambda: dead.page(tenant), _rows),
        ("message detail", lambda: dead.detail(some), lambda r: f"{len(r.body)} bytes of body"),
        ("show by internal id", lambda: dead.by_internal_id(f"m-{some}"), _rows),
        ("stats, one tenant", lambda: dead.stats(tenant), _dead),
        ("stats, everything", lambda: dead.stats(Filter()), _dead),
        ("stats, --since 1d (from the rows)", lambda: dead.stats(day), _dead),
        ("count, --category account", lambda: dead.count(account), lambda r: f"{r:,}"),
        ("group list from the rows (no counters)", lambda: connection.fetch(_RAW_GROUPS), _groups),
    ]
    out = []
    try:
        for name, work, say in checks:
            median, worst, result = await timed(work, repeat)
            out.append((name, median, worst, say(result)))
    finally:
        await connection.close()
    return out


def a_death(n: int) -> Death:
    internal_id = str(uuid.uuid4())
    body = orjson.dumps(
        {
            "metadata": {"tenantId": f"tenant-{n % TENANTS:02d}", "internalId": internal_id},
            "wabaPayload": {"messaging_product": "whatsapp", "to": "27821234567", "type": "text"},
        }
    )
    message = f"(#131026) Message undeliverable to 2782{n:07d}"
    return Death(
        failure=Failure("permanent", "131026", message),
        body=body,
        body_bytes=len(body),
        headers={"x-retry-count": 0, "x-error-category": "permanent", "x-error-code": "131026",
                 "x-error-message": message, "x-tenant-id": f"tenant-{n % TENANTS:02d}"},
        tenant_id=f"tenant-{n % TENANTS:02d}",
        internal_id=internal_id,
        type="text",
        claimed=True,
    )  # fmt: skip


async def writes(url: str, deaths: int, concurrency: int) -> dict[str, float]:
    """Deaths as the daemon records them: ``concurrency`` at once, round after round."""
    ledger = await PostgresLedger.connect(url, pool_size=4)
    try:
        batches = [
            [a_death(r * concurrency + k) for k in range(concurrency)]
            for r in range(deaths // concurrency)
        ]
        started = time.perf_counter()
        for batch in batches:
            await asyncio.gather(*(ledger.dead(d) for d in batch))
        wall = time.perf_counter() - started
    finally:
        await ledger.close()
    done = len(batches) * concurrency
    return {"per_death_us": wall / done * 1e6, "per_second": done / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="dead rows")
    parser.add_argument("--resolved", type=int, default=100_000, help="replayed/purged rows")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--deaths", type=int, default=20_000, help="deaths written at the end")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with scratch_database(True) as url:
        assert url is not None
        facts = asyncio.run(fill(url, args.rows, args.resolved))
        print(
            f"{args.rows:,} dead rows (+{args.resolved:,} replayed or purged) in "
            f"{facts['filled_s']:.0f} s, wa_dead {facts['bytes'] / 2**20:,.0f} MiB with indexes"
        )
        results = asyncio.run(reads(url, facts, args.repeat))
        width = max(len(name) for name, *_ in results)
        print(f"{'query':<{width}}  median ms  max ms  result")
        for name, median, worst, said in results:
            print(f"{name:<{width}}  {median:9.1f}  {worst:6.1f}  {said}")
        w = asyncio.run(writes(url, args.deaths, args.concurrency))
        print(
            f"writes: {args.deaths:,} deaths, {args.concurrency} at a time, into the filled "
            f"table: {w['per_death_us']:.0f} us each ({w['per_second']:,.0f} deaths/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What the ledger costs PostgreSQL and the daemon per message, without a broker or an API.

Drives ``PostgresLedger`` as the pipeline does: ``--concurrency`` messages claimed at once,
then finished at once (sent, one attempt each), round after round, in a scratch database
(created and dropped). Reports the CPU per message of the ledger's PostgreSQL backends (from
``/proc``, so run it on the database's machine), of this process (the ledger's side, plus the
tasks this driver makes), the wall time, and how many of the results were HOT updates
(written in place, no index entries).

    .venv/bin/python scripts/ledger_cost.py --messages 40000 --concurrency 25 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from benchlib.database import scratch_database

from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.message import Outbound, parse
from wa_consumer.seams import Attempt, Record


def message(internal_id: str) -> Outbound:
    return parse(
        orjson.dumps(
            {
                "metadata": {"tenantId": "acme", "internalId": internal_id, "campaign": "c1"},
                "wabaPayload": {
                    "messaging_product": "whatsapp",
                    "to": "27821234567",
                    "type": "text",
                    "text": {"body": "Your code is 123456"},
                },
            }
        )
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, messages: int, concurrency: int) -> dict[str, float]:
    ledger = await PostgresLedger.connect(url, pool_size=4)
    admin = await asyncpg.connect(url)
    try:
        batches = [
            [message(str(uuid.uuid4())) for _ in range(concurrency)]
            for _ in range(messages // concurrency)
        ]
        warm = [message(str(uuid.uuid4())) for _ in range(8)]
        await asyncio.gather(*(ledger.claim(m) for m in warm))  # opens the pool's connections
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        own = await admin.fetchval("SELECT pg_backend_pid()")
        pids = [r["pid"] for r in await admin.fetch(query) if r["pid"] != own]
        # Each its own wamid, as Meta gives them: a result inserts its wamid's delivery row.
        sent = {
            m.internal_id: Record("sent", 0, wamid=f"wamid.{m.internal_id}")
            for b in batches
            for m in b
        }
        attempt = Attempt(1, datetime.now(UTC), 3.2, "sent", 200)
        pg0, me0, t0 = sum(map(cpu_seconds, pids)), time.process_time(), time.perf_counter()
        previous: list[Outbound] = []
        for batch in batches:  # the results of one round travel with the claims of the next
            await asyncio.gather(
                *(ledger.claim(m) for m in batch),
                *(ledger.finish(m, sent[m.internal_id], (attempt,)) for m in previous),
            )
            previous = batch
        await asyncio.gather(*(ledger.finish(m, sent[m.internal_id], (attempt,)) for m in previous))
        pg1, me1, t1 = sum(map(cpu_seconds, pids)), time.process_time(), time.perf_counter()
        await ledger.close()  # a backend's statistics are flushed at the latest when it exits
        await asyncio.sleep(0.5)
        row = await admin.fetchrow(
            "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'wa_messages'"
        )
        done = len(batches) * concurrency
        return {
            "postgres_us": (pg1 - pg0) / done * 1e6,
            "client_us": (me1 - me0) / done * 1e6,
            "wall_us": (t1 - t0) / done * 1e6,
            "hot_share": row["n_tup_hot_upd"] / row["n_tup_upd"] if row["n_tup_upd"] else 0.0,
        }
    finally:
        await admin.close()
        await ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=25, help="messages claimed at once")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for round_no in range(1, args.repeat + 1):
        with scratch_database(True) as url:
            assert url is not None
            r = asyncio.run(measure(url, args.messages, args.concurrency))
        print(
            f"#{round_no} per message: PostgreSQL {r['postgres_us']:.1f} us CPU, this process "
            f"{r['client_us']:.1f} us CPU, wall {r['wall_us']:.1f} us; "
            f"HOT updates {r['hot_share']:.0%} of updates"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

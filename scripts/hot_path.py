#!/usr/bin/env python3
"""The daemon's own CPU per message: the pipeline without a broker, an API or a database.

Runs the real ``Pipeline`` with the daemon's seams, in one process on uvloop: ``parse`` and
validation, credentials (cached), the limiter (``--number-rate``, 0 as in the bench), the
ledger (``PostgresLedger``: on a stand-in pool answering each statement after one loop turn
with a row per claim, or with ``--ledger real`` in a scratch database, created and dropped),
the Cloud API client on a transport answering Meta's JSON after one loop turn, the settler
on a channel that takes acks, metrics and alerts, and the INFO line per outcome (JSON, to
/dev/null). ``--prefetch`` messages are in flight at a time, as a consumer's prefetch keeps
them. Reports the process CPU (user and system) per message of each round and their median.

What it leaves out is what ``scripts/bench.py`` adds: reading AMQP frames, the HTTP
client's work, the sockets. Compare two versions of the code in one sitting, alternately:

    .venv/bin/python scripts/hot_path.py --repeat 5
    PYTHONPATH=/path/to/other/tree .venv/bin/python scripts/hot_path.py --repeat 5
    .venv/bin/python scripts/hot_path.py --ledger real --profile hot.prof   # cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from benchlib.database import scratch_database
from pamqp import commands, header

from wa_consumer.alerts import Alerter
from wa_consumer.classify import retry_queue_name
from wa_consumer.credentials import CredentialCache, FallbackSource, StaticSource
from wa_consumer.delivery import Delivery
from wa_consumer.gctuning import tune_for_serving
from wa_consumer.graph import GraphClient
from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.limits import RateLimiter
from wa_consumer.logs import configure_logging
from wa_consumer.message import MAX_MESSAGE_BYTES
from wa_consumer.metrics import Fanout, Metrics
from wa_consumer.pipeline import Pipeline, Policy
from wa_consumer.settings import Settings
from wa_consumer.settle import Settler

TENANTS = ("acme", "globex", "initech")
NUMBER = "106540352242922"
LADDER = (30.0, 120.0, 600.0, 1800.0, 3600.0)
ANSWER = orjson.dumps(
    {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "27821234567", "wa_id": "27821234567"}],
        "messages": [{"id": "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}],
    }
)


class InstantTransport:
    """The Cloud API answering every send with a wamid, one loop turn later."""

    name = "instant"

    async def start(self) -> None:
        return None

    async def post(self, url: str, body: bytes, token: str) -> tuple[int, bytes]:
        await asyncio.sleep(0)
        return 200, ANSWER

    async def close(self) -> None:
        return None


class AckingChannel:
    """What the settler's acks need of a channel."""

    is_closed = False
    default_exchange = None

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = False) -> None:
        return None

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = False) -> None:
        return None


class InstantPool:
    """The ledger's pool, and its connections: each statement is answered one loop turn
    later with a row per claim, every one claimed."""

    def get_max_size(self) -> int:
        return 4

    async def acquire(self) -> InstantPool:
        return self

    async def release(self, connection: InstantPool) -> None:
        return None

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        claimed = orjson.loads(args[2])
        return [{"tenant_id": c[0], "internal_id": c[1], "deliveries": 1} for c in claimed]

    async def close(self) -> None:
        return None


class Delivered:
    """aiormq's ``DeliveredMessage``, as ``Delivery`` reads it."""

    __slots__ = ("body", "channel", "delivery", "header")

    def __init__(self, i: int, channel: AckingChannel, now: datetime) -> None:
        tenant = TENANTS[i % len(TENANTS)]
        self.channel = channel
        self.body = orjson.dumps(
            {
                "metadata": {"tenantId": tenant, "internalId": str(uuid.uuid4())},
                "wabaPayload": {
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": f"2782{i % 10_000_000:07d}",
                    "type": "text",
                    "text": {"body": f"Your order #{100_000 + i} is ready for collection."},
                },
            }
        )
        self.delivery = commands.Basic.Deliver(
            consumer_tag="hot-path",
            delivery_tag=i + 1,
            exchange="whatsapp-exchange",
            routing_key=f"outbound.processed.{tenant}",
        )
        properties = commands.Basic.Properties(
            content_type="application/json", delivery_mode=2, message_id=str(i), timestamp=now
        )
        self.header = header.ContentHeader(0, len(self.body), properties)


@contextmanager
def log_lines_to_devnull() -> Iterator[None]:
    """The daemon's logging (INFO, JSON, batched writes) into /dev/null; stdout stays ours."""
    stdout = sys.stdout
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        try:
            configure_logging("INFO", "json")
        finally:
            sys.stdout = stdout
        yield


def build(ledger: PostgresLedger | None, number_rate: float) -> tuple[Pipeline, AckingChannel]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    metrics = Metrics()
    if ledger is not None:
        ledger.observe_batches(metrics.watch_ledger(lambda: ledger.results_held))
    channel = AckingChannel()
    source = StaticSource(
        {t: {"accessToken": f"token-{t}", "phoneNumberId": NUMBER} for t in TENANTS}
    )
    policy = Policy(
        retry_delays=LADDER,
        retry_queues={step: retry_queue_name(step) for step in LADDER},
        max_retries=5,
        rate_limit_min_delay=60.0,
        pair_limit_min_delay=10.0,
        max_age_seconds=86_400.0,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_deliveries=5,
    )
    pipeline = Pipeline(
        policy=policy,
        credentials=CredentialCache(
            FallbackSource(source, None), ttl=300, observe=metrics.credential
        ),
        graph=GraphClient(InstantTransport(), "http://127.0.0.1:1", "v21.0"),
        settler=Settler(
            channel,  # type: ignore[arg-type]  # acks only: every send is accepted
            None,  # type: ignore[arg-type]
            main_queue="outbound-processed",
            dead_routing_key="outbound.failed",
        ),
        ledger=ledger,
        limiter=RateLimiter(rate=number_rate),
        observer=Fanout(metrics, Alerter.from_settings(settings, metrics)),
    )
    return pipeline, channel


async def drain(pipeline: Pipeline, channel: AckingChannel, n: int, prefetch: int) -> float:
    """Deliver ``n`` messages, ``prefetch`` in flight; the CPU µs per message."""
    now = datetime.now(UTC).replace(microsecond=0)
    deliveries = [Delivered(i, channel, now) for i in range(n)]
    slots = asyncio.Semaphore(prefetch)
    finished = asyncio.Event()
    left = n

    def done(_: object) -> None:
        nonlocal left
        slots.release()
        left -= 1
        if not left:
            finished.set()

    started = time.process_time()
    for message in deliveries:
        await slots.acquire()
        pipeline.receive(Delivery(message)).add_done_callback(done)  # type: ignore[arg-type]
    await finished.wait()
    return (time.process_time() - started) / n * 1e6


async def measure(args: argparse.Namespace, url: str | None) -> list[float]:
    ledger: PostgresLedger | None = None
    if url is not None:
        ledger = await PostgresLedger.connect(url)
    elif args.ledger == "fake":
        ledger = PostgresLedger(InstantPool())  # type: ignore[arg-type]
    pipeline, channel = build(ledger, args.number_rate)
    tune_for_serving()  # as `wa-consumer run` does
    await drain(pipeline, channel, min(args.messages, 2000), args.prefetch)  # warm up
    profile = None
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
    rounds = []
    for i in range(args.repeat):
        if profile is not None:
            profile.enable()
        rounds.append(await drain(pipeline, channel, args.messages, args.prefetch))
        if profile is not None:
            profile.disable()
        print(f"  round {i + 1}: {rounds[-1]:.1f} µs CPU per message", flush=True)
    if profile is not None:
        profile.dump_stats(args.profile)
    if ledger is not None and url is not None:
        await ledger.close()
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="per round (20,000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--prefetch", type=int, default=200, help="in flight (200)")
    parser.add_argument(
        "--ledger", choices=("fake", "real", "off"), default="fake", help="(default: fake)"
    )
    parser.add_argument("--number-rate", type=float, default=0.0, help="WA_NUMBER_RATE (0)")
    parser.add_argument("--profile", help="write a cProfile of the measured rounds here")
    args = parser.parse_args()
    print(f"hot path: {args.messages:,} messages x {args.repeat}, ledger {args.ledger}")
    with log_lines_to_devnull(), scratch_database(args.ledger == "real") as url:
        rounds = uvloop.run(measure(args, url))
    print(f"median {statistics.median(rounds):.1f} µs CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RabbitMQ: the run's own vhost, the messages pre-filled for each measurement, queue depth.

Each measurement declares the daemon's topology under names of its own (a random tag in
every exchange and queue name) and fills its main queue with N new messages, so that no
measurement sees another's leftovers. Every message gets a new ``internalId``: the ledger
treats a reused one as a duplicate and would ack it without sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractConnection

from wa_consumer.message import parse
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .common import BenchError, bounded

BROKER = "127.0.0.1:5672"
TENANTS = ("acme", "globex")  # the sandbox's active tenants
PUBLISH_BATCH = 1000  # publishes in flight before their confirms are awaited


def rabbitmqctl(*args: str) -> None:
    try:
        subprocess.run(
            ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: {exc.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: no answer within 60 s") from None
    except FileNotFoundError:
        raise BenchError("rabbitmqctl not found: the bench needs a local RabbitMQ") from None


@contextlib.contextmanager
def bench_vhost() -> Iterator[str]:
    """A vhost of our own, guest allowed everything, deleted on the way out."""
    name = f"wa-bench-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        try:
            rabbitmqctl("delete_vhost", name)
        except BenchError as exc:
            print(f"bench: could not delete vhost {name}: {exc}", file=sys.stderr)


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER}/{vhost}"


def unique_names() -> dict[str, str]:
    """Every broker name a daemon declares (settings field: name), unique to one measurement."""
    tag = secrets.token_hex(4)
    return {
        "exchange": f"wx-{tag}",
        "dead_letter_exchange": f"dlx-{tag}",
        "queue": f"main-{tag}",
        "dead_letter_queue": f"failed-{tag}",
        "retry_queue_prefix": f"retry-{tag}-",
        "webhook_exchange": f"whx-{tag}",
        "webhook_queue": f"webhooks-{tag}",
        "webhook_failed_queue": f"webhooks-failed-{tag}",
        "inbound_messages_queue": f"inbound-{tag}",
    }


def envelope(i: int, tenant: str) -> dict[str, Any]:
    """A text message as producers publish it (the shape of the integration tests')."""
    return {
        "metadata": {"tenantId": tenant, "internalId": str(uuid.uuid4())},
        "wabaPayload": {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": f"2782{i % 10_000_000:07d}",  # no sandbox rule matches: every send succeeds
            "type": "text",
            "text": {"body": f"Your order #{100_000 + i} is ready for collection."},
        },
    }


def encode(n: int, seen: set[str]) -> list[tuple[str, str, bytes]]:
    """``n`` messages as (tenant, internalId, body); every id new to ``seen`` (then added)."""
    messages = [envelope(i, TENANTS[i % len(TENANTS)]) for i in range(n)]
    encoded = [
        (m["metadata"]["tenantId"], m["metadata"]["internalId"], orjson.dumps(m)) for m in messages
    ]
    ids = {internal_id for _, internal_id, _ in encoded}
    if len(ids) != n or not ids.isdisjoint(seen):
        raise BenchError("prefill: internalIds repeat; the ledger would skip them as duplicates")
    seen |= ids
    parse(encoded[0][2])  # the daemon's own check: the bench's envelope has not drifted
    return encoded


async def declare_topology(connection: AbstractConnection, settings: Settings) -> None:
    await bounded(declare(connection, Topology.from_settings(settings)), 30, "declare topology")


async def prefill(
    connection: AbstractConnection, settings: Settings, n: int, seen: set[str]
) -> tuple[float, list[str]]:
    """Publish ``n`` new messages as producers do, confirmed in batches: (msg/s, their ids)."""
    encoded = encode(n, seen)
    channel = await bounded(
        connection.channel(publisher_confirms=True, on_return_raises=True), 10, "open channel"
    )
    started = time.perf_counter()
    try:
        exchange = await bounded(channel.get_exchange(settings.exchange), 10, "get exchange")
        now = dt.datetime.now(dt.UTC)
        for first in range(0, n, PUBLISH_BATCH):
            publishes = [
                asyncio.ensure_future(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=internal_id,
                            timestamp=now,
                        ),
                        routing_key=f"{settings.routing_key_prefix}.{tenant}",
                        mandatory=True,
                    )
                )
                for tenant, internal_id, body in encoded[first : first + PUBLISH_BATCH]
            ]
            try:
                _, pending = await asyncio.wait(publishes, timeout=60)
            finally:
                for publish in publishes:
                    publish.cancel()  # only those still waiting: on a deadline or an interrupt
            if pending:
                raise BenchError(f"prefill: no confirms within 60 s after {first:,} of {n:,}")
            if not all(isinstance(p.result(), aiormq.spec.Basic.Ack) for p in publishes):
                raise BenchError(f"prefill: the broker refused messages after {first:,} of {n:,}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), 10)
    return n / (time.perf_counter() - started), [internal_id for _, internal_id, _ in encoded]


async def publish_confirmed(
    connection: AbstractConnection,
    exchange: str,
    routing_key: str,
    bodies: Sequence[bytes],
    in_flight: int,
    seconds: float,
) -> tuple[float, float, float]:
    """Each body once, as the webhook receiver publishes it (persistent, ``mandatory``, from
    one channel with confirms), ``in_flight`` awaiting their confirms at any time.

    Returns the seconds from the first publish to the 10%, the 90% and the last confirm; a
    nack, a return or ``seconds`` passing is a ``BenchError``.
    """
    n = len(bodies)
    channel = await bounded(
        connection.channel(publisher_confirms=True, on_return_raises=True), 10, "open channel"
    )
    try:
        target = await bounded(channel.get_exchange(exchange), 10, f"get exchange {exchange}")
        marks: dict[int, float] = {}
        mark_at = {n // 10, (9 * n) // 10, n}
        pending = iter(bodies)
        confirmed = 0

        async def publisher() -> None:
            nonlocal confirmed
            for body in pending:  # one iterator for all: each body once
                message = aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                confirmation = await target.publish(message, routing_key, mandatory=True)
                if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                    raise BenchError(f"publish: the broker answered {confirmation!r}")
                confirmed += 1
                if confirmed in mark_at:
                    marks[confirmed] = time.perf_counter()

        started = time.perf_counter()
        tasks = [asyncio.ensure_future(publisher()) for _ in range(min(in_flight, n))]
        try:
            done, waiting = await asyncio.wait(
                tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION
            )
        finally:
            for task in tasks:
                task.cancel()  # only those still running: on a failure, a deadline, Ctrl-C
        failed = [e for task in done if (e := task.exception()) is not None]
        if failed:
            raise BenchError(f"publish: after {confirmed:,} of {n:,}: {failed[0]!r}")
        if waiting:
            raise BenchError(f"publish: {confirmed:,} of {n:,} confirmed in {seconds:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), 10)
    t10, t90 = marks.get(n // 10, started), marks.get((9 * n) // 10, marks[n])
    return t10 - started, t90 - started, marks[n] - started


async def purge(connection: AbstractConnection, queue: str) -> None:
    """Empty ``queue`` (the bodies a measurement counted), so that the broker carries none on."""
    async with connection.channel() as channel:
        declared = await bounded(
            channel.declare_queue(queue, passive=True), 10, f"passive declare of {queue}"
        )
        await bounded(declared.purge(), 60, f"purge of {queue}")


async def depth(connection: AbstractConnection, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``, by a passive declare."""
    async with connection.channel() as channel:
        declared = await bounded(
            channel.declare_queue(queue, passive=True), 10, f"passive declare of {queue}"
        )
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def leftovers(connection: AbstractConnection, settings: Settings) -> dict[str, int]:
    """Messages left in each queue of the measurement's topology (main, retries, dead)."""
    queues = Topology.from_settings(settings).queues
    return {q.name: (await depth(connection, q.name))[0] for q in queues}

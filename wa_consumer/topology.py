"""The broker topology of SPEC §2: declared idempotently at start, or checked.

A queue that already exists with other arguments makes RabbitMQ close the channel with
PRECONDITION_FAILED; we turn that into ``TopologyMismatch`` naming the queue, the argument and
both values, so start-up ends with one readable line instead of a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, ExchangeType
from pamqp.common import Arguments, FieldTable

from .classify import retry_queue_name
from .errors import TopologyMismatch, WaConsumerError
from .settings import Settings


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: Arguments
    bind_exchange: str | None = None
    bind_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and arguments of everything the daemon needs, derived from settings."""

    exchange: str
    dead_letter_exchange: str
    webhook_exchange: str
    queues: tuple[QueueSpec, ...]
    retry_queues: dict[float, str]

    @classmethod
    def from_settings(cls, s: Settings) -> Topology:
        # Classic is the broker's default: naming it would clash with queues declared without it.
        qtype: FieldTable = {"x-queue-type": "quorum"} if s.queue_type == "quorum" else {}
        main = QueueSpec(
            s.queue,
            {
                **qtype,
                "x-dead-letter-exchange": s.dead_letter_exchange,
                "x-dead-letter-routing-key": s.dead_routing_key,
                "x-message-ttl": s.max_age_ms,
            },
            s.exchange,
            (f"{s.routing_key_prefix}.#",),
        )
        dead = QueueSpec(
            s.dead_letter_queue,
            dict(qtype),
            s.dead_letter_exchange,
            (f"{s.dead_routing_key}.#", s.dead_routing_key),
        )
        delays = list(s.retry_delays)
        if s.throttle_requeue_seconds:  # a short wait for throttled messages (not a retry)
            delays.append(s.throttle_requeue_seconds)
        retry_queues = {d: retry_queue_name(d, s.retry_queue_prefix) for d in delays}
        waits = tuple(
            QueueSpec(
                name,
                {
                    **qtype,
                    "x-message-ttl": max(1, round(delay * 1000)),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": s.queue,
                },
            )
            for delay, name in retry_queues.items()
        )
        return cls(
            s.exchange,
            s.dead_letter_exchange,
            s.webhook_exchange,
            (main, dead, *waits, *_webhook_queues(s, qtype)),
            retry_queues,
        )

    @property
    def exchanges(self) -> tuple[str, ...]:
        return (self.exchange, self.dead_letter_exchange, self.webhook_exchange)


def _webhook_queues(s: Settings, qtype: FieldTable) -> tuple[QueueSpec, ...]:
    """SPEC §13: webhook bodies as Meta sent them, the ones that cannot be read, and
    customers' messages for the application."""
    failed_key = f"{s.webhook_routing_key}.failed"
    return (
        QueueSpec(
            s.webhook_queue,
            {
                **qtype,
                "x-dead-letter-exchange": s.dead_letter_exchange,
                "x-dead-letter-routing-key": failed_key,
            },
            s.webhook_exchange,
            (s.webhook_routing_key, f"{s.webhook_routing_key}.#"),
        ),
        QueueSpec(s.webhook_failed_queue, dict(qtype), s.dead_letter_exchange, (failed_key,)),
        QueueSpec(
            s.inbound_messages_queue,
            dict(qtype),
            s.webhook_exchange,
            (s.inbound_routing_key, f"{s.inbound_routing_key}.#"),
        ),
    )


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue '(?P<queue>[^']+)'.*?"
    r"received (?:the value )?(?P<wanted>'[^']*'|none)(?: of type '\w+')?"
    r" but current is (?:the value )?(?P<existing>'[^']*'|none)"
)


def _mismatch(exc: aiormq.exceptions.ChannelPreconditionFailed, spec: QueueSpec) -> Exception:
    text = str(exc)
    found = _INEQUIVALENT.search(text)
    if not found:
        return WaConsumerError(f"queue {spec.name!r} cannot be declared as configured: {text}")
    return TopologyMismatch(
        found["queue"],
        found["arg"],
        found["existing"].strip("'"),
        found["wanted"].strip("'"),
    )


#: Why a passive start-up found something missing, and what to do about it.
PASSIVE_HINT = (
    "WA_DECLARE_TOPOLOGY=passive: nothing is declared; import config/definitions.json "
    "(rabbitmqctl import_definitions) or run `wa-consumer topology declare` as a user that may"
)


async def prepare(connection: AbstractConnection, topology: Topology, *, passive: bool) -> None:
    """Start-up's step for the topology: declare it, or (``passive``) only check it is there.

    Passive is for brokers where this user has no configure permission: the topology comes
    from ``config/definitions.json`` and start-up stops with one line naming what is missing.
    """
    if not passive:
        await declare(connection, topology)
        return
    try:
        await declare(connection, topology, check=True)
    except TopologyMismatch:
        raise
    except WaConsumerError as exc:
        raise WaConsumerError(f"{exc} ({PASSIVE_HINT})") from None


def _refused(kind: str, name: str) -> WaConsumerError:
    return WaConsumerError(
        f"this user may not declare {kind} {name!r} (ACCESS_REFUSED); declare the topology "
        f"as a user that may, and set WA_DECLARE_TOPOLOGY=passive"
    )


async def declare(
    connection: AbstractConnection, topology: Topology, *, check: bool = False
) -> None:
    """Declare every exchange and queue (``check``: verify only, create nothing).

    Raises ``TopologyMismatch`` when a queue exists with other arguments, and
    ``WaConsumerError`` when ``check`` finds something missing. A check by a user without
    configure permission verifies that each queue exists, not its arguments: RabbitMQ refuses
    it the full declare that compares them.
    """
    for name in topology.exchanges:
        async with connection.channel() as channel:
            try:
                await channel.declare_exchange(
                    name, ExchangeType.TOPIC, durable=True, passive=check
                )
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise WaConsumerError(f"exchange {name!r} does not exist") from None
            except aiormq.exceptions.ChannelAccessRefused:
                raise _refused("exchange", name) from None
    for spec in topology.queues:
        if check:
            async with connection.channel() as channel:
                try:
                    await channel.declare_queue(spec.name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    raise WaConsumerError(f"queue {spec.name!r} does not exist") from None
        # A full declare with identical arguments changes nothing, so it is also the check.
        async with connection.channel() as channel:
            try:
                queue = await channel.declare_queue(
                    spec.name, durable=True, arguments=spec.arguments
                )
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise _mismatch(exc, spec) from None
            except aiormq.exceptions.ChannelAccessRefused:
                if check:
                    continue  # it exists (checked above); its arguments cannot be compared
                raise _refused("queue", spec.name) from None
            if spec.bind_exchange and not check:
                for key in spec.bind_keys:
                    await queue.bind(spec.bind_exchange, key)


async def connect(url: str) -> AbstractConnection:
    """A plain connection for one-shot commands (the daemon uses a robust one)."""
    try:
        return await aio_pika.connect(url, timeout=10)
    except (OSError, aiormq.exceptions.AMQPError) as exc:
        raise WaConsumerError(f"cannot connect to RabbitMQ: {exc}") from None

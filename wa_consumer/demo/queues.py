"""The demo's queues after the run: the dead letters with their reasons, and what is left."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ..settings import Settings
from ..topology import Topology


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message read from the dead-letter queue, with the reason the daemon attached."""

    internal_id: str | None
    body: bytes
    category: str
    code: str
    message: str
    retries: int


async def count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    try:
        retries = int(_text(headers.get("x-retry-count")) or 0)
    except ValueError:
        retries = 0
    return DeadLetter(
        internal_id=message.message_id,
        body=message.body,
        category=_text(headers.get("x-error-category")),
        code=_text(headers.get("x-error-code")),
        message=_text(headers.get("x-error-message")),
        retries=retries,
    )


async def drain(connection: AbstractConnection, queue_name: str) -> list[DeadLetter]:
    """Take every dead message (the demo's own queue: nothing to hand back)."""
    out: list[DeadLetter] = []
    async with connection.channel() as channel:
        queue = await channel.declare_queue(queue_name, passive=True)
        while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
            out.append(_dead_letter(message))
    return out


async def left(connection: AbstractConnection, settings: Settings) -> dict[str, int]:
    """Messages still in the main queue and the wait queues."""
    names = [settings.queue, *Topology.from_settings(settings).retry_queues.values()]
    async with connection.channel() as channel:
        return {name: await count(channel, name) for name in names}

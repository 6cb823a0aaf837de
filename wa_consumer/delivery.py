"""A message as the broker delivered it, read straight from aiormq.

aio-pika's consumer copies every delivery into an ``IncomingMessage`` and runs the callback
in a task of its own, on top of aiormq's task: about a tenth of the daemon's CPU at full
speed. The daemon consumes on aio-pika's robust channel, below its queue API, and reads the
few fields it needs from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiormq
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage
from pamqp import decode

_strict_timestamp = decode.timestamp


def _lenient_timestamp(value: bytes) -> tuple[int, datetime | None]:
    """pamqp's timestamp decoder, but a time out of Python's range reads as None.

    A producer that writes microseconds where AMQP wants seconds sends a year past 9999; the
    strict decoder then fails the whole content header, the client closes the connection, and
    the same message comes first again after every reconnect: one message would stop them
    all. As None, the pipeline sees a message with no timestamp. Pinned by test_delivery.py.
    """
    try:
        return _strict_timestamp(value)
    except (ValueError, OverflowError, OSError):
        if len(value) < 8:
            raise  # a truncated frame, not an odd time
        return 8, None


decode.METHODS["timestamp"] = _lenient_timestamp  # the ``timestamp`` property
decode.TABLE_MAPPING[b"T"] = _lenient_timestamp  # a timestamp inside headers


class Delivery:
    """One delivery: its body, envelope and properties (those a republished copy keeps)."""

    __slots__ = ("_channel", "_properties", "body", "delivery_tag", "redelivered", "routing_key")

    def __init__(self, message: DeliveredMessage) -> None:
        self._channel = message.channel
        self._properties = message.header.properties
        self.body: bytes = message.body
        delivery = message.delivery
        self.delivery_tag: int | None = getattr(delivery, "delivery_tag", None)
        self.redelivered: bool = bool(getattr(delivery, "redelivered", False))
        self.routing_key: str | None = getattr(delivery, "routing_key", None)

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """Its channel; raises ``ChannelInvalidStateError`` once that is closed (as aio-pika)."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError
        return self._channel

    @property
    def headers(self) -> dict[str, Any]:
        return self._properties.headers or {}

    @property
    def message_id(self) -> str | None:
        return self._properties.message_id

    @property
    def timestamp(self) -> datetime | None:
        return self._properties.timestamp

    @property
    def content_type(self) -> str | None:
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        return self._properties.content_encoding

    @property
    def priority(self) -> int | None:
        return self._properties.priority

    @property
    def correlation_id(self) -> str | None:
        return self._properties.correlation_id

    @property
    def type(self) -> str | None:
        return self._properties.message_type

    @property
    def app_id(self) -> str | None:
        return self._properties.app_id

"""The AMQP headers wa-consumer reads and writes, and their bounded parsing.

A producer controls every header of its message, of any AMQP type and size. What the
pipeline reads from them (``read``) is type-checked and range-checked here, once: a value
out of bounds is that message's own ``invalid``, never an exception in the middle of its
life. What a republished copy carries (``carry``) is made encodable and bounded here: a
header that cannot be written back (non-UTF-8 bytes, a float that overflows AMQP's single
precision) or that would push the header frame towards RabbitMQ's frame limit is dropped,
and its name noted in ``x-dropped-headers``.

Both ``pipeline`` and ``settle`` import this module; it imports nothing of theirs.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from pamqp import encode

# Ours, on retried, dead and replayed copies (SPEC §4).
RETRY_COUNT: Final = "x-retry-count"
REPLAY_COUNT: Final = "x-replay-count"
DELIVERIES: Final = "x-deliveries"  # crash-loop count without a ledger
ERROR_CATEGORY: Final = "x-error-category"
ERROR_CODE: Final = "x-error-code"
ERROR_SUBCODE: Final = "x-error-subcode"
ERROR_MESSAGE: Final = "x-error-message"
FIRST_FAILED: Final = "x-first-failed-at"
FAILED_AT: Final = "x-failed-at"
ORIGINAL_KEY: Final = "x-original-routing-key"
TENANT: Final = "x-tenant-id"
DROPPED: Final = "x-dropped-headers"
# A message released from a held queue by a drain or a breaker's probe: the generation of
# the pause it may pass (wa_consumer/controls).
HELD_RELEASE: Final = "x-held-release"
# W3C trace context a producer may set (the publisher injects it; wa_consumer/tracing.py).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# The broker's: quorum queues count deliveries themselves.
QUORUM_DELIVERIES: Final = "x-delivery-count"
# The broker's own dead-letter bookkeeping, dropped from every copy we publish, or
# RabbitMQ's cycle detection and header growth bite.
BROKER_PREFIXES: Final = ("x-death", "x-first-death-", "x-last-death-")

#: The largest count we accept in our count headers; past it the value is not ours.
MAX_COUNT: Final = 1_000_000
#: Bound on the headers a copy carries from the original, encoded. RabbitMQ's default frame
#: is 128 KiB and a header frame past it closes the whole connection.
MAX_CARRIED_BYTES: Final = 16 * 1024
#: Bound on a text header we write (tenant, routing key): the rest is cut.
MAX_TEXT_BYTES: Final = 512

#: Bound on a ``tracestate`` we pass on (W3C: at most 32 members; 512 is what it asks to keep).
MAX_TRACESTATE_BYTES: Final = 512

_UNENCODABLE = (TypeError, ValueError, OverflowError, struct.error, UnicodeError, RecursionError)


class BadHeader(ValueError):
    """A header the pipeline reads holds a value it cannot use."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f"header {name} {reason}")


@dataclass(frozen=True, slots=True)
class Counts:
    """What the pipeline reads from a delivery's headers."""

    retries: int = 0
    deliveries: int = 0  # ours, or the quorum queue's, whichever is larger
    first_failed_at: datetime | None = None
    replays: int = 0


_NO_COUNTS: Final = Counts()


def read(headers: Mapping[str, Any] | None) -> Counts:
    """The counts a delivery carries; raises ``BadHeader`` for a value out of type or range."""
    if not headers:
        return _NO_COUNTS  # a first delivery: no object made per message
    return Counts(
        retries=count(headers, RETRY_COUNT),
        replays=count(headers, REPLAY_COUNT),
        deliveries=max(count(headers, DELIVERIES), count(headers, QUORUM_DELIVERIES)),
        first_failed_at=moment(headers.get(FIRST_FAILED)),
    )


def count(headers: Mapping[str, Any] | None, name: str) -> int:
    """A whole number in 0..``MAX_COUNT`` (absent: 0); raises ``BadHeader`` otherwise."""
    value = (headers or {}).get(name)
    if value is None:
        return 0
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:32]).decode("ascii", "replace")
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float | Decimal):
        # float() raises on a signalling NaN: a non-finite Decimal is no count either.
        real = math.nan if isinstance(value, Decimal) and not value.is_finite() else float(value)
        if math.isfinite(real) and real.is_integer() and abs(real) <= MAX_COUNT:
            number = int(real)
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 7:
            number = int(text)
    if number is None:
        raise BadHeader(name, f"should be a whole number, not {_shown(value)}")
    if not 0 <= number <= MAX_COUNT:
        raise BadHeader(name, f"is {_shown(number)}, outside 0..{MAX_COUNT}")
    return number


def count_or_zero(headers: Mapping[str, Any] | None, name: str) -> int:
    """``count`` for reporting (DLQ listings): a bad value reads as 0 instead of raising."""
    try:
        return count(headers, name)
    except BadHeader:
        return 0


def held_release(headers: Mapping[str, Any] | None) -> int | None:
    """The pause generation a released message may pass; anything else reads as None."""
    value = (headers or {}).get(HELD_RELEASE)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    return None


_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def trace_context(headers: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The W3C trace context a delivery carries, as a carrier for a propagator; None when
    there is none or its ``traceparent`` is malformed (a bad one is ignored, never an error).

    Only version ``00`` of ``traceparent`` (55 characters) is read; ``tracestate`` is passed on
    when it is short ASCII text, and dropped otherwise.
    """
    if not headers:
        return None
    parent = _short_ascii(headers.get(TRACEPARENT), 55)
    if parent is None or _TRACEPARENT.fullmatch(parent) is None:
        return None
    carrier = {TRACEPARENT: parent}
    state = _short_ascii(headers.get(TRACESTATE), MAX_TRACESTATE_BYTES)
    if state is not None:
        carrier[TRACESTATE] = state
    return carrier


def _short_ascii(value: object, limit: int) -> str | None:
    if isinstance(value, bytes | bytearray):
        if len(value) > limit:
            return None
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > limit or not value.isascii():
        return None
    return value


def moment(value: object) -> datetime | None:
    """An ISO-8601 time (or AMQP timestamp), always with a zone; anything else is None."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:64]).decode("ascii", "ignore")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


def broker_can_dead_letter(headers: Mapping[str, Any] | None) -> bool:
    """Whether RabbitMQ's own dead-lettering can take a message with these headers.

    The broker rewrites ``x-death`` when it dead-letters; one a producer forged (an array
    holding anything but tables of the broker's field types) crashes the queue on some
    RabbitMQ versions. Such a message is never handed to the broker's dead-lettering.
    """
    for key, value in (headers or {}).items():
        if not key.startswith(BROKER_PREFIXES):
            continue
        if key == "x-death":
            if not isinstance(value, list) or not all(_death(entry) for entry in value):
                return False
        elif not isinstance(value, str):
            return False
    return True


def _death(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    for value in entry.values():
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                return False
        elif isinstance(value, bool) or not isinstance(value, int | str | datetime):
            return False
    return True


def carry(headers: Mapping[str, Any] | None, limit: int = MAX_CARRIED_BYTES) -> dict[str, Any]:
    """A copy of ``headers`` that can be published again.

    Without the broker's dead-letter bookkeeping, without any value that cannot be encoded,
    and at most ``limit`` bytes encoded (the largest go first). Dropped names are listed in
    ``x-dropped-headers``.
    """
    if not headers:
        return {}
    kept: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    dropped: list[str] = []
    for key, value in headers.items():
        if not isinstance(key, str) or key.startswith(BROKER_PREFIXES) or key == DROPPED:
            continue
        size = encoded_size(key, value)
        if size is None:
            dropped.append(key)
            continue
        kept[key] = value
        sizes[key] = size
    total = sum(sizes.values())
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= limit:
            break
        total -= sizes[key]
        del kept[key]
        dropped.append(key)
    if dropped:
        kept[DROPPED] = text(",".join(sorted(dropped)))
    return kept


def encoded_size(key: str, value: Any) -> int | None:
    """Bytes of one header as AMQP encodes it; None when it cannot be encoded."""
    if len(key.encode("utf-8", "replace")) > 128:
        return None  # pamqp would cut the name; a different header than the producer's
    try:
        return len(encode.field_table({key: value}))
    except _UNENCODABLE:
        return None


def text(value: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``value`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    raw = value.encode("utf-8", "replace")
    if len(raw) <= limit:
        return value
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def _shown(value: object) -> str:
    return text(repr(value), 60)

"""What the daemon relies on below aio-pika's API, pinned: fails when an upgrade changes it."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from pamqp import commands, decode, header

import wa_consumer.delivery  # noqa: F401 - installs the lenient timestamp decoding


def _content_header(timestamp_seconds: int) -> bytes:
    properties = commands.Basic.Properties(message_id="m-1")
    frame = header.ContentHeader(0, 10, properties).marshal()
    # The same header with a timestamp added by hand: pamqp would refuse to encode this one.
    flags = struct.unpack(">H", frame[12:14])[0] | 0x0040
    return frame[:12] + struct.pack(">H", flags) + frame[14:] + struct.pack(">Q", timestamp_seconds)


def test_a_timestamp_past_year_9999_reads_as_none_instead_of_failing_the_frame() -> None:
    # Microseconds where seconds belong: the year 57425 (pamqp reads it as milliseconds).
    parsed = header.ContentHeader()
    parsed.unmarshal(_content_header(1_749_000_000_000_000_000))
    assert parsed.properties.timestamp is None
    assert parsed.properties.message_id == "m-1"


def test_an_ordinary_timestamp_still_reads_as_a_time() -> None:
    parsed = header.ContentHeader()
    parsed.unmarshal(_content_header(1_700_000_000))
    assert parsed.properties.timestamp == datetime.fromtimestamp(1_700_000_000, tz=UTC)


def test_a_timestamp_in_a_header_table_past_year_9999_reads_as_none() -> None:
    raw = b"\x00\x00\x00\x0b" + b"\x01t" + b"T" + struct.pack(">Q", 2**62)
    _, table = decode.field_table(raw)
    assert table == {"t": None}

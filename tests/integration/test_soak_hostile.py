"""A live soak of hostile input (SPEC §3, §4, §9): 10,000 hostile messages mixed with 1,000
good ones through a running daemon with the ledger on.

Seen from outside: every good message is sent exactly once (the sandbox's request log) and
all of them promptly; every hostile one ends in exactly one place, dead with a reason or sent
once if it was valid after all; nothing is left in the main or wait queues; the daemon never
pauses and its broker connection is never reopened.

The input is drawn from a seeded random (``WA_SOAK_SEED``), so a failure can be replayed. One
summary line is printed (run with ``-s``) and, if ``WA_CHAOS_REPORT`` names a file, appended
to it as a JSON line.

Timestamps past the year 9999 (a header or the ``timestamp`` property) are left out here: the
daemon's AMQP client cannot decode such a message at all, and one of them stalls the whole
queue, so the soak would measure nothing else. ``test_hostile`` covers them on their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from wa_consumer.message import MAX_MESSAGE_BYTES

from .harness import text_message, wait_for
from .test_hostile import (
    Double,
    Out,
    RawLongString,
    allow_raw_values,
    live,
    queue_counts,
    sends,
    settings_for,
)

pytestmark = pytest.mark.integration


SEED = int(os.environ.get("WA_SOAK_SEED", "20261206"))
GOOD = int(os.environ.get("WA_SOAK_GOOD", "1000"))
HOSTILE = int(os.environ.get("WA_SOAK_HOSTILE", "10000"))
#: Every good message is sent within this many seconds of the first publish...
GOOD_WITHIN_SECONDS = 60.0
#: ...and within this many seconds of its own publish (its batch's, to be exact).
GOOD_LATENCY_SECONDS = 10.0
#: Everything settled (good sent, hostile dead or sent) within this.
ALL_WITHIN_SECONDS = 80.0

GOOD_PREFIX = "2797"  # + 7 digits: the i-th good message's recipient
HOSTILE_PREFIX = "2798"  # + 7 digits: the i-th hostile message's recipient, where it has one


def good_to(i: int) -> str:
    return f"{GOOD_PREFIX}{i:07d}"


def hostile_to(i: int) -> str:
    return f"{HOSTILE_PREFIX}{i:07d}"


# -- the hostile input ---------------------------------------------------------------------


@dataclass
class Hostile:
    index: int
    kind: str
    out: Out


class Factory:
    """Hostile messages of every kind, from one seeded random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kinds: dict[str, tuple[float, Callable[[int], Out]]] = {
            "random_bytes": (10, self.random_bytes),
            "truncated_json": (10, self.truncated_json),
            "wrong_types": (16, self.wrong_types),
            "huge_ids": (8, self.huge_ids),
            "nul": (8, self.nul),
            "deep_nesting": (6, self.deep_nesting),
            "bad_headers": (22, self.bad_headers),
            "unknown_type": (8, self.unknown_type),
            "tenant_and_time": (8, self.tenant_and_time),
            "oversized": (0.3, self.oversized),
            "near_the_limit": (0.3, self.near_the_limit),
        }

    def make(self, index: int) -> Hostile:
        names = list(self.kinds)
        kind = self.rng.choices(names, weights=[self.kinds[n][0] for n in names])[0]
        out = self.kinds[kind][1](index)
        out.message_id = f"h-{index}"  # kept on a dead copy: which hostile message it was
        return Hostile(index, kind, out)

    # a valid message of this hostile one, to spoil
    def base(self, index: int) -> dict[str, Any]:
        tenant = self.rng.choice(["acme", "globex"])
        return text_message(tenant, hostile_to(index), internal_id=self.uuid())

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def random_bytes(self, index: int) -> Out:
        body = self.rng.randbytes(self.rng.randint(0, 4096))
        prefix = self.rng.choice([b"", b"{", b"\xef\xbb\xbf", b'{"metadata":'])
        return Out(prefix + body)

    def truncated_json(self, index: int) -> Out:
        body = orjson.dumps(self.base(index))
        return Out(body[: self.rng.randint(1, len(body) - 1)])

    def wrong_types(self, index: int) -> Out:
        m = self.base(index)
        meta, waba = m["metadata"], m["wabaPayload"]
        spoil: list[Callable[[], None]] = [
            lambda: m.update(metadata=self.rng.choice([[], "acme", None, 7, True])),
            lambda: meta.update(tenantId=self.rng.choice([123, [], {}, True, None, ""])),
            lambda: meta.update(internalId=self.rng.choice([1.5, None, "", ["x"], {"a": 1}])),
            lambda: meta.update(phoneNumberId=self.rng.choice([106540352242922, "abc", [], ""])),
            lambda: meta.update(expiresAt=self.rng.choice(["tomorrow", [], {}, "2026-13-45"])),
            lambda: m.update(wabaPayload=self.rng.choice(["text", [], None, 0])),
            lambda: waba.update(to=self.rng.choice([27820000000, [], {}, None, True])),
            lambda: waba.update(text=self.rng.choice(["hi", [], None, 5])),
            lambda: waba["text"].update(body=self.rng.choice([{}, 5, None, ["a"], False])),
            lambda: waba.update(messaging_product=self.rng.choice(["sms", 1, None])),
            lambda: m.pop(self.rng.choice(["metadata", "wabaPayload"])),
            lambda: meta.pop(self.rng.choice(["tenantId", "internalId"])),
        ]
        for _ in range(self.rng.randint(1, 3)):
            with contextlib.suppress(AttributeError, TypeError, KeyError):
                self.rng.choice(spoil)()  # (fails where an earlier spoil took the part away)
        return Out(orjson.dumps(m))

    def huge_ids(self, index: int) -> Out:
        m = self.base(index)
        size = self.rng.choice([257, 1_000, 5_000, 60_000])
        field, value = self.rng.choice(
            [
                ("internalId", "i" * size),
                ("tenantId", "t" * size),
                ("phoneNumberId", "1" * size),
                ("to", "2" * size),
            ]
        )
        (m["wabaPayload"] if field == "to" else m["metadata"])[field] = value
        return Out(orjson.dumps(m))

    def nul(self, index: int) -> Out:
        m = self.base(index)
        where = self.rng.choice(["value", "key", "nested", "internalId", "tenantId", "list"])
        meta = m["metadata"]
        if where == "value":
            meta["note"] = "a\u0000b"
        elif where == "key":
            meta["k\u0000"] = "v"
        elif where == "nested":
            meta["deep"] = {"a": {"b": "\u0000"}}
        elif where == "list":
            meta["tags"] = ["ok", "\u0000"]
        else:
            meta[where] = meta[where] + "\u0000"
        return Out(orjson.dumps(m))

    def deep_nesting(self, index: int) -> Out:
        depth = self.rng.choice([17, 64, 300, 1_200])
        nested = b'{"n":' * depth + b"1" + b"}" * depth
        where = self.rng.choice([b'"metadata":{', b'"text":{'])
        body = orjson.dumps(self.base(index))
        return Out(body.replace(where, where + b'"deep":' + nested + b",", 1))

    def unknown_type(self, index: int) -> Out:
        m = self.base(index)
        waba = m["wabaPayload"]
        kind = self.rng.choice(["fax", "TEXT", "", 123, None, "image", "template", "missing"])
        if kind == "missing":
            del waba["type"]
        else:
            waba["type"] = kind
            if isinstance(kind, str) and kind:
                waba[kind] = {"nonsense": True}
        return Out(orjson.dumps(m))

    def tenant_and_time(self, index: int) -> Out:
        m = self.base(index)
        meta = m["metadata"]
        choice = self.rng.choice(["unknown", "suspended", "mismatch", "expired", "bad_number"])
        if choice == "unknown":
            meta["tenantId"] = f"nobody-{index}"
        elif choice == "suspended":
            meta["tenantId"] = "initech"
        elif choice == "mismatch":
            meta["tenantId"], meta["phoneNumberId"] = "acme", "107650492331811"
        elif choice == "expired":
            meta["expiresAt"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        else:
            meta["phoneNumberId"] = "9" * 20
        return Out(orjson.dumps(m), tenant=self.rng.choice(["acme", "globex", "nobody"]))

    def oversized(self, index: int) -> Out:
        m = self.base(index)
        over = MAX_MESSAGE_BYTES + self.rng.randint(1, 40_000)
        m["wabaPayload"]["text"]["body"] = ""
        pad = over - len(orjson.dumps(m))
        m["wabaPayload"]["text"]["body"] = "x" * pad
        return Out(orjson.dumps(m))

    def near_the_limit(self, index: int) -> Out:
        m = self.base(index)
        size = MAX_MESSAGE_BYTES - self.rng.randint(200, 2_000)
        where = self.rng.choice(["text", "metadata", "payload"])
        pad = "y" * (size - len(orjson.dumps(m)) - 20)
        if where == "text":
            m["wabaPayload"]["text"]["body"] = pad  # over 4096 characters
        elif where == "metadata":
            m["metadata"]["blob"] = pad  # over the metadata bound
        else:
            m["wabaPayload"]["x_unknown"] = pad  # an unknown field Meta would refuse
        return Out(orjson.dumps(m))

    # -- headers and properties of every AMQP type ------------------------------------------------

    def header_value(self) -> Any:
        r = self.rng
        return r.choice(
            [
                lambda: r.choice([True, False]),
                lambda: r.randint(-128, 127),
                lambda: r.randint(-(2**31), 2**31 - 1),
                lambda: r.choice([2**31, 2**32, 3_000_000_000, 2**63 - 1, -(2**63)]),
                lambda: r.choice([0.5, 1e30, -1e30, 3.4e38]),  # (NaN, inf: the broker refuses)
                lambda: Double(r.choice([1e300, -1e300, 2.5, 5e-324])),
                lambda: Decimal(r.choice(["1.5", "-2147483648", "0.000001", "3"])),
                lambda: r.choice(["3", "-1", "1e3", " 7 ", "\u0663", "", "x" * 20_000]),
                lambda: RawLongString(r.randbytes(r.randint(1, 64)) + b"\xff"),
                lambda: bytearray(r.randbytes(r.randint(0, 64))),
                lambda: None,
                lambda: r.choice(
                    [datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)]
                ),
                lambda: {"a": RawLongString(b"\xfe"), "b": [Double(1e300), 1]},
                lambda: [1, "two", bytearray(b"3"), {"four": None}],
                lambda: r.choice(["2026-11-24T12:00:00Z", "0001-01-01T00:00:00", "soon"]),
            ]
        )()

    def bad_headers(self, index: int) -> Out:
        names = [
            "x-retry-count", "x-deliveries", "x-delivery-count", "x-first-failed-at",
            "x-replay-count", "x-tenant-id", "x-original-routing-key", "x-error-message",
            "x-error-subcode", "x-death", "x-first-death-queue", "x-dropped-headers",
            f"x-producer-{self.rng.randint(0, 99)}",
        ]  # fmt: skip
        headers = {
            self.rng.choice(names): self.header_value() for _ in range(self.rng.randint(1, 6))
        }
        if self.rng.random() < 0.05:  # and the frame filled towards its limit
            headers.update({f"x-pad-{i:03d}": "p" * 1000 for i in range(100)})
        out = Out(orjson.dumps(self.base(index)), headers=headers)
        if self.rng.random() < 0.2:
            out.timestamp = self.rng.choice(
                [datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)]
            )
        return out


def good_message(i: int, rng: random.Random) -> Out:
    tenant = "acme" if i % 2 else "globex"
    internal_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    message = text_message(tenant, good_to(i), f"good {i}", internal_id=internal_id)
    return Out(orjson.dumps(message), tenant, message_id=internal_id)


# -- reading the outcome -------------------------------------------------------------------


async def take_all(connection: AbstractConnection, queue: str) -> list[AbstractIncomingMessage]:
    """Everything now in ``queue``, fast (a consumer with a large prefetch, not one get each)."""
    channel = await connection.channel()
    try:
        q = await channel.declare_queue(queue, passive=True)
        expected = q.declaration_result.message_count or 0
        got: list[AbstractIncomingMessage] = []
        if not expected:
            return got
        await channel.set_qos(prefetch_count=2_000)
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            got.append(message)
            if len(got) >= expected:
                done.set()

        tag = await q.consume(on_message, no_ack=True)
        await asyncio.wait_for(done.wait(), 60)
        await q.cancel(tag)
        return got
    finally:
        await channel.close()


def report(line: dict[str, Any]) -> None:
    print("\nSOAK " + " ".join(f"{k}={v}" for k, v in line.items()))
    path = os.environ.get("WA_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


async def test_ten_thousand_hostile_messages_never_hold_up_the_thousand_good_ones(
    vhost, sandbox, database, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_raw_values(monkeypatch)
    sandbox.state.configure(max_requests=100_000)
    # No breaker: it would pause initech (suspended) after a few deaths and hold the rest of
    # its messages, as it should (test_tenant_controls.py); here each must end dead or sent.
    settings = settings_for(
        vhost, sandbox, database, prefetch=200, retry_delays=[0.2, 0.4], breaker_threshold=0
    )
    rng = random.Random(SEED)
    factory = Factory(rng)
    hostile = [factory.make(i) for i in range(HOSTILE)]
    good = [good_message(i, rng) for i in range(GOOD)]
    outs = [h.out for h in hostile] + good
    rng.shuffle(outs)
    good_tos = {good_to(i) for i in range(GOOD)}
    hostile_tos = {hostile_to(i): i for i in range(HOSTILE)}

    def counted() -> tuple[collections.Counter[str], int, int]:
        sent = sends(sandbox)
        good_sent = sum(1 for to in sent if to in good_tos)
        hostile_sent = sum(1 for to in sent if to in hostile_tos)
        return sent, good_sent, hostile_sent

    async with live(settings) as run:
        started = time.monotonic()
        published_at: dict[str, float] = {}  # message_id -> when its batch was published
        for i in range(0, len(outs), 500):
            batch = outs[i : i + 500]
            stamp = time.time()
            published_at.update((o.message_id or "", stamp) for o in batch)
            await run.producer.send_many(batch, batch=500)
        published = time.monotonic() - started
        dlq = settings.dead_letter_queue
        deadline = started + ALL_WITHIN_SECONDS
        good_done: float | None = None
        while True:
            _, good_sent, hostile_sent = counted()
            if good_done is None and good_sent >= GOOD:
                good_done = time.monotonic() - started
            dead_now = await run.broker.count(dlq)
            if good_sent >= GOOD and dead_now + hostile_sent >= HOSTILE:
                break
            assert time.monotonic() < deadline, (
                f"after {ALL_WITHIN_SECONDS} s: good sent {good_sent}/{GOOD}, "
                f"hostile dead {dead_now} + sent {hostile_sent} of {HOSTILE}"
            )
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        assert run.daemon.pipeline is not None
        await wait_for(lambda: _quiet(run.daemon))
        dead = await take_all(run.broker.connection, dlq)
        counts = dict(run.daemon.pipeline.counts)
    left = await queue_counts(settings, run.daemon)  # after the stop: unacked ones are back

    sent, good_sent, hostile_sent = counted()
    duplicates = sum(n - 1 for n in sent.values())
    good_ids = {good_to(i): g.message_id or "" for i, g in enumerate(good)}
    latency = sorted(
        r["at"] - published_at[good_ids[to]]
        for r in sandbox.state.requests()
        if r["outcome"] == "sent" and (to := (r["body"] or {}).get("to")) in good_ids
    )
    by_kind = collections.Counter(h.kind for h in hostile)
    by_category = collections.Counter(d.headers.get("x-error-category") for d in dead)
    line = {
        "test": "soak_hostile",
        "seed": SEED,
        "messages": len(outs),
        "good_sent": good_sent,
        "hostile_dead": len(dead),
        "hostile_sent": hostile_sent,
        "duplicates": duplicates,
        "seconds": round(elapsed, 2),
        "publish_seconds": round(published, 2),
        "good_done_seconds": round(good_done or elapsed, 2),
        "good_latency_p50": round(latency[len(latency) // 2], 3),
        "good_latency_max": round(latency[-1], 3),
        "rate": round(len(outs) / elapsed),
        "dead_by_category": dict(by_category),
        "counts": counts,
        "hostile_by_kind": dict(by_kind),
    }
    report(line)

    # Every good one sent exactly once, all of them promptly, none dead.
    assert good_sent == GOOD
    assert {to: n for to, n in sent.items() if to in good_tos and n != 1} == {}
    assert latency[-1] < GOOD_LATENCY_SECONDS, latency[-10:]
    assert (good_done or elapsed) < GOOD_WITHIN_SECONDS
    # No send to anyone but the recipients of this run; no duplicate send at all.
    assert set(sent) <= good_tos | set(hostile_tos)
    assert duplicates == 0
    # Every hostile one in exactly one place: one dead copy with a reason, or sent once.
    dead_ids = collections.Counter(d.message_id for d in dead)
    assert {m: n for m, n in dead_ids.items() if n > 1} == {}
    assert set(dead_ids) <= {f"h-{i}" for i in range(HOSTILE)}, "a good message is dead"
    sent_hostile = {f"h-{hostile_tos[to]}" for to in sent if to in hostile_tos}
    assert not sent_hostile & set(dead_ids), "a hostile message both sent and dead"
    assert len(dead_ids) + len(sent_hostile) == HOSTILE
    by_id = {h.out.message_id: h for h in hostile}
    for d in dead:
        category, reason = d.headers.get("x-error-category"), d.headers.get("x-error-message")
        assert category and reason, (d.message_id, d.headers)
        assert len(str(reason).encode()) <= settings.error_text_bytes
        assert d.body == by_id[d.message_id].out.body, d.message_id  # body unchanged
    # Nothing left behind, unacked or waiting.
    assert not any(left.values()), left
    assert counts.get("handed_back", 0) == 0
    # A hostile body is the producer's fault, never taken for a fault of ours (retried).
    internal = collections.Counter(
        by_id[d.message_id].kind for d in dead if d.headers.get("x-error-code") == "internal_error"
    )
    assert not internal, f"hostile input handled as an internal error: {dict(internal)}"


async def _quiet(daemon: Any) -> bool:
    return not daemon.pipeline.in_flight

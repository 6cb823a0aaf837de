"""Hostile producers, seen from outside (SPEC §3, §4, §9): whatever one message carries in its
body, its properties or its headers, it ends in exactly one place, with a reason an operator
can read, and the messages around it are sent once, promptly, without the daemon pausing or
its broker connection closing.

What is asserted is what an operator sees: the dead-letter queue (bodies and headers), the
sandbox's request log, the ledger's rows, and whether the daemon kept consuming.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractConnection, AbstractExchange
from pamqp import commands, encode
from yarl import URL

from wa_consumer.consumer import Daemon
from wa_consumer.sandbox import FailureRule
from wa_consumer.settings import Settings

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for

pytestmark = pytest.mark.integration

#: How long the good messages around a hostile one may take, all of them, once published.
PROMPT_SECONDS = 15.0
#: A dead copy's headers, encoded, stay far below RabbitMQ's 128 KiB frame.
SMALL_HEADERS = 20 * 1024


# -- AMQP values aio-pika does not write (a producer in another language may) ------------------


class RawLongString(bytes):
    """Written as an AMQP long string (``S``) with these bytes as they are: may be non-UTF-8."""


class Double(float):
    """Written as an AMQP double (``d``); aio-pika writes every float as a single (``f``)."""


class RawTimestamp(int):
    """Written as an AMQP timestamp (``T``) of this many units, whatever their range."""


def allow_raw_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this process publish the values above (the daemon reads plain ones only)."""
    table_value = encode.encode_table_value
    timestamp = encode.METHODS["timestamp"]

    def encode_value(value: Any) -> bytes:
        if isinstance(value, RawLongString):
            return b"S" + struct.pack(">I", len(value)) + bytes(value)
        if isinstance(value, Double):
            return b"d" + struct.pack(">d", value)
        if isinstance(value, RawTimestamp):
            return b"T" + struct.pack(">Q", value)
        return table_value(value)

    def encode_timestamp(value: Any) -> bytes:
        if isinstance(value, RawTimestamp):
            return struct.pack(">Q", value)
        return timestamp(value)

    monkeypatch.setattr(encode, "encode_table_value", encode_value)
    monkeypatch.setitem(encode.METHODS, "timestamp", encode_timestamp)


@pytest.fixture
def amqp_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    allow_raw_values(monkeypatch)


# -- publishing like a (careless) producer ------------------------------------------------------


@dataclass
class Out:
    """One message as a producer publishes it: any bytes, any headers, any properties."""

    body: bytes
    tenant: str = "acme"
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    timestamp: Any = None  # a RawTimestamp goes through aiormq (aio-pika converts its own)


class Producer:
    """One channel with publisher confirms; batches published at once, every confirm awaited."""

    def __init__(self, connection: AbstractConnection, settings: Settings) -> None:
        self._connection = connection
        self._settings = settings
        self._exchange: AbstractExchange | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def __aenter__(self) -> Producer:
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.get_exchange(self._settings.exchange)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._channel is not None
        await self._channel.close()

    def _key(self, tenant: str) -> str:
        return f"{self._settings.routing_key_prefix}.{tenant}"

    async def send(self, out: Out) -> None:
        assert self._exchange is not None and self._channel is not None
        if isinstance(out.timestamp, RawTimestamp):
            underlay = await self._channel.get_underlay_channel()
            properties = commands.Basic.Properties(
                delivery_mode=2,
                content_type="application/json",
                headers=out.headers,
                message_id=out.message_id,
                timestamp=out.timestamp,
            )
            confirm = await underlay.basic_publish(
                out.body,
                exchange=self._settings.exchange,
                routing_key=self._key(out.tenant),
                properties=properties,
                mandatory=True,
            )
        else:
            message = aio_pika.Message(
                out.body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                headers=out.headers,
                message_id=out.message_id,
                timestamp=out.timestamp,
            )
            confirm = await self._exchange.publish(
                message, routing_key=self._key(out.tenant), mandatory=True
            )
        assert isinstance(confirm, commands.Basic.Ack), confirm

    async def send_many(self, outs: Iterable[Out], batch: int = 500) -> None:
        pending: list[Out] = []
        for out in outs:
            pending.append(out)
            if len(pending) >= batch:
                await asyncio.gather(*(self.send(o) for o in pending))
                pending.clear()
        if pending:
            await asyncio.gather(*(self.send(o) for o in pending))


def good(to: str, tenant: str = "acme", **meta: Any) -> Out:
    message = text_message(tenant, to, **meta)
    return Out(orjson.dumps(message), tenant, message_id=message["metadata"]["internalId"])


def recipients(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


# -- what an operator sees ------------------------------------------------------------------------


def sends(sandbox: Any) -> collections.Counter[str]:
    """Accepted sends per recipient, from the sandbox's request log."""
    return collections.Counter(
        (r["body"] or {}).get("to") for r in sandbox.state.requests() if r["outcome"] == "sent"
    )


def requests_to(sandbox: Any, to: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.requests() if (r["body"] or {}).get("to") == to]


async def all_sent(
    sandbox: Any, tos: Sequence[str], timeout: float = PROMPT_SECONDS, since: float | None = None
) -> float:
    """Wait until every one of ``tos`` was sent; returns the seconds since ``since`` (or since
    the call). Fails naming how many are still unsent."""
    started = time.monotonic() if since is None else since
    wanted = set(tos)
    deadline = time.monotonic() + timeout
    while missing := wanted - set(sends(sandbox)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {len(wanted)} not sent within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def header_bytes(headers: dict[str, Any] | None) -> int:
    return len(encode.field_table(dict(headers or {})))


async def queue_counts(settings: Settings, daemon: Daemon) -> dict[str, int]:
    """Messages now in the main queue and each wait queue (the DLQ is read separately)."""
    names = [settings.queue, *daemon.topology.retry_queues.values()]
    async with broker_for(settings) as broker:
        return {name: await broker.count(name) for name in names}


async def settled_everywhere(settings: Settings, daemon: Daemon) -> bool:
    """Nothing waits in the main or wait queues, and nothing is in flight."""
    assert daemon.pipeline is not None
    counts = await queue_counts(settings, daemon)
    return not any(counts.values()) and not daemon.pipeline.in_flight


@dataclass
class Watch:
    """Whether the daemon stopped consuming, or its broker links were replaced, at any time."""

    daemon: Daemon
    paused_at: list[float] = field(default_factory=list)
    links: tuple[object, ...] = ()


async def _links(daemon: Daemon) -> tuple[object, ...]:
    """The daemon's AMQP connection and channels as they are now (new ones after a close).

    Private attributes: nothing public tells a reopened channel from the first one.
    """
    assert daemon.pipeline is not None and daemon._connection is not None
    assert daemon._channel is not None
    publish = daemon.pipeline.settler._channel
    return (
        daemon._connection.transport,
        await daemon._channel.get_underlay_channel(),
        await publish.get_underlay_channel(),  # type: ignore[attr-defined]
    )


@asynccontextmanager
async def never_paused(daemon: Daemon) -> AsyncIterator[Watch]:
    """The block must run without the daemon pausing, handing back or reconnecting."""
    watch = Watch(daemon, links=await _links(daemon))

    async def sample() -> None:
        while True:
            if not daemon.consuming.is_set():
                watch.paused_at.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(sample())
    try:
        yield watch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert daemon.pipeline is not None
    assert not watch.paused_at, f"consuming paused {len(watch.paused_at)} samples"
    assert daemon.pipeline.counts["handed_back"] == 0, daemon.pipeline.counts
    assert await _links(daemon) == watch.links, "the broker connection or a channel was reopened"


def settings_for(vhost: str, sandbox: Any, database: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database, "number_rate": 0, "prefetch": 200}
    values.update(overrides)
    return make_settings(vhost, sandbox.url, **values)


@dataclass
class Live:
    daemon: Daemon
    broker: Broker
    producer: Producer


@asynccontextmanager
async def live(settings: Settings) -> AsyncIterator[Live]:
    """A daemon, a broker view and a producer; the block must not pause the daemon."""
    async with (
        running(settings) as daemon,
        broker_for(settings) as broker,
        never_paused(daemon),
        Producer(broker.connection, settings) as producer,
    ):
        yield Live(daemon, broker, producer)


# -- 1. a count header past any bound -------------------------------------------------------------


async def test_retry_count_of_three_billion_is_dead_invalid_and_the_200_around_it_go_at_once(
    vhost, sandbox, database
) -> None:
    settings = settings_for(vhost, sandbox, database)
    tos = recipients("2791", 200)
    hostile = good("27919999999")
    hostile.headers = {"x-retry-count": 3_000_000_000}
    outs = [good(to) for to in tos[:100]] + [hostile] + [good(to) for to in tos[100:]]
    async with live(settings) as run:
        started = time.monotonic()
        await run.producer.send_many(outs)
        took = await all_sent(sandbox, tos, since=started)
        [dead] = await run.broker.dead(1)
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
    assert dead.body == hostile.body
    assert dead.headers["x-error-category"] == "invalid"
    assert "x-retry-count" in dead.headers["x-error-message"], dead.headers
    assert dead.headers["x-tenant-id"] == "acme"
    assert dead.message_id == hostile.message_id
    assert set(sends(sandbox).values()) == {1}
    assert "27919999999" not in sends(sandbox)
    assert took < PROMPT_SECONDS
    print(f"200 good messages published and sent in {took:.2f} s around the hostile one")


# -- 2. values the ledger or the broker could not keep -----------------------------------------


def _deep(levels: int, where: bytes = b'"metadata":{') -> bytes:
    """A message with an object nested ``levels`` deep at ``where`` (orjson refuses to write
    past 255 levels, so it is written by hand)."""
    body = orjson.dumps(text_message("acme", "27920000001"))
    nested = b'{"n":' * levels + b"1" + b"}" * levels
    return body.replace(where, where + b'"deep":' + nested + b",", 1)


def _with_meta(**meta: Any) -> bytes:
    message = text_message("acme", "27920000002")
    message["metadata"].update(meta)
    return orjson.dumps(message)


UNKEEPABLE = {
    "nul_in_metadata": (_with_meta(note="before\u0000after"), "NUL"),
    "internal_id_5kb": (_with_meta(internalId="i" * 5 * 1024), "metadata.internalId"),
    "metadata_nested_300": (_deep(300), "deeper"),
    "payload_nested_300": (_deep(300, b'"text":{'), "wabaPayload"),
    "tenant_id_140kb": (_with_meta(tenantId="t" * 140 * 1024), "metadata.tenantId"),
}


@pytest.mark.parametrize("case", list(UNKEEPABLE))
async def test_values_the_ledger_or_broker_cannot_keep_are_dead_invalid_with_small_headers(
    vhost, sandbox, database, case: str
) -> None:
    body, hint = UNKEEPABLE[case]
    settings = settings_for(vhost, sandbox, database)
    tos = recipients("2792", 60)
    outs = [good(to) for to in tos[:30]] + [Out(body)] + [good(to) for to in tos[30:]]
    async with live(settings) as run:
        await run.producer.send_many(outs)
        await all_sent(sandbox, tos)
        [dead] = await run.broker.dead(1)
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
    assert set(sends(sandbox).values()) == {1}
    assert set(sends(sandbox)) == set(tos)  # (and no call for the hostile one)
    assert dead.body == body  # unchanged, byte for byte
    headers = dead.headers
    assert headers["x-error-category"] == "invalid", headers
    assert hint.lower() in headers["x-error-message"].lower(), headers
    assert headers["x-retry-count"] == 0  # dead at once, never retried
    assert len(headers["x-error-message"].encode()) <= settings.error_text_bytes
    assert len(headers.get("x-tenant-id", "").encode()) <= 512
    assert header_bytes(headers) < 4096, header_bytes(headers)


# -- 3. headers that cannot be written back as they came ----------------------------------------


@dataclass(frozen=True)
class Hostile:
    """Headers and properties a producer set, and (prefixes of) the names a copy must say it
    dropped."""

    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: RawTimestamp | None = None
    dropped: frozenset[str] = frozenset()


HEADERS: dict[str, Hostile] = {
    "non_utf8_string": Hostile(
        {"x-trace": RawLongString(b"caf\xe9 \xff\xfe")}, dropped=frozenset({"x-trace"})
    ),
    "double_1e300": Hostile({"x-score": Double(1e300)}, dropped=frozenset({"x-score"})),
    "100kb_of_headers": Hostile(
        {f"x-pad-{i:03d}": "p" * 1000 for i in range(100)},
        dropped=frozenset({"x-pad-"}),  # some of them: the copy stays small
    ),
    "one_100kb_header": Hostile(
        {"x-original-routing-key": "k" * 100_000}, dropped=frozenset({"x-original-routing-key"})
    ),
    "nested_bad_values": Hostile(
        {"x-nest": {"a": RawLongString(b"\xff"), "b": [Double(1e300)]}},
        dropped=frozenset({"x-nest"}),
    ),
    "our_headers_of_odd_types": Hostile(
        {
            "x-first-failed-at": RawLongString(b"\xff\xfe"),
            "x-tenant-id": Double(1e300),
            "x-error-message": bytearray(b"\x00\x01"),
            "x-error-subcode": 2**40,
            "x-replay-count": "many",
        },
        dropped=frozenset({"x-first-failed-at", "x-tenant-id"}),
    ),
    "broker_headers_forged": Hostile(
        {
            "x-death": "forged",
            "x-first-death-queue": RawLongString(b"\xff"),
            "x-last-death-reason": 7,
        }
    ),
    "timestamp_header_past_9999": Hostile({"x-sent-at": RawTimestamp(2**63)}),
    # A producer writing microseconds where AMQP wants seconds (a common slip).
    "timestamp_property_in_microseconds": Hostile(timestamp=RawTimestamp(1_750_000_000_000_000)),
}


@pytest.mark.parametrize("case", list(HEADERS))
@pytest.mark.usefixtures("amqp_extras")
async def test_headers_that_cannot_be_written_back_still_end_in_exactly_one_place(
    vhost, sandbox, database, case: str
) -> None:
    """One copy goes through two retries (transient twice, then sent), one is dead at once
    (permanent): every republished copy must be taken by the broker."""
    hostile_props = HEADERS[case]
    settings = settings_for(vhost, sandbox, database)
    tos = recipients("2793", 40)
    retried, permanent = "15550010000", "15550000000"
    hostile = []
    for to in (retried, permanent):
        out = good(to)
        out.headers = dict(hostile_props.headers) or None
        out.timestamp = hostile_props.timestamp
        hostile.append(out)
    outs = [good(to) for to in tos[:20]] + hostile + [good(to) for to in tos[20:]]
    async with live(settings) as run:
        await run.producer.send_many(outs)
        await all_sent(sandbox, tos)
        await wait_for(lambda: _finished(sandbox, retried, permanent, run.broker, settings))
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
        dead = await run.broker.drain(settings.dead_letter_queue)
    assert set(sends(sandbox).values()) == {1}
    retried_requests = [r["outcome"] for r in requests_to(sandbox, retried)]
    dead_by_to = {orjson.loads(d.body)["wabaPayload"]["to"]: d for d in dead}
    # Exactly one place each: the retried one sent once after its two failures, or dead
    # (invalid, without a call) with a reason; the permanent one dead once.
    if retried in dead_by_to:
        assert retried_requests == []
        assert dead_by_to[retried].headers["x-error-category"] == "invalid"
    else:
        assert retried_requests == ["failed", "failed", "sent"]
    assert len(dead) == len(dead_by_to) == (2 if retried in dead_by_to else 1)
    for d in dead:
        assert d.headers["x-error-category"] in {"permanent", "invalid"}
        assert d.headers["x-error-message"]
        assert header_bytes(d.headers) < SMALL_HEADERS, header_bytes(d.headers)
        assert not [k for k in d.headers if k.startswith(("x-death", "x-first-death", "x-last"))]
    copy = dead_by_to[permanent]
    assert copy.body == hostile[1].body
    assert copy.headers["x-tenant-id"] == "acme"
    assert copy.headers["x-original-routing-key"] == f"{settings.routing_key_prefix}.acme"
    named = set(str(copy.headers.get("x-dropped-headers", "")).split(","))
    for prefix in hostile_props.dropped:
        assert any(name.startswith(prefix) for name in named), (prefix, named)


@asynccontextmanager
async def dlq_refusing(amqp_url: str, queue: str) -> AsyncIterator[None]:
    """The dead-letter queue full for the block (a length limit that refuses publishes)."""
    vhost = URL(amqp_url).path.lstrip("/")
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    limit = '{"max-length": 0, "overflow": "reject-publish"}'
    await _rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", name, f"^{queue}$", limit)
    try:
        yield
    finally:
        await _rabbitmqctl("clear_policy", "-p", vhost, name)


async def _rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("rabbitmqctl", "-q", *args)
    assert await asyncio.wait_for(proc.wait(), 60) == 0, args


async def test_a_forged_x_death_never_takes_the_main_queue_down_when_the_dlq_refuses(
    vhost, sandbox, database
) -> None:
    """A death whose DLQ copy is refused goes back to the broker (nack without requeue, SPEC
    §4), and the broker's dead-lettering then reads the original's own headers: a producer's
    forged ``x-death`` must not crash the main queue for everyone (RabbitMQ 3.10 does). Such a
    message waits in the main queue instead (at most once a second, without a second call to
    the Cloud API) and reaches the DLQ, with its reason, once the DLQ takes messages again."""
    settings = settings_for(vhost, sandbox, database)
    tos = recipients("2797", 40)
    hostile = good("15550000001")  # permanent: dead at its first answer
    hostile.headers = {"x-death": [1, "two"]}
    outs = [good(to) for to in tos[:20]] + [hostile] + [good(to) for to in tos[20:]]
    async with live(settings) as run:
        async with dlq_refusing(vhost, settings.dead_letter_queue):
            await run.producer.send_many(outs)
            await all_sent(sandbox, tos)
            more = recipients("2798", 20)
            await run.producer.send_many([good(to) for to in more])
            await all_sent(sandbox, more)  # the main queue still delivers
        dead = await run.broker.dead(1, timeout=20)
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
    assert [m.headers["x-error-category"] for m in dead] == ["permanent"]
    assert set(sends(sandbox).values()) == {1}
    assert [r["outcome"] for r in requests_to(sandbox, "15550000001")] == ["failed"]


async def _finished(sandbox: Any, retried: str, permanent: str, broker: Any, s: Settings) -> bool:
    sent = sends(sandbox)[retried] >= 1
    dead = await broker.count(s.dead_letter_queue)
    return dead >= 2 or (sent and dead >= 1)


# -- 4. the same internalId at two tenants -------------------------------------------------------


async def test_two_tenants_with_the_same_internal_id_are_both_sent_and_both_recorded(
    vhost, sandbox, database
) -> None:
    settings = settings_for(vhost, sandbox, database)
    internal_id = str(uuid.uuid4())
    first = good("27940000001", "acme", internal_id=internal_id)
    second = good("27940000002", "globex", internal_id=internal_id)
    async with live(settings) as run:
        await run.producer.send(first)
        await all_sent(sandbox, ["27940000001"])
        await run.producer.send(second)
        await all_sent(sandbox, ["27940000002"])
        await wait_for(lambda: _rows(database, internal_id, 2, "sent"))
        assert run.daemon.pipeline is not None
        counts = run.daemon.pipeline.counts
        assert await run.broker.count(settings.dead_letter_queue) == 0
    assert counts["sent"] == 2 and counts["duplicate"] == 0, counts
    assert sends(sandbox) == {"27940000001": 1, "27940000002": 1}
    rows = await _fetch(
        database,
        "SELECT tenant_id, recipient, status, wamid FROM wa_messages WHERE internal_id = $1"
        " ORDER BY tenant_id",
        internal_id,
    )
    assert [(r["tenant_id"], r["recipient"], r["status"]) for r in rows] == [
        ("acme", "27940000001", "sent"),
        ("globex", "27940000002", "sent"),
    ]
    assert rows[0]["wamid"] != rows[1]["wamid"]


async def _fetch(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def _rows(database: str, internal_id: str, n: int, status: str) -> bool:
    rows = await _fetch(
        database, "SELECT status FROM wa_messages WHERE internal_id = $1", internal_id
    )
    return len(rows) == n and {r["status"] for r in rows} == {status}


# -- 5. a row the database refuses although it passed every parse check --------------------------


@asynccontextmanager
async def constraint(database: str, table: str, check: str) -> AsyncIterator[None]:
    """A CHECK on a ledger table for the block (NOT VALID: rows already there are left alone;
    the database is shared by the session's tests)."""
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({check}) NOT VALID"
        )
        yield
    finally:
        await connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        await connection.close()


async def test_a_claim_the_database_refuses_is_dead_invalid_and_never_pauses_the_others(
    vhost, sandbox, database
) -> None:
    settings = settings_for(vhost, sandbox, database)
    refused = "27000000099"
    tos = recipients("2795", 100)
    hostile = good(refused)
    outs = [good(to) for to in tos[:50]] + [hostile] + [good(to) for to in tos[50:]]
    async with (
        live(settings) as run,
        constraint(database, "wa_messages", f"recipient IS DISTINCT FROM '{refused}'"),
    ):
        await run.producer.send_many(outs)
        await all_sent(sandbox, tos)
        [dead] = await run.broker.dead(1)
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
    assert dead.body == hostile.body
    assert dead.headers["x-error-category"] == "invalid"
    assert "the ledger cannot store this message" in dead.headers["x-error-message"]
    assert refused not in sends(sandbox)
    assert set(sends(sandbox).values()) == {1}
    rows = await _fetch(
        database,
        "SELECT internal_id, status FROM wa_messages WHERE internal_id = ANY($1)",
        [o.message_id for o in outs],
    )
    assert {r["status"] for r in rows} == {"sent"}
    assert len(rows) == len(tos)  # none for the refused one


@pytest.mark.parametrize(
    ("table", "check"),
    [
        ("wa_attempts", "message IS NULL OR message NOT LIKE '%ledger-poison%'"),
        ("wa_messages", "last_error_message NOT LIKE '%ledger-poison%'"),
    ],
    ids=["attempt_message", "last_error_message"],
)  # fmt: skip
async def test_a_result_the_database_refuses_still_settles_its_message_and_no_other(
    vhost, sandbox, database, table: str, check: str
) -> None:
    poison = "27000000098"
    rule = FailureRule(match=f"^{poison}$", code=131026, details="ledger-poison")
    sandbox.state.configure(rules=[rule.model_dump(), *sandbox.state.config.model_dump()["rules"]])
    settings = settings_for(vhost, sandbox, database)
    tos = recipients("2796", 100)
    hostile = good(poison)
    outs = [good(to) for to in tos[:50]] + [hostile] + [good(to) for to in tos[50:]]
    async with live(settings) as run, constraint(database, table, check):
        await run.producer.send_many(outs)
        await all_sent(sandbox, tos)
        [dead] = await run.broker.dead(1)
        await wait_for(lambda: settled_everywhere(settings, run.daemon))
        internal_id = orjson.loads(hostile.body)["metadata"]["internalId"]
        await wait_for(lambda: _rows(database, internal_id, 1, "dead"))
    assert dead.body == hostile.body
    assert dead.headers["x-error-category"] == "permanent"
    assert dead.headers["x-error-code"] == "131026"
    assert "ledger-poison" in dead.headers["x-error-message"]
    assert [r["outcome"] for r in requests_to(sandbox, poison)] == ["failed"]
    assert set(sends(sandbox).values()) == {1}
    assert set(sends(sandbox)) == set(tos)
    rows = await _fetch(
        database,
        "SELECT status, count(*) AS n FROM wa_messages WHERE internal_id = ANY($1) GROUP BY 1",
        [o.message_id for o in outs if o is not hostile],
    )
    assert [(r["status"], r["n"]) for r in rows] == [("sent", len(tos))]

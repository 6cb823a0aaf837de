"""What the chaos scenarios share.

The daemon is the real one, ``python -m wa_consumer run`` in a process of its own, configured
by ``WA_*`` variables alone and reached through ``TcpProxy``s in front of RabbitMQ,
PostgreSQL, Redis and the tenant service; its log goes to a file per process (the path is in
every failure message). The sandbox serves the Cloud API in the test process.

Everything is counted from outside, by identity: every published message has a unique
``internalId`` and a unique recipient. At the end (the daemon stopped, so nothing is unacked)
each message must be in exactly one place:

- sent: its recipient reached the sandbox with outcome ``sent`` (more than once: a duplicate);
- dead: in the dead-letter queue;
- waiting: in the main queue or a wait queue.

``lost`` is a message in none of them, ``misplaced`` one in more than one. A witness queue
bound to the dead-letter exchange sees each death as it happens, so the time a message
settled (first sent, or dead) is known, and with it the time to recover from a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from yarl import URL

from ..integration.proxy import Fault, TcpProxy

REDIS_URL = os.environ.get("WA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# -- waiting by condition ---------------------------------------------------------------


async def poll(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.05
) -> bool:
    """Whether ``check`` came true within ``timeout`` seconds (polled every ``interval``)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Wait for ``check``, or fail the scenario saying ``what`` did not happen."""
    if not await poll(check, timeout, interval):
        raise AssertionError(f"not within {timeout:g}s: {what}")


# -- the daemon as a process ----------------------------------------------------------


def env_of(values: dict[str, Any]) -> dict[str, str]:
    """The process environment: ours without any ``WA_*``, then ``values`` (JSON if not str)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name, value in values.items():
        if value is None:
            continue
        env[name] = value if isinstance(value, str) else json.dumps(value)
    return env


class Daemon:
    """``python -m wa_consumer run`` with stdout and stderr in ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.consuming_at = 0.0  # time.time() of its first "consuming" line
        self.exit_code: int | None = None

    async def start(self, timeout: float = 30.0) -> Daemon:
        """Start it and wait for its first ``consuming`` line."""
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wa_consumer", "run",
                env=self.env, cwd=self.log_path.parent,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

        def consuming() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before consuming; "
                    f"log {self.log_path}:\n{self.tail()}"
                )
            return b'"consuming"' in self.log_path.read_bytes()

        if not await poll(consuming, timeout):
            self.kill9()
            raise AssertionError(f"daemon not consuming within {timeout}s; log {self.log_path}")
        self.consuming_at = time.time()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.send(signal.SIGKILL)

    async def wait(self, timeout: float) -> int | None:
        """Its exit code, or None if still running after ``timeout``."""
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            self.exit_code = await asyncio.wait_for(self.proc.wait(), timeout)
        return self.exit_code

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout``."""
        if not self.alive:
            return self.exit_code if self.proc is None else self.proc.returncode
        self.send(signal.SIGTERM)
        if await self.wait(timeout) is None:
            self.kill9()
            await self.wait(10)
        return self.exit_code

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``name``."""
        found = []
        for line in self.text().splitlines():
            if f'"{name}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found


# -- what the scenario observes -------------------------------------------------------


def text_body(tenant: str, internal_id: str, to: str) -> bytes:
    return orjson.dumps(
        {
            "metadata": {"tenantId": tenant, "internalId": internal_id},
            "wabaPayload": {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": {"body": f"chaos {internal_id[:8]}"},
            },
        }
    )


def id_of_body(body: bytes) -> str | None:
    with contextlib.suppress(Exception):
        value = orjson.loads(body)["metadata"]["internalId"]
        return value if isinstance(value, str) else None
    return None


class SandboxView:
    """The sandbox's request log, read incrementally, by internalId (through the recipient)."""

    def __init__(self, sandbox: Any, id_by_recipient: dict[str, str]) -> None:
        self.sandbox = sandbox
        self.id_by_recipient = id_by_recipient
        self.seq = 0
        self.sends: Counter[str] = Counter()  # internalId -> times accepted (outcome sent)
        self.first_sent_at: dict[str, float] = {}
        self.history: dict[str, list[tuple[float, str, int | None, int | None]]] = {}
        self.requests = 0
        self.last_request_at = 0.0

    def update(self) -> SandboxView:
        for r in self.sandbox.state.requests(self.seq):
            self.seq = r["seq"]
            self.requests += 1
            self.last_request_at = time.monotonic()
            body = r["body"]
            to = body.get("to") if isinstance(body, dict) else None
            internal_id = self.id_by_recipient.get(to) if isinstance(to, str) else None
            if internal_id is None:
                continue
            self.history.setdefault(internal_id, []).append(
                (r["at"], r["outcome"], r["status"], r["code"])
            )
            if r["outcome"] == "sent":
                self.sends[internal_id] += 1
                self.first_sent_at.setdefault(internal_id, r["at"])
        return self

    def sent(self) -> set[str]:
        return set(self.sends)

    def sent_count(self) -> int:
        return len(self.update().sends)


class Witness:
    """A queue of the test's own bound to the dead-letter exchange: sees every death at once."""

    def __init__(self) -> None:
        self.dead_at: dict[str, float] = {}
        self.copies: Counter[str] = Counter()

    def on_message(self, message: AbstractIncomingMessage) -> None:
        internal_id = id_of_body(message.body)
        if internal_id is not None:
            self.copies[internal_id] += 1
            self.dead_at.setdefault(internal_id, time.time())


@dataclass
class Figures:
    """One scenario's result, as it goes in docs/RELIABILITY.md."""

    scenario: str
    messages: int
    sent: int
    dead: int
    waiting: int
    lost: int
    duplicates: int
    misplaced: int
    recover_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        recover = "n/a" if self.recover_s is None else f"{self.recover_s:.2f}"
        return (
            f"chaos {self.scenario}: messages={self.messages} lost={self.lost} "
            f"duplicates={self.duplicates} dead={self.dead} recover_s={recover} "
            f"(sent={self.sent} waiting={self.waiting} misplaced={self.misplaced})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "messages": self.messages,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "dead": self.dead,
            "recover_s": None if self.recover_s is None else round(self.recover_s, 3),
            "sent": self.sent,
            "waiting": self.waiting,
            "misplaced": self.misplaced,
            **self.extra,
        }


@dataclass
class Accounting:
    """Where every message is at the end, and what that says."""

    figures: Figures
    published: list[str]
    lost: list[str]
    doubled: list[str]  # accepted by the sandbox more than once
    misplaced: list[str]
    waiting: list[str]
    dead: dict[str, str]  # internalId -> x-error-category
    unsettled: list[str]  # neither sent nor dead when the wait ended


# -- one scenario -----------------------------------------------------------------------


class Chaos:
    """One scenario: names, proxies, daemons, a producer, the counting.

    ``await chaos.daemon()`` starts a daemon with the scenario's settings (overridable);
    ``publish`` sends text messages to unique recipients; ``settle`` waits until every
    message is sent or dead; ``finish`` stops the daemons and counts where everything is.
    """

    def __init__(
        self,
        name: str,
        *,
        amqp_url: str,
        sandbox: Any,
        database_url: str,
        log_dir: Path,
    ) -> None:
        self.name = name
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.amqp_url = amqp_url
        self.vhost = URL(amqp_url).path.lstrip("/") or "/"
        self.sandbox = sandbox
        self.database_url = database_url
        self.log_dir = log_dir
        self.exchange = f"wx-{tag}"
        self.dead_letter_exchange = f"dlx-{tag}"
        self.queue = f"main-{tag}"
        self.dead_letter_queue = f"failed-{tag}"
        self.retry_prefix = f"retry-{tag}-"
        self.routing_key_prefix = "outbound.processed"
        self.dead_routing_key = "outbound.failed"
        self.amqp = TcpProxy.before(amqp_url, "rabbitmq")
        self.postgres = TcpProxy.before(database_url, "postgresql")
        self.redis = TcpProxy.before(REDIS_URL, "redis")
        self.tenants = TcpProxy.before(sandbox.url, "tenant-service")
        self.settings: dict[str, Any] = {}
        self.daemons: list[Daemon] = []
        self.published: list[str] = []
        self.recipient_of: dict[str, str] = {}
        self.id_by_recipient: dict[str, str] = {}
        self.view = SandboxView(sandbox, self.id_by_recipient)
        self.witness = Witness()
        self.faults: list[Fault] = []
        self.connection: AbstractRobustConnection | None = None
        sandbox.state.configure(max_requests=500_000)

    async def open(self) -> Chaos:
        for proxy in (self.amqp, self.postgres, self.redis, self.tenants):
            await proxy.start()
        self.connection = await aio_pika.connect_robust(self.amqp_url)
        self.settings = {
            "WA_AMQP_URL": self.amqp.route(self.amqp_url),
            "WA_EXCHANGE": self.exchange,
            "WA_DEAD_LETTER_EXCHANGE": self.dead_letter_exchange,
            "WA_QUEUE": self.queue,
            "WA_DEAD_LETTER_QUEUE": self.dead_letter_queue,
            "WA_RETRY_QUEUE_PREFIX": self.retry_prefix,
            "WA_WEBHOOK_EXCHANGE": f"whx-{self.tag}",
            "WA_WEBHOOK_QUEUE": f"webhooks-{self.tag}",
            "WA_WEBHOOK_FAILED_QUEUE": f"webhooks-failed-{self.tag}",
            "WA_INBOUND_MESSAGES_QUEUE": f"inbound-{self.tag}",
            "WA_DATABASE_URL": self.postgres.route(self.database_url),
            "WA_GRAPH_API_URL": self.sandbox.url,
            "WA_TENANT_SERVICE_URL": self.sandbox.url,
            "WA_CLAIM_LEASE_SECONDS": 60,
            "WA_RETRY_DELAYS": [0.5, 1],
            "WA_MAX_RETRIES": 4,
            "WA_RATE_LIMIT_MIN_DELAY": 0.5,
            "WA_PAIR_LIMIT_MIN_DELAY": 0.5,
            "WA_HTTP_TIMEOUT_SECONDS": 5,  # far above the latencies: no ambiguous timeouts
            "WA_PREFETCH": 200,
            "WA_SHUTDOWN_GRACE_SECONDS": 5,
            "WA_NUMBER_RATE": 0,
            "WA_METRICS_PORT": 0,
            "WA_LOG_FORMAT": "json",
            "WA_LOG_LEVEL": "INFO",
        }
        await self._declare()
        await self._bind_witness()
        return self

    async def _declare(self) -> None:
        """The topology, declared by the product's own command, so messages can be published
        before a daemon runs (a backlog to work through when the fault comes)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wa_consumer", "topology", "declare",
            env=env_of({**self.settings, "WA_AMQP_URL": self.amqp_url}), cwd=self.log_dir,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, f"topology declare failed: {out.decode(errors='replace')}"

    async def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill9()
            if daemon.proc is not None:
                await daemon.wait(10)
        for proxy in (self.amqp, self.postgres, self.redis, self.tenants):
            await proxy.close()
        if self.connection is not None:
            await self.connection.close()
        await self._forget_redis_keys()

    async def _forget_redis_keys(self) -> None:
        import redis.asyncio

        client = redis.asyncio.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"wa-chaos-{self.tag}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    # -- daemons ------------------------------------------------------------------------

    def redis_via_proxy(self) -> dict[str, Any]:
        """Settings that share the rate limits through Redis, reached through its proxy."""
        return {
            "WA_REDIS_URL": self.redis.route(REDIS_URL),
            "WA_REDIS_PREFIX": f"wa-chaos-{self.tag}:",
        }

    def tenant_service_via_proxy(self) -> dict[str, Any]:
        return {"WA_TENANT_SERVICE_URL": self.tenants.route(self.sandbox.url)}

    async def daemon(self, **overrides: Any) -> Daemon:
        """Start a daemon (these settings over the scenario's) and wait until it consumes."""
        values = {**self.settings, **overrides}
        log_path = self.log_dir / f"{self.name}-daemon-{len(self.daemons) + 1}.log"
        daemon = Daemon(env_of(values), log_path)
        self.daemons.append(daemon)
        await daemon.start()
        return daemon

    async def _bind_witness(self) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        queue = await channel.declare_queue(f"witness-{self.tag}", exclusive=True)
        for key in (f"{self.dead_routing_key}.#", self.dead_routing_key):
            await queue.bind(self.dead_letter_exchange, key)
        await queue.consume(self._witnessed, no_ack=True)

    async def _witnessed(self, message: AbstractIncomingMessage) -> None:
        self.witness.on_message(message)

    async def outage(self, proxy: TcpProxy, seconds: float, name: str) -> Fault:
        """Take ``proxy``'s server away for ``seconds`` (cut and refused), then back."""
        sent = self.view.sent_count()
        fault = await proxy.outage(seconds, name)
        fault.sent_before = sent
        self.faults.append(fault)
        return fault

    # -- producing ----------------------------------------------------------------------

    def recipients(self, count: int, prefix: str) -> list[str]:
        """``count`` recipients never used before in this scenario: ``prefix`` + a counter."""
        start = sum(1 for to in self.id_by_recipient if to.startswith(prefix))
        return [f"{prefix}{i:06d}" for i in range(start, start + count)]

    async def publish(self, recipients: Iterable[str], tenant: str = "acme") -> list[str]:
        """One text message per recipient, as a producer publishes (persistent, confirmed)."""
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        ids = []
        try:
            exchange = await channel.get_exchange(self.exchange, ensure=False)
            batch: list[Awaitable[Any]] = []
            for to in recipients:
                internal_id = str(uuid.uuid4())
                assert to not in self.id_by_recipient, to
                self.id_by_recipient[to] = internal_id
                self.recipient_of[internal_id] = to
                self.published.append(internal_id)
                ids.append(internal_id)
                message = aio_pika.Message(
                    text_body(tenant, internal_id, to),
                    message_id=internal_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                batch.append(
                    exchange.publish(message, f"{self.routing_key_prefix}.{tenant}", mandatory=True)
                )
                if len(batch) >= 250:
                    await asyncio.gather(*batch)
                    batch = []
            await asyncio.gather(*batch)
        finally:
            await channel.close()
        return ids

    # -- observing while it runs ----------------------------------------------------------

    def settled(self) -> set[str]:
        """Messages sent (the sandbox accepted them) or dead (the witness saw them)."""
        return self.view.update().sent() | set(self.witness.dead_at)

    def unsettled(self) -> list[str]:
        done = self.settled()
        return [i for i in self.published if i not in done]

    async def wait_sent(self, count: int, timeout: float = 30.0) -> None:
        await until(
            lambda: self.view.sent_count() >= count,
            timeout,
            f"{count} messages sent (have {self.view.sent_count()})",
        )

    async def wait_quiet(self, quiet: float = 0.3, timeout: float = 5.0) -> None:
        """Until the sandbox has had no request for ``quiet`` seconds (bounded)."""
        self.view.update()
        await poll(lambda: time.monotonic() - self.view.update().last_request_at >= quiet, timeout)

    async def _list_queues(self) -> dict[str, tuple[int, int]]:
        """Every queue of this scenario: (messages ready, messages unacknowledged)."""
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "list_queues", "-p", self.vhost, "--no-table-headers",
            "name", "messages_ready", "messages_unacknowledged",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode(errors="replace")
        queues = {}
        for line in out.decode().splitlines():
            name, ready, unacked = line.split()
            if name.endswith(self.tag) or name.startswith(self.retry_prefix):
                queues[name] = (int(ready), int(unacked))
        return queues

    async def wait_queues(self) -> list[str]:
        """This scenario's wait queues, as the broker lists them."""
        return sorted(n for n in await self._list_queues() if n.startswith(self.retry_prefix))

    async def settle(self, timeout: float, quiet: float = 1.0) -> float | None:
        """Wait until every message is sent or dead, then until the system is quiet: no
        request for ``quiet`` seconds and nothing ready in the main and wait queues (so a late
        second send is seen). Returns when the last message settled, or None."""
        if not await poll(lambda: not self.unsettled(), timeout, interval=0.1):
            return None

        async def quiet_now() -> bool:
            if time.monotonic() - self.view.update().last_request_at < quiet:
                return False
            queues = await self._list_queues()
            return not any(
                ready or unacked
                for name, (ready, unacked) in queues.items()
                if name == self.queue or name.startswith(self.retry_prefix)
            )

        await poll(quiet_now, 15.0, interval=0.2)
        return self.settled_at()

    def settled_at(self) -> float | None:
        """When the last message was first sent or dead (None if one is neither)."""
        times = []
        for internal_id in self.published:
            candidates = [
                t
                for t in (
                    self.view.first_sent_at.get(internal_id),
                    self.witness.dead_at.get(internal_id),
                )
                if t is not None
            ]
            if not candidates:
                return None
            times.append(min(candidates))
        return max(times) if times else None

    # -- the ledger, read directly (not through the proxy) ------------------------------

    async def ledger_status(self, ids: Iterable[str]) -> dict[str, str]:
        connection = await asyncpg.connect(self.database_url)
        try:
            rows = await connection.fetch(
                "SELECT internal_id, status FROM wa_messages WHERE internal_id = ANY($1::text[])",
                list(ids),
            )
        finally:
            await connection.close()
        return {r["internal_id"]: r["status"] for r in rows}

    async def ledger_rows(self, internal_id: str) -> tuple[list[str], list[str]]:
        """The message's row and its attempts, as text (whatever the schema is now)."""
        connection = await asyncpg.connect(self.database_url)
        try:
            messages = await connection.fetch(
                "SELECT * FROM wa_messages WHERE internal_id = $1", internal_id
            )
            attempts = await connection.fetch(
                "SELECT * FROM wa_attempts WHERE internal_id = $1 ORDER BY id", internal_id
            )
        except (asyncpg.PostgresError, OSError) as exc:
            return [f"ledger: {exc}"], []
        finally:
            await connection.close()
        keep = (
            "status", "retries", "deliveries", "claimed_by", "claim_expires_at", "wamid",
            "last_error_code", "last_error_category", "updated_at",
        )  # fmt: skip
        return (
            [str({k: m[k] for k in keep if k in m}) for m in messages],
            [
                str({k: a[k] for k in ("attempt", "outcome", "code", "ambiguous", "consumer")})
                for a in attempts
            ],
        )

    # -- the end: where is everything? ----------------------------------------------------

    async def stop_daemons(self) -> list[int | None]:
        return [await d.stop() for d in self.daemons if d.alive]

    async def _drain(self, name: str) -> list[AbstractIncomingMessage]:
        assert self.connection is not None
        channel = await self.connection.channel()
        out: list[AbstractIncomingMessage] = []
        try:
            queue = await channel.declare_queue(name, passive=True)
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                out.append(message)
        finally:
            await channel.close()
        return out

    async def finish(self, recover_from: float | None, **extra: Any) -> Accounting:
        """Stop every daemon, take every queue's messages and place each message."""
        self.view.update()
        settled_at = self.settled_at()
        unsettled = self.unsettled()
        # What the daemons still hold once everything settled (nothing, if all went well).
        held = {n: u for n, (_, u) in (await self._list_queues()).items() if u}
        running = [d for d in self.daemons if d.alive]
        codes = await self.stop_daemons()
        in_flight = [e.get("in_flight") for d in running for e in d.events("shutdown_started")]
        await self.wait_quiet(0.2)
        waiting: list[str] = []
        for name in await self.wait_queues():  # wait queues first: they expire into the main queue
            waiting += [id_of_body(m.body) or "?" for m in await self._drain(name)]
        waiting += [id_of_body(m.body) or "?" for m in await self._drain(self.queue)]
        dead: dict[str, str] = {}
        dead_copies: Counter[str] = Counter()
        for m in await self._drain(self.dead_letter_queue):
            internal_id = id_of_body(m.body) or "?"
            dead_copies[internal_id] += 1
            dead[internal_id] = str((m.headers or {}).get("x-error-category"))
        sends = self.view.update().sends
        places: Counter[str] = Counter()
        for internal_id in sends:
            places[internal_id] += 1
        places.update(dead_copies)
        places.update(waiting)
        where: Counter[str] = Counter()
        for internal_id in self.published:
            if places[internal_id] > 1:
                spots = [
                    f"sent x{sends[internal_id]}" if internal_id in sends else "",
                    f"dead x{dead_copies[internal_id]}" if internal_id in dead_copies else "",
                    f"waiting x{waiting.count(internal_id)}" if internal_id in waiting else "",
                ]
                where[" + ".join(p for p in spots if p)] += 1
        lost = [i for i in self.published if places[i] == 0]
        # Dead twice and nowhere else: a DLQ publish whose confirm the cut took away, so the
        # daemon could not know its copy had landed (judged against those unconfirmed below).
        dead_twice = [
            i for i in self.published if places[i] == dead_copies[i] == 2 and i not in sends
        ]
        misplaced = [i for i in self.published if places[i] > 1 and i not in dead_twice]
        doubled = [i for i, n in sends.items() if n > 1]
        recover_s = None
        if settled_at is not None and recover_from is not None:
            recover_s = max(0.0, settled_at - recover_from)
        figures = Figures(
            scenario=self.name,
            messages=len(self.published),
            sent=len(sends),
            dead=sum(dead_copies.values()),
            waiting=len(waiting),
            lost=len(lost),
            duplicates=sum(n - 1 for n in sends.values()),
            misplaced=len(misplaced),
            recover_s=recover_s,
            extra={
                "dead_twice": len(dead_twice),
                "dlq_publishes_unconfirmed": self.unconfirmed(self.dead_routing_key),
                "dead_by_category": dict(Counter(dead.values())),
                "misplaced_as": dict(where),
                "exit_codes": codes,
                "unacked_at_end": held,
                "in_flight_at_stop": in_flight,
                "faults": [
                    {
                        "name": f.name,
                        "seconds": round(f.seconds, 2),
                        "cut_connections": f.cut,
                        "sent_before": f.sent_before,
                    }
                    for f in self.faults
                ],
                "sandbox_requests": self.view.requests,
                # requests for a message after it was already dead (the witness saw it)
                "api_calls_after_dead": sum(
                    1
                    for internal_id, at in self.witness.dead_at.items()
                    for t, *_ in self.view.history.get(internal_id, [])
                    if t > at
                ),
                **extra,
            },
        )
        return Accounting(
            figures, self.published, lost, doubled, misplaced, waiting, dead, unsettled
        )

    def tokens_in_logs(self) -> int:
        """Lines of the daemons' logs holding a tenant's access token (SPEC §6: none)."""
        state = self.sandbox.state
        tokens = [state.token(t.id) for t in state.config.tenants]
        return sum(
            1
            for daemon in self.daemons
            for line in daemon.text().splitlines()
            if any(token in line for token in tokens)
        )

    def unconfirmed(self, routing_key: str) -> int:
        """Republishes to ``routing_key`` the daemons logged as not confirmed."""
        count = 0
        for daemon in self.daemons:
            for line in daemon.text().splitlines():
                if '"republish_unconfirmed"' in line and f'"{routing_key}"' in line:
                    count += 1
        return count

    async def explain(self, ids: Iterable[str], limit: int = 4) -> str:
        """What the sandbox, the queues, the ledger and the daemons' logs say about ``ids``."""
        chosen = list(ids)[:limit]
        logs = [(d.log_path.name, d.text().splitlines()) for d in self.daemons]
        parts = []
        t0 = min((d.consuming_at for d in self.daemons if d.consuming_at), default=0.0)
        for internal_id in chosen:
            parts.append(f"--- {internal_id} (to {self.recipient_of.get(internal_id)})")
            history = [
                f"{at - t0:.2f}s {outcome} {status} {code}"
                for at, outcome, status, code in self.view.history.get(internal_id, [])
            ]
            parts.append(f"  sandbox: {history}")
            if internal_id in self.witness.dead_at:
                parts.append(f"  dead at {self.witness.dead_at[internal_id] - t0:.2f}s")
            row, attempts = await self.ledger_rows(internal_id)
            parts.append(f"  ledger: {row}")
            parts += [f"    attempt {a}" for a in attempts]
            for name, lines in logs:
                for line in lines:
                    if internal_id in line:
                        parts.append(f"  {name}: {line[:400]}")
        return "\n".join(parts)

    async def evidence(self, result: Accounting) -> str:
        """A failure message: the figures, the logs, and the story of a few messages."""
        out = [
            result.figures.line(),
            f"details: {json.dumps(result.figures.extra, default=str)}",
            f"logs: {self.log_dir}",
        ]
        for label, ids in (
            ("lost", result.lost),
            ("doubled", result.doubled),
            ("misplaced", result.misplaced),
            ("waiting", result.waiting),
        ):
            if ids:
                out.append(f"{label} ({len(ids)}):")
                out.append(await self.explain(ids))
        warnings: Counter[str] = Counter()
        for daemon in self.daemons:
            for line in daemon.text().splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                        warnings[str(record.get("event"))] += 1
        out.append(f"daemon warning/error events: {dict(warnings)}")
        return "\n".join(out)


async def judge(
    chaos: Chaos,
    result: Accounting,
    report: Callable[[Figures], None],
    *,
    dead_allowed: bool,
    may_double: set[str] | None = None,
    problems: Iterable[str] = (),
) -> None:
    """Report the figures, then fail with the evidence unless: nothing lost, nothing in two
    places, nothing left waiting (the retries are short), nothing dead where every message
    could be sent, and no duplicate but (after kill -9) one per send that was on the wire."""
    report(result.figures)
    f = result.figures
    found = list(problems)
    if f.lost:
        found.append(f"{f.lost} lost")
    if may_double is None:
        if f.duplicates:
            found.append(f"{f.duplicates} duplicate sends ({len(result.doubled)} messages)")
    else:
        sends = chaos.view.sends
        beyond = [i for i in result.doubled if i not in may_double or sends[i] > 2]
        if beyond or f.duplicates > len(may_double):
            found.append(
                f"{f.duplicates} duplicate sends with {len(may_double)} on the wire at the"
                f" kills; {len(beyond)} doubled messages were not on the wire"
            )
    if f.misplaced:
        found.append(f"{f.misplaced} in two places at once: {f.extra.get('misplaced_as')}")
    # A second DLQ copy is allowed only for a DLQ publish whose confirm was lost (at-least-once
    # publishing cannot tell), and never with a second call to the Cloud API.
    twice, unconfirmed = f.extra.get("dead_twice", 0), f.extra.get("dlq_publishes_unconfirmed", 0)
    if twice > unconfirmed:
        found.append(f"{twice} dead twice but only {unconfirmed} DLQ publishes unconfirmed")
    if twice and f.extra.get("api_calls_after_dead"):
        found.append(f"{f.extra['api_calls_after_dead']} Cloud API calls after a message died")
    if f.waiting:
        found.append(f"{f.waiting} still waiting in the main or a wait queue")
    if not dead_allowed and f.dead:
        categories = dict(Counter(result.dead.values()))
        found.append(f"{f.dead} dead though every message could be sent: {categories}")
    if leaked := chaos.tokens_in_logs():
        found.append(f"access tokens in the daemon's log: {leaked} lines")
    if found:
        raise AssertionError("; ".join(found) + "\n" + await chaos.evidence(result))

"""One measurement of one scenario over N messages pre-filled into a queue of its own.

Floor: timed from the first message the bare consumer receives to its N-th ack. The plain
consumer (aio-pika + aiohttp, no features) is timed the same way; it acks a message once the
sandbox has accepted it.

Daemon: timed from the daemon's first consumed message (its consumer appears on the queue;
the broker pushes a prefetch's worth at once) until the sandbox has answered N sends; the
moment of the N-th answer is interpolated between two polls of ``/_sandbox/stats`` (every
100 ms). Then, once nothing more is sent for half a second, SIGTERM: the daemon must exit 0
within its grace period.

A clean measurement made exactly N sends, left nothing in any queue, logged no warning or
error and (ledger on) has its N records marked sent in the ledger. One that is not (the
daemon sent a message twice, lost its channel, stalled for ``--stall`` seconds, ...) is
reported with its problems and left out of the medians; the run goes on. A daemon that dies,
or a wait that passes ``--deadline``, ends the run.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from .broker import declare_topology, depth, leftovers, prefill
from .common import (
    BenchError,
    Deadline,
    bounded,
    close_quietly,
    crossing,
    free_port,
    per_unit,
    tail,
)
from .database import ledger_counts
from .procs import (
    Children,
    CpuMeter,
    Daemons,
    GroupCpu,
    Sandbox,
    Workers,
    broker_pid,
    machine_cpu_seconds,
    pid_cpu,
)
from .scenarios import Scenario, daemon_env, make_settings, overrides
from .workers import readyz, sent_by_worker, worker_detail, workers_on

POLL_START = 0.01  # seconds between polls while waiting for the daemon's consumer
POLL_DRAIN = 0.1  # seconds between polls while it drains
SETTLE_QUIET = 0.5  # after the N-th send: seconds with no further send before the stop
SETTLE_MAX = 10.0


@dataclass
class Run:
    scenario: str
    round: int
    messages: int
    seconds: float
    rate: float
    steady_rate: float  # between the 10% and the 90% mark
    prefill_rate: float | None  # None: nothing pre-filled (webhooks)
    cpu: dict[str, float | None]  # cores each process used over the drain (1.0: one core)
    # The daemon's (None for the floor):
    pid: int | None = None
    startup_seconds: float | None = None  # process start until its consumer appears
    shutdown_seconds: float | None = None
    max_rss_mb: float | None = None  # highest VmRSS sampled
    peak_rss_mb: float | None = None  # VmHWM before the stop: the kernel's own peak
    rss_at_start_mb: float | None = None
    log_lines: int | None = None
    log_bytes: int | None = None
    log_outcomes: dict[str, int] = field(default_factory=dict)  # per-message lines' outcome
    log_warnings: dict[str, int] = field(default_factory=dict)  # WARNING and up, by event
    sandbox_outcomes: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, int] = field(default_factory=dict)  # its records by status, attempts
    # Why the measurement is not clean (then left out of the medians); empty when it is.
    problems: list[str] = field(default_factory=list)
    # Delivery statuses (webhooks, statuses): what ``rate`` counts, and CPU time per unit.
    unit: str = "msg"  # msg | webhook | status
    units: int | None = None  # how many were measured (None: ``messages``)
    cpu_us: dict[str, float | None] = field(default_factory=dict)  # CPU µs per unit
    floor: dict[str, Any] = field(default_factory=dict)  # webhooks: the same round's floor
    detail: dict[str, Any] = field(default_factory=dict)  # answers, queue counts, ...


@dataclass
class Context:
    """What every measurement of the run shares."""

    args: argparse.Namespace
    amqp_url: str
    workdir: Path
    children: Children
    sandbox: Sandbox | None
    database_url: str | None
    seen_ids: set[str] = field(default_factory=set)  # every internalId of the run


async def measure(scenario: Scenario, round_no: int, ctx: Context) -> Run:
    if scenario.daemon:
        return await run_daemon(scenario, round_no, ctx)
    return await run_floor(scenario, round_no, ctx)


class PlainSender:
    """The send of a hand-written consumer: one aiohttp session, a token per tenant, a POST."""

    def __init__(
        self,
        sandbox_url: str,
        version: str,
        in_flight: int,
        *,
        tls_url: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.url = sandbox_url  # the tenant service
        self.send_url = tls_url or sandbox_url  # the Cloud API: over TLS when given
        self.version = version
        context: ssl.SSLContext | bool = True
        if ca_file is not None:  # what a user would write: the system's roots plus the CA
            context = ssl.create_default_context(cafile=str(ca_file))
        connector = aiohttp.TCPConnector(limit=in_flight, ssl=context)
        self.session = aiohttp.ClientSession(connector=connector)
        self.tenants: dict[str, tuple[str, str]] = {}  # tenant -> (token, phone number id)
        self.failed = 0

    async def send(self, body: bytes) -> bool:
        message = orjson.loads(body)
        tenant = message["metadata"]["tenantId"]
        if tenant not in self.tenants:
            url = f"{self.url}/tenants/{tenant}/whatsapp-credentials"
            async with self.session.get(url) as response:
                creds = await response.json()
            self.tenants[tenant] = (creds["accessToken"], creds["phoneNumberId"])
        token, number = self.tenants[tenant]
        async with self.session.post(
            f"{self.send_url}/{self.version}/{number}/messages",
            data=orjson.dumps(message["wabaPayload"]),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as response:
            await response.read()
            ok = response.status == 200
        self.failed += not ok
        return ok


async def run_floor(scenario: Scenario, round_no: int, ctx: Context) -> Run:
    n = ctx.args.messages
    what = f"{scenario.key} round {round_no}"
    settings = make_settings(
        overrides(scenario, ctx.args, ctx.amqp_url, "http://127.0.0.1:1", None)
    )
    sender: PlainSender | None = None
    processes = {"bench": time.process_time, "broker": pid_cpu(broker_pid())}
    if scenario.http:
        sandbox = ctx.sandbox
        if sandbox is None:
            raise BenchError(f"{what}: no sandbox")
        await sandbox.set_latency(scenario.latency_ms)
        sender = PlainSender(
            sandbox.url,
            settings.graph_api_version,
            scenario.prefetch,
            tls_url=sandbox.tls_url if scenario.tls else None,
            ca_file=sandbox.ca_file if scenario.tls else None,
        )
        processes["sandbox"] = pid_cpu(sandbox.process.pid)
        connections_before = await sandbox.connections()
    admin = await bounded(aio_pika.connect(ctx.amqp_url, timeout=10), 15, "connect")
    try:
        await declare_topology(admin, settings)
        prefill_rate, _ = await prefill(admin, settings, n, ctx.seen_ids)
        connection = await bounded(aio_pika.connect_robust(ctx.amqp_url, timeout=10), 15, "connect")
        meter = CpuMeter({**processes, "machine": machine_cpu_seconds})
        marks: dict[int, float] = {}
        mark_at = {n // 10, (9 * n) // 10, n}
        acked = 0
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            if not marks:
                marks[0] = time.perf_counter()
            if sender is not None and not await sender.send(message.body):
                await message.nack(requeue=False)  # to the dead-letter queue; the run fails
                done.set()
                return
            await message.ack()
            acked += 1
            if acked in mark_at:
                marks[acked] = time.perf_counter()
                if acked == n:
                    done.set()

        try:
            channel = await bounded(connection.channel(), 10, f"{what}: open channel")
            await bounded(channel.set_qos(prefetch_count=scenario.prefetch), 10, f"{what}: qos")
            queue = await bounded(
                channel.declare_queue(settings.queue, passive=True), 10, f"{what}: declare"
            )
            meter.start()
            tag = await bounded(queue.consume(on_message), 10, f"{what}: consume")
            try:
                await asyncio.wait_for(done.wait(), ctx.args.deadline)
            except TimeoutError:
                raise BenchError(
                    f"{what}: {acked:,} of {n:,} acked after {ctx.args.deadline:.0f} s"
                ) from None
            if sender is not None and sender.failed:
                raise BenchError(f"{what}: the sandbox refused {sender.failed:,} sends")
            meter.stop()
            await bounded(queue.cancel(tag), 10, f"{what}: cancel consumer")
        finally:
            await close_quietly(connection)
        left = await leftovers(admin, settings)
        if any(left.values()):
            raise BenchError(f"{what}: messages left in queues: {left}")
    finally:
        await close_quietly(admin)
        if sender is not None:
            await sender.session.close()
    detail: dict[str, Any] = {}
    if sender is not None and ctx.sandbox is not None:
        detail = opened_since(connections_before, await ctx.sandbox.connections(), scenario)

    seconds = marks[n] - marks[0]
    return Run(
        scenario=scenario.key,
        round=round_no,
        messages=n,
        seconds=seconds,
        rate=n / seconds,
        steady_rate=((9 * n) // 10 - n // 10) / (marks[(9 * n) // 10] - marks[n // 10]),
        prefill_rate=prefill_rate,
        cpu=meter.shares,
        cpu_us=per_unit(meter.used, n),
        detail=detail,
    )


def opened_since(
    before: tuple[int, int, int], after: tuple[int, int, int], scenario: Scenario
) -> dict[str, Any]:
    """Connections the client opened to the sandbox during a measurement: over TLS, exactly
    the client's (of them ``h2_connections_opened`` HTTP/2); over plain HTTP, plus any the
    bench's own admin session opened (rarely)."""
    return {
        "connections_opened": (after[1] - before[1]) if scenario.tls else (after[0] - before[0]),
        "tls": scenario.tls,
        "h2_connections_opened": after[2] - before[2],
    }


async def settle(
    sandbox: Sandbox,
    admin: AbstractConnection,
    queue: str,
    base: int,
    sent: int,
    stats: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    """Wait (up to ``SETTLE_MAX`` s) until no send and no ready message for ``SETTLE_QUIET`` s.

    A clean run sends nothing after the N-th; a daemon whose channel closed goes on sending
    redelivered copies, and stopping it at once would hide how many.
    """
    quiet_since = time.perf_counter()
    deadline = Deadline(SETTLE_MAX, "settle")
    while not deadline.passed:
        await asyncio.sleep(POLL_DRAIN)
        stats = await bounded(sandbox.stats(), 10, "sandbox stats")
        now = int(stats["requests"]) - base
        ready, _ = await depth(admin, queue)
        if now != sent or ready:
            sent, quiet_since = now, time.perf_counter()
        elif time.perf_counter() - quiet_since >= SETTLE_QUIET:
            break
    return sent, stats


async def consumer_on(
    admin: AbstractConnection,
    queue: str,
    n: int,
    daemon: Daemons | Workers,
    what: str,
    ctx: Context,
) -> None:
    """Wait until the daemon consumes ``queue``: its consumer registered is its first message
    taken, as the broker pushes a prefetch's worth at once."""
    deadline = Deadline(ctx.args.deadline, f"{what}: daemon start")
    while True:
        daemon.alive(what)
        ready, consumers = await depth(admin, queue)
        if consumers or ready < n:
            return
        daemon.sample_rss()
        if deadline.passed:
            raise deadline.missed(f"no consumer yet, {ready:,} ready\n{tail(daemon.log)}")
        await asyncio.sleep(POLL_START)


async def run_daemon(scenario: Scenario, round_no: int, ctx: Context) -> Run:
    n = ctx.args.messages
    what = f"{scenario.key} round {round_no}"
    sandbox = ctx.sandbox
    if sandbox is None:
        raise BenchError(f"{what}: no sandbox")
    values = overrides(
        scenario,
        ctx.args,
        ctx.amqp_url,
        sandbox.url,
        ctx.database_url,
        tls_url=sandbox.tls_url,
        ca_file=str(sandbox.ca_file),
    )
    settings = make_settings(values)
    await sandbox.set_latency(scenario.latency_ms)
    admin = await bounded(aio_pika.connect(ctx.amqp_url, timeout=10), 15, "connect")
    try:
        await declare_topology(admin, settings)
        prefill_rate, ids = await prefill(admin, settings, n, ctx.seen_ids)
        before = await bounded(sandbox.stats(), 10, "sandbox stats")
        connections_before = await sandbox.connections()
        base_requests = int(before["requests"])
        base_outcomes: dict[str, int] = before["by_outcome"]

        spawned = time.perf_counter()
        log = ctx.workdir / f"daemon-{scenario.key}-{round_no}.log"
        daemon: Daemons | Workers
        if scenario.workers:  # one supervisor, whatever --daemons says
            daemon = Workers(daemon_env(values), log, ctx.children, scenario.workers)
        else:
            envs = [daemon_env(values)]
            for _ in range(1, ctx.args.daemons):  # more daemons: each its own /metrics port
                envs.append(daemon_env({**values, "metrics_port": free_port()}))
            daemon = Daemons(envs, log, ctx.children)
        pids = ", ".join(str(pid) for pid in daemon.pids)
        print(f"  ({what}: daemon pid {pids}, log {log})", flush=True)
        meter = CpuMeter(
            {
                "daemon": daemon.cpu(),
                "daemon_system": daemon.cpu(system_only=True),
                **(daemon.parts() if isinstance(daemon, Workers) else {}),
                "sandbox": pid_cpu(sandbox.process.pid),
                "broker": pid_cpu(broker_pid()),
                "postgres": GroupCpu("postgres"),
                "machine": machine_cpu_seconds,
            }
        )

        await consumer_on(admin, settings.queue, n, daemon, what, ctx)
        at_start = 0  # sends answered before the measurement starts
        if isinstance(daemon, Workers):  # from the moment every worker consumes
            first = time.perf_counter()
            await workers_on(admin, settings.queue, daemon, what, ctx.args.deadline)
            stats = await bounded(sandbox.stats(), 10, "sandbox stats")
            at_start = int(stats["requests"]) - base_requests
            workers = ", ".join(f"{i}: {pid}" for i, pid in daemon.workers.items())
            print(f"  ({what}: workers {workers}, all consuming after {at_start:,} sends)")
        started = time.perf_counter()
        meter.start()
        rss_start = daemon.sample_rss()

        samples: list[tuple[float, int]] = [(started, at_start)]
        ready_after: float | None = None  # run --workers: /readyz first answered 200
        deadline = Deadline(ctx.args.deadline, f"{what}: drain")
        stalled, progressed = "", started
        while True:
            await asyncio.sleep(POLL_DRAIN)
            daemon.alive(what)
            sandbox.alive()
            stats = await bounded(sandbox.stats(), 10, "sandbox stats")
            sent = int(stats["requests"]) - base_requests
            now = time.perf_counter()
            if sent != samples[-1][1]:
                progressed = now
            samples.append((now, sent))
            daemon.sample_rss()
            port = values["metrics_port"]  # run --workers: the supervisor's
            if isinstance(daemon, Workers) and ready_after is None and await readyz(port) == 200:
                ready_after = time.perf_counter() - spawned
            ready, _ = await depth(admin, settings.queue)
            if sent >= n and ready == 0:
                break
            if now - progressed > ctx.args.stall:
                stalled = (
                    f"stalled: {sent:,} of {n:,} sends answered, {ready:,} ready,"
                    f" none for {ctx.args.stall:.0f} s"
                )
                break
            if deadline.passed:
                raise deadline.missed(f"{sent:,} of {n:,} sends answered, {ready:,} ready")
        meter.stop()
        peak = daemon.peak_rss_kb()
        sent, stats = await settle(sandbox, admin, settings.queue, base_requests, sent, stats)
        if isinstance(daemon, Workers):
            by_worker = await sent_by_worker(values["metrics_port"])
        outcomes = {
            k: v - base_outcomes.get(k, 0)
            for k, v in stats["by_outcome"].items()
            if v != base_outcomes.get(k, 0)
        }
        stopped = await daemon.stop(settings.shutdown_grace_seconds + 15, what)
        detail = opened_since(connections_before, await sandbox.connections(), scenario)
        if isinstance(daemon, Workers):
            detail.update(worker_detail(daemon, by_worker, at_start, started - first, ready_after))

        left = {q: count for q, count in (await leftovers(admin, settings)).items() if count}
    finally:
        await close_quietly(admin)

    problems = [stalled] if stalled else []
    if isinstance(daemon, Workers) and daemon.count > 1 and ready_after is None:
        problems.append("the supervisor's /readyz never answered 200 during the drain")
    if at_start > n // 2:  # too few left to time all the workers together
        problems.append(f"{at_start:,} of {n:,} sent before every worker consumed")
    if sent != n or outcomes.get("sent") != n:
        problems.append(f"{sent:,} sends for {n:,} messages (sandbox outcomes {outcomes})")
    if left:
        problems.append(f"left in queues after the stop: {left}")
    ledger: dict[str, int] = {}
    if scenario.ledger and ctx.database_url:
        ledger = await ledger_counts(ctx.database_url, ids)
        if ledger.get("sent") != n or sum(ledger.values()) - ledger["attempts"] != n:
            problems.append(f"the ledger holds {ledger} for {n:,} messages, all sent expected")
    logged = daemon.log_stats()
    if logged.warnings:  # a clean run logs none; the usual one is a lost channel
        problems.append(f"the daemon logged warnings or errors: {logged.warnings}")
    for problem in problems:
        print(f"  {what}: NOT CLEAN, excluded from the medians: {problem}", flush=True)
    done = min(n, samples[-1][1])  # n, unless it stalled
    ended = crossing(samples, done)
    low = max(0.1 * n, at_start)  # the 10% mark, or later if passed before all consumed
    high = max(0.9 * n, low + 1)
    return Run(
        scenario=scenario.key,
        round=round_no,
        messages=n,
        seconds=ended - started,
        rate=(done - at_start) / (ended - started),
        steady_rate=(high - low) / max(crossing(samples, high) - crossing(samples, low), 1e-9),
        prefill_rate=prefill_rate,
        cpu=meter.shares,
        pid=daemon.pid,
        startup_seconds=started - spawned,
        shutdown_seconds=stopped,
        max_rss_mb=daemon.max_rss_kb / 1024,
        peak_rss_mb=peak / 1024 if peak else None,
        rss_at_start_mb=rss_start / 1024,
        log_lines=logged.lines,
        log_bytes=logged.bytes,
        log_outcomes=logged.outcomes,
        log_warnings=logged.warnings,
        sandbox_outcomes=outcomes,
        ledger=ledger,
        problems=problems,
        units=done - at_start if at_start else None,  # timed: those after all consumed
        cpu_us=per_unit(meter.used, done - at_start) if done > at_start else {},
        detail=detail,
    )

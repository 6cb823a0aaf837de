"""Throughput of the daemon against the floor of this machine.

Two measurements, on one broker, in a vhost of their own (``wa-bench-<random>``, deleted at
the end, also on failure):

floor
    N messages pre-filled into a queue of the daemon's topology, drained by a bare aio-pika
    consumer in this process: same connection kind, same prefetch, same event loop, a
    callback that only acks. What a user would write with no features.
daemon
    The same N messages pre-filled into the daemon's main queue, drained by
    ``python -m wa_consumer run`` in its own process, sending to the sandbox in a third
    process (request log and recipient rules off, ``--latency-ms``). Timed from the daemon's
    first consumed message (its consumer appears on the queue; the broker pushes a prefetch's
    worth at once) until the sandbox has answered N sends, then the daemon is stopped with
    SIGTERM and must exit 0 with nothing left in any queue.

The queue depth is polled with a passive declare and the sandbox's ``GET /_sandbox/stats``
every 100 ms; the moment the N-th send was answered is interpolated between two polls. The
daemon's resident memory is sampled from ``/proc/<pid>/status`` (the peak is also read from
``VmHWM``), and the CPU time of the daemon, the sandbox and the broker from
``/proc/<pid>/stat``, so that the table says which process was busy.

    .venv/bin/python scripts/bench.py --messages 20000
    .venv/bin/python scripts/bench.py --latency-ms 100 --prefetch 500 --repeat 3

Every wait has a deadline (``--deadline``); a missed one prints how far the run got and
exits 1. The figures go to ``--json`` (default ``bench-results/latest.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aio_pika
import aiohttp
import aiormq
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydantic import SecretStr

from wa_consumer.message import parse
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench-results" / "latest.json"
BROKER = "127.0.0.1:5672"
TENANTS = ("acme", "globex")  # the sandbox's active tenants
PUBLISH_BATCH = 1000  # publishes in flight before their confirms are awaited
POLL_START = 0.01  # seconds between polls while waiting for the daemon's consumer
POLL_DRAIN = 0.1  # seconds between polls while it drains
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = f"{(os.cpu_count() or 1) * 100}%"


class BenchError(Exception):
    """A step failed or missed its deadline; the text says how far it got."""


# -- results -----------------------------------------------------------------------------


@dataclass
class FloorRun:
    round: int
    messages: int
    seconds: float
    rate: float
    steady_rate: float  # between the 10% and the 90% mark
    prefill_rate: float
    cpu_bench: float | None  # cores used over the drain (1.0: one core busy)
    cpu_broker: float | None
    cpu_machine: float | None  # every process of the machine


@dataclass
class DaemonRun:
    round: int
    messages: int
    seconds: float
    rate: float
    steady_rate: float
    prefill_rate: float
    startup_seconds: float  # process start until its consumer appears
    shutdown_seconds: float
    exit_code: int
    max_rss_mb: float  # highest VmRSS sampled
    peak_rss_mb: float | None  # VmHWM before the stop
    rss_at_start_mb: float
    cpu_daemon: float | None
    cpu_daemon_system: float | None  # the part of cpu_daemon spent in the kernel
    cpu_sandbox: float | None
    cpu_broker: float | None
    cpu_machine: float | None
    sandbox_outcomes: dict[str, int]
    log_lines: int  # lines the daemon wrote at WARNING and up


@dataclass
class Results:
    floor: list[FloorRun] = field(default_factory=list)
    daemon: list[DaemonRun] = field(default_factory=list)


# -- small helpers -----------------------------------------------------------------------


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """``awaitable`` within ``seconds``, or a ``BenchError`` naming ``what``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise BenchError(f"{what}: no answer within {seconds:.0f} s") from None


async def close_quietly(connection: AbstractConnection) -> None:
    """Close on the way out, without hiding the error that got us there."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


class Deadline:
    """A wait's end; ``missed(progress)`` is the error that says how far it got."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.end

    def missed(self, progress: str) -> BenchError:
        return BenchError(f"{self.what}: not done within {self.seconds:.0f} s; {progress}")


def rabbitmqctl(*args: str) -> None:
    try:
        subprocess.run(
            ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: {exc.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: no answer within 60 s") from None


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (``VmRSS``, ``VmHWM``), None once gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None, *, system_only: bool = False) -> float | None:
    """CPU time of ``pid`` so far (user plus system, or system only), None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return (stime if system_only else utime + stime) / CLOCK_TICKS


def broker_pid() -> int | None:
    """The RabbitMQ node (the ``beam.smp`` that boots ``rabbit``; rabbitmqctl runs one too)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"beam.smp") and b"rabbit" in argv and b"boot" in argv:
                return int(cmdline.parent.name)
    return None


def machine_cpu_seconds() -> float | None:
    """CPU time all processes of the machine used so far (``/proc/stat``, idle excluded)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def pid_cpu(pid: int | None, *, system_only: bool = False) -> Callable[[], float | None]:
    return lambda: cpu_seconds(pid, system_only=system_only)


class CpuMeter:
    """Cores each reader's CPU time used between ``start`` and ``stop`` (1.0: one core)."""

    def __init__(self, readers: dict[str, Callable[[], float | None]]) -> None:
        self._readers = readers
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0
        self.shares: dict[str, float | None] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = {name: read() for name, read in self._readers.items()}

    def stop(self) -> None:
        wall = time.perf_counter() - self._t0
        for name, read in self._readers.items():
            before, after = self._start.get(name), read()
            ok = before is not None and after is not None and wall > 0
            self.shares[name] = (after - before) / wall if ok else None  # type: ignore[operator]


def crossing(samples: Sequence[tuple[float, int]], target: float) -> float:
    """When the count in ``(time, count)`` samples reached ``target``, interpolated."""
    prev_t, prev_c = samples[0]
    for t, c in samples:
        if c >= target:
            if c == prev_c:
                return t
            return prev_t + (target - prev_c) / (c - prev_c) * (t - prev_t)
        prev_t, prev_c = t, c
    return samples[-1][0]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line[:300]}" for line in text[-lines:]) or "    (empty)"


# -- the messages ------------------------------------------------------------------------


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


def make_settings(amqp_url: str, sandbox_url: str, prefetch: int) -> Settings:
    """Settings with broker names unique to one run; the rest as configured or default."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        _env_file=None,
        amqp_url=amqp_url,
        exchange=f"wx-{tag}",
        dead_letter_exchange=f"dlx-{tag}",
        queue=f"main-{tag}",
        dead_letter_queue=f"failed-{tag}",
        retry_queue_prefix=f"retry-{tag}-",
        graph_api_url=sandbox_url,
        tenant_service_url=sandbox_url,
        prefetch=prefetch,
        metrics_port=0,
        log_level="WARNING",
        log_format="json",
    )


def daemon_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``wa_consumer run`` read exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        env[f"WA_{name.upper()}"] = text
    return env


async def prefill(connection: AbstractConnection, settings: Settings, n: int) -> float:
    """Publish ``n`` messages as producers do, confirmed in batches; returns messages/s."""
    messages = [envelope(i, TENANTS[i % len(TENANTS)]) for i in range(n)]
    encoded = [
        (m["metadata"]["tenantId"], m["metadata"]["internalId"], orjson.dumps(m)) for m in messages
    ]
    parse(encoded[0][2])  # the daemon's own check: the bench's envelope has not drifted
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
    return n / (time.perf_counter() - started)


async def depth(connection: AbstractConnection, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``, by a passive declare."""
    async with connection.channel() as channel:
        declared = await bounded(
            channel.declare_queue(queue, passive=True), 10, f"passive declare of {queue}"
        )
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0


# -- floor -------------------------------------------------------------------------------


async def run_floor(
    amqp_url: str, sandbox_url: str, args: argparse.Namespace, round_no: int
) -> FloorRun:
    n = args.messages
    settings = make_settings(amqp_url, sandbox_url, args.prefetch)
    admin = await bounded(aio_pika.connect(amqp_url, timeout=10), 15, "connect")
    try:
        await bounded(declare(admin, Topology.from_settings(settings)), 30, "declare topology")
        prefill_rate = await prefill(admin, settings, n)

        connection = await bounded(aio_pika.connect_robust(amqp_url, timeout=10), 15, "connect")
        meter = CpuMeter(
            {
                "bench": time.process_time,
                "broker": pid_cpu(broker_pid()),
                "machine": machine_cpu_seconds,
            }
        )
        marks: dict[int, float] = {}
        mark_at = {n // 10, (9 * n) // 10, n}
        acked = 0
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            if not marks:
                marks[0] = time.perf_counter()
            await message.ack()
            acked += 1
            if acked in mark_at:
                marks[acked] = time.perf_counter()
                if acked == n:
                    done.set()

        try:
            channel = await bounded(connection.channel(), 10, "floor: open channel")
            await bounded(channel.set_qos(prefetch_count=args.prefetch), 10, "floor: qos")
            queue = await bounded(
                channel.declare_queue(settings.queue, passive=True), 10, "floor: declare"
            )
            meter.start()
            tag = await bounded(queue.consume(on_message), 10, "floor: consume")
            waited = asyncio.create_task(done.wait())
            await asyncio.wait([waited], timeout=args.deadline)
            if not waited.done():
                waited.cancel()
                raise BenchError(
                    f"floor round {round_no}: {acked:,} of {n:,} acked after {args.deadline:.0f} s"
                )
            meter.stop()
            await bounded(queue.cancel(tag), 10, "floor: cancel consumer")
        finally:
            await close_quietly(connection)
        ready, _ = await depth(admin, settings.queue)
        if ready:
            raise BenchError(f"floor round {round_no}: {ready:,} messages left in the queue")
    finally:
        await close_quietly(admin)

    seconds = marks[n] - marks[0]
    steady = ((9 * n) // 10 - n // 10) / (marks[(9 * n) // 10] - marks[n // 10])
    return FloorRun(
        round=round_no,
        messages=n,
        seconds=seconds,
        rate=n / seconds,
        steady_rate=steady,
        prefill_rate=prefill_rate,
        cpu_bench=meter.shares["bench"],
        cpu_broker=meter.shares["broker"],
        cpu_machine=meter.shares["machine"],
    )


# -- daemon ------------------------------------------------------------------------------


class Sandbox:
    """The sandbox in its own process, so that it does not share the daemon's core."""

    def __init__(self, latency_ms: float, workdir: Path, children: list[subprocess.Popen[Any]]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "sandbox.log"
        command = [sys.executable, "-m", "wa_consumer.sandbox", "--port", str(self.port)]
        command += ["--no-request-log", "--no-rules", "--latency-ms", str(latency_ms)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        children.append(self.process)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def ready(self, seconds: float) -> None:
        deadline = Deadline(seconds, "sandbox start")
        while True:
            if self.process.poll() is not None:
                raise BenchError(
                    f"sandbox exited with {self.process.returncode}:\n{tail(self.log)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self.stats()
                return
            if deadline.passed:
                raise deadline.missed(f"port {self.port} does not answer")
            await asyncio.sleep(0.05)

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sandbox/stats") as response:
            response.raise_for_status()
            stats: dict[str, Any] = await response.json()
            return stats

    async def close(self) -> None:
        await self.session.close()


def spawn_daemon(
    settings: Settings, workdir: Path, round_no: int, children: list[subprocess.Popen[Any]]
) -> tuple[subprocess.Popen[Any], Path]:
    log = workdir / f"daemon-{round_no}.log"
    # The working directory is empty so that no .env is read: the settings are all in env.
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wa_consumer", "run"],
            cwd=workdir,
            env=daemon_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children.append(process)
    return process, log


async def wait_exit(process: subprocess.Popen[Any], seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return process.returncode


async def run_daemon(
    amqp_url: str,
    sandbox: Sandbox,
    args: argparse.Namespace,
    round_no: int,
    workdir: Path,
    children: list[subprocess.Popen[Any]],
) -> DaemonRun:
    n = args.messages
    what = f"daemon round {round_no}"
    settings = make_settings(amqp_url, sandbox.url, args.prefetch)
    admin = await bounded(aio_pika.connect(amqp_url, timeout=10), 15, "connect")
    try:
        await bounded(declare(admin, Topology.from_settings(settings)), 30, "declare topology")
        prefill_rate = await prefill(admin, settings, n)
        before = await bounded(sandbox.stats(), 10, "sandbox stats")
        base_requests = int(before["requests"])
        base_outcomes: dict[str, int] = before["by_outcome"]

        spawned = time.perf_counter()
        process, log = spawn_daemon(settings, workdir, round_no, children)
        pid = process.pid
        meter = CpuMeter(
            {
                "daemon": pid_cpu(pid),
                "daemon_system": pid_cpu(pid, system_only=True),
                "sandbox": pid_cpu(sandbox.process.pid),
                "broker": pid_cpu(broker_pid()),
                "machine": machine_cpu_seconds,
            }
        )
        rss_max = 0

        def alive() -> None:
            if process.poll() is not None:
                raise BenchError(f"{what}: daemon exited with {process.returncode}:\n{tail(log)}")

        # Its consumer on the queue is its first consumed message: the broker pushes a
        # prefetch's worth as soon as it registers.
        deadline = Deadline(args.deadline, f"{what}: start")
        while True:
            alive()
            ready, consumers = await depth(admin, settings.queue)
            if consumers or ready < n:
                break
            rss_max = max(rss_max, proc_status_kb(pid, "VmRSS") or 0)
            if deadline.passed:
                raise deadline.missed(f"no consumer yet, {ready:,} ready\n{tail(log)}")
            await asyncio.sleep(POLL_START)
        started = time.perf_counter()
        meter.start()
        rss_start = proc_status_kb(pid, "VmRSS") or 0

        samples: list[tuple[float, int]] = [(started, 0)]
        deadline = Deadline(args.deadline, f"{what}: drain")
        sent = 0
        while True:
            await asyncio.sleep(POLL_DRAIN)
            alive()
            stats = await bounded(sandbox.stats(), 10, "sandbox stats")
            now = time.perf_counter()
            sent = int(stats["requests"]) - base_requests
            samples.append((now, sent))
            rss_max = max(rss_max, proc_status_kb(pid, "VmRSS") or 0)
            ready, _ = await depth(admin, settings.queue)
            if sent >= n and ready == 0:
                break
            if deadline.passed:
                raise deadline.missed(f"{sent:,} of {n:,} sends answered, {ready:,} ready")
        meter.stop()
        peak = proc_status_kb(pid, "VmHWM")
        ended = crossing(samples, n)
        outcomes = {
            k: v - base_outcomes.get(k, 0)
            for k, v in stats["by_outcome"].items()
            if v != base_outcomes.get(k, 0)
        }

        stop_at = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        grace = settings.shutdown_grace_seconds + 15
        code = await wait_exit(process, grace)
        if code is None:
            raise BenchError(f"{what}: daemon still running {grace:.0f} s after SIGTERM")
        stopped = time.perf_counter() - stop_at
        if code != 0:
            raise BenchError(f"{what}: daemon exited with {code} after SIGTERM:\n{tail(log)}")

        queues = Topology.from_settings(settings).queues
        left = {q.name: (await depth(admin, q.name))[0] for q in queues}
        if any(left.values()) or outcomes.get("sent") != n or sent != n:
            raise BenchError(
                f"{what}: not a clean run: sandbox outcomes {outcomes}, "
                f"{sent:,} requests for {n:,} messages, left in queues {left}"
            )
    finally:
        await close_quietly(admin)

    log_lines = len(log.read_text(errors="replace").splitlines())
    return DaemonRun(
        round=round_no,
        messages=n,
        seconds=ended - started,
        rate=n / (ended - started),
        steady_rate=(0.8 * n) / (crossing(samples, 0.9 * n) - crossing(samples, 0.1 * n)),
        prefill_rate=prefill_rate,
        startup_seconds=started - spawned,
        shutdown_seconds=stopped,
        exit_code=code,
        max_rss_mb=rss_max / 1024,
        peak_rss_mb=peak / 1024 if peak else None,
        rss_at_start_mb=rss_start / 1024,
        cpu_daemon=meter.shares["daemon"],
        cpu_daemon_system=meter.shares["daemon_system"],
        cpu_sandbox=meter.shares["sandbox"],
        cpu_broker=meter.shares["broker"],
        cpu_machine=meter.shares["machine"],
        sandbox_outcomes=outcomes,
        log_lines=log_lines,
    )


# -- the run -----------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace,
    vhost: str,
    workdir: Path,
    results: Results,
    children: list[subprocess.Popen[Any]],
) -> None:
    amqp_url = f"amqp://guest:guest@{BROKER}/{vhost}"
    sandbox: Sandbox | None = None
    try:
        if args.mode != "floor":
            sandbox = Sandbox(args.latency_ms, workdir, children)
            await sandbox.ready(30)
        sandbox_url = sandbox.url if sandbox else "http://127.0.0.1:1"
        for round_no in range(1, args.repeat + 1):
            if args.mode != "daemon":
                floor = await run_floor(amqp_url, sandbox_url, args, round_no)
                results.floor.append(floor)
                print(describe_floor(floor), flush=True)
            if sandbox is not None:
                run = await run_daemon(amqp_url, sandbox, args, round_no, workdir, children)
                results.daemon.append(run)
                print(describe_daemon(run), flush=True)
    finally:
        if sandbox is not None:
            await sandbox.close()


def stop_children(children: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM whatever we started that still runs; SIGKILL after 15 s."""
    for process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in children:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def describe_floor(run: FloorRun) -> str:
    return (
        f"  floor  #{run.round}: {run.messages:,} in {run.seconds:.2f} s = {run.rate:,.0f} msg/s"
        f" (steady {run.steady_rate:,.0f}); prefill {run.prefill_rate:,.0f} msg/s;"
        f" cpu consumer {_pct(run.cpu_bench)}, broker {_pct(run.cpu_broker)},"
        f" machine {_pct(run.cpu_machine)} of {CORES}"
    )


def describe_daemon(run: DaemonRun) -> str:
    return (
        f"  daemon #{run.round}: {run.messages:,} in {run.seconds:.2f} s = {run.rate:,.0f} msg/s"
        f" (steady {run.steady_rate:,.0f}); prefill {run.prefill_rate:,.0f} msg/s;"
        f" start {run.startup_seconds:.2f} s, stop {run.shutdown_seconds:.2f} s, exit"
        f" {run.exit_code}; rss {run.rss_at_start_mb:.0f} -> max {run.max_rss_mb:.0f} MB"
        f" (peak {run.peak_rss_mb or 0:.0f}); cpu daemon {_pct(run.cpu_daemon)}"
        f" ({_pct(run.cpu_daemon_system)} kernel),"
        f" sandbox {_pct(run.cpu_sandbox)}, broker {_pct(run.cpu_broker)},"
        f" machine {_pct(run.cpu_machine)} of {CORES};"
        f" {run.log_lines} log lines"
    )


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    floor = median_or_none([r.rate for r in results.floor])
    daemon = median_or_none([r.rate for r in results.daemon])
    return {
        "settings": meta,
        "floor": {
            "median_msg_s": floor,
            "median_steady_msg_s": median_or_none([r.steady_rate for r in results.floor]),
            "runs": [dataclasses.asdict(r) for r in results.floor],
        },
        "daemon": {
            "median_msg_s": daemon,
            "median_steady_msg_s": median_or_none([r.steady_rate for r in results.daemon]),
            "max_rss_mb": max((r.max_rss_mb for r in results.daemon), default=None),
            "runs": [dataclasses.asdict(r) for r in results.daemon],
        },
        "ratio": daemon / floor if floor and daemon else None,
    }


def table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"N={s['messages']:,}  prefetch={s['prefetch']}  latency={s['latency_ms']:g} ms  "
        f"repeat={s['repeat']}  python {s['python']}  {s['loop']}  {s['cpus']} cpus  "
        f"load {s['loadavg_at_start'][0]:.2f}",
        "",
        f"{'':<8}{'msg/s (median)':>16}{'steady 10-90%':>16}{'runs':>30}",
    ]
    for name in ("floor", "daemon"):
        part = report[name]
        if part["median_msg_s"] is None:
            continue
        runs = " ".join(f"{r['rate']:,.0f}" for r in part["runs"])
        lines.append(
            f"{name:<8}{part['median_msg_s']:>16,.0f}{part['median_steady_msg_s']:>16,.0f}"
            f"{runs:>30}"
        )
    if report["ratio"] is not None:
        lines.append(f"{'ratio':<8}{report['ratio']:>16.3f}   (daemon / floor)")
    if report["daemon"]["max_rss_mb"] is not None:
        lines.append(f"daemon max RSS {report['daemon']['max_rss_mb']:.0f} MB")
    return "\n".join(lines)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """On uvloop, as the daemon runs, so that the floor is measured on the same loop.

    SIGTERM cancels the run, as Ctrl-C does, so that every ``finally`` on the way out runs
    (children stopped, connections closed); outside the loop it raises KeyboardInterrupt.
    """
    import uvloop

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await coro

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(cancellable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--messages", type=int, default=20_000, help="N (default 20,000)")
    parser.add_argument("--prefetch", type=int, default=500, help="floor and daemon")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sandbox answer delay")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    parser.add_argument("--mode", choices=("floor", "daemon", "both"), default="both")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write figures")
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="seconds allowed for each wait"
    )
    args = parser.parse_args(argv)
    if args.messages < 10 or args.repeat < 1 or args.prefetch < 1 or args.latency_ms < 0:
        parser.error("need --messages >= 10, --repeat >= 1, --prefetch >= 1, --latency-ms >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    meta = {
        "messages": args.messages,
        "prefetch": args.prefetch,
        "latency_ms": args.latency_ms,
        "repeat": args.repeat,
        "mode": args.mode,
        "python": platform.python_version(),
        "loop": f"uvloop {importlib.metadata.version('uvloop')}",
        "aio_pika": aio_pika.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sandbox": "separate process, request log off, no recipient rules",
        "broker": BROKER,
    }
    print(
        f"bench: {args.mode}, {args.messages:,} messages, prefetch {args.prefetch}, "
        f"latency {args.latency_ms:g} ms, {args.repeat} round(s)",
        flush=True,
    )
    results = Results()
    children: list[subprocess.Popen[Any]] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with bench_vhost() as vhost, tempfile.TemporaryDirectory(prefix="wa-bench-") as tmp:
            meta["vhost"] = vhost
            try:
                run_loop(bench(args, vhost, Path(tmp), results, children))
            finally:
                stop_children(children)
    except (BenchError, aiormq.exceptions.AMQPError, aiohttp.ClientError, OSError) as exc:
        text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"bench: {text}", file=sys.stderr)
        done = len(results.floor) + len(results.daemon)
        print(f"bench: failed after {done} completed measurement(s)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    report = summary(results, meta)
    print()
    print(table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

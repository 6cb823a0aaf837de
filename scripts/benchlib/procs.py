"""The sandbox and the daemon in processes of their own; their memory and CPU time.

Resident memory is read from ``/proc/<pid>/status`` (``VmRSS`` sampled while the daemon
runs, ``VmHWM``, the kernel's own peak, before it is stopped); CPU time from
``/proc/<pid>/stat``, so that the report says which process was busy; the workers of
``run --workers N`` are the supervisor's children there. Every process started here is
registered in ``Children`` and stopped on the way out, whatever the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .common import BenchError, Deadline, bounded, free_port, tail

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_OBJECT = re.compile(r"<[^<>]*>")  # a repr in a library's log line: one key for all of them


# -- /proc -------------------------------------------------------------------------------


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


def running(pid: int) -> bool:
    """``pid`` exists and is neither a zombie nor dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def child_pids(parent: int) -> list[int]:
    """The running processes whose parent is ``parent`` (``/proc/<pid>/stat``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
                found.append(int(stat.parent.name))
    return sorted(found)


def worker_index(pid: int) -> int | None:
    """``WA_WORKER_INDEX`` in the environment ``pid`` started with (set by the supervisor)."""
    with contextlib.suppress(OSError, ValueError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"WA_WORKER_INDEX="):
                return int(item.split(b"=", 1)[1])
    return None


class GroupCpu:
    """CPU time of every process named ``name`` (``postgres``: the server and each backend).

    Cumulative over the calls: a process that appears between two calls counts whole, one
    that exits is lost from then on. Includes other clients' backends on a shared server.
    """

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.last: dict[int, float] | None = None
        self.total = 0.0

    def __call__(self) -> float | None:
        now: dict[int, float] = {}
        for comm in Path("/proc").glob("[0-9]*/comm"):
            with contextlib.suppress(OSError, ValueError):
                if comm.read_bytes().strip() == self.name:
                    pid = int(comm.parent.name)
                    if (cpu := cpu_seconds(pid)) is not None:
                        now[pid] = cpu
        if self.last is not None:
            self.total += sum(cpu - self.last.get(pid, 0.0) for pid, cpu in now.items())
        self.last = now
        return self.total


class CpuMeter:
    """Cores each reader's CPU time used between ``start`` and ``stop`` (1.0: one core)."""

    def __init__(self, readers: dict[str, Callable[[], float | None]]) -> None:
        self._readers = readers
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0
        self.shares: dict[str, float | None] = dict.fromkeys(readers)
        self.used: dict[str, float | None] = dict.fromkeys(readers)  # CPU seconds

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = {name: read() for name, read in self._readers.items()}

    def stop(self) -> None:
        wall = time.perf_counter() - self._t0
        for name, read in self._readers.items():
            before, after = self._start.get(name), read()
            ok = before is not None and after is not None and wall > 0
            self.used[name] = after - before if ok else None  # type: ignore[operator]
            self.shares[name] = (after - before) / wall if ok else None  # type: ignore[operator]


# -- children ----------------------------------------------------------------------------


class Children:
    """Every process the bench started, to stop on the way out."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []

    def spawn(
        self, command: list[str], log: Path, *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[Any]:
        """Start ``command`` with stdout and stderr to ``log`` (a file: never a full pipe)."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=log.parent,  # an empty directory: no .env is read there
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches only the bench
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM whatever still runs; SIGKILL what has not exited 15 s later."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


async def wait_exit(process: subprocess.Popen[Any], seconds: float) -> int | None:
    """The exit code, or None if ``process`` still runs after ``seconds``."""
    deadline = time.monotonic() + seconds
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return process.returncode


# -- the sandbox -------------------------------------------------------------------------


class Sandbox:
    """The sandbox in its own process (not on the daemon's core); latency set per scenario."""

    def __init__(self, workdir: Path, children: Children, http2_max_streams: int = 100) -> None:
        # One process, one application on two ports: ``url`` plain HTTP (the plain scenarios,
        # the tenant service, the admin endpoints), ``tls_url`` HTTPS with a CA made at start,
        # HTTP/2 to a client that offers it by ALPN (``http2_max_streams`` per connection).
        self.port, self.tls_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tls_url = f"https://127.0.0.1:{self.tls_port}"
        self.ca_file = workdir / "sandbox-tls" / "sandbox-ca.pem"
        self.log = workdir / "sandbox.log"
        command = [sys.executable, "-m", "wa_consumer.sandbox", "--port", str(self.tls_port)]
        command += ["--tls", "--tls-dir", str(self.ca_file.parent), "--plain-port", str(self.port)]
        command += ["--no-request-log", "--no-rules", "--number-rate", "0"]
        command += ["--http2-max-streams", str(http2_max_streams)]
        self.process = children.spawn(command, self.log)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def ready(self, seconds: float) -> None:
        deadline = Deadline(seconds, "sandbox start")
        while True:
            self.alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self.stats()
                return
            if deadline.passed:
                raise deadline.missed(f"port {self.port} does not answer\n{tail(self.log)}")
            await asyncio.sleep(0.05)

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"sandbox exited with {self.process.returncode}:\n{tail(self.log)}")

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sandbox/stats") as response:
            response.raise_for_status()
            stats: dict[str, Any] = await response.json()
            return stats

    async def connections(self) -> tuple[int, int, int]:
        """Connections opened since the sandbox started: (all, over TLS, HTTP/2)."""
        counted = (await bounded(self.stats(), 10, "sandbox stats"))["connections"]
        return int(counted["opened"]), int(counted["tls_opened"]), int(counted["h2_opened"])

    async def set_latency(self, ms: float) -> None:
        """Every answer delayed by ``ms`` from now on (no jitter)."""
        body = {"latency": {"ms": ms, "jitter_ms": 0}}
        self.alive()

        async def post() -> dict[str, Any]:
            async with self.session.post(f"{self.url}/_sandbox/config", json=body) as response:
                response.raise_for_status()
                config: dict[str, Any] = await response.json()
                return config

        config = await bounded(post(), 10, "sandbox: set latency")
        if config.get("latency", {}).get("ms") != ms:
            raise BenchError(f"sandbox: latency not set to {ms:g} ms: {config.get('latency')}")

    async def close(self) -> None:
        await self.session.close()


# -- the daemon --------------------------------------------------------------------------


class Daemon:
    """``python -m wa_consumer run`` (or another ``command``, ``webhook``: the receiver) with
    exactly ``env``; its output to ``log``."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        children: Children,
        command: str = "run",
        args: Sequence[str] = (),
    ) -> None:
        self.log = log
        self.name = "daemon" if command == "run" else f"wa-consumer {command}"
        argv = [sys.executable, "-m", "wa_consumer", command, *args]
        self.process = children.spawn(argv, log, env=env)
        self.pid = self.process.pid
        self.max_rss_kb = 0

    def alive(self, what: str) -> None:
        if self.process.poll() is not None:
            code = self.process.returncode
            raise BenchError(f"{what}: {self.name} exited with {code}:\n{tail(self.log)}")

    def sample_rss(self) -> int:
        rss = proc_status_kb(self.pid, "VmRSS") or 0
        self.max_rss_kb = max(self.max_rss_kb, rss)
        return rss

    def peak_rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmHWM")

    async def stop(self, grace: float, what: str) -> float:
        """SIGTERM, then the seconds it took to exit 0; a ``BenchError`` otherwise."""
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        code = await wait_exit(self.process, grace)
        if code is None:
            raise BenchError(f"{what}: {self.name} still running {grace:.0f} s after SIGTERM")
        if code != 0:
            raise BenchError(
                f"{what}: {self.name} exited with {code} after SIGTERM:\n{tail(self.log)}"
            )
        return time.perf_counter() - started

    def log_stats(self) -> LogStats:
        """What the daemon wrote: lines, bytes, outcomes of its message lines, warnings."""
        stats = LogStats()
        try:
            data = self.log.read_bytes()
        except OSError:
            return stats
        stats.bytes = len(data)
        for line in data.splitlines():
            stats.lines += 1
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "message":
                outcome = str(event.get("outcome"))
                stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
            if event.get("level") in ("warning", "error", "critical"):
                what = _OBJECT.sub("<...>", str(event.get("event")))[:100]
                stats.warnings[what] = stats.warnings.get(what, 0) + 1
        return stats


class Daemons:
    """``count`` daemons on the same queue, each with its own ``/metrics`` port and log, seen
    as one: alive while all are, the highest memory of any, the sum of their CPU."""

    def __init__(self, envs: list[dict[str, str]], log: Path, children: Children) -> None:
        self.members = [
            Daemon(env, log if i == 0 else log.with_suffix(f".{i + 1}.log"), children)
            for i, env in enumerate(envs)
        ]
        self.pid = self.members[0].pid
        self.pids = [d.pid for d in self.members]
        self.log = self.members[0].log

    @property
    def max_rss_kb(self) -> int:
        return max(d.max_rss_kb for d in self.members)

    def alive(self, what: str) -> None:
        for daemon in self.members:
            daemon.alive(what)

    def sample_rss(self) -> int:
        return max(d.sample_rss() for d in self.members)

    def peak_rss_kb(self) -> int | None:
        return max((p for d in self.members if (p := d.peak_rss_kb()) is not None), default=None)

    def cpu(self, *, system_only: bool = False) -> Callable[[], float | None]:
        def total() -> float | None:
            seconds = [cpu_seconds(pid, system_only=system_only) for pid in self.pids]
            return None if None in seconds else sum(s for s in seconds if s is not None)

        return total

    async def stop(self, grace: float, what: str) -> float:
        """SIGTERM to all at once; the longest any took to exit 0."""
        took = await asyncio.gather(*(d.stop(grace, what) for d in self.members))
        return max(took)

    def log_stats(self) -> LogStats:
        stats = LogStats()
        for daemon in self.members:
            one = daemon.log_stats()
            stats.lines += one.lines
            stats.bytes += one.bytes
            for mine, theirs in ((stats.outcomes, one.outcomes), (stats.warnings, one.warnings)):
                for key, count in theirs.items():
                    mine[key] = mine.get(key, 0) + count
        return stats


class Workers:
    """``python -m wa_consumer run --workers N``: the supervisor and its N workers, seen as one
    daemon. The workers are the supervisor's child processes (read from ``/proc``, at any log
    level; their index from the ``WA_WORKER_INDEX`` they were started with). Memory is per
    worker (the highest of any; the supervisor's apart), CPU the sum of every process. With
    N = 1 ``run`` is the daemon itself, no supervisor: one process, worker 0."""

    def __init__(self, env: dict[str, str], log: Path, children: Children, count: int) -> None:
        self.count = count
        self.supervisor = Daemon(env, log, children, args=("--workers", str(count)))
        self.supervisor.name = f"run --workers {count}"
        self.pid = self.supervisor.pid
        self.log = log
        self.workers: dict[int, int] = {}  # worker index -> pid, once all N run
        self.max_rss_kb = 0  # the highest VmRSS sampled of any worker
        self.supervisor_max_rss_kb = 0
        self.peaks_kb: dict[int, int | None] = {}  # VmHWM by worker, read by ``peak_rss_kb``
        self.supervisor_peak_kb: int | None = None

    @property
    def pids(self) -> list[int]:
        return sorted({self.pid, *self.workers.values()})

    def find_workers(self) -> bool:
        """Record the workers' pids once all N run; True then."""
        if self.count == 1:
            self.workers = {0: self.pid}
            return True
        pids = child_pids(self.pid)
        if len(pids) < self.count:
            return False
        indexed = {worker_index(pid): pid for pid in pids}
        if None in indexed or len(indexed) != self.count:  # one still between fork and exec
            return False
        self.workers = {i: pid for i, pid in sorted(indexed.items()) if i is not None}
        return True

    def alive(self, what: str) -> None:
        self.supervisor.alive(what)
        gone = [i for i, pid in self.workers.items() if not running(pid)]
        if gone:
            raise BenchError(f"{what}: worker {gone} exited (the supervisor restarts it)")

    def sample_rss(self) -> int:
        """The highest VmRSS of any worker now (0 before they are known)."""
        rss = max((proc_status_kb(pid, "VmRSS") or 0 for pid in self.workers.values()), default=0)
        self.max_rss_kb = max(self.max_rss_kb, rss)
        if self.count > 1:
            own = proc_status_kb(self.pid, "VmRSS") or 0
            self.supervisor_max_rss_kb = max(self.supervisor_max_rss_kb, own)
        return rss

    def peak_rss_kb(self) -> int | None:
        """The highest VmHWM of any worker; each worker's, and the supervisor's, kept."""
        self.peaks_kb = {i: proc_status_kb(pid, "VmHWM") for i, pid in self.workers.items()}
        if self.count > 1:
            self.supervisor_peak_kb = proc_status_kb(self.pid, "VmHWM")
        return max((p for p in self.peaks_kb.values() if p is not None), default=None)

    def cpu(self, *, system_only: bool = False) -> Callable[[], float | None]:
        """CPU time of the supervisor and every worker, summed."""

        def total() -> float | None:
            seconds = [cpu_seconds(pid, system_only=system_only) for pid in self.pids]
            return None if None in seconds else sum(s for s in seconds if s is not None)

        return total

    def parts(self) -> dict[str, Callable[[], float | None]]:
        """CPU time of each process apart (none with one worker: it is the whole); a worker's
        reads None until ``find_workers`` has its pid."""
        if self.count == 1:
            return {}

        def worker(i: int) -> Callable[[], float | None]:
            return lambda: cpu_seconds(self.workers.get(i))

        return {"supervisor": pid_cpu(self.pid)} | {
            f"worker_{i}": worker(i) for i in range(self.count)
        }

    async def stop(self, grace: float, what: str) -> float:
        """SIGTERM to the supervisor (it passes it on); the seconds until it exited 0."""
        return await self.supervisor.stop(grace, what)

    def log_stats(self) -> LogStats:
        return self.supervisor.log_stats()  # every process writes to the supervisor's stdout


@dataclass
class LogStats:
    lines: int = 0
    bytes: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # of the per-message lines
    warnings: dict[str, int] = field(default_factory=dict)  # lines at WARNING and up, by event

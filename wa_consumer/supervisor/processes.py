"""Start N workers, start again one that dies, pass signals on, stop within a deadline.

Each worker is ``python -m wa_consumer run`` in a process of its own: the same daemon as a
single ``run``, with its own broker, database and Redis connections, on the same queue. The
supervisor opens none of those; it holds the workers' processes, their stdin pipes and an
HTTP endpoint (``endpoint``).

- **Signals.** SIGTERM or SIGINT to the supervisor is passed to every worker as SIGTERM
  (each stops taking messages and drains within ``WA_SHUTDOWN_GRACE_SECONDS``); a second one
  is passed on too (each ends its grace). Workers run in sessions of their own, so a
  terminal's Ctrl-C reaches the supervisor alone and no worker gets it twice.
- **Deaths.** A worker that exits while no stop was asked is started again after a back-off
  (``restarts``), with an error line. Exit 2 (a bad setting) or 3 (topology mismatch) cannot
  be mended by a restart: every worker is stopped and the supervisor exits with that code.
  Past the restart budget it stops every worker and exits 1.
- **The deadline.** After the first signal the supervisor waits for the grace, a claimed
  send's own timeout and the bounded steps of a worker's exit; a worker still running then is
  killed and the supervisor exits 1. It exits 0 only when every worker exited 0.
- **An orphan stops.** A worker's stdin is a pipe (a socket pair under uvloop) whose other
  end only the supervisor holds: when the supervisor is gone, however it went (kill -9
  included), the worker reads the end of it and stops as on SIGTERM (``worker``),
  rather than consume on with nobody to restart or stop it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Final

import orjson

from ..health import HealthServer
from ..logs import get_logger
from ..settings import Settings
from .endpoint import WorkerEndpoints, WorkerState
from .restarts import RestartPolicy

log = get_logger("supervisor")

#: Exits a restart cannot mend (``cli.common.Exit``): a bad setting, a topology mismatch.
CONFIG_EXITS: Final = frozenset({2, 3})
#: A worker's bounded steps after its grace besides the closes bounded by the grace (see
#: deploy/kubernetes/base/deployment.yaml): status consumer 5 + 1, queue probe 5, ledger 9,
#: AMQP connection 5.
EXIT_STEPS_SECONDS: Final = 25.0
#: Beyond a worker's worst case: the interpreter's own exit.
EXIT_MARGIN_SECONDS: Final = 2.0
#: Exits that mean "stopped as asked": 0, or SIGTERM before its handler was installed.
_STOPPED: Final = frozenset({0, -signal.SIGTERM})


def worker_count(value: str) -> int:
    """``--workers``: a whole number of 1 or more, or ``auto`` (``os.cpu_count()``, the
    machine's cores: in a container with a CPU limit, give the number instead)."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    count = int(value)  # ValueError: not a number
    if count < 1:
        raise ValueError(f"{count} is less than 1")
    return count


def worker_command() -> list[str]:
    """How a worker is started: this interpreter, the same package, one daemon."""
    return [sys.executable, "-m", "wa_consumer", "run", "--workers", "1"]


def stop_deadline(settings: Settings) -> float:
    """Seconds from the first signal to killing what still runs: a worker's worst case (the
    grace, a message claimed just before it and its send, never cut off, then each bounded
    step of its exit; 85 s with the defaults) and a margin. Within the systemd unit's
    ``TimeoutStopSec`` and the manifest's ``terminationGracePeriodSeconds`` (90 s)."""
    s = settings
    closes = 2 * min(5.0, s.shutdown_grace_seconds)  # the status consumer's and the alerts'
    claimed = s.database_statement_timeout_ms / 1000 + s.http_timeout_seconds
    return s.shutdown_grace_seconds + claimed + closes + EXIT_STEPS_SECONDS + EXIT_MARGIN_SECONDS


def worker_limits(settings: Settings, count: int) -> dict[str, str]:
    """Settings that give each worker its share of the per-number rate limits.

    Limits are kept in each process: N workers at the configured rate would send N times it.
    Without Redis each worker gets 1/N of every number's rate; with Redis the schedule is
    shared and only the in-process fallback (Redis away) is split. A recipient's spacing
    (``WA_PAIR_MIN_INTERVAL_SECONDS``) is each process's, as it is for each replica.
    """
    if settings.redis_url:
        return {"WA_REDIS_FALLBACK_SHARE": repr(settings.redis_fallback_share / count)}
    rates = {number: rate / count for number, rate in settings.number_rates.items()}
    return {
        "WA_NUMBER_RATE": repr(settings.number_rate / count),
        "WA_NUMBER_RATES": orjson.dumps(rates).decode(),
    }


class Supervisor:
    """``wa-consumer run --workers N``: keeps N daemon processes running until told to stop."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        command: Sequence[str] | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.workers = [WorkerState(i) for i in range(count)]
        self.policy = policy or RestartPolicy(
            limit=settings.worker_restart_limit, window=settings.worker_restart_window_seconds
        )
        self._command = list(command or worker_command())
        self._limits = worker_limits(settings, count)
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signals = 0
        self._code = 0  # the exit code, once a worker decided it (a bad setting, no budget)
        self._unclean: list[int] = []  # workers that did not exit 0 when stopped

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: the first stops every worker gracefully, the next end their grace."""
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_passed_on", workers=len(self._processes))
        else:
            log.info("workers_stopping", reason="signal", deadline_s=stop_deadline(self.settings))
        self._stopping.set()
        self._signal_all(signal.SIGTERM)

    async def run(self) -> int:
        """Start every worker, keep them running until told to stop; returns the exit code."""
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        endpoints = WorkerEndpoints(self.workers)
        http = HealthServer(endpoints.registry, endpoints.readiness, endpoints.refresh)
        keepers: list[asyncio.Task[None]] = []
        try:
            if s.metrics_port:  # 0: no HTTP server, here or in the workers
                await endpoints.start()
                await http.start(s.metrics_host, s.metrics_port)
            log.info("workers_starting", workers=len(self.workers), limits=self._limits)
            keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
            for task in keepers:
                task.add_done_callback(self._kept)
            await self._stopping.wait()
            await self._until_stopped(keepers)
        finally:
            for task in keepers:
                task.cancel()
            self._signal_all(signal.SIGKILL)  # only if start-up itself failed: none left
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await http.close()
            await endpoints.close()
        code = self._code or (1 if self._unclean else 0)
        log.info("workers_stopped", exit_code=code, unclean=self._unclean or None)
        return code

    async def _keep(self, worker: WorkerState) -> None:
        """Keep one worker running: start it, and again after each death, until the stop."""
        while not self._stopping.is_set():
            process = await self._start(worker)
            code = await process.wait() if process is not None else None
            worker.running = False
            self._processes.pop(worker.index, None)
            if self._stopping.is_set():
                if process is not None and code not in _STOPPED:
                    self._unclean.append(worker.index)
                return
            if code in CONFIG_EXITS:
                log.error("worker_cannot_start", worker=worker.index, exit_code=code)
                self._end(code)
                return
            delay = self.policy.after_death(worker.index, time.monotonic())
            if delay is None:
                log.error(
                    "worker_restarts_exhausted",
                    worker=worker.index,
                    exit_code=code,
                    limit=self.policy.limit,
                    window_s=self.policy.window,
                )
                self._end(1)
                return
            log.error("worker_died", worker=worker.index, **_how(code), restart_in_s=delay)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self._stopping.is_set():
                worker.restarts += 1

    def _kept(self, task: asyncio.Task[None]) -> None:
        """A keeper that failed (a bug of ours): stop everything rather than run one short."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("supervisor_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self._end(1)

    async def _start(self, worker: WorkerState) -> asyncio.subprocess.Process | None:
        """A worker process, or None when it could not be started (counted as a death)."""
        port = _free_port() if self.settings.metrics_port else 0
        env = {
            **os.environ,  # passed on as it came: the workers read their settings themselves
            **self._limits,
            "WA_WORKER_INDEX": str(worker.index),
            "WA_METRICS_HOST": "127.0.0.1",  # scraped by the supervisor only
            "WA_METRICS_PORT": str(port),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, env=env, stdin=asyncio.subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            log.error("worker_start_failed", worker=worker.index, error=str(exc))
            return None
        self._processes[worker.index] = process
        worker.port, worker.running = port, True
        log.info("worker_started", worker=worker.index, pid=process.pid, metrics_port=port or None)
        if self._stopping.is_set():  # the stop came while it was starting
            process.send_signal(signal.SIGTERM)
        return process

    def _end(self, code: int) -> None:
        """A worker decided it: stop every other worker gracefully; exit with ``code``."""
        if not self._code:
            self._code = code
        if not self._stopping.is_set():
            log.info("workers_stopping", reason=f"worker exit {code}")
            self._stopping.set()
            self._signal_all(signal.SIGTERM)

    async def _until_stopped(self, keepers: list[asyncio.Task[None]]) -> None:
        deadline = stop_deadline(self.settings)
        _, late = await asyncio.wait(keepers, timeout=deadline)
        if not late:
            return
        stragglers = sorted(self._processes)
        log.error("workers_killed", workers=stragglers, after_s=deadline)
        self._signal_all(signal.SIGKILL)
        await asyncio.wait(late, timeout=10)

    def _signal_all(self, sig: signal.Signals) -> None:
        for process in list(self._processes.values()):
            with suppress(ProcessLookupError):
                process.send_signal(sig)


def _how(code: int | None) -> dict[str, object]:
    """How a worker ended, for its log line: an exit code, or the signal that killed it."""
    if code is None:
        return {"exit_code": None, "reason": "could not be started"}
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


def _free_port() -> int:
    """A free loopback port for a worker's endpoint (taken by someone else in between: the
    worker cannot listen, exits 1 and is started again on another)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

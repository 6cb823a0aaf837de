"""`run --workers N` without a broker: the restart policy, the merged metrics, and the
supervisor driving stand-in workers (small Python processes) through every way they end."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from wa_consumer.settings import Settings
from wa_consumer.supervisor import (
    RestartPolicy,
    Supervisor,
    merged,
    parse,
    processes,
    stop_deadline,
    worker_count,
    worker_limits,
)

# -- the restart policy ------------------------------------------------------------------------


def test_back_off_doubles_with_each_death_up_to_its_cap() -> None:
    policy = RestartPolicy(limit=10, window=300, first_delay=0.5, max_delay=4)
    delays = [policy.after_death(0, now=float(t)) for t in range(7)]
    assert delays == [0.5, 1, 2, 4, 4, 4, 4]


def test_more_deaths_than_the_limit_in_the_window_gives_up() -> None:
    policy = RestartPolicy(limit=3, window=60)
    assert [policy.after_death(0, now=t) for t in (0, 1, 2)] == [0.5, 1, 2]
    assert policy.after_death(0, now=3) is None


def test_deaths_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(limit=2, window=60)
    assert policy.after_death(0, now=0) == 0.5
    assert policy.after_death(0, now=30) == 1
    # The first death left the window: the budget has room again, the delay is shorter.
    assert policy.after_death(0, now=61) == 1
    assert policy.after_death(0, now=200) == 0.5


def test_each_worker_has_its_own_budget() -> None:
    policy = RestartPolicy(limit=1, window=60)
    assert policy.after_death(0, now=0) == 0.5
    assert policy.after_death(1, now=0) == 0.5
    assert policy.after_death(0, now=1) is None


def test_limit_0_means_the_first_death_ends_it() -> None:
    assert RestartPolicy(limit=0, window=60).after_death(0, now=0) is None


# -- --workers and the limits each worker gets -------------------------------------------------


def test_workers_auto_is_the_cpu_count() -> None:
    assert worker_count("auto") == os.cpu_count()
    assert worker_count("3") == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_workers_refuses_what_is_no_count(value: str) -> None:
    with pytest.raises(ValueError):
        worker_count(value)


def test_each_worker_gets_its_share_of_every_number_rate_without_redis() -> None:
    settings = Settings(number_rate=80, number_rates={"106": 30}, _env_file=None)
    assert worker_limits(settings, 4) == {
        "WA_NUMBER_RATE": "20.0",
        "WA_NUMBER_RATES": '{"106":7.5}',
    }


def test_with_redis_the_schedule_is_shared_and_only_the_fallback_is_split() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", _env_file=None)
    assert worker_limits(settings, 2) == {"WA_REDIS_FALLBACK_SHARE": "0.25"}


def test_the_stop_deadline_outlasts_a_workers_worst_case_within_the_service_managers() -> None:
    from tests.deploy.test_kubernetes import daemon_shutdown_worst_case

    for grace in (0, 2, 25, 60):
        settings = Settings(shutdown_grace_seconds=grace, _env_file=None)
        assert stop_deadline(settings) > daemon_shutdown_worst_case(settings)
    # The systemd unit's TimeoutStopSec and the manifest's terminationGracePeriodSeconds.
    assert stop_deadline(Settings(_env_file=None)) < 90


# -- one endpoint: every worker's series, labelled -------------------------------------------


def _worker_metrics(sent: int, depth: int) -> str:
    r = CollectorRegistry()
    Counter("wa_messages", "Deliveries.", ("outcome", "type"), registry=r).labels(
        "sent", "text"
    ).inc(sent)
    Histogram("wa_graph_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=r).observe(0.2)
    Gauge("wa_queue_depth", "Depth.", ("queue", "role"), registry=r).labels("q", "main").set(depth)
    return generate_openmetrics(r).decode()


def test_merged_metrics_keep_every_series_with_its_worker_and_name_each_family_once() -> None:
    families = merged([(0, parse(_worker_metrics(3, 10))), (1, parse(_worker_metrics(4, 10)))])

    registry = CollectorRegistry(auto_describe=False)

    class Gathered:
        def collect(self):  # type: ignore[no-untyped-def]
            return families

    registry.register(Gathered())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert text.count("# TYPE wa_messages_total counter") == 1
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    sent = {s.labels["worker"]: s.value for s in samples if s.name == "wa_messages_total"}
    assert sent == {"0": 3.0, "1": 4.0}
    assert sum(sent.values()) == 7  # what `sum without (worker)` gives
    depths = [s.value for s in samples if s.name == "wa_queue_depth"]
    assert depths == [10.0, 10.0]  # one queue, seen by each: max, not sum
    counts = [s for s in samples if s.name == "wa_graph_latency_seconds_count"]
    assert sorted(s.labels["worker"] for s in counts) == ["0", "1"]
    assert generate_openmetrics(registry).decode().endswith("# EOF\n")


def test_text_that_is_no_openmetrics_is_refused() -> None:
    with pytest.raises(ValueError):
        parse("garbage {{{\n")


# -- the supervisor, with stand-in workers -----------------------------------------------------

# A stand-in worker: writes "start" (once it handles SIGTERM) and "stopped" to a file of its
# own, and behaves as FAKE_MODE_<index> says.
FAKE = r"""
import os, pathlib, signal, sys, time
index = os.environ["WA_WORKER_INDEX"]
mode = os.environ.get("FAKE_MODE_" + index, "serve")
path = pathlib.Path(os.environ["FAKE_DIR"]) / ("w" + index)
starts = path.read_text().count("start") if path.exists() else 0
stop = []
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else lambda *_: stop.append(1))
with path.open("a") as f:
    f.write("start %d %s\n" % (os.getpid(), os.environ["WA_NUMBER_RATE"]))
if mode == "exit2" or (mode == "crash_once" and starts == 0) or mode == "crash":
    sys.exit(2 if mode == "exit2" else 1)
while not stop:
    time.sleep(0.01)
with path.open("a") as f:
    f.write("stopped\n")
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    return tmp_path


def supervisor(count: int, *, limit: int = 5, **modes: str) -> Supervisor:
    settings = Settings(
        metrics_port=0, shutdown_grace_seconds=1, http_timeout_seconds=1, _env_file=None
    )
    for index, mode in modes.items():
        os.environ[f"FAKE_MODE_{index.lstrip('w')}"] = mode
    return Supervisor(
        settings,
        count,
        command=[sys.executable, "-c", FAKE],
        policy=RestartPolicy(limit=limit, window=60, first_delay=0.05),
    )


@pytest.fixture(autouse=True)
def _no_modes_left() -> object:
    yield
    for name in [n for n in os.environ if n.startswith("FAKE_MODE_")]:
        del os.environ[name]


def lines(folder: Path, index: int) -> list[str]:
    path = folder / f"w{index}"
    return path.read_text().splitlines() if path.exists() else []


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_stop_reaches_every_worker_and_the_supervisor_exits_0(fake: Path) -> None:
    sup = supervisor(3)
    task = asyncio.create_task(sup.run())
    await until(lambda: all(lines(fake, i) for i in range(3)))
    sup.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    for i in range(3):
        assert lines(fake, i)[-1] == "stopped"
    # Each worker got its share of the number rate (80/s by default).
    assert lines(fake, 0)[0].endswith(" 26.666666666666668")


async def test_a_worker_that_dies_is_started_again_with_a_log_line(fake: Path) -> None:
    sup = supervisor(2, w1="crash_once")
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        await until(lambda: len([x for x in lines(fake, 1) if x.startswith("start")]) == 2)
        sup.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    died = [e for e in logs if e["event"] == "worker_died"]
    assert len(died) == 1
    assert died[0]["worker"] == 1 and died[0]["exit_code"] == 1 and died[0]["restart_in_s"] > 0
    assert sup.workers[1].restarts == 1 and sup.workers[0].restarts == 0
    first, second = (x.split()[1] for x in lines(fake, 1) if x.startswith("start"))
    assert first != second
    assert lines(fake, 0)[-1] == "stopped"


async def test_exit_2_stops_every_worker_at_once_with_that_code(fake: Path) -> None:
    sup = supervisor(2, w0="exit2")
    started = time.monotonic()
    with capture_logs() as logs:
        code = await asyncio.wait_for(sup.run(), 10)
    assert code == 2
    assert time.monotonic() - started < 5
    assert len(lines(fake, 0)) == 1  # started once: never again
    # The other stopped gracefully (or had not yet started to handle SIGTERM).
    assert lines(fake, 1)[-1:] in ([], ["stopped"])
    assert not [e for e in logs if e["event"] == "worker_died"]


async def test_too_many_restarts_in_the_window_ends_the_supervisor_with_1(fake: Path) -> None:
    sup = supervisor(2, limit=2, w0="crash")
    with capture_logs() as logs:
        code = await asyncio.wait_for(sup.run(), 10)
    assert code == 1
    assert len(lines(fake, 0)) == 3  # the first start and two restarts
    assert [e["event"] for e in logs].count("worker_restarts_exhausted") == 1
    assert lines(fake, 1)[-1:] in ([], ["stopped"])


async def test_a_worker_still_running_at_the_deadline_is_killed_and_the_exit_is_1(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "stop_deadline", lambda settings: 2.5)
    sup = supervisor(2, w1="stubborn")
    task = asyncio.create_task(sup.run())
    await until(lambda: lines(fake, 0) and lines(fake, 1))
    started = time.monotonic()
    with capture_logs() as logs:
        sup.request_stop()
        assert await asyncio.wait_for(task, 15) == 1
    assert 2.5 <= time.monotonic() - started < 8
    assert [e["workers"] for e in logs if e["event"] == "workers_killed"] == [[1]]
    assert lines(fake, 0)[-1] == "stopped"


async def test_a_second_stop_is_passed_on_too(fake: Path) -> None:
    sup = supervisor(2)
    task = asyncio.create_task(sup.run())
    await until(lambda: lines(fake, 0) and lines(fake, 1))
    with capture_logs() as logs:
        sup.request_stop()
        sup.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert [e["event"] for e in logs].count("second_signal_passed_on") == 1


# -- the workers' log lines ----------------------------------------------------------------------


class Writes:
    """A stream that keeps each flushed write apart (one write(2) each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._buffer = b""

    def write(self, data: bytes) -> int:
        self._buffer += bytes(data)
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self.writes.append(self._buffer)
            self._buffer = b""


def test_a_workers_lines_go_out_in_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    """Writes to a pipe of at most PIPE_BUF bytes are never interleaved with another
    process's: the workers share the supervisor's stdout, and no line is cut by another's."""
    import select

    from wa_consumer.logs import _LineBatch

    stream = Writes()
    lines = _LineBatch(stream, atomic=True)  # type: ignore[arg-type]
    sent = [b"x" * (n % 700) for n in range(200)] + [b"y" * (select.PIPE_BUF + 10)]
    for line in sent:
        lines.write(line)
    lines.flush()
    assert b"".join(stream.writes) == b"".join(line + b"\n" for line in sent)
    assert all(w.endswith(b"\n") for w in stream.writes)
    assert all(len(w) <= select.PIPE_BUF for w in stream.writes[:-1])
    assert stream.writes[-1] == sent[-1] + b"\n"  # longer than that: alone


def test_a_workers_log_lines_carry_its_index(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import orjson
    import structlog

    from wa_consumer.logs import configure_logging, get_logger

    handlers = logging.getLogger().handlers[:]
    try:
        configure_logging("INFO", "json", worker=3)
        get_logger("test").info("hello", n=1)
        logging.getLogger("aio_pika").warning("library line")
    finally:
        logging.getLogger().handlers[:] = handlers
        structlog.reset_defaults()
    lines = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["worker"]) for e in lines] == [("hello", 3), ("library line", 3)]

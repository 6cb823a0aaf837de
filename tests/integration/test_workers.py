"""`wa-consumer run --workers N` as an operator runs it: one supervisor process, its workers on
one queue, the ledger on, the sandbox answering; counted from outside (the sandbox's request
log, the ledger, the queues, the supervisor's HTTP endpoint and the JSON log lines)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wa_consumer.settings import Settings

from .harness import broker_for, make_settings, text_message, wait_for
from .test_metrics import free_port
from .test_process import env_for

pytestmark = pytest.mark.integration


class Supervised:
    """``python -m wa_consumer run --workers N``, its JSON log lines read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, settings: Settings) -> None:
        self.proc = proc
        self.settings = settings
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, settings: Settings, workers: str = "2", **extra: str) -> Supervised:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wa_consumer", "run", "--workers", workers,
            env=env_for(settings, **extra),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc, settings)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                self.lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                self.lines.append({"event": "not json", "line": line.decode(errors="replace")})

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.lines
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def until(self, event: str, count: int = 1, timeout: float = 30, **fields: Any) -> None:
        await wait_for(lambda: _true(len(self.events(event, **fields)) >= count), timeout=timeout)

    def pid_of(self, worker: int) -> int:
        return int(self.events("worker_started", worker=worker)[-1]["pid"])

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.settings.metrics_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            return answer.status, await answer.text()

    async def stop(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code, time.monotonic() - started

    async def stderr(self) -> list[str]:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode().strip().splitlines()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Supervised]]]:
    """``await start(settings, workers="2", **env)``; whatever still runs at the end is
    stopped (SIGTERM, then SIGKILL: its workers then stop by themselves)."""
    started: list[Supervised] = []

    async def starter(settings: Settings, workers: str = "2", **extra: str) -> Supervised:
        started.append(await Supervised.start(settings, workers, **extra))
        return started[-1]

    yield starter
    for supervised in started:
        if supervised.proc.returncode is None:
            supervised.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(supervised.proc.wait(), 30)
            except TimeoutError:
                supervised.proc.kill()
                await supervised.proc.wait()
        supervised._reader.cancel()


async def _true(value: bool) -> bool:
    return value


def observed(vhost: str, sandbox: Any, database: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database,
        "metrics_port": free_port(),
        "metrics_host": "127.0.0.1",
        "claim_lease_seconds": 2,
    }
    values.update(overrides)
    return make_settings(vhost, sandbox.url, **values)


def sends(sandbox: Any, recipients: list[str]) -> Counter[str]:
    wanted = set(recipients)
    return Counter(
        r["body"]["to"]
        for r in sandbox.state.requests()
        if r["outcome"] == "sent" and r["body"]["to"] in wanted
    )


async def publish(settings: Settings, recipients: list[str]) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in recipients]
    async with broker_for(settings) as broker:
        for to, internal_id in zip(recipients, ids, strict=True):
            await broker.publish(text_message("acme", to, internal_id=internal_id))
    return ids


async def all_sent(sandbox: Any, recipients: list[str]) -> bool:
    return set(sends(sandbox, recipients)) == set(recipients)


async def queue_counts(settings: Settings) -> tuple[int, int]:
    async with broker_for(settings) as broker:
        return await broker.count(settings.queue), await broker.count(settings.dead_letter_queue)


async def sent_by_consumer(database: str, ids: list[str]) -> Counter[str]:
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT consumer, count(*) AS n FROM wa_attempts"
            " WHERE internal_id = ANY($1) AND outcome = 'sent' GROUP BY consumer",
            ids,
        )
    finally:
        await connection.close()
    return Counter({row["consumer"]: row["n"] for row in rows})


def samples(text: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


async def test_two_workers_send_a_batch_once_each_and_share_it(
    vhost, sandbox, database, start
) -> None:
    sandbox.state.configure(latency={"ms": 20})
    settings = observed(vhost, sandbox, database, prefetch=10, shutdown_grace_seconds=5)
    recipients = [f"2787100{i:04d}" for i in range(200)]
    supervised = await start(settings)

    # /readyz: 503 while the workers start, 200 once both consume.
    answers: list[tuple[int, str]] = []

    async def ready() -> bool:
        try:
            answers.append(await supervised.get("/readyz"))
        except aiohttp.ClientConnectionError:
            return False  # the supervisor is not listening yet
        return answers[-1][0] == 200

    await wait_for(ready, timeout=30, interval=0.02)
    assert answers[0][0] == 503, answers[0]
    assert orjson.loads(answers[-1][1])["checks"] == {"worker 0": "ok", "worker 1": "ok"}
    status, _ = await supervised.get("/healthz")
    assert status == 200

    ids = await publish(settings, recipients)
    await wait_for(lambda: all_sent(sandbox, recipients), timeout=60)
    assert set(sends(sandbox, recipients).values()) == {1}  # each exactly once

    # Both workers took messages: two consumers in the ledger, two workers in the log lines.
    async def both_recorded() -> Counter[str]:
        counted = await sent_by_consumer(database, ids)
        return counted if sum(counted.values()) == 200 else Counter()

    by_consumer = await wait_for(both_recorded, timeout=15)
    assert len(by_consumer) == 2, by_consumer
    await supervised.until("message", count=200, outcome="sent")
    outcome_lines = supervised.events("message", outcome="sent")
    assert {e["worker"] for e in outcome_lines} == {0, 1}
    assert {e["worker"] for e in supervised.events("consuming")} == {0, 1}

    # One endpoint: every worker's series with its label; their sum is what was sent.
    async def summed() -> list[Any]:
        found = samples((await supervised.get("/metrics"))[1])
        sent = [s for s in found if s.name == "wa_messages_total" and s.labels["outcome"] == "sent"]
        return found if sum(s.value for s in sent) == 200 else []

    found = await wait_for(summed, timeout=10)
    sent_by_worker = {
        s.labels["worker"]: s.value
        for s in found
        if s.name == "wa_messages_total" and s.labels["outcome"] == "sent"
    }
    assert set(sent_by_worker) == {"0", "1"} and all(sent_by_worker.values())
    assert [s.value for s in found if s.name == "wa_workers"] == [2]
    assert {s.labels["worker"] for s in found if s.name == "wa_worker_up" and s.value == 1} == {
        "0",
        "1",
    }

    code, seconds = await supervised.stop()
    assert code == 0
    assert seconds < settings.shutdown_grace_seconds
    assert len(supervised.events("shutdown_complete")) == 2
    assert await queue_counts(settings) == (0, 0)


async def test_kill_9_of_a_worker_under_load_restarts_it_and_loses_nothing(
    vhost, sandbox, database, start
) -> None:
    sandbox.state.configure(latency={"ms": 30})
    settings = observed(vhost, sandbox, database, prefetch=20)
    recipients = [f"2787200{i:04d}" for i in range(400)]
    supervised = await start(settings)
    await supervised.until("consuming", count=2)
    await publish(settings, recipients)
    await wait_for(lambda: _true(sum(sends(sandbox, recipients).values()) >= 100), timeout=30)

    killed = supervised.pid_of(0)
    os.kill(killed, signal.SIGKILL)

    async def not_ready() -> bool:  # while one worker is not
        status, body = await supervised.get("/readyz")
        return status == 503 and orjson.loads(body)["checks"]["worker 0"] != "ok"

    await wait_for(not_ready, timeout=5, interval=0.01)
    await supervised.until("worker_died", worker=0, signal="SIGKILL")
    await supervised.until("worker_started", count=2, worker=0)
    assert supervised.pid_of(0) != killed

    await wait_for(lambda: all_sent(sandbox, recipients), timeout=60)

    async def ready_again() -> bool:
        return (await supervised.get("/readyz"))[0] == 200

    await wait_for(ready_again, timeout=30)

    # The killed worker's copies come back to the queue and are settled as duplicates; one
    # may still be on its way when the last recipient is sent (once, one was left).
    async def drained() -> bool:
        return await queue_counts(settings) == (0, 0)

    await wait_for(drained, timeout=60)
    code, _ = await supervised.stop()
    assert code == 0
    # published = sent + dead, and nothing waits: every recipient got its message.
    assert await queue_counts(settings) == (0, 0)
    counted = sends(sandbox, recipients)
    duplicates = sum(n - 1 for n in counted.values())
    print(f"kill -9 of a worker: {duplicates} duplicate sends")
    # Only a send on the wire when the worker died can repeat (the daemon's kill -9 promise):
    # at most the messages it held (WA_PREFETCH); the surviving worker doubles nothing.
    assert duplicates <= settings.prefetch


async def test_sigterm_stops_every_worker_within_the_grace_and_exits_0(
    vhost, sandbox, database, start
) -> None:
    sandbox.state.configure(latency={"ms": 300})
    settings = observed(vhost, sandbox, database, prefetch=20, shutdown_grace_seconds=5)
    recipients = [f"2787300{i:04d}" for i in range(200)]
    supervised = await start(settings)
    await supervised.until("consuming", count=2)
    await publish(settings, recipients)
    await wait_for(lambda: _true(sum(sends(sandbox, recipients).values()) >= 10), timeout=30)

    code, seconds = await supervised.stop()
    assert code == 0
    assert seconds < settings.shutdown_grace_seconds + 2, seconds
    assert {e["worker"] for e in supervised.events("shutdown_complete")} == {0, 1}
    # What started was finished, the rest is back in the queue; nothing doubled.
    counted = sends(sandbox, recipients)
    left, dead = await queue_counts(settings)
    assert set(counted.values()) == {1}
    assert len(counted) + left == 200 and dead == 0, (len(counted), left)


async def test_a_bad_setting_exits_2_once_with_one_line(vhost, sandbox, start) -> None:
    settings = make_settings(vhost, sandbox.url)
    for extra, workers, named in (
        ({"WA_PREFETCH": "lots"}, "2", "WA_PREFETCH"),
        ({}, "zero", "--workers"),
    ):
        supervised = await start(settings, workers, **extra)
        code = await asyncio.wait_for(supervised.proc.wait(), 30)
        lines = await supervised.stderr()
        assert code == 2
        assert len(lines) == 1 and named in lines[0], lines
        assert not supervised.events("worker_started")


async def test_a_topology_mismatch_in_the_workers_ends_the_supervisor_with_3_unrestarted(
    vhost, sandbox, start
) -> None:
    import aio_pika

    settings = make_settings(vhost, sandbox.url)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(settings.queue, durable=True, arguments={"x-message-ttl": 1000})
    supervised = await start(settings)
    code = await asyncio.wait_for(supervised.proc.wait(), 60)
    assert code == 3
    assert not supervised.events("worker_died")
    lines = await supervised.stderr()
    assert 1 <= len(lines) <= 2 and all("x-message-ttl" in line for line in lines), lines


async def test_workers_stop_when_the_supervisor_is_killed(vhost, sandbox, database, start) -> None:
    settings = observed(vhost, sandbox, database)
    supervised = await start(settings)
    await supervised.until("consuming", count=2)
    pids = [supervised.pid_of(0), supervised.pid_of(1)]
    supervised.proc.send_signal(signal.SIGKILL)
    await supervised.proc.wait()

    async def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    await wait_for(gone, timeout=settings.shutdown_grace_seconds + 10)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"

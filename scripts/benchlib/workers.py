"""The ``workers-N`` scenarios' own steps: ``run --workers N`` seen from outside.

The measurement starts once every worker consumes the queue (as many consumers on it as
workers, each registered just before its ``consuming`` line), so that the rate is that of all
N; the sends answered before then are counted apart. During the drain the supervisor's
``/readyz`` must answer 200 (every worker ready); after it, its ``/metrics`` says how many
messages each worker sent (``wa_messages_total{outcome="sent"}`` by its ``worker`` label).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aio_pika.abc import AbstractConnection
from prometheus_client.parser import text_string_to_metric_families

from .broker import depth
from .common import Deadline, tail
from .procs import Workers

POLL = 0.01  # seconds between polls while the workers start
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def workers_on(
    admin: AbstractConnection, queue: str, workers: Workers, what: str, seconds: float
) -> None:
    """Wait until all N workers run and consume ``queue``."""
    deadline = Deadline(seconds, f"{what}: every worker consuming")
    while True:
        workers.alive(what)
        _, consumers = await depth(admin, queue)
        if consumers >= workers.count and workers.find_workers():
            return
        workers.sample_rss()
        if deadline.passed:
            raise deadline.missed(f"{consumers} of {workers.count} consuming\n{tail(workers.log)}")
        await asyncio.sleep(POLL)


async def readyz(port: int) -> int | None:
    """The status of ``/readyz`` on ``port`` (None: no answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as answer,
        ):
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def sent_by_worker(port: int) -> dict[str, int]:
    """Messages sent per worker, from ``/metrics`` on ``port`` ({}: no answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            text = await answer.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    return count_sent(text)


def count_sent(text: str) -> dict[str, int]:
    """``wa_messages_total{outcome="sent"}`` summed by ``worker`` ("0" with no such label:
    a single daemon) from Prometheus text."""
    sent: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "wa_messages":
            continue
        for sample in family.samples:
            if sample.name == "wa_messages_total" and sample.labels.get("outcome") == "sent":
                worker = sample.labels.get("worker", "0")
                sent[worker] = sent.get(worker, 0) + int(sample.value)
    return dict(sorted(sent.items()))


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def worker_detail(
    workers: Workers,
    by_worker: dict[str, int],
    at_start: int,
    spread: float,
    ready_after: float | None,
) -> dict[str, Any]:
    """What a ``workers-N`` run adds to its ``detail`` (after ``workers.peak_rss_kb()``)."""
    return {
        "workers": workers.count,
        "worker_pids": {str(i): pid for i, pid in workers.workers.items()},
        "peak_rss_mb_by_worker": {str(i): _mb(kb) for i, kb in workers.peaks_kb.items()},
        "supervisor_peak_rss_mb": _mb(workers.supervisor_peak_kb),
        "supervisor_max_rss_mb": _mb(workers.supervisor_max_rss_kb or None),
        "sent_by_worker": by_worker,
        "sent_before_all_consuming": at_start,
        "all_consuming_after_first_s": round(spread, 3),  # the first consumer to the N-th
        "readyz_200_after_spawn_s": None if ready_after is None else round(ready_after, 2),
    }

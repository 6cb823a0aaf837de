"""The supervisor's ``/metrics``, ``/healthz`` and ``/readyz``: its workers seen as one.

Each worker serves its own endpoint on a loopback port the supervisor gave it. The
supervisor's, on ``WA_METRICS_HOST:WA_METRICS_PORT``:

- ``/metrics`` scrapes every worker at once (OpenMetrics) and serves all their series, each
  with a ``worker`` label, plus its own ``wa_workers``, ``wa_worker_up`` and
  ``wa_worker_restarts_total``. Summing is PromQL's (``sum without (worker) (...)``): every
  existing metric stays what it was, including those no sum can merge (per-process CPU and
  memory, gauges that each worker reads from the same broker, such as queue depths).
- ``/readyz`` asks every worker's ``/readyz`` at once: 200 only when all answer 200; the body
  names each worker's state.
- ``/healthz`` answers while the supervisor's event loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..logs import get_logger

log = get_logger("supervisor")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
READY_TIMEOUT = 2.5  # a worker's /readyz pings the ledger for up to 2 s; probes wait 3 s
SCRAPE_TIMEOUT = 5.0  # Prometheus' scrape timeout is 10 s by default


@dataclass
class WorkerState:
    """What the endpoint reads about one worker (the supervisor keeps it up to date)."""

    index: int
    port: int = 0  # its HTTP endpoint on 127.0.0.1; 0: none
    running: bool = False
    restarts: int = 0


class WorkerEndpoints(Collector):
    """Readiness and metrics of every worker; a collector of the supervisor's registry."""

    def __init__(self, workers: Sequence[WorkerState]) -> None:
        self._workers = workers
        self._session: aiohttp.ClientSession | None = None
        self._gathered: list[Metric] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def readiness(self) -> dict[str, str]:
        states = await asyncio.gather(*(self._ready(w) for w in self._workers))
        return {f"worker {w.index}": state for w, state in zip(self._workers, states, strict=True)}

    async def refresh(self) -> None:
        """Scrape every worker now (before ``/metrics`` encodes the registry)."""
        texts = await asyncio.gather(*(self._scrape(w) for w in self._workers))
        scraped: list[tuple[int, list[Metric]]] = []
        for worker, text in zip(self._workers, texts, strict=True):
            if text is None:
                continue
            try:  # in a thread: thousands of series with tenant labels
                scraped.append((worker.index, await asyncio.to_thread(parse, text)))
            except ValueError as exc:
                log.warning("worker_metrics_unreadable", worker=worker.index, error=str(exc)[:300])
        self._gathered = merged(scraped)

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "wa_workers", "Worker processes the supervisor keeps running (run --workers)."
        )
        workers.add_metric((), len(self._workers))
        up = GaugeMetricFamily(
            "wa_worker_up", "1 while the worker's process runs.", labels=("worker",)
        )
        restarts = CounterMetricFamily(
            "wa_worker_restarts",
            "Times the supervisor started a worker again after it died.",
            labels=("worker",),
        )
        for w in self._workers:
            up.add_metric((str(w.index),), 1.0 if w.running else 0.0)
            restarts.add_metric((str(w.index),), w.restarts)
        yield from (workers, up, restarts)
        yield from self._gathered

    def describe(self) -> Iterator[Metric]:
        return iter(())

    async def _ready(self, worker: WorkerState) -> str:
        if not worker.running:
            return "not running"
        try:
            status, body = await self._get(worker, "/readyz", READY_TIMEOUT, "application/json")
        except _NoAnswer as exc:
            return str(exc)
        return "ok" if status == 200 else f"not ready: {_failed(body)}"

    async def _scrape(self, worker: WorkerState) -> str | None:
        if not worker.running:
            return None
        try:
            status, body = await self._get(worker, "/metrics", SCRAPE_TIMEOUT, OPENMETRICS)
        except _NoAnswer:
            return None  # starting, or just died: its series are absent from this scrape
        return body if status == 200 else None

    async def _get(
        self, worker: WorkerState, path: str, within: float, accept: str
    ) -> tuple[int, str]:
        assert self._session is not None
        url = f"http://127.0.0.1:{worker.port}{path}"
        try:
            async with self._session.get(
                url, headers={"Accept": accept}, timeout=aiohttp.ClientTimeout(total=within)
            ) as answer:
                return answer.status, await answer.text()
        except TimeoutError:
            raise _NoAnswer(f"no answer within {within:g} s") from None
        except aiohttp.ClientError:
            raise _NoAnswer("starting") from None  # not listening yet: connecting, declaring


class _NoAnswer(Exception):
    """A worker's endpoint did not answer; the message says how."""


def _failed(body: str) -> str:
    """The checks a worker's 503 from ``/readyz`` names (``broker, ledger``)."""
    try:
        failed = orjson.loads(body).get("failed")
    except (orjson.JSONDecodeError, AttributeError):
        return "unreadable answer"
    return ", ".join(str(f) for f in failed) if isinstance(failed, list) else "unreadable answer"


def parse(text: str) -> list[Metric]:
    """One worker's OpenMetrics text as metric families; ``ValueError`` if it is not that."""
    # untyped in prometheus_client 0.26 (its text-format parser is typed, this one not)
    return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def merged(scrapes: Iterable[tuple[int, list[Metric]]]) -> list[Metric]:
    """Every worker's families as one, each sample labelled with its ``worker``: a family
    appears once, with the samples of every worker that has it."""
    families: dict[str, Metric] = {}
    for index, parsed in scrapes:
        label = str(index)
        for family in parsed:
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            into.samples.extend(
                Sample(s.name, {**s.labels, "worker": label}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(families.values())

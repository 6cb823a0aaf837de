"""The outcome line's ids (wamid, number, fbtrace_id), and the limiter's and ledger's metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.unit.pipeline_fakes import (
    NUMBER,
    FakeDelivery,
    StubGraph,
    accepted,
    body,
    rig,
    settle_one,
)
from wa_consumer.errors import GraphApiError
from wa_consumer.ledger.batch import Batcher
from wa_consumer.limits import RateLimiter
from wa_consumer.metrics import MAX_NUMBERS, Metrics
from wa_consumer.seams import FBTRACE_CHARS


def outcome_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "message"]


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- the outcome line --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _info_lines() -> Iterator[None]:
    """The outcome line is INFO; the suite's logging keeps WARNING and up (conftest)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        yield
    finally:
        structlog.configure(**saved)


async def test_a_sent_message_logs_its_wamid_and_the_number_it_went_from() -> None:
    r = rig(StubGraph(accepted("wamid.X")))
    with capture_logs() as logs:
        await settle_one(r, FakeDelivery(body()))
    [line] = outcome_lines(logs)
    assert (line["outcome"], line["wamid"], line["phone_number_id"]) == ("sent", "wamid.X", NUMBER)
    assert "fbtrace_id" not in line  # no error answer, no trace id


async def test_an_error_logs_metas_fbtrace_id_and_the_ledger_keeps_it_bounded() -> None:
    trace = "A" * 200  # Meta's are ~25 chars; whatever comes is cut
    error = GraphApiError("boom", status=500, code=131000, fbtrace_id=trace)
    r = rig(StubGraph(error))
    with capture_logs() as logs:
        await settle_one(r, FakeDelivery(body()))
    [line] = outcome_lines(logs)
    assert line["outcome"] == "retry"
    assert line["fbtrace_id"] == "A" * FBTRACE_CHARS
    assert line["phone_number_id"] == NUMBER
    assert "wamid" not in line
    [(_, _, attempts)] = r.ledger.finishes
    assert [a.fbtrace_id for a in attempts] == ["A" * FBTRACE_CHARS]


async def test_a_message_dead_before_its_number_is_known_logs_no_number() -> None:
    r = rig()
    with capture_logs() as logs:
        await settle_one(r, FakeDelivery(b"not json"))
    [line] = outcome_lines(logs)
    assert line["outcome"] == "dead"
    assert "phone_number_id" not in line and "wamid" not in line


# -- the limiter's metrics ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_each_number_seen_has_its_rate_now_and_past_the_cap_one_other_series() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, rates={"slow": 2.0}, clock=clock, sleep=clock.sleep)
    m = Metrics()
    m.watch_limiter(limiter)
    assert sample(m, "wa_limiter_rate", phone_number_id="a") is None  # not seen: no series
    limiter.rate("a")
    limiter.rate("slow")
    limiter.feedback("a", None, "130429")  # Meta says the number is over: 10% off
    assert sample(m, "wa_limiter_rate", phone_number_id="a") == 9.0
    assert sample(m, "wa_limiter_rate", phone_number_id="slow") == 2.0
    for i in range(MAX_NUMBERS + 10):
        limiter.rate(f"n{i}")
    limiter.feedback(f"n{MAX_NUMBERS + 5}", None, "130429")
    series = [s for f in m.registry.collect() if f.name == "wa_limiter_rate" for s in f.samples]
    assert len(series) == MAX_NUMBERS + 1
    assert sample(m, "wa_limiter_rate", phone_number_id="other") == 9.0  # the slowest of them


async def test_refusals_count_by_the_limit_that_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(
        rate=1.0, max_wait=0.5, pair_min_interval=10.0, clock=clock, sleep=clock.sleep
    )
    m = Metrics()
    m.watch_limiter(limiter)
    assert sample(m, "wa_throttled_total", limit="number") == 0  # exists from the start
    assert await limiter.acquire("n", "r1")
    assert not await limiter.acquire("n", "r2")  # the number's next slot is 1 s away
    assert not await limiter.acquire("n", "r1")  # the recipient's next turn is 10 s away
    assert sample(m, "wa_throttled_total", limit="number") == 1
    assert sample(m, "wa_throttled_total", limit="recipient") == 1


def test_the_fallback_gauge_exists_only_with_a_shared_schedule() -> None:
    class Shared:
        available = True

        async def book(self, key: str, interval: float, max_wait: float) -> float | None:
            return 0.0

        async def aclose(self) -> None:
            return None

    alone, shared = Metrics(), Metrics()
    alone.watch_limiter(RateLimiter(rate=1.0))
    schedule = Shared()
    shared.watch_limiter(RateLimiter(rate=1.0, schedule=schedule))
    assert sample(alone, "wa_limiter_fallback") is None
    assert sample(shared, "wa_limiter_fallback") == 0
    schedule.available = False  # Redis away: paced in process
    assert sample(shared, "wa_limiter_fallback") == 1


# -- the ledger's metrics ----------------------------------------------------------------------


async def test_batches_report_size_and_latency_and_held_results_are_counted() -> None:
    m = Metrics()
    gate = asyncio.Event()

    async def write(items: Sequence[str]) -> list[None]:
        await gate.wait()
        return [None] * len(items)

    batcher: Batcher[str, None] = Batcher(write, concurrency=1)
    m.watch_ledger(lambda: batcher.held(lambda item: item.startswith("finish")))
    batcher.on_batch = m.ledger_batch
    first = batcher.submit("claim-1")  # goes at once, alone
    await asyncio.sleep(0)
    rest = [batcher.submit(f"finish-{i}") for i in range(3)]  # gather behind it
    assert sample(m, "wa_ledger_results_held") == 3
    gate.set()
    await asyncio.gather(first, *rest)
    assert sample(m, "wa_ledger_results_held") == 0
    assert sample(m, "wa_ledger_batch_size_count") == 2
    assert sample(m, "wa_ledger_batch_size_sum") == 4
    assert sample(m, "wa_ledger_batch_size_bucket", le="1.0") == 1
    assert sample(m, "wa_ledger_commit_seconds_count") == 2

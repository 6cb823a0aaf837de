"""SPEC §12 throughput, seen from outside: send times in the sandbox's request log.

Rates are measured on the sandbox's clock (the ``at`` of each request), never on the test's
wall time, with the tolerances of the issue: these run on a small, busy machine. Run with
``-s`` to see the measured figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from itertools import pairwise
from typing import Any

import pytest
from redis.asyncio import Redis

from wa_consumer.limits import shared
from wa_consumer.limits.adaptive import Cut
from wa_consumer.limits.shared import SharedSchedule, redis_client
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

REDIS_HOST = os.environ.get("WA_TEST_REDIS_HOST", "127.0.0.1:6379")
A = "106540352242922"  # acme's first number
B = "107650492331811"  # globex's number


@pytest.fixture(autouse=True)
def no_full_collections_of_the_suite() -> Iterator[None]:
    """These tests time sends to the millisecond, and this process hosts the daemon and the
    sandbox: a full collection of the 100,000 objects the suite has made by then stalls the
    loop for about 70 ms, enough to bunch sends into one window (seen once in a whole-suite
    run: 56 in a second at 50/s). Objects older than the test are left out while it runs."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"wa-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = Redis.from_url(f"redis://{REDIS_HOST}/0")
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


# -- helpers ----------------------------------------------------------------------------


def messages(tenant: str, prefix: str, n: int, **meta: Any) -> list[dict[str, Any]]:
    return [text_message(tenant, f"{prefix}{i:06d}", **meta) for i in range(n)]


async def publish_all(broker: Broker, batch: Iterable[dict[str, Any]]) -> None:
    gate = asyncio.Semaphore(100)

    async def one(message: dict[str, Any]) -> None:
        async with gate:
            await broker.publish(message)

    await asyncio.gather(*(one(m) for m in batch))


async def queued(settings: Settings, *batches: list[dict[str, Any]]) -> None:
    """Declare the topology and publish the batches in order, before any daemon runs."""
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        for batch in batches:
            await publish_all(broker, batch)


def log_of(sandbox: Any, number: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.state.requests()
        if (number is None or r["phone_number_id"] == number)
        and str((r["body"] or {}).get("to", "")).startswith(prefix)
    ]


def sent_times(sandbox: Any, number: str | None = None, prefix: str = "") -> list[float]:
    return sorted(r["at"] for r in log_of(sandbox, number, prefix) if r["outcome"] == "sent")


async def until_sent(
    sandbox: Any, n: int, number: str | None = None, prefix: str = "", timeout: float = 30.0
) -> list[float]:
    async def check() -> list[float]:
        times = sent_times(sandbox, number, prefix)
        return times if len(times) >= n else []

    return await wait_for(check, timeout=timeout, interval=0.1)


def rate_of(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def worst_window(times: list[float], skip: float = 1.0) -> int:
    """Most sends in any one-second window that starts ``skip`` seconds after the first."""
    times = sorted(times)
    worst, end = 0, 0
    for i, t in enumerate(times):
        if t < times[0] + skip:
            continue
        while end < len(times) and times[end] < t + 1.0:
            end += 1
        worst = max(worst, end - i)
    return worst


def report(name: str, **figures: object) -> None:
    print(f"\n[limits] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def nothing_dead(settings: Settings) -> None:
    async with broker_for(settings) as broker:
        assert await broker.count(settings.dead_letter_queue) == 0


# -- per number -------------------------------------------------------------------------


async def test_one_number_is_sent_at_its_rate_and_nothing_is_lost(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url, number_rates={A: 50})
    await queued(settings, messages("acme", "1666", 500, phoneNumberId=A))
    async with running(settings):
        times = await until_sent(sandbox, 500, A)
        await nothing_dead(settings)
    rate, worst = rate_of(times), worst_window(times)
    report("one number limited to 50/s", rate=f"{rate:.1f}/s", worst_window=worst, sent=len(times))
    assert len({r["body"]["to"] for r in log_of(sandbox, A)}) == 500 == len(log_of(sandbox, A))
    assert rate == pytest.approx(50, rel=0.10)
    assert worst <= 55


async def test_two_daemons_sharing_redis_hold_one_limit_together(
    vhost, sandbox, redis_prefix
) -> None:
    settings = make_settings(
        vhost,
        sandbox.url,
        number_rates={A: 50},
        redis_url=f"redis://{REDIS_HOST}/0",
        redis_prefix=redis_prefix,
        # Together no more waiters than a second of slots: this measures the shared schedule,
        # not the requeueing of refused messages (the isolation test has that).
        prefetch=25,
    )
    await queued(settings, messages("acme", "1666", 400, phoneNumberId=A))
    async with running(settings) as one, running(settings) as two:
        times = await until_sent(sandbox, 400, A)
        await nothing_dead(settings)
        shares = [d.pipeline.counts["sent"] for d in (one, two) if d.pipeline is not None]
    rate, worst = rate_of(times), worst_window(times)
    report("two daemons, 50/s in Redis", rate=f"{rate:.1f}/s", worst_window=worst, shares=shares)
    assert min(shares) > 50  # both took part
    assert rate == pytest.approx(50, rel=0.10)
    assert worst <= 55


async def test_a_throttled_number_does_not_slow_another(vhost, sandbox, database) -> None:
    """200 messages of A (5/s) queued ahead of 500 of B (no limit): B goes as if alone.

    With the ledger on: a throttled message waits without touching it."""
    alone = make_settings(vhost, sandbox.url, number_rate=0, database_url=database)
    await queued(alone, messages("globex", "1777", 500))
    async with running(alone):
        b_alone = await until_sent(sandbox, 500, B, "1777")

    settings = make_settings(
        vhost, sandbox.url, number_rate=0, number_rates={A: 5}, database_url=database
    )
    await queued(
        settings,
        messages("acme", "1666", 200, phoneNumberId=A),
        messages("globex", "1888", 500),
    )
    async with running(settings):
        b_mixed = await until_sent(sandbox, 500, B, "1888")
        first_a = (await until_sent(sandbox, 1, A))[0]
        await wait_for(lambda: _after(time.time(), first_a + 8.0), timeout=20)
        await nothing_dead(settings)
    a_times = sent_times(sandbox, A)
    started = min(a_times[0], b_mixed[0])
    report(
        "A at 5/s ahead of B",
        b_alone=f"{rate_of(b_alone):.0f}/s",
        b_with_a=f"{rate_of(b_mixed):.0f}/s",
        b_done_after=f"{b_mixed[-1] - started:.2f}s",
        a_rate=f"{rate_of(a_times):.2f}/s",
        a_worst_window=worst_window(a_times, skip=0),
        a_sent=len(a_times),
    )
    assert rate_of(b_mixed) >= 0.5 * rate_of(b_alone)
    assert rate_of(a_times) == pytest.approx(5, rel=0.15)
    assert worst_window(a_times, skip=0) <= 6


async def _after(now: float, moment: float) -> bool:
    return now >= moment


@pytest.mark.parametrize("kind", ["token_bucket", "sliding", "fixed"])
async def test_daemon_settles_within_10_percent_of_what_meta_allows_however_it_counts(
    vhost, sandbox, kind
) -> None:
    """Meta (the sandbox) takes 30/s from a number the daemon is set to send 80/s from,
    counted in a token bucket, a sliding one-second window or fixed one-second windows.

    With a backlog it cannot finish, from 8 s to 20 s after the first request on the
    sandbox's clock (the first seconds are the daemon finding the limit): at least 27/s
    accepted and under 5% answered 130429. Measured here in three runs: token bucket
    30.5-30.8/s (its saved second counts over 12 s), sliding 28.6-28.8/s, fixed 29.4-29.8/s,
    and 0.6-2.1% 130429 (1.0-1.8% with the sandbox in a process of its own over 40 s,
    scripts/adaptive_bench.py)."""
    sandbox.state.configure(number_rates={A: 30}, number_rate_window=kind)
    settings = make_settings(vhost, sandbox.url, max_retries=10)  # WA_NUMBER_RATE: 80
    await queued(settings, messages("acme", "1666", 900, phoneNumberId=A))
    async with running(settings):
        sent, limited, early = await steady_state(sandbox)
    report(
        f"sandbox 30/s ({kind}), daemon 80/s",
        first_3s_130429=early,
        steady_sent=f"{sent:.2f}/s",
        steady_130429=f"{limited:.1%}",
    )
    assert sent >= 0.9 * 30
    assert limited < 0.05


async def test_two_daemons_sharing_redis_settle_as_one_near_what_meta_allows(
    vhost, sandbox, redis_prefix
) -> None:
    """The same with two daemons booking on one schedule in Redis, against a sliding
    window: they share each rate cut, so they book at one rate and cut once for both.
    (Each following its own cuts, they drifted apart, 45/s and 20/s: 22-25/s accepted.)
    Measured here in three runs: 28.0-28.8/s, 0.6-1.1% 130429."""
    sandbox.state.configure(number_rates={A: 30}, number_rate_window="sliding")
    settings = make_settings(
        vhost,
        sandbox.url,
        max_retries=10,
        redis_url=f"redis://{REDIS_HOST}/0",
        redis_prefix=redis_prefix,
    )
    await queued(settings, messages("acme", "1666", 1300, phoneNumberId=A))
    async with running(settings) as one, running(settings) as two:
        # Later and longer than for one daemon: a cut on one daemon's early estimate (a share
        # of the answers, in a burst) can leave both low for a few seconds (once: 25/s, 8-20 s)
        sent, limited, _ = await steady_state(sandbox, since=12.0, until=30.0)
        shares = [d.pipeline.counts["sent"] for d in (one, two) if d.pipeline is not None]
    report(
        "sandbox 30/s (sliding), two daemons 80/s in Redis",
        steady_sent=f"{sent:.2f}/s",
        steady_130429=f"{limited:.1%}",
        shares=shares,
    )
    assert min(shares) > 100  # both took part
    assert sent >= 0.9 * 30, sent
    assert limited < 0.05, limited


async def steady_state(
    sandbox: Any, since: float = 8.0, until: float = 20.0
) -> tuple[float, float, int]:
    """Once the sandbox's clock is ``until`` s past number A's first request: A's sends
    accepted per second from ``since`` to ``until``, the share of its answers then that were
    130429, and the 130429 answers of its first 3 s."""
    first = (await until_sent_or_limited(sandbox))["at"]
    await wait_for(lambda: _after_on_sandbox(sandbox, first + until), timeout=until + 20)
    log = log_of(sandbox, A)
    start, end = first + since, first + until
    steady = [r for r in log if start <= r["at"] < end]
    sent = sum(r["outcome"] == "sent" for r in steady) / (end - start)
    limited = sum(r["code"] == 130429 for r in steady) / len(steady)
    return sent, limited, sum(r["code"] == 130429 for r in log if r["at"] < first + 3.0)


async def until_sent_or_limited(sandbox: Any) -> dict[str, Any]:
    """Number A's first request, once there is one."""

    async def check() -> list[dict[str, Any]]:
        return log_of(sandbox, A)[:1]

    return (await wait_for(check, timeout=30, interval=0.05))[0]


async def _after_on_sandbox(sandbox: Any, moment: float) -> bool:
    """Whether the sandbox has answered a request at or after ``moment`` (its clock)."""
    log = sandbox.state.log
    return bool(log) and log[-1]["at"] >= moment


# -- per recipient ----------------------------------------------------------------------


async def test_pair_limit_backs_off_that_recipient_alone(vhost, sandbox) -> None:
    """131056 twice for one recipient: it waits 1 s, then 4 s; the others are not delayed."""
    rules = list(sandbox.state.config.model_dump()["rules"])
    rules.insert(0, {"match": "^1999", "code": 131056, "times": 2})
    sandbox.state.configure(rules=rules)
    settings = make_settings(vhost, sandbox.url, number_rate=0, max_retries=5)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "19990000001"))
        await wait_for(lambda: _limited(sandbox, "1999", 1))
        await publish_all(broker, [text_message("acme", "19990000001") for _ in range(2)])
        await publish_all(broker, messages("acme", "1666", 100))
        others = await until_sent(sandbox, 100, prefix="1666")
        pair = await until_sent(sandbox, 3, prefix="1999", timeout=20)
        await nothing_dead(settings)
    strikes = sorted(r["at"] for r in log_of(sandbox, prefix="1999") if r["code"] == 131056)
    report(
        "131056 for one recipient",
        backoffs=f"{strikes[1] - strikes[0]:.2f}s, {pair[0] - strikes[1]:.2f}s",
        others_span=f"{others[-1] - others[0]:.2f}s",
    )
    assert len(strikes) == 2
    assert strikes[1] - strikes[0] >= 1.0  # 4^0 s
    assert pair[0] - strikes[1] >= 4.0  # 4^1 s, for every message to that recipient
    assert others[-1] - others[0] < 1.0  # not held up: 100 sends well within a back-off


async def _limited(sandbox: Any, prefix: str, n: int) -> bool:
    return sum(r["code"] == 131056 for r in log_of(sandbox, prefix=prefix)) >= n


async def test_pair_min_interval_spaces_sends_to_one_recipient(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url, number_rate=0, pair_min_interval_seconds=0.5)
    await queued(
        settings,
        [text_message("acme", "16660000001") for _ in range(4)] + messages("acme", "1777", 50),
    )
    async with running(settings):
        spaced = await until_sent(sandbox, 4, prefix="16660000001")
        others = await until_sent(sandbox, 50, prefix="1777")
    gaps = [round(b - a, 2) for a, b in pairwise(spaced)]
    report("pair spacing 0.5 s", gaps=gaps, others_span=f"{others[-1] - others[0]:.2f}s")
    assert min(gaps) >= 0.45  # 0.5 s, less the jitter of two clocks reading apart
    assert others[-1] - others[0] < 1.0


# -- Redis away -------------------------------------------------------------------------


class Recorder:
    """Stands in for a module's logger: keeps the events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **_: self.events.append(event)


async def test_redis_outage_falls_back_to_a_share_in_process_and_comes_back(
    vhost, sandbox, redis_prefix, monkeypatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(shared, "log", recorder)
    host, port = REDIS_HOST.split(":")
    proxy = await TcpProxy(host, int(port)).start()
    settings = make_settings(
        vhost,
        sandbox.url,
        number_rates={A: 50},
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",
        redis_prefix=redis_prefix,
    )
    await queued(settings, messages("acme", "1666", 450, phoneNumberId=A))
    try:
        async with running(settings):
            await until_sent(sandbox, 150, A)
            cut = time.time()
            proxy.down()
            await until_sent(sandbox, 250, A)
            back = time.time()
            await proxy.accept()
            times = await until_sent(sandbox, 450, A)
            await nothing_dead(settings)
    finally:
        await proxy.close()
    before = [t for t in times if t < cut]
    away = [t for t in times if cut + 1.0 <= t < back]  # after the slots booked in Redis
    after = [t for t in times if t >= back + 1.5]
    report(
        "Redis cut mid-run (50/s, share 0.5)",
        before=f"{rate_of(before):.1f}/s",
        away=f"{rate_of(away):.1f}/s",
        after=f"{rate_of(after):.1f}/s",
        worst_window=worst_window(times),
        log=recorder.events,
    )
    assert worst_window(times) <= 55
    assert rate_of(away) == pytest.approx(25, rel=0.15)
    assert rate_of(after) == pytest.approx(50, rel=0.10)
    assert recorder.events == ["rate_limit_store_unavailable", "rate_limit_store_back"]


async def test_redis_keeps_the_newest_rate_cut_for_every_daemon(redis_prefix) -> None:
    one, two = (
        SharedSchedule(
            redis_client(f"redis://{REDIS_HOST}/0", max_connections=4),
            prefix=redis_prefix,
            fallback_share=0.5,
        )
        for _ in range(2)
    )
    try:
        assert await one.book("n", 0.01, 1.0) == 0.0
        assert one.cut("n") is None  # no cut yet
        now = time.monotonic()
        one.share("n", Cut(30.0, 0.6, now - 0.2))
        await one.book("n", 0.01, 1.0)
        await two.book("n", 0.01, 1.0)
        cut = two.cut("n")
        assert cut is not None and (cut.rate, cut.step) == (30.0, 0.6)
        assert cut.at == pytest.approx(now - 0.2, abs=0.02)  # the same moment, read back
        two.share("n", Cut(40.0, 0.8, now - 1.0))  # older: ignored
        await two.book("n", 0.01, 1.0)
        kept = two.cut("n")
        assert kept is not None and kept.rate == 30.0
        two.share("n", Cut(25.0, 0.5, time.monotonic()))  # newer: kept
        await two.book("n", 0.01, 1.0)
        await one.book("n", 0.01, 1.0)
        latest = one.cut("n")
        assert latest is not None and latest.rate == 25.0
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_schedule_hands_over_to_and_from_the_local_one(redis_prefix) -> None:
    """No overlap at either switch: local slots follow Redis's, and Redis's the local ones."""
    host, port = REDIS_HOST.split(":")
    proxy = await TcpProxy(host, int(port)).start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    one = SharedSchedule(
        redis_client(url, max_connections=4),
        prefix=redis_prefix,
        fallback_share=0.5,
        retry_every=0.2,
    )
    two = SharedSchedule(
        redis_client(f"redis://{REDIS_HOST}/0", max_connections=4),
        prefix=redis_prefix,
        fallback_share=0.5,
    )
    try:
        waits = [await s.book("n", 0.1, 1.0) for s in (one, two, one, two)]
        assert [round(w or 0, 1) for w in waits] == [0.0, 0.1, 0.2, 0.3]  # one schedule
        proxy.down()
        local = [await one.book("n", 0.1, 5.0) for _ in range(4)]
        assert not one.available
        # After its own last Redis slot (0.2, + 0.1), at half the rate: 0.2 s apart.
        assert [round(w or 0, 1) for w in local] == [0.3, 0.5, 0.7, 0.9]
        local_end = time.monotonic() + (local[-1] or 0) + 0.2
        await proxy.accept()
        await asyncio.sleep(0.3)
        expected = local_end - time.monotonic()
        handed = await one.book("n", 0.1, 5.0)  # Redis again: not before the local slots end
        assert one.available
        assert handed == pytest.approx(expected, abs=0.03)
        follows = await two.book("n", 0.1, 5.0)
        assert follows == pytest.approx(expected + 0.1, abs=0.03)
    finally:
        await one.aclose()
        await two.aclose()
        await proxy.close()

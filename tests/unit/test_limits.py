"""Limits without the network: GCRA booking, adaptive rates, recipient back-off, isolation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wa_consumer.errors import SettingsError
from wa_consumer.limits import RateLimiter, build_limiter
from wa_consumer.limits.adaptive import PairBook
from wa_consumer.limits.gcra import LocalSchedule
from wa_consumer.settings import Settings, load_settings
from wa_consumer.topology import Topology


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock: FakeClock, **kwargs: object) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    worst, start = 0, 0
    for i, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        worst = max(worst, i - start + 1)
    return worst


# -- GCRA ---------------------------------------------------------------------------


def test_gcra_spaces_bookings_by_the_interval_and_refuses_past_the_longest_wait() -> None:
    schedule = LocalSchedule()
    waits = [schedule.book("n", 0.0, 0.25, 1.0) for _ in range(6)]
    assert waits == [0.0, 0.25, 0.5, 0.75, 1.0, None]
    assert schedule.book("n", 0.0, 0.25, 1.0) is None  # a refusal books nothing
    assert schedule.book("other", 0.0, 0.25, 1.0) == 0.0  # another key is not delayed
    assert schedule.book("n", 2.0, 0.25, 1.0) == 0.0  # idle time is not saved up


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([5.0, 50.0, 80.0, 1000.0]),
    gaps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=400),
)
def test_gcra_never_lets_more_than_rate_plus_one_into_a_second(
    rate: float, gaps: list[float]
) -> None:
    schedule = LocalSchedule()
    now, sends = 0.0, []
    for gap in gaps:
        now += gap
        wait = schedule.book("n", now, 1 / rate, 1.0)
        if wait is not None:
            sends.append(now + wait)
    assert max_in_window(sends) <= rate + 1


# -- adaptive rate: tests/unit/test_adaptive.py ------------------------------------


# -- recipients -------------------------------------------------------------------


def test_pair_backoff_grows_4_to_the_n_and_resets_once_a_send_is_accepted() -> None:
    pairs = PairBook(0.0, max_wait=1.0, timer=lambda: 0.0)
    assert [pairs.strike("n", "r", 0.0) for _ in range(4)] == [1.0, 4.0, 16.0, 64.0]
    assert pairs.book("n", "r", 10.0, 1.0) is None  # blocked until 64 s
    probe = pairs.book("n", "r", 63.5, 1.0)
    assert probe is not None and probe.wait == pytest.approx(0.5)
    assert pairs.book("n", "r", 63.5, 1.0) is None  # one probe per back-off period
    assert pairs.strike("n", "r", 64.1) == 256.0  # the probe got 131056 again
    assert pairs.struck_since("n", "r", probe)
    assert [pairs.strike("n", "r", 400.0) for _ in range(2)] == [1024.0, 1024.0]  # capped
    pairs.accepted("n", "r", 2000.0)
    assert len(pairs) == 0  # nothing left to remember
    assert pairs.book("n", "r", 2000.0, 1.0) == (0.0, float("-inf"), float("-inf"), 0)
    assert pairs.strike("n", "r", 2001.0) == 1.0  # the count started again


def test_pair_spacing_and_no_state_for_recipients_with_nothing_to_remember() -> None:
    off = PairBook(0.0, max_wait=1.0, timer=lambda: 0.0)
    for i in range(1000):
        booking = off.book("n", str(i), 0.0, 1.0)
        assert booking is not None and booking.wait == 0.0
        off.accepted("n", str(i), 0.0)
    assert len(off) == 0
    spaced = PairBook(0.4, max_wait=1.0, timer=lambda: 0.0)
    waits = [spaced.book("n", "r", 0.0, 1.0) for _ in range(4)]
    assert [w.wait if w else None for w in waits] == [0.0, 0.4, 0.8, None]
    other = spaced.book("n", "other", 0.0, 1.0)
    assert other is not None and other.wait == 0.0
    assert waits[2] is not None
    spaced.cancel("n", "r", waits[2])  # the latest booking can be given back
    assert spaced.book("n", "r", 0.0, 1.0) == waits[2]


def test_pair_state_stays_bounded_however_many_recipients() -> None:
    pairs = PairBook(1.0, max_wait=1.0, maxsize=1000, timer=lambda: 0.0)
    for i in range(200_000):
        pairs.book("n", f"1555{i:07d}", 0.0, 1.0)
    assert len(pairs) == 1000


# -- the limiter --------------------------------------------------------------------


async def test_acquire_waits_for_its_slot_and_refuses_at_once_past_the_longest_wait() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=4.0, max_wait=1.0)
    start = clock.now
    # Concurrent callers book at the same instant: 0, 0.25, ... 1.0, then refused.
    results = []
    for _ in range(6):
        clock.now = start
        results.append(await lim.acquire("A", None))
    assert results == [True] * 5 + [False]
    assert max(clock.slept) == pytest.approx(1.0)
    assert all(s <= 1.0 for s in clock.slept)  # never sleeps past the longest wait


async def test_a_throttled_number_never_delays_another() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=80.0, rates={"A": 1.0}, max_wait=1.0)
    assert await lim.acquire("A", "1")
    assert await lim.acquire("A", "2")  # waits a second
    clock.now -= 1.0
    clock.slept.clear()
    assert not await lim.acquire("A", "3")  # refused without sleeping
    assert clock.slept == []
    for i in range(80):
        assert await lim.acquire("B", str(i))
    assert sum(clock.slept) == pytest.approx(79 / 80)  # B keeps its own 80/s


async def test_feedback_slows_the_number_or_the_recipient_alone() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=80.0, max_wait=1.0)
    lim.feedback("A", "r1", "130429")
    rate_a, rate_b = lim.rate("A"), lim.rate("B")
    assert rate_a is not None and rate_b is not None
    assert rate_a.current(clock.now) == 72.0 and rate_b.current(clock.now) == 80.0
    lim.feedback("A", "r1", "131056")
    lim.feedback("A", "r1", "131056")  # back off 1 s, then 4 s
    assert not await lim.acquire("A", "r1")
    assert await lim.acquire("A", "r2")
    assert await lim.acquire("B", "r1")  # the pair is (number, recipient)
    lim.feedback("A", None, "131000")  # not a rate limit: nothing changes
    assert rate_a.current(clock.now) == pytest.approx(72.0, abs=0.1)


async def test_a_sleeper_struck_while_waiting_goes_to_the_wait_queue() -> None:
    clock = FakeClock()

    async def sleep_and_fail_again(seconds: float) -> None:
        await clock.sleep(seconds)
        lim.feedback("A", "r1", "131056")  # the probe sent meanwhile failed again

    lim = RateLimiter(rate=0.0, max_wait=1.0, clock=clock, sleep=sleep_and_fail_again)
    lim.feedback("A", "r1", "131056")  # back off 1 s
    assert not await lim.acquire("A", "r1")
    lim.sent("A", "r1")  # a later send was accepted: the back-off is over
    assert await lim.acquire("A", "r1")  # at once


async def test_a_recipient_refused_by_its_number_gives_its_pair_booking_back() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=1.0, max_wait=0.5, pair_min_interval=10.0)
    assert await lim.acquire("A", "r1")
    assert not await lim.acquire("A", "r2")  # the number's next slot is a second away
    assert lim.pairs.book("A", "r2", clock.now, 0.0) is not None  # r2 was not held up


async def test_no_limit_when_the_rate_is_zero() -> None:
    clock = FakeClock()
    lim = limiter(clock, rate=0.0)
    for _ in range(10_000):
        assert await lim.acquire("A", None)
    assert clock.slept == []
    lim.feedback("A", None, "130429")  # nothing to lower


# -- settings and topology ------------------------------------------------------------


def test_throughput_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_NUMBER_RATES", '{"106540352242922": 20, "107650492331811": 0}')
    monkeypatch.setenv("WA_REDIS_URL", "redis://127.0.0.1:6379/0")
    s = load_settings()
    assert s.number_rate == 80.0 and s.number_rates == {"106540352242922": 20, "107650492331811": 0}
    assert (s.throttle_max_wait_seconds, s.throttle_requeue_seconds) == (1.0, 1.0)
    assert (s.redis_prefix, s.redis_fallback_share, s.pair_min_interval_seconds) == ("wa:", 0.5, 0)
    lim = build_limiter(s)
    assert lim.rate("106540352242922").ceiling == 20  # type: ignore[union-attr]
    assert lim.rate("107650492331811") is None


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("WA_NUMBER_RATES", '{"1": -5}', "WA_NUMBER_RATES"),
        ("WA_REDIS_URL", "http://127.0.0.1:6379", "WA_REDIS_URL"),
        ("WA_REDIS_FALLBACK_SHARE", "0", "WA_REDIS_FALLBACK_SHARE"),
        ("WA_NUMBER_RATE", "-1", "WA_NUMBER_RATE"),
    ],
)
def test_bad_throughput_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_throttled_messages_get_a_short_wait_queue_of_their_own() -> None:
    topology = Topology.from_settings(Settings(retry_delays=[30, 120]))
    assert topology.retry_queues == {
        30: "outbound-retry-30s",
        120: "outbound-retry-2m",
        1.0: "outbound-retry-1s",
    }
    off = Topology.from_settings(Settings(retry_delays=[30, 120], throttle_requeue_seconds=0))
    assert list(off.retry_queues) == [30, 120]

"""The sandbox's per-number limit, counted three ways (``number_rate_window``)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from wa_consumer.sandbox import RunningSandbox, SandboxClient, SandboxConfig, start_sandbox
from wa_consumer.sandbox.throughput import (
    FixedWindow,
    RateWindow,
    SlidingWindow,
    TokenBucket,
    number_limit,
)

from .test_sandbox import ACME_NUMBER, assert_meta_error, send

KINDS: tuple[RateWindow, ...] = ("token_bucket", "sliding", "fixed")


def test_token_bucket_lets_a_second_of_burst_through_then_the_rate() -> None:
    bucket = TokenBucket(30.0, 0.0)
    assert [bucket.take(0.0) for _ in range(31)] == [True] * 30 + [False]
    assert [bucket.take(0.1) for _ in range(4)] == [True] * 3 + [False]


def test_sliding_window_allows_the_rate_in_any_second_and_no_burst_beyond() -> None:
    window = SlidingWindow(30.0, 0.0)
    assert all(window.take(0.5 + i / 100) for i in range(30))  # 30 within 0.3 s
    assert not window.take(1.0)  # the window ending here holds all 30
    assert not window.take(1.49)
    assert window.take(1.5)  # the first has left the window (0.5, 1.5]
    assert not window.take(1.505)
    assert window.take(1.51)


def test_fixed_window_counts_afresh_each_second_of_the_clock() -> None:
    window = FixedWindow(30.0, 0.0)
    assert [window.take(0.9) for _ in range(31)] == [True] * 30 + [False]
    assert [window.take(1.0) for _ in range(31)] == [True] * 30 + [False]  # 60 in 0.1 s
    assert window.take(2.0)


def test_windows_keep_a_fractional_rate_exactly() -> None:
    # 2.5/s: 2 requests per 0.8 s.
    sliding, fixed = SlidingWindow(2.5, 0.0), FixedWindow(2.5, 0.0)
    assert (sliding.limit, sliding.span) == (2, pytest.approx(0.8))
    assert [fixed.take(t) for t in (0.0, 0.1, 0.2, 0.8, 0.9, 1.0)] == [True, True, False] * 2
    slow = SlidingWindow(0.5, 0.0)  # below 1/s: one per 2 s
    assert [slow.take(t) for t in (0.0, 1.9, 2.0)] == [True, False, True]


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    rate=st.sampled_from([3.0, 20.0, 30.0, 80.0]),
    gaps=st.lists(st.floats(min_value=0, max_value=0.1), min_size=1, max_size=600),
)
def test_no_kind_lets_more_than_the_rate_through_over_time(
    kind: RateWindow, rate: float, gaps: list[float]
) -> None:
    """Over any run, at most rate x length + one window's worth (a bucket's burst, a fixed
    window's boundary); a sliding window never more than its limit in any span."""
    limit = number_limit(kind, rate, 0.0)
    now, passed = 0.0, []
    for gap in gaps:
        now += gap
        if limit.take(now):
            passed.append(now)
    assert len(passed) <= math.floor(rate * now) + max(rate, 1.0) + 1
    if isinstance(limit, SlidingWindow):
        for i, t in enumerate(passed):
            inside = [u for u in passed[i:] if u < t + limit.span]
            assert len(inside) <= limit.limit


def test_the_default_is_the_token_bucket_and_a_bad_kind_names_itself() -> None:
    assert SandboxConfig().number_rate_window == "token_bucket"
    with pytest.raises(ValidationError, match="number_rate_window"):
        SandboxConfig(number_rate_window="leaky")  # type: ignore[arg-type]


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with await start_sandbox() as running:
        yield running


async def test_a_window_set_at_run_time_answers_130429_past_its_limit(
    sandbox: RunningSandbox,
) -> None:
    async with aiohttp.ClientSession() as http, SandboxClient(sandbox.url) as admin:
        config = await admin.configure(number_rates={ACME_NUMBER: 3}, number_rate_window="sliding")
        assert config["number_rate_window"] == "sliding"
        answers = [await send(http, sandbox) for _ in range(5)]
        other = await send(http, sandbox, number="106540352242923")
    assert [status for status, _ in answers] == [200, 200, 200, 400, 400]
    assert_meta_error(answers[-1][1], 130429)
    assert other[0] == 200  # another number of the tenant has a window of its own

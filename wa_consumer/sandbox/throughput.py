"""A number's throughput limit in the sandbox, counted three ways (``number_rate_window``).

Meta documents the limit (80 messages/s by default) but not how it counts, and limiters in
the wild count differently; the daemon's back-off must settle near the allowed rate against
each, so the sandbox offers all three. Each counts accepted requests only (a request answered
130429 takes nothing), and each allows exactly ``rate`` per second on average:

``token_bucket``  (the default) ``rate`` tokens per second, up to one second's worth saved:
                  after a quiet spell a whole second's worth may go at once.
``sliding``       at most ``n`` in any window of ``n / rate`` seconds, the window ending at
                  each request (``n`` = the rate rounded down, at least 1: one second and
                  ``rate`` requests when the rate is whole): no burst beyond that.
``fixed``         at most ``n`` in each window of ``n / rate`` seconds, windows aligned on
                  the clock, the count starting afresh in each: up to ``2n`` may pass
                  within one window's length, across a boundary.

One object per number; ``take(now)`` says whether a request at ``now`` passes, and counts it
if so. Nothing here is thread-safe: one event loop owns the sandbox's state.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal, Protocol

RateWindow = Literal["token_bucket", "sliding", "fixed"]


class NumberLimit(Protocol):
    def take(self, now: float) -> bool:
        """Whether a request at ``now`` is under the limit (counted if so)."""
        ...


class TokenBucket:
    """``rate`` per second, one second's worth of burst."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


def _window(rate: float) -> tuple[int, float]:
    """(requests, seconds) of a window that allows exactly ``rate`` per second."""
    n = max(1, math.floor(rate))
    return n, n / rate


class SlidingWindow:
    """At most ``limit`` accepted requests in any ``span`` seconds: their times, oldest first."""

    __slots__ = ("limit", "span", "times")

    def __init__(self, rate: float, now: float) -> None:
        self.limit, self.span = _window(rate)
        self.times: deque[float] = deque()

    def take(self, now: float) -> bool:
        times = self.times
        while times and times[0] <= now - self.span:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class FixedWindow:
    """At most ``limit`` accepted requests in each ``span``-second window of the clock."""

    __slots__ = ("count", "index", "limit", "span")

    def __init__(self, rate: float, now: float) -> None:
        self.limit, self.span = _window(rate)
        self.index = -1
        self.count = 0

    def take(self, now: float) -> bool:
        index = math.floor(now / self.span)
        if index != self.index:
            self.index, self.count = index, 0
        if self.count >= self.limit:
            return False
        self.count += 1
        return True


_KINDS: dict[str, type[TokenBucket | SlidingWindow | FixedWindow]] = {
    "token_bucket": TokenBucket,
    "sliding": SlidingWindow,
    "fixed": FixedWindow,
}


def number_limit(kind: RateWindow, rate: float, now: float) -> NumberLimit:
    """A fresh limit of ``kind`` allowing ``rate`` requests per second (``rate`` > 0)."""
    return _KINDS[kind](rate, now)

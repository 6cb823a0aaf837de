"""What Meta's answers teach: a number's rate after a rate-limit code, a recipient's back-off.

``AdaptiveRate`` is additive-increase, multiplicative-decrease: a rate-limit answer halves the
number's rate at once, then every second without one gives back a small step, up to the
configured rate and never above it. Slots already booked at the old rate (up to the longest
wait ahead) still go out, so the errors they earn within that time are not counted again.

``PairBook`` keeps per-recipient state in a bounded TTL cache: a 131056 blocks that recipient
alone for 4^n seconds (1, 4, 16, 64 ...; n resets once Meta accepts a send to it), and
``WA_PAIR_MIN_INTERVAL_SECONDS`` spaces sends to one recipient. Recipients with nothing to
remember have no entry, so a million recipients cost nothing while spacing is off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from cachetools import TTLCache

DECREASE = 0.5  # a rate-limit answer halves the rate
RECOVERY_SECONDS = 40.0  # from zero back to the configured rate: ceiling / 40 per second
FLOOR = 0.05  # never below this share of the configured rate (nor below 0.2/s)
PAIR_BASE = 4.0  # Meta's suggested back-off for 131056: 4^n seconds
PAIR_MAX_STRIKES = 6  # the back-off stops growing at 4^5 s (17 min)
PAIR_CACHE_SIZE = 100_000


class AdaptiveRate:
    """A number's rate: its configured ceiling, cut on a rate-limit answer, regained gradually."""

    __slots__ = ("_base", "_since", "ceiling", "cooldown", "floor", "step")

    def __init__(self, ceiling: float, *, cooldown: float = 1.0) -> None:
        self.ceiling = ceiling
        self.floor = min(ceiling, max(ceiling * FLOOR, 0.2))
        self.step = ceiling / RECOVERY_SECONDS  # per second without a rate-limit answer
        self.cooldown = cooldown  # errors of slots booked before the last cut are not news
        self._base = ceiling
        self._since = -math.inf

    def current(self, now: float) -> float:
        """The rate to book with at ``now``."""
        if self._base >= self.ceiling:
            return self.ceiling
        rate = self._base + self.step * (now - self._since)
        if rate >= self.ceiling:
            self._base = self.ceiling
            return self.ceiling
        return rate

    def lower(self, now: float) -> float | None:
        """Cut the rate after a rate-limit answer; the new rate, or None within the cooldown."""
        if now - self._since < self.cooldown:
            return None
        self._base = max(self.floor, self.current(now) * DECREASE)
        self._since = now
        return self._base


class _Pair:
    __slots__ = ("next_at", "strikes")

    def __init__(self) -> None:
        self.next_at = -math.inf  # earliest next send (back-off or spacing)
        self.strikes = 0  # 131056 answers since the last accepted send


def backoff(strikes: int) -> float:
    """Seconds a recipient waits after its ``strikes``-th 131056 in a row: 1, 4, 16 ..."""
    return PAIR_BASE ** (min(strikes, PAIR_MAX_STRIKES) - 1) if strikes else 0.0


class PairBook:
    """Per (number, recipient): 131056 back-off and minimum spacing, in bounded memory.

    While a recipient is backing off, one send (a probe) goes per back-off period, so the
    messages queued for it do not all go at once when the period ends; ``strikes`` tells a
    sleeper whether a 131056 came while it slept.
    """

    def __init__(
        self,
        min_interval: float,
        *,
        max_wait: float,
        maxsize: int = PAIR_CACHE_SIZE,
        timer: Callable[[], float],
    ) -> None:
        self.min_interval = min_interval
        self._pairs: TTLCache[tuple[str, str], _Pair] = TTLCache(
            maxsize=maxsize,
            ttl=max(backoff(PAIR_MAX_STRIKES), min_interval) * 2 + max_wait,
            timer=timer,
        )
        self._active = False  # the cache may hold entries (a cheaper test than its length)

    def __len__(self) -> int:
        return len(self._pairs)

    def book(self, number: str, recipient: str, now: float, max_wait: float) -> Booking | None:
        """The wait for this recipient's next send (booked), or None if over ``max_wait``."""
        if not self.min_interval and not self._active:
            return _FREE  # the common case: nothing to remember, nothing to look up
        key = (number, recipient)
        pair = self._pairs.get(key)
        if pair is None:
            if not self.min_interval:
                return _FREE
            pair = _Pair()
        wait = max(0.0, pair.next_at - now)
        if wait > max_wait:
            return None
        before = pair.next_at
        spacing = backoff(pair.strikes) or self.min_interval
        if spacing:
            pair.next_at = now + wait + spacing
            self._pairs[key] = pair  # (re)stored: its TTL counts from now
            self._active = True
        return Booking(wait, before, pair.next_at, pair.strikes)

    def struck_since(self, number: str, recipient: str, booking: Booking) -> bool:
        """Whether a 131056 came for this recipient after ``booking`` was made."""
        pair = self._pairs.get((number, recipient)) if self._active else None
        return pair is not None and pair.strikes > booking.strikes

    def cancel(self, number: str, recipient: str, booking: Booking) -> None:
        """Give back a booking whose send will not happen."""
        pair = self._pairs.get((number, recipient)) if self._active else None
        if pair is not None and pair.next_at == booking.after:  # nothing booked since
            pair.next_at = booking.before

    def strike(self, number: str, recipient: str, now: float) -> float:
        """A 131056 for this recipient: block it for 4^n seconds; returns the back-off."""
        key = (number, recipient)
        pair = self._pairs.get(key) or _Pair()
        pair.strikes += 1
        seconds = backoff(pair.strikes)
        pair.next_at = max(pair.next_at, now + seconds)
        self._pairs[key] = pair
        self._active = True
        return seconds

    def accepted(self, number: str, recipient: str, now: float) -> None:
        """Meta took a send to this recipient: its back-off is over."""
        if not self._active:
            return
        key = (number, recipient)
        pair = self._pairs.get(key)
        if pair is None or not pair.strikes:
            return
        if self.min_interval:
            pair.strikes = 0
            pair.next_at = now + self.min_interval
        else:
            del self._pairs[key]
            self._active = len(self._pairs) > 0


class Booking(NamedTuple):
    """A recipient's booked send: its wait, and the recipient's state around it."""

    wait: float
    before: float  # next_at before the booking (what ``cancel`` restores)
    after: float  # next_at after it
    strikes: int  # 131056 answers counted when it was made


_FREE = Booking(0.0, -math.inf, -math.inf, 0)  # a booking that changed nothing

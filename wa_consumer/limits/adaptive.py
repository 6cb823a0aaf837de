"""What Meta's answers teach: a number's rate after a rate-limit code, a recipient's back-off.

``AdaptiveRate`` is additive-increase, multiplicative-decrease, tuned to settle just under
the rate Meta allows however it counts it: 95-100% of it, with 1-2% of the answers 130429,
against a token bucket, a sliding and fixed one-second windows (``scripts/adaptive_bench.py``),
where halving the rate on every window of answers held it a quarter below. The figures below
are from ``tests/unit/test_adaptive.py``'s send-by-send simulation (30/s allowed, 80/s
configured, each kind of limiter):

- **One cut per window of news.** A rate-limit answer cuts the rate if its send was booked
  at least ``WINDOW`` (1 s, Meta's counting window) after the last cut. Answers to sends
  booked earlier were earned at the old rate (slots are booked up to the longest wait ahead
  and still go out), or were judged against a window still full of the old rate's sends:
  they are not news. Cutting again on them halved the rate twice per crossing.
- **A cut keeps 90% of the rate that earned it** (``DECREASE``; the rate its send was booked
  at, not what the rate has grown to since): crossing the limit by a little is what probing
  does, and the rate that crossed it is the best estimate of the limit. Keeping 85% settled
  at 89-93% of a sliding window's limit; 95% drew up to 2.9% 130429.
- **Far over, 90% of what Meta accepted.** Each answer is counted with the rate its send was
  booked at, so the last second's answers tell the rate Meta accepted (``accepted_rate``:
  the accepted share times the mean booked rate; with several daemons booking at one rate
  through Redis, the whole number's). When that is under ``FAR`` (80%) of the rate, a
  rate-limit answer a window after the last cut, news or not, cuts to 90% of it: 80/s
  against 30/s is near 30 within 3 s (10% steps alone: 500 answers 130429 in the first
  20 s, against 100-130). At 60%, a limit dropping by a third drew twice the 130429 answers;
  on every cut (the estimate is a few percent noisy) the steady rate was up to 2.5% lower.
- **Probe additively, at a pace set by the rate found:** ``PROBE`` (2%) of the rate cut to
  per second (1% settled at 91-93% of a sliding window's limit, 4% drew 3.8% 130429), never
  above the configured rate. A pace set by the ceiling (as before: 80/s gave 2/s per second)
  overshoots a 30/s limit by more than a cut takes off before the answers can say so; even
  a floor of ceiling / 300 per second drew 11-14% 130429 against a 5/s limit. The pace grows
  the longer no cut comes (twice the first after ``ACCELERATION``, 20 s), so a limit Meta
  raises is found again: 30 to 80/s in 38-47 s (84-99 s at a constant pace). After a cut
  to Meta's accepted rate the pace is ``FAR_PROBE`` (10%) of it: that rate is an estimate
  from one second of answers (a sliding window's burst, or one daemon's share of them) and
  may be low; at 2% two daemons sharing Redis once stayed at 23/s against 30/s for 18 s.
- **Daemons sharing Redis share the cuts** (``Cut``, ``last_cut``, ``adopt``; see
  ``shared``): each books at the newest cut any of them made, so they probe and cut as one.

``PairBook`` keeps per-recipient state in a bounded TTL cache: a 131056 blocks that recipient
alone for 4^n seconds (1, 4, 16, 64 ...; n resets once Meta accepts a send to it), and
``WA_PAIR_MIN_INTERVAL_SECONDS`` spaces sends to one recipient. Recipients with nothing to
remember have no entry, so a million recipients cost nothing while spacing is off.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from cachetools import TTLCache

DECREASE = 0.9  # a cut keeps 90% of the rate that earned it (or of Meta's accepted rate)
FAR = 0.8  # Meta accepted under this share of the rate: cut from what it accepted
WINDOW = 1.0  # seconds after a cut before a send's rate-limit answer is news again
PROBE = 0.02  # then the rate grows by 2% of the rate cut to per second, a pace that
FAR_PROBE = 0.1  # or by 10% after a cut to Meta's accepted rate (an estimate: may be low)
ACCELERATION = 20.0  # grows by itself: twice the first after 20 s without a cut
FLOOR = 0.05  # never below this share of the configured rate (nor below 0.2/s)
MIN_ANSWERS = 10  # fewer tell no accepted rate (judged on fewer: 77-89% of a 3/s limit)
ADOPT_SLACK = 0.05  # a shared cut within this of one's own is one's own (clocks, round trips)
PAIR_BASE = 4.0  # Meta's suggested back-off for 131056: 4^n seconds
PAIR_MAX_STRIKES = 6  # the back-off stops growing at 4^5 s (17 min)
PAIR_CACHE_SIZE = 100_000


class AdaptiveRate:
    """A number's rate: its configured ceiling, cut on a rate-limit answer, regained gradually.

    ``answered`` counts every answer to a send of the number (the pipeline's accepted sends
    and rate-limit codes); ``lower`` decides on a rate-limit answer. A send booked through
    ``RateLimiter.acquire`` says when it was booked; an answer without that (``booked_at``
    None) is news once ``cooldown`` has passed since the last cut.
    """

    __slots__ = (
        "_accepted",
        "_answers",
        "_base",
        "_booked",
        "_first",
        "_since",
        "ceiling",
        "cooldown",
        "floor",
        "step",
    )

    def __init__(self, ceiling: float, *, cooldown: float = 1.0) -> None:
        self.ceiling = ceiling
        self.floor = min(ceiling, max(ceiling * FLOOR, 0.2))
        self.step = 0.0  # the pace right after the last cut (rate/s per second)
        self.cooldown = cooldown
        self._base = ceiling  # the rate set by the last cut
        self._since = -math.inf  # when it was cut
        # The last WINDOW's answers: (when, limited, the rate its send was booked at), how
        # many were accepted, the sum of their booked rates, and when the count began.
        self._answers: deque[tuple[float, bool, float]] = deque()
        self._accepted = 0
        self._booked = 0.0
        self._first = math.inf

    def current(self, now: float) -> float:
        """The rate to book with at ``now``."""
        if self._base >= self.ceiling:
            return self.ceiling
        elapsed = now - self._since
        rate = self._base + self.step * elapsed * (1.0 + elapsed / (2.0 * ACCELERATION))
        if rate >= self.ceiling:
            self._base = self.ceiling
            return self.ceiling
        return rate

    def answered(self, now: float, booked_rate: float, *, limited: bool) -> None:
        """Count an answer (accepted, or a rate-limit code) to a send booked at that rate."""
        if not self._drop(now):
            self._first = now
        self._answers.append((now, limited, booked_rate))
        self._accepted += not limited
        self._booked += booked_rate

    def _drop(self, now: float) -> int:
        """Forget the answers older than ``WINDOW``; how many are left."""
        answers = self._answers
        while answers and answers[0][0] < now - WINDOW:
            _, limited, booked_rate = answers.popleft()
            self._accepted -= not limited
            self._booked -= booked_rate
        if not answers:
            self._booked = 0.0  # no float residue carried into the next count
        return len(answers)

    def accepted_rate(self, now: float) -> float | None:
        """The rate Meta accepted of the last second's sends: the accepted share of their
        answers times the mean rate they were booked at. None from fewer than ``MIN_ANSWERS``
        or from answers that began less than ``WINDOW`` ago: a limit per second cannot be
        judged on less (in its first second a sliding window accepts a burst, then nothing).
        Exactly one second: half-second bins (one to one and a half seconds of answers)
        could hold a fixed window's count once in 1.5 s, and cut two daemons to 13/s
        against 30/s."""
        answers = self._drop(now)
        if answers < MIN_ANSWERS or now - self._first < WINDOW:
            return None
        return self._accepted / answers * self._booked / answers

    def lower(
        self, now: float, booked_at: float | None = None, booked_rate: float | None = None
    ) -> float | None:
        """Cut the rate after a rate-limit answer (counted first with ``answered``) to a send
        booked at ``booked_at``, at ``booked_rate``; the new rate, or None when the answer is
        not news and the rate not far over."""
        rate = self.current(now)
        if booked_at is None:
            news = now - self._since >= self.cooldown
        else:
            news = booked_at >= self._since + WINDOW
        if news and booked_rate is not None:
            rate = min(rate, booked_rate)  # the rate that earned it, not grown to since
        accepted = self.accepted_rate(now)
        probe = PROBE
        if accepted is not None and accepted < rate * FAR and now >= self._since + WINDOW:
            rate = accepted  # far over: 10% off the rate is not enough
            probe = FAR_PROBE
        elif not news:
            return None
        self._base = max(self.floor, rate * DECREASE)
        self._since = now
        self.step = self._base * probe
        return self._base

    def last_cut(self) -> Cut | None:
        """The last cut (to share with other daemons), or None before any."""
        return None if self._since == -math.inf else Cut(self._base, self.step, self._since)

    def adopt(self, cut: Cut) -> bool:
        """Take another daemon's cut if it is newer than this one's own; whether it was."""
        if cut.at <= self._since + ADOPT_SLACK:
            return False
        self._base = min(self.ceiling, max(self.floor, cut.rate))
        self.step = cut.step
        self._since = cut.at
        return True


class Cut(NamedTuple):
    """A number's rate after a cut, the pace it grows at since, and when (this clock)."""

    rate: float
    step: float
    at: float


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

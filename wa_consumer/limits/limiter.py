"""The ``Limiter`` seam: per-number and per-recipient limits, adapted to Meta's answers.

``acquire`` never holds a lock or a slot shared between numbers: each number has its own
schedule, so a throttled number only ever delays its own messages, and a wait longer than
``WA_THROTTLE_MAX_WAIT_SECONDS`` is refused at once (the message goes to a wait queue and
frees its prefetch slot) instead of being slept off.

What Meta's answers teach (a number's lowered rate, a recipient's back-off and spacing) is
kept by each daemon. With Redis the number's schedule is shared, and so is its newest rate
cut: every daemon books at the rate any of them last cut to, and the shared schedule bounds
their sum by the ceiling.

A send's booking travels with the task that made it (a context variable set by ``acquire``,
read by ``feedback`` and ``sent`` in the same message's task): when it was booked tells
whether a rate-limit answer is news, and at what rate it was booked tells which rate Meta's
answer is about, without the pipeline carrying a token between the calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import NamedTuple, Protocol

from ..logs import get_logger
from .adaptive import AdaptiveRate, Cut, PairBook
from .gcra import LocalSchedule

log = get_logger("limits")

NUMBER_CODES = frozenset({"4", "80007", "130429"})  # the number (or its app, WABA) is over
PAIR_CODE = "131056"  # too many messages to one recipient


class _Booked(NamedTuple):
    """This task's send: the number's rate object, when and at what rate it was booked."""

    rate: AdaptiveRate
    at: float
    booked_rate: float


_booked: ContextVar[_Booked | None] = ContextVar("wa_limits_booked", default=None)


def _count(rate: AdaptiveRate, now: float, *, limited: bool) -> _Booked | None:
    """Count an answer to this task's send; its booking (None: not booked here)."""
    booked = _booked.get()
    if booked is None or booked.rate is not rate:
        rate.answered(now, rate.current(now), limited=limited)
        return None
    rate.answered(now, booked.booked_rate, limited=limited)
    return booked


class Schedule(Protocol):
    """Where a number's send slots are booked: in process, or shared through Redis.

    A shared schedule also shares the number's rate cuts (``share`` one, ``cut`` the newest),
    so that every daemon booking on it books at one rate.
    """

    async def book(self, key: str, interval: float, max_wait: float) -> float | None: ...

    def share(self, key: str, cut: Cut) -> None: ...

    def cut(self, key: str) -> Cut | None: ...

    async def aclose(self) -> None: ...


class InProcessSchedule:
    """The GCRA of every number in this process (no Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._local = LocalSchedule()
        self._clock = clock

    async def book(self, key: str, interval: float, max_wait: float) -> float | None:
        return self._local.book(key, self._clock(), interval, max_wait)

    def share(self, key: str, cut: Cut) -> None:
        return None  # one process: nobody to share with

    def cut(self, key: str) -> Cut | None:
        return None

    async def aclose(self) -> None:
        return None


class RateLimiter:
    """Waits for a send slot of the number and the recipient, or says the wait is too long."""

    def __init__(
        self,
        *,
        rate: float,
        rates: Mapping[str, float] | None = None,
        max_wait: float = 1.0,
        pair_min_interval: float = 0.0,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._default = rate
        self._overrides = dict(rates or {})
        self._max_wait = max_wait
        self._schedule = schedule or InProcessSchedule(clock)
        self._clock = clock
        self._sleep = sleep
        self._rates: dict[str, AdaptiveRate | None] = {}
        self.pairs = PairBook(pair_min_interval, max_wait=max_wait, timer=clock)
        # Refusals (the wait would pass max_wait), by the limit that refused: read at scrape.
        self.throttled = {"number": 0, "recipient": 0}

    def rates_now(self) -> Iterator[tuple[str, float]]:
        """Each limited number seen so far, with the rate it books at now (for metrics)."""
        now = self._clock()
        for number, rate in list(self._rates.items()):
            if rate is not None:
                yield number, rate.current(now)

    @property
    def fallback(self) -> bool | None:
        """True while a shared schedule books in process (Redis away); None: not shared."""
        available = getattr(self._schedule, "available", None)
        return None if available is None else not available

    def rate(self, phone_number_id: str) -> AdaptiveRate | None:
        """The number's adaptive rate, or None when it has no limit."""
        try:
            return self._rates[phone_number_id]
        except KeyError:
            ceiling = self._overrides.get(phone_number_id, self._default)
            rate = AdaptiveRate(ceiling, cooldown=max(self._max_wait, 0.5)) if ceiling else None
            self._rates[phone_number_id] = rate
            return rate

    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        """Wait for the recipient's turn, then the number's; False when either is too far."""
        budget = self._max_wait
        pair = None
        if recipient is not None:
            pair = self.pairs.book(phone_number_id, recipient, self._clock(), budget)
            if pair is None:
                self.throttled["recipient"] += 1
                return False
            if pair.wait > 0:
                await self._sleep(pair.wait)
                budget -= pair.wait
        rate = self.rate(phone_number_id)
        if rate is not None:
            now = self._clock()
            booked_rate = rate.current(now)
            wait = await self._schedule.book(phone_number_id, 1.0 / booked_rate, budget)
            if (shared := self._schedule.cut(phone_number_id)) is not None:
                rate.adopt(shared)  # another daemon's newer cut: book at its rate from now
            if wait is None:
                if recipient is not None and pair is not None:
                    self.pairs.cancel(phone_number_id, recipient, pair)
                self.throttled["number"] += 1
                return False
            _booked.set(_Booked(rate, now, booked_rate))
            if wait > 0:
                await self._sleep(wait)
        # A 131056 for this recipient while this one slept: its back-off starts again.
        struck = self.pairs.struck_since
        if recipient is not None and pair is not None and struck(phone_number_id, recipient, pair):
            self.throttled["recipient"] += 1
            return False
        return True

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        """A rate-limit answer: slow the number (130429, 80007, 4) or the recipient (131056)."""
        now = self._clock()
        if code == PAIR_CODE and recipient is not None:
            backoff = self.pairs.strike(phone_number_id, recipient, now)
            log.info("recipient_backoff", phone_number_id=phone_number_id, backoff_s=backoff)
        elif code in NUMBER_CODES and (rate := self.rate(phone_number_id)) is not None:
            if (booked := _count(rate, now, limited=True)) is not None:
                lowered = rate.lower(now, booked.at, booked.booked_rate)
            else:
                lowered = rate.lower(now)
            if lowered is not None and (cut := rate.last_cut()) is not None:
                self._schedule.share(phone_number_id, cut)
                log.info(
                    "number_rate_lowered",
                    phone_number_id=phone_number_id,
                    code=code,
                    rate=round(lowered, 2),
                    ceiling=rate.ceiling,
                )

    def sent(self, phone_number_id: str, recipient: str | None) -> None:
        """Meta accepted a send: counted for the number's rate; a recipient's back-off ends."""
        now = self._clock()
        if (rate := self.rate(phone_number_id)) is not None:
            _count(rate, now, limited=False)
        if recipient is not None:
            self.pairs.accepted(phone_number_id, recipient, now)

    async def aclose(self) -> None:
        """Close the shared store's connections, if any."""
        await self._schedule.aclose()

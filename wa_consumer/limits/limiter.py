"""The ``Limiter`` seam: per-number and per-recipient limits, adapted to Meta's answers.

``acquire`` never holds a lock or a slot shared between numbers: each number has its own
schedule, so a throttled number only ever delays its own messages, and a wait longer than
``WA_THROTTLE_MAX_WAIT_SECONDS`` is refused at once (the message goes to a wait queue and
frees its prefetch slot) instead of being slept off.

What Meta's answers teach (a number's lowered rate, a recipient's back-off and spacing) is
kept by each daemon; with Redis only the number's schedule is shared. Each daemon that meets
a 130429 slows down itself, and the shared schedule still bounds their sum by the ceiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol

from ..logs import get_logger
from .adaptive import AdaptiveRate, PairBook
from .gcra import LocalSchedule

log = get_logger("limits")

NUMBER_CODES = frozenset({"4", "80007", "130429"})  # the number (or its app, WABA) is over
PAIR_CODE = "131056"  # too many messages to one recipient


class Schedule(Protocol):
    """Where a number's send slots are booked: in process, or shared through Redis."""

    async def book(self, key: str, interval: float, max_wait: float) -> float | None: ...

    async def aclose(self) -> None: ...


class InProcessSchedule:
    """The GCRA of every number in this process (no Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._local = LocalSchedule()
        self._clock = clock

    async def book(self, key: str, interval: float, max_wait: float) -> float | None:
        return self._local.book(key, self._clock(), interval, max_wait)

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
            interval = 1.0 / rate.current(self._clock())
            wait = await self._schedule.book(phone_number_id, interval, budget)
            if wait is None:
                if recipient is not None and pair is not None:
                    self.pairs.cancel(phone_number_id, recipient, pair)
                self.throttled["number"] += 1
                return False
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
            lowered = rate.lower(now)
            if lowered is not None:
                log.info(
                    "number_rate_lowered",
                    phone_number_id=phone_number_id,
                    code=code,
                    rate=round(lowered, 2),
                    ceiling=rate.ceiling,
                )

    def sent(self, phone_number_id: str, recipient: str | None) -> None:
        """Meta accepted a send: the recipient's back-off, if any, is over."""
        if recipient is not None:
            self.pairs.accepted(phone_number_id, recipient, self._clock())

    async def aclose(self) -> None:
        """Close the shared store's connections, if any."""
        await self._schedule.aclose()

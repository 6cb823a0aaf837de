"""The number schedule shared through Redis, with a local fallback while Redis is away.

Every daemon using one Redis books on one GCRA per number (``GCRA_LUA``: one round trip, the
server's clock). When Redis cannot be reached the daemon logs one line and books in process
at ``WA_REDIS_FALLBACK_SHARE`` of the rate, continuing after the slots Redis had granted it;
it tries Redis again at most once a second, and on its return hands over the slots it booked
meanwhile, so neither switch lets two schedules overlap in this daemon.

The same round trip shares each number's last rate cut (``adaptive.Cut``): a daemon that
cuts hands its cut over with its next booking (``share``), Redis keeps the newest, and every
daemon reads it back with each booking (``cut``) and books at that rate. Daemons that each
followed their own cuts drifted apart (one at 45/s, one at 20/s against a 30/s limit), and
the limit was found by neither: the shared schedule is set by their mix.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..logs import get_logger
from .adaptive import Cut
from .gcra import GCRA_LUA, LocalSchedule

log = get_logger("limits")

_US = 1_000_000


def redis_client(url: str, *, max_connections: int, timeout: float = 0.5) -> Redis:
    """A client that fails fast: one immediate retry (a stale pooled socket), short timeouts."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        max_connections=max_connections,
    )
    return client


class SharedSchedule:
    """Books send slots on Redis; in process, at a share of the rate, while Redis is away."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        fallback_share: float,
        retry_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._script = client.register_script(GCRA_LUA)
        self._prefix = f"{prefix}rate:"
        self._cut_prefix = f"{prefix}cut:"
        self._share = fallback_share
        self._retry_every = retry_every
        self._clock = clock
        self._own_end: dict[str, float] = {}  # where this daemon's Redis slots end, per number
        self._local = LocalSchedule()  # the schedule while Redis is away
        self._handover: set[str] = set()  # numbers with local slots still ahead
        self._retry_at: float | None = None  # set while Redis is away
        self._to_share: dict[str, Cut] = {}  # this daemon's cuts, for the next booking
        self._cuts: dict[str, Cut] = {}  # the newest cut Redis keeps, as last read

    @property
    def available(self) -> bool:
        return self._retry_at is None

    def share(self, key: str, cut: Cut) -> None:
        """Hand this daemon's cut of ``key`` over to the others with its next booking."""
        self._to_share[key] = cut

    def cut(self, key: str) -> Cut | None:
        """The newest cut of ``key`` any daemon made, as of this daemon's last booking."""
        return self._cuts.get(key)

    async def book(self, key: str, interval: float, max_wait: float) -> float | None:
        """Seconds to wait for the next slot of ``key`` (booked), or None if over ``max_wait``."""
        start = self._clock()
        if self._retry_at is None or start >= self._retry_at:
            if self._retry_at is not None:
                self._retry_at = start + self._retry_every  # one probe at a time
            try:
                wait = await self._remote(key, start, interval, max_wait)
            except (RedisError, OSError) as exc:
                self._lost(exc)
            else:
                if wait is None:
                    return None
                # The wait counts from when Redis ran the script, which is closer to when the
                # call started than to when this task got the reply back on a busy loop.
                slot = start + wait
                self._own_end[key] = slot + interval  # for a fallback to continue from
                return max(0.0, slot - self._clock())
        now = self._clock()
        self._local.hold(key, self._own_end.get(key, now))
        wait = self._local.book(key, now, interval / self._share, max_wait - (now - start))
        if wait is not None:
            self._handover.add(key)
        return wait

    async def _remote(self, key: str, now: float, interval: float, max_wait: float) -> float | None:
        ahead = 0.0
        if key in self._handover:  # until the slots booked while Redis was away have passed
            ahead = self._local.ahead(key, now)
            if not ahead:
                self._handover.discard(key)
        mine = self._to_share.get(key)
        offer: list[str | int] = ["", "", ""]
        if mine is not None:
            offer = [repr(mine.rate), repr(mine.step), round((now - mine.at) * _US)]
        wait, rate, step, age = await self._script(
            keys=[self._prefix + key, self._cut_prefix + key],
            args=[round(interval * _US), round(max_wait * _US), round(ahead * _US), *offer],
        )
        if self._retry_at is not None:
            self._retry_at = None
            log.info("rate_limit_store_back", store="redis")
        if mine is not None and self._to_share.get(key) is mine:
            del self._to_share[key]
        if rate:  # as of when the script ran: about when the call started
            self._cuts[key] = Cut(float(rate), float(step), now - int(age) / _US)
        wait = int(wait)
        return None if wait < 0 else wait / _US

    def _lost(self, exc: BaseException) -> None:
        if self._retry_at is None:
            log.warning(
                "rate_limit_store_unavailable",
                store="redis",
                error=f"{type(exc).__name__}: {exc}"[:200],
                fallback="in process",
                share=self._share,
            )
            self._retry_at = self._clock() + self._retry_every

    async def aclose(self) -> None:
        await self._client.aclose()

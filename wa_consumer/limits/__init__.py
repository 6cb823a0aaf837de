"""Send rates: per business number (shared through Redis when set) and per recipient.

``build_limiter`` turns the settings into the ``Limiter`` the pipeline calls. Numbers are
paced by GCRA (``gcra``), in process or in Redis (``shared``); Meta's rate-limit answers
adjust each number's rate and back off single recipients (``adaptive``).
"""

from __future__ import annotations

from ..settings import Settings
from .limiter import RateLimiter, Schedule
from .shared import SharedSchedule, redis_client


def build_limiter(settings: Settings) -> RateLimiter:
    """The limiter the settings describe; ``aclose`` it at shutdown."""
    schedule: Schedule | None = None
    if settings.redis_url:
        client = redis_client(settings.redis_url, max_connections=settings.prefetch + 4)
        schedule = SharedSchedule(
            client, prefix=settings.redis_prefix, fallback_share=settings.redis_fallback_share
        )
    return RateLimiter(
        rate=settings.number_rate,
        rates=settings.number_rates,
        max_wait=settings.throttle_max_wait_seconds,
        pair_min_interval=settings.pair_min_interval_seconds,
        schedule=schedule,
    )


__all__ = ["RateLimiter", "SharedSchedule", "build_limiter"]

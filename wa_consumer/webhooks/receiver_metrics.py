"""What the webhook receiver shows: a result per POST, publish latency, readiness, and
warnings that a flood of bad requests does not multiply into a flood of lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

WARN_EVERY: Final = 10.0
#: Publish until confirm: about a millisecond on a healthy broker, up to the 5 s timeout.
PUBLISH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Result(StrEnum):
    """What became of one POST: the ``result`` label of ``wa_webhooks_total``."""

    ACCEPTED = "accepted"
    BAD_SIGNATURE = "bad_signature"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"


class ReceiverMetrics:
    """The receiver's own registry; labelled children bound once, not per request."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        results = Counter("wa_webhooks", "Webhook POSTs by result.", ["result"], registry=r)
        self.results = {result: results.labels(result.value) for result in Result}
        checks = Counter(
            "wa_webhook_verifications",
            "Subscription checks (GET) by result.",
            ["result"],
            registry=r,
        )
        self.verified, self.refused = checks.labels("ok"), checks.labels("refused")
        self.publish_seconds = Histogram(
            "wa_webhook_publish_seconds",
            "Publish of one accepted body until the broker's confirm.",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "wa_webhook_ready", "1 while the broker connection and channel are up.", registry=r
        )
        self.ready.set_function(lambda: float(ready()))


class Throttled:
    """A warning line per event at most every ``every`` seconds, with how many it stands for."""

    def __init__(self, log: Any, every: float = WARN_EVERY) -> None:
        self._log = log
        self._every = every
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now < self._next.get(event, 0.0):
            self._held[event] = self._held.get(event, 0) + 1
            return
        self._next[event] = now + self._every
        self._log.warning(event, suppressed=self._held.pop(event, 0), **fields)

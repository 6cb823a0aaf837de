"""Metrics of tenant controls: what is paused, what was held and released, breaker trips."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .release import Releaser
    from .store import Pause


class ControlMetrics(Collector):
    """``wa_paused`` (one series per pause), ``wa_held_total``, ``wa_released_messages_total``,
    ``wa_breaker_trips_total``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.held = Counter(
            "wa_held", "Messages put in a held queue (their tenant or number paused).",
            registry=registry,
        )  # fmt: skip
        self.trips = Counter(
            "wa_breaker_trips",
            "Breakers opened by this replica (a tenant or number paused after account-level "
            "failures).",
            registry=registry,
        )
        self._pauses: Callable[[], Sequence[tuple[Pause, str]]] = list
        self._releaser: Callable[[], Releaser | None] = lambda: None
        registry.register(self)

    def watch(
        self,
        pauses: Callable[[], Sequence[tuple[Pause, str]]],
        releaser: Callable[[], Releaser | None],
    ) -> None:
        self._pauses = pauses
        self._releaser = releaser

    def collect(self) -> Iterable[Metric]:
        paused = GaugeMetricFamily(
            "wa_paused",
            "1 per paused tenant or number (by: operator or breaker).",
            labels=["tenant_id", "phone_number_id", "by"],
        )
        for pause, _ in self._pauses():
            by = "breaker" if pause.breaker else "operator"
            paused.add_metric([pause.tenant_id, pause.number or "", by], 1.0)
        yield paused
        releaser = self._releaser()
        released = CounterMetricFamily(
            "wa_released_messages",
            "Held messages this replica moved back to the main queue since it started.",
        )
        released.add_metric([], float(releaser.released if releaser is not None else 0))
        yield released

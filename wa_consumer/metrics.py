"""Prometheus metrics (SPEC §11), and the ``Observer`` seam the pipeline reports through.

Each ``Metrics`` has a ``CollectorRegistry`` of its own, so several daemons (tests, an
embedding service) in one process never collide. Label values come from bounded sets only
(outcomes, message types, categories, configured delays and queues); there is no
per-message or per-recipient label, and a ``tenant`` label only with
``WA_METRICS_TENANT_LABELS=true``, capped at ``MAX_TENANTS`` values (the rest are ``other``).

The hot path (thousands of messages a second) costs a dict lookup and a counter increment
per message: labelled children are bound once and kept in dicts, never looked up with
``.labels()`` per message. Gauges that mirror state (in flight, broker, ledger) are read at
scrape time, costing the hot path nothing.

Counters also export ``*_created`` series; set ``PROMETHEUS_DISABLE_CREATED_SERIES=True`` to
drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .categories import DEAD
from .classify import retry_queue_name
from .outcomes import Dead, Duplicate, Outcome, Retry

MAX_TENANTS = 1000
#: Numbers with a ``wa_limiter_rate`` series of their own; the rest are one ``other`` series.
MAX_NUMBERS = 1000

# Cloud API latency: 5 ms (a sandbox, a cache) to 30 s (past any sane timeout); finest
# around Meta's usual 100-500 ms.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip

# Ledger statements: one item (at rest) to the batcher's cap of 500 (under load).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500)
# Ledger commit latency: a local PostgreSQL answers in about a millisecond; 5 s is the
# statement timeout's default.
COMMIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

CATEGORIES = tuple(str(c) for c in DEAD)

ALERTS = ("account", "auth", "tenant_suspended", "dead_rate", "queue_age")


class Observer(Protocol):
    """What the pipeline reports about each message; metrics and alerts listen."""

    def outcome(self, outcome: Outcome, short: str, type_: str | None, tenant: str | None) -> None:
        """Once per delivery, with its outcome and the short name the logs use."""
        ...

    def latency(self, seconds: float) -> None:
        """Once per Cloud API call, answered or not."""
        ...

    def ambiguous(self) -> None:
        """A call that may have reached Meta without an answer (a timeout after sending)."""
        ...


class LimiterState(Protocol):
    """What the rate limiter shows metrics (``limits.RateLimiter``), read at scrape time."""

    @property
    def throttled(self) -> Mapping[str, int]: ...

    def rates_now(self) -> Iterable[tuple[str, float]]: ...

    @property
    def fallback(self) -> bool | None: ...


class LimiterCollector(Collector):
    """The limiter's state as metrics, read at scrape time: the hot path pays nothing.

    ``wa_limiter_rate`` has one series per number seen, in the order seen, up to
    ``MAX_NUMBERS``; the numbers past that are one ``other`` series holding their lowest rate
    (the most slowed down). ``wa_limiter_fallback`` exists only with a shared (Redis) schedule.
    """

    def __init__(self, limiter: LimiterState) -> None:
        self._limiter = limiter

    def collect(self) -> Iterator[Metric]:
        rate = GaugeMetricFamily(
            "wa_limiter_rate",
            "Send rate a number books at now (msg/s): its ceiling, or less after Meta's "
            "rate-limit answers.",
            labels=("phone_number_id",),
        )
        other: float | None = None
        for i, (number, now) in enumerate(self._limiter.rates_now()):
            if i < MAX_NUMBERS:
                rate.add_metric((number,), now)
            else:
                other = now if other is None else min(other, now)
        if other is not None:
            rate.add_metric(("other",), other)
        yield rate
        throttled = CounterMetricFamily(
            "wa_throttled",
            "Messages the limiter sent to a wait queue (the wait was over the maximum), "
            "by the limit that refused: number or recipient.",
            labels=("limit",),
        )
        for limit, count in self._limiter.throttled.items():
            throttled.add_metric((limit,), count)
        yield throttled
        fallback = self._limiter.fallback
        if fallback is not None:
            yield GaugeMetricFamily(
                "wa_limiter_fallback",
                "1 while Redis is away and numbers are paced in process (WA_REDIS_FALLBACK_SHARE).",
                value=1.0 if fallback else 0.0,
            )

    def describe(self) -> Iterator[Metric]:
        return iter(())  # described by collect(), after the limiter exists


class NullObserver:
    """Nobody listening."""

    def outcome(self, outcome: Outcome, short: str, type_: str | None, tenant: str | None) -> None:
        return None

    def latency(self, seconds: float) -> None:
        return None

    def ambiguous(self) -> None:
        return None


class Fanout:
    """Several observers as one (metrics and alerts)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def outcome(self, outcome: Outcome, short: str, type_: str | None, tenant: str | None) -> None:
        for observer in self._observers:
            observer.outcome(outcome, short, type_, tenant)

    def latency(self, seconds: float) -> None:
        for observer in self._observers:
            observer.latency(seconds)

    def ambiguous(self) -> None:
        for observer in self._observers:
            observer.ambiguous()


class Metrics:
    """The daemon's metrics in a registry of its own; an ``Observer`` for the pipeline."""

    def __init__(self, *, tenant_labels: bool = False) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.tenant_labels = tenant_labels
        tenant = ("tenant",) if tenant_labels else ()

        self.messages = Counter(
            "wa_messages",
            "Deliveries by outcome and message type.",
            ("outcome", "type", *tenant),
            registry=r,
        )
        self.retries = Counter(
            "wa_retries",
            "Messages sent to a wait queue to retry, by delay.",
            ("delay",),
            registry=r,
        )
        self.dead = Counter(
            "wa_dead", "Messages dead-lettered, by category.", ("category", *tenant), registry=r
        )
        self.duplicates = Counter(
            "wa_duplicates", "Deliveries the ledger had already sent: acked, not sent.", registry=r
        )
        self.ambiguous_sends = Counter(
            "wa_ambiguous_sends",
            "Cloud API calls that may have reached Meta without an answer.",
            registry=r,
        )
        self.graph_latency = Histogram(
            "wa_graph_latency_seconds",
            "Cloud API call latency, answered or not.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.credential_hits = Counter(
            "wa_credential_cache_hits", "Credential lookups answered by the cache.", registry=r
        )
        self.credential_misses = Counter(
            "wa_credential_cache_misses", "Credential lookups the cache missed.", registry=r
        )
        self.credential_fetches = Counter(
            "wa_credential_fetches", "Fetches of credentials (misses share one).", registry=r
        )
        self.credential_fetch_errors = Counter(
            "wa_credential_fetch_errors", "Credential fetches that failed.", registry=r
        )
        self.in_flight = Gauge(
            "wa_in_flight_messages", "Deliveries being processed now.", registry=r
        )
        self.broker_connected = Gauge(
            "wa_broker_connected", "1 while the broker connection is up.", registry=r
        )
        self.ledger_up = Gauge(
            "wa_ledger_up", "1 while the ledger is reachable (absent without a ledger).", registry=r
        )
        self.ready = Gauge(
            "wa_ready", "1 while /readyz would answer 200 (last known ledger state).", registry=r
        )
        self.queue_depth = Gauge(
            "wa_queue_depth",
            "Ready messages in a queue, read from the broker.",
            ("queue", "role"),
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "wa_queue_oldest_age_seconds",
            "Age of the message at the head of a queue (since it last entered a queue).",
            ("queue", "role"),
            registry=r,
        )
        self.alerts = Counter(
            "wa_alerts", "Alerts raised (after dedup), by alert.", ("alert",), registry=r
        )
        self.alerts_dropped = Counter(
            "wa_alerts_dropped", "Alerts never posted: webhook queue full, or shutdown.", registry=r
        )
        self.alert_webhook_failures = Counter(
            "wa_alert_webhook_failures", "Alerts the webhook never accepted.", registry=r
        )

        self.ledger_batch_size = Histogram(
            "wa_ledger_batch_size",
            "Items (claims and results) per ledger statement.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.ledger_commit = Histogram(
            "wa_ledger_commit_seconds",
            "Time to write one ledger statement (its batch), as its waiters see it.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.ledger_results_held = Gauge(
            "wa_ledger_results_held",
            "Results in memory not yet written to the ledger (queued, or kept in an outage).",
            registry=r,
        )

        # Bound children: the hot path looks these up in a dict.
        self._message_children: dict[tuple[str, ...], Counter] = {}
        self._dead_children: dict[tuple[str, ...], Counter] = {}
        self._retry_children: dict[float, Counter] = {}
        self._tenants: set[str] = set()
        self._credential_children = {
            "hit": self.credential_hits,
            "miss": self.credential_misses,
            "fetch": self.credential_fetches,
            "fetch_error": self.credential_fetch_errors,
        }
        # Series that exist from the start, so rate() sees their first increment.
        if not tenant_labels:
            for category in CATEGORIES:
                self._dead_children[(category,)] = self.dead.labels(category)
        for name in ALERTS:
            self.alerts.labels(name)

    # Observer ---------------------------------------------------------------------------

    def outcome(self, outcome: Outcome, short: str, type_: str | None, tenant: str | None) -> None:
        key: tuple[str, ...]
        if self.tenant_labels:
            tenant = self._tenant(tenant)
            key = (short, type_ or "unknown", tenant)
        else:
            key = (short, type_ or "unknown")
        child = self._message_children.get(key)
        if child is None:
            child = self._message_children[key] = self.messages.labels(*key)
        child.inc()
        if isinstance(outcome, Dead):
            category = outcome.failure.category
            dkey = (category, tenant) if tenant is not None and self.tenant_labels else (category,)
            dead = self._dead_children.get(dkey)
            if dead is None:
                dead = self._dead_children[dkey] = self.dead.labels(*dkey)
            dead.inc()
        elif isinstance(outcome, Retry):
            if outcome.counts:
                retry = self._retry_children.get(outcome.delay)
                if retry is None:
                    retry = self.retries.labels(retry_queue_name(outcome.delay, ""))
                    self._retry_children[outcome.delay] = retry
                retry.inc()
        elif isinstance(outcome, Duplicate):
            self.duplicates.inc()

    def latency(self, seconds: float) -> None:
        self.graph_latency.observe(seconds)

    def ambiguous(self) -> None:
        self.ambiguous_sends.inc()

    # Other sources ----------------------------------------------------------------------

    def credential(self, event: str) -> None:
        """``CredentialCache``'s ``observe`` hook: hit, miss, fetch or fetch_error."""
        counter = self._credential_children.get(event)
        if counter is not None:
            counter.inc()

    def retry_delays(self, delays: tuple[float, ...]) -> None:
        """Create the retry series of each configured delay at zero."""
        for delay in delays:
            if delay not in self._retry_children:
                name = retry_queue_name(delay, "")
                self._retry_children[delay] = self.retries.labels(name)

    def watch(
        self,
        *,
        in_flight: Callable[[], float],
        broker_connected: Callable[[], float],
        ready: Callable[[], float],
        ledger_up: Callable[[], float] | None,
    ) -> None:
        """Gauges read at scrape time; no ledger, no ``wa_ledger_up``."""
        self.in_flight.set_function(in_flight)
        self.broker_connected.set_function(broker_connected)
        self.ready.set_function(ready)
        if ledger_up is None:
            self.registry.unregister(self.ledger_up)
        else:
            self.ledger_up.set_function(ledger_up)

    def ledger_batch(self, items: int, seconds: float) -> None:
        """Once per ledger statement written (``Batcher``'s ``on_batch``)."""
        self.ledger_batch_size.observe(items)
        self.ledger_commit.observe(seconds)

    def watch_ledger(self, results_held: Callable[[], float]) -> Callable[[int, float], None]:
        """Read the ledger's held results at scrape time; returns the per-batch hook."""
        self.ledger_results_held.set_function(results_held)
        return self.ledger_batch

    def watch_limiter(self, limiter: LimiterState) -> None:
        """Export the limiter's rates, refusals and fallback (read at scrape time)."""
        self.registry.register(LimiterCollector(limiter))

    def _tenant(self, tenant: str | None) -> str:
        if tenant is None:
            return "unknown"
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) >= MAX_TENANTS:
            return "other"
        self._tenants.add(tenant)
        return tenant

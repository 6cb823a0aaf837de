"""Alerts: what an operator must act on, raised once per cause, never in a message's way.

Raised for:

- a message dead with category ``account`` (the business account or number is blocked),
  ``auth`` (the token was still refused after one refresh) or ``tenant_suspended``;
- more than ``WA_ALERT_DEAD_RATE`` dead messages within a minute (``dead_rate``);
- a main queue whose head message is older than ``WA_ALERT_QUEUE_AGE_SECONDS``
  (``queue_age``, from the queue probe).

An alert is an error-level log line with ``alert=true``, one increment of
``wa_alerts_total{alert}`` and, with ``WA_ALERT_WEBHOOK_URL`` set, a JSON POST. A cause
(alert + tenant + category + code) raises at most one alert per ``WA_ALERT_DEDUP_SECONDS``:
an account error hitting 10,000 messages is one alert, not 10,000. Occurrences in between
are counted, and the cause's next alert carries the count.

The POST is made by a background task fed through a bounded queue: the pipeline only
enqueues, so a slow or dead webhook never delays a message. Each POST is retried with
backoff up to 3 times; an alert that finds the queue full is dropped, counted
(``wa_alerts_dropped_total``) and logged once per streak of drops.

No alert carries a token: the cause is a failure's message, which never holds one, and it
passes the log redactor as a second line of defence. The webhook URL (which may carry a
secret) is never logged.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from .categories import ACCOUNT_LEVEL
from .logs import get_logger, redact
from .metrics import Metrics, NullObserver
from .outcomes import Dead, Outcome
from .settings import Settings

log = get_logger("alerts")

# Dead-letter categories an operator must act on, by the alert they raise.
ACCOUNT_CATEGORIES = frozenset(str(c) for c in ACCOUNT_LEVEL)
_CAUSE_TEXT = 500
_MAX_CAUSES = 10_000


@dataclass(slots=True)
class _Cause:
    raised_at: float  # clock time of the cause's last alert
    first_seen: datetime  # first occurrence the next alert stands for
    suppressed: int = 0  # occurrences since the last alert


class Alerter(NullObserver):
    """Turns dead outcomes and queue ages into deduplicated alerts (an ``Observer``)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        webhook: Webhook | None = None,
        dead_rate: float = 60.0,
        queue_age_seconds: float = 300.0,
        dedup_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.webhook = webhook
        self._dead_rate = dead_rate
        self._queue_age = queue_age_seconds
        self._dedup = dedup_seconds
        self._clock = clock
        self._causes: dict[tuple[str, str | None, str | None, str | None], _Cause] = {}
        # More than dead_rate deaths in 60 s: the oldest of the last dead_rate + 1 is recent.
        self._deaths: deque[float] = deque(maxlen=int(dead_rate) + 1)
        self._host = socket.gethostname()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Alerter:
        url = settings.alert_webhook_url
        return cls(
            metrics,
            webhook=Webhook(url.get_secret_value(), metrics) if url is not None else None,
            dead_rate=settings.alert_dead_rate,
            queue_age_seconds=settings.alert_queue_age_seconds,
            dedup_seconds=settings.alert_dedup_seconds,
        )

    def outcome(self, outcome: Outcome, short: str, type_: str | None, tenant: str | None) -> None:
        if not isinstance(outcome, Dead):
            return
        failure = outcome.failure
        if failure.category in ACCOUNT_CATEGORIES:
            self.fire(
                failure.category,
                tenant=tenant,
                category=failure.category,
                code=failure.code,
                cause=failure.message,
            )
        if self._dead_rate > 0:
            now = self._clock()
            self._deaths.append(now)
            if len(self._deaths) == self._deaths.maxlen and now - self._deaths[0] <= 60:
                self.fire(
                    "dead_rate",
                    cause=f"more than {self._dead_rate:g} messages dead-lettered within a minute",
                    value=float(len(self._deaths)),
                )

    def queue_age(self, queue: str, age: float) -> None:
        """The probe read the age of the main queue's head message."""
        if self._queue_age > 0 and age > self._queue_age:
            cause = f"the oldest message in {queue} is {age:.0f} s old"
            self.fire("queue_age", code=queue, cause=cause, value=round(age, 1))

    def fire(
        self,
        alert: str,
        *,
        tenant: str | None = None,
        category: str | None = None,
        code: str | None = None,
        cause: str,
        value: float | None = None,
    ) -> bool:
        """Raise ``alert`` unless its cause was raised within the dedup window (then count)."""
        now = self._clock()
        key = (alert, tenant, category, code)
        known = self._causes.get(key)
        if known is not None and now - known.raised_at < self._dedup:
            if not known.suppressed:
                known.first_seen = _utcnow()
            known.suppressed += 1
            return False
        first_seen = known.first_seen if known is not None and known.suppressed else _utcnow()
        count = 1 + (known.suppressed if known is not None else 0)
        if known is None and len(self._causes) >= _MAX_CAUSES:
            self._forget_old(now)
        self._causes[key] = _Cause(now, first_seen)
        payload = self._payload(alert, tenant, category, code, cause, count, value, first_seen)
        self._metrics.alerts.labels(alert).inc()
        log.error(
            "alert",
            alert=True,
            alert_name=alert,
            tenant=tenant,
            category=category,
            code=code,
            cause=payload["cause"],
            count=count,
            value=value,
        )
        if self.webhook is not None:
            self.webhook.submit(payload)
        return True

    def _payload(
        self,
        alert: str,
        tenant: str | None,
        category: str | None,
        code: str | None,
        cause: str,
        count: int,
        value: float | None,
        first_seen: datetime,
    ) -> dict[str, Any]:
        summary = _summary(alert, tenant, code, value, self._dead_rate, self._queue_age)
        payload: dict[str, Any] = {
            "alert": alert,
            "severity": "error",
            "summary": summary,
            "text": f"wa-consumer: {summary}",  # what chat webhooks (Slack, Teams) display
            "tenant": tenant,
            "category": category,
            "code": code,
            "cause": cause[:_CAUSE_TEXT],
            "count": count,
            "value": value,
            "first_seen": _iso(first_seen),
            "raised_at": _iso(_utcnow()),
            "dedup_seconds": self._dedup,
            "host": self._host,
            "source": "wa-consumer",
        }
        redact(None, "alert", payload)
        return payload

    def _forget_old(self, now: float) -> None:
        for key, cause in list(self._causes.items()):
            if now - cause.raised_at >= self._dedup:
                del self._causes[key]

    async def start(self) -> None:
        if self.webhook is not None:
            await self.webhook.start()

    async def close(self, grace: float = 5.0) -> None:
        if self.webhook is not None:
            await self.webhook.close(grace)


def _summary(
    alert: str,
    tenant: str | None,
    code: str | None,
    value: float | None,
    dead_rate: float,
    queue_age: float,
) -> str:
    if alert == "account":
        return f"tenant {tenant}: business account or number blocked (code {code}); act in Meta"
    if alert == "auth":
        return f"tenant {tenant}: access token refused after a refresh (code {code})"
    if alert == "tenant_suspended":
        return f"tenant {tenant} is suspended; its messages are dead-lettered"
    if alert == "dead_rate":
        return f"over {dead_rate:g} messages dead-lettered within a minute"
    if alert == "queue_age":
        return f"oldest message in {code} is {value or 0:.0f} s old (threshold {queue_age:g} s)"
    return alert


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


class Webhook:
    """POSTs alerts as JSON from a background task; ``submit`` never waits."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        queue_size: int = 100,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._metrics = metrics
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._retries = retries
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._dropping = False
        self.sent = 0

    def __repr__(self) -> str:
        return "Webhook(<url hidden>)"

    def submit(self, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._metrics.alerts_dropped.inc()
            if not self._dropping:
                log.error("alert_dropped", reason="webhook queue full", alert_name=payload["alert"])
            self._dropping = True

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def close(self, grace: float = 5.0) -> None:
        """Post what is queued within ``grace`` seconds; what is left is dropped and counted."""
        if self._task is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            left = self._queue.qsize()
            if left:
                self._metrics.alerts_dropped.inc(left)
                log.error("alert_dropped", reason="shutting down", dropped=left)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._post(payload)
            except Exception:  # the sender must outlive any one alert
                log.exception("alert_webhook_error", alert_name=payload.get("alert"))
            finally:
                self._queue.task_done()

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self._session is not None
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        problem = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(self._url, data=body, headers=headers) as r:
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__  # not str(exc): it may quote the URL
                continue
            if status < 300:
                self.sent += 1
                self._dropping = False
                return
            problem = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                break  # the webhook refuses this payload; asking again will not help
        self._metrics.alert_webhook_failures.inc()
        log.error(
            "alert_webhook_failed",
            alert_name=payload["alert"],
            error=problem,
            attempts=attempt + 1,
        )

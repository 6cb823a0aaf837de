"""Alerts: one per cause per window, the count carried forward, a webhook that never blocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from wa_consumer.alerts import Alerter, Webhook
from wa_consumer.metrics import Metrics
from wa_consumer.outcomes import Dead, Delivered, Failure, Retry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dead(category: str, code: str = "131031", message: str = "locked") -> Dead:
    return Dead(Failure(category, code, message))


def alerter(metrics: Metrics, clock: Clock, **kwargs: Any) -> Alerter:
    return Alerter(metrics, clock=clock, **kwargs)


def raised(metrics: Metrics, alert: str) -> float:
    return metrics.registry.get_sample_value("wa_alerts_total", {"alert": alert}) or 0.0


def test_an_account_failure_on_many_messages_is_one_alert_whose_count_carries_forward() -> None:
    metrics, clock = Metrics(), Clock()
    alerts = alerter(metrics, clock, dedup_seconds=600)
    with capture_logs() as logs:
        for _ in range(20):
            alerts.outcome(dead("account"), "dead", "text", "acme")
            clock.now += 1
        clock.now += 600  # the window is over: the next occurrence alerts, carrying 19 + 1
        alerts.outcome(dead("account"), "dead", "text", "acme")
    lines = [entry for entry in logs if entry["event"] == "alert"]
    assert [line["count"] for line in lines] == [1, 20]
    first = lines[0]
    assert first["log_level"] == "error"
    assert first["alert"] is True
    assert (first["alert_name"], first["tenant"], first["category"], first["code"]) == (
        "account",
        "acme",
        "account",
        "131031",
    )
    assert first["cause"] == "locked"
    assert raised(metrics, "account") == 2


@pytest.mark.parametrize("category", ["account", "auth", "tenant_suspended"])
def test_each_account_level_category_alerts_under_its_own_name(category: str) -> None:
    metrics = Metrics()
    alerts = alerter(metrics, Clock())
    alerts.outcome(dead(category), "dead", "text", "acme")
    assert raised(metrics, category) == 1


def test_causes_differ_by_tenant_and_code_and_other_outcomes_never_alert() -> None:
    metrics = Metrics()
    alerts = alerter(metrics, Clock())
    alerts.outcome(dead("account", "131031"), "dead", "text", "acme")
    alerts.outcome(dead("account", "131031"), "dead", "text", "globex")
    alerts.outcome(dead("account", "368"), "dead", "text", "acme")
    alerts.outcome(dead("account", "131031"), "dead", "image", "acme")  # same cause
    alerts.outcome(dead("permanent", "131026"), "dead", "text", "acme")
    alerts.outcome(Delivered("wamid.x"), "sent", "text", "acme")
    alerts.outcome(Retry("q", 30, Failure("auth", "190", "x")), "retry", "text", "acme")
    assert raised(metrics, "account") == 3
    assert raised(metrics, "auth") == 0


def test_dead_rate_alerts_once_above_the_threshold_within_a_minute() -> None:
    metrics, clock = Metrics(), Clock()
    alerts = alerter(metrics, clock, dead_rate=5)
    for _ in range(5):
        alerts.outcome(dead("permanent", "131026"), "dead", "text", "acme")
        clock.now += 1
    assert raised(metrics, "dead_rate") == 0  # 5 a minute is the threshold, not above it
    for _ in range(10):
        alerts.outcome(dead("permanent", "131026"), "dead", "text", "acme")
        clock.now += 1
    assert raised(metrics, "dead_rate") == 1  # deduplicated while it lasts


def test_dead_rate_spread_over_more_than_a_minute_is_no_alert() -> None:
    metrics, clock = Metrics(), Clock()
    alerts = alerter(metrics, clock, dead_rate=5)
    for _ in range(30):
        alerts.outcome(dead("permanent", "131026"), "dead", "text", "acme")
        clock.now += 13  # 5 within any 60 s at most
    assert raised(metrics, "dead_rate") == 0


def test_thresholds_at_zero_are_off() -> None:
    metrics = Metrics()
    alerts = alerter(metrics, Clock(), dead_rate=0, queue_age_seconds=0)
    for _ in range(100):
        alerts.outcome(dead("permanent", "131026"), "dead", "text", "acme")
    alerts.queue_age("outbound-processed", 10_000)
    assert raised(metrics, "dead_rate") == raised(metrics, "queue_age") == 0


def test_queue_age_alerts_past_its_threshold() -> None:
    metrics = Metrics()
    alerts = alerter(metrics, Clock(), queue_age_seconds=300)
    alerts.queue_age("outbound-processed", 299)
    assert raised(metrics, "queue_age") == 0
    alerts.queue_age("outbound-processed", 301)
    alerts.queue_age("outbound-processed", 316)
    assert raised(metrics, "queue_age") == 1


class Receiver:
    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses = statuses
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def webhook_alerter(url: str, **kwargs: Any) -> AsyncIterator[tuple[Alerter, Metrics]]:
    metrics = Metrics()
    hook = Webhook(url, metrics, backoff=0.01, **kwargs)
    alerts = Alerter(metrics, webhook=hook)
    await alerts.start()
    try:
        yield alerts, metrics
    finally:
        await alerts.close(grace=1)


async def _until(check: Any, timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_webhook_gets_one_json_post_per_alert_without_a_token() -> None:
    receiver = Receiver([])
    async with serving(receiver) as url, webhook_alerter(url) as (alerts, _):
        text = "Invalid OAuth access token, Authorization: Bearer EAAJsecret123"
        for _ in range(20):
            alerts.outcome(dead("auth", "190", text), "dead", "text", "acme")
        await _until(lambda: alerts.webhook is not None and alerts.webhook.sent == 1)
    [body] = receiver.bodies
    assert body["alert"] == "auth"
    assert body["tenant"] == "acme"
    assert body["code"] == "190"
    assert body["count"] == 1
    assert body["severity"] == "error"
    assert "EAAJsecret123" not in orjson.dumps(body).decode()


async def test_a_failing_webhook_is_retried_with_backoff() -> None:
    receiver = Receiver([503, 500])
    async with serving(receiver) as url, webhook_alerter(url) as (alerts, metrics):
        alerts.outcome(dead("account"), "dead", "text", "acme")
        await _until(lambda: alerts.webhook is not None and alerts.webhook.sent == 1)
    assert len(receiver.bodies) == 3
    assert receiver.bodies[0] == receiver.bodies[2]
    assert metrics.registry.get_sample_value("wa_alert_webhook_failures_total") == 0


async def test_a_webhook_that_keeps_failing_is_given_up_after_three_retries() -> None:
    receiver = Receiver([503] * 10)
    async with serving(receiver) as url, webhook_alerter(url) as (alerts, metrics):
        with capture_logs() as logs:
            alerts.outcome(dead("account"), "dead", "text", "acme")
            await _until(
                lambda: metrics.registry.get_sample_value("wa_alert_webhook_failures_total") == 1
            )
    assert len(receiver.bodies) == 4  # the first POST and three retries
    [failed] = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert failed["error"] == "HTTP 503"
    assert url not in str(logs)  # the URL may hold a secret: never logged


async def test_a_refused_payload_is_not_retried() -> None:
    receiver = Receiver([400])
    async with serving(receiver) as url, webhook_alerter(url) as (alerts, metrics):
        alerts.outcome(dead("account"), "dead", "text", "acme")
        await _until(
            lambda: metrics.registry.get_sample_value("wa_alert_webhook_failures_total") == 1
        )
    assert len(receiver.bodies) == 1


async def test_a_stuck_webhook_never_blocks_and_its_overflow_is_dropped_and_logged_once() -> None:
    receiver = Receiver([], delay=30)
    async with serving(receiver) as url, webhook_alerter(url, queue_size=2) as (alerts, metrics):
        with capture_logs() as logs:
            started = asyncio.get_running_loop().time()
            for i in range(10):  # ten causes: ten alerts, the sender stuck on the first
                alerts.outcome(dead("account"), "dead", "text", f"tenant-{i}")
            elapsed = asyncio.get_running_loop().time() - started
            await _until(lambda: len(receiver.bodies) == 1)
    assert elapsed < 0.05
    assert raised(metrics, "account") == 10
    dropped = metrics.registry.get_sample_value("wa_alerts_dropped_total") or 0
    assert dropped >= 7  # one being posted, two queued, the rest dropped (+ left at close)
    assert len([e for e in logs if e["event"] == "alert_dropped"]) == 1


async def test_a_webhook_that_cannot_be_reached_counts_a_failure() -> None:
    metrics = Metrics()
    hook = Webhook("http://127.0.0.1:9/hook", metrics, backoff=0.01, timeout=1)
    alerts = Alerter(metrics, webhook=hook)
    await alerts.start()
    try:
        alerts.outcome(dead("account"), "dead", "text", "acme")
        await _until(
            lambda: metrics.registry.get_sample_value("wa_alert_webhook_failures_total") == 1
        )
    finally:
        await alerts.close(grace=1)
    assert "127.0.0.1:9" not in repr(hook)

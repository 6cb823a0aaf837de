"""Metrics, probes and alerts seen from outside: /metrics, /readyz and a webhook receiver.

The daemon serves HTTP only when ``WA_METRICS_PORT`` is not 0 (``make_settings`` turns it
off), so these tests pick a free port first (bind to port 0, read it, let it go).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from tests.conftest import AMQP_HOST
from wa_consumer.topology import declare

from .harness import broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observed(amqp_url: str, sandbox_url: str, **overrides: Any) -> Any:
    """Settings with the HTTP server on a free loopback port and a fast queue probe."""
    values: dict[str, Any] = {
        "metrics_port": free_port(),
        "metrics_host": "127.0.0.1",
        "metrics_queue_interval_seconds": 0.2,
    }
    values.update(overrides)
    return make_settings(amqp_url, sandbox_url, **values)


async def get(daemon: Any, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{daemon.metrics_port}{path}") as r,
    ):
        return r.status, await r.text()


async def scrape(daemon: Any) -> Samples:
    status, text = await get(daemon, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sent(sandbox: Any) -> list[str]:
    return [r["body"]["to"] for r in sandbox.state.requests() if r["outcome"] == "sent"]


class Receiver:
    """A webhook endpoint that records each POST; ``fail_first`` answers 503 that often."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[tuple[float, bytes]] = []
        self.fail_first = fail_first
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((time.monotonic(), await request.read()))
        if len(self.posts) <= self.fail_first:
            return web.Response(status=503)
        return web.json_response({"ok": True})

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.posts]


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[Receiver]:
    rec = Receiver(fail_first)
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def test_metrics_match_what_happened_in_a_scripted_run(vhost, sandbox, database) -> None:
    every_queue: list[str] = ["main", "wait", "dead"]  # the default peeks only "main"
    settings = observed(vhost, sandbox.url, database_url=database, metrics_queue_peek=every_queue)
    fine = [f"2786000000{i}" for i in range(5)]
    permanent = "15550000601"
    transient = ["15550010601", "15550010602"]  # fail twice each, then sent
    first = text_message("acme", fine[0])
    async with running(settings) as daemon, broker_for(settings) as broker:
        await broker.publish(first)
        for to in [*fine[1:], permanent, *transient]:
            await broker.publish(text_message("acme", to))
        await wait_for(lambda: _counts(daemon, sent=7, dead=1, retry=4))
        await broker.publish(first)  # same internalId again: a duplicate, not sent
        await wait_for(lambda: _counts(daemon, duplicate=1))

        async def probed() -> Samples:
            """A probe round after the run: the one dead message, nothing anywhere else."""
            s = await scrape(daemon)
            waits = daemon.topology.retry_queues.values()
            depths = [value(s, "wa_queue_depth", queue=q, role="wait") for q in waits]
            main = ("wa_queue_depth", frozenset({("queue", settings.queue), ("role", "main")}))
            dead = value(s, "wa_queue_depth", queue=settings.dead_letter_queue, role="dead")
            return s if dead == 1 and main in s and s[main] == 0 and not any(depths) else {}

        m = await wait_for(probed)

    text = {"type": "text"}
    assert value(m, "wa_messages_total", outcome="sent", **text) == 7
    assert value(m, "wa_messages_total", outcome="retry", **text) == 4
    assert value(m, "wa_messages_total", outcome="dead", **text) == 1
    assert value(m, "wa_messages_total", outcome="duplicate", **text) == 1
    assert value(m, "wa_retries_total", delay="200ms") == 2
    assert value(m, "wa_retries_total", delay="400ms") == 2
    assert value(m, "wa_dead_total", category="permanent") == 1
    assert sum(v for (name, _), v in m.items() if name == "wa_dead_total") == 1
    assert value(m, "wa_duplicates_total") == 1
    assert value(m, "wa_ambiguous_sends_total") == 0
    assert value(m, "wa_graph_latency_seconds_count") == 12  # 7 sent + 4 retried + 1 dead
    # Every delivery that reaches the limit looks its credentials up: the 12 sends and the
    # duplicate (the claim that spots it comes after the limit).
    assert (
        value(m, "wa_credential_cache_hits_total") + value(m, "wa_credential_cache_misses_total")
        == 13
    )
    assert value(m, "wa_credential_fetches_total") == 1  # concurrent misses share one fetch
    assert value(m, "wa_credential_fetch_errors_total") == 0
    assert value(m, "wa_in_flight_messages") == 0
    assert value(m, "wa_broker_connected") == value(m, "wa_ledger_up") == value(m, "wa_ready") == 1
    assert value(m, "wa_queue_depth", queue=settings.queue, role="main") == 0
    assert value(m, "wa_queue_depth", queue=settings.dead_letter_queue, role="dead") == 1
    dead_age = value(
        m, "wa_queue_oldest_age_seconds", queue=settings.dead_letter_queue, role="dead"
    )
    assert 0 <= dead_age < 60
    for name in daemon.topology.retry_queues.values():
        assert value(m, "wa_queue_oldest_age_seconds", queue=name, role="wait") == 0  # empty
    assert sorted(sent(sandbox)) == sorted([*fine, *transient])
    # Bounded labels: nothing per message or per recipient.
    labels = {k for (_, ls) in m for k, _ in ls}
    assert not labels & {"to", "recipient", "internal_id", "tenant", "wamid"}


async def _counts(daemon: Any, **expected: int) -> bool:
    counts = daemon.pipeline.counts
    return all(counts[k] >= n for k, n in expected.items())


async def test_timeout_after_sending_counts_one_ambiguous_send(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url, http_timeout_seconds=0.5)
    async with running(settings) as daemon, broker_for(settings) as broker:
        await broker.publish(text_message("acme", "15550070601"))  # no answer once
        await wait_for(lambda: _counts(daemon, sent=1))
    assert daemon.metrics_port is None  # WA_METRICS_PORT=0: no HTTP server, metrics still kept
    registry = daemon.metrics.registry
    assert registry.get_sample_value("wa_ambiguous_sends_total") == 1
    assert registry.get_sample_value("wa_retries_total", {"delay": "200ms"}) == 1
    assert registry.get_sample_value("wa_graph_latency_seconds_count") == 2


async def test_head_age_of_a_backlog_is_read_and_an_old_head_alerts(
    vhost, sandbox, database
) -> None:
    sandbox.state.configure(latency={"ms": 150})
    async with receiver() as hook:
        settings = observed(
            vhost,
            sandbox.url,
            database_url=database,
            prefetch=1,
            alert_queue_age_seconds=0.5,
            alert_webhook_url=hook.url,
        )
        recipients = [f"278610000{i:02d}" for i in range(20)]
        async with broker_for(settings) as broker:
            await declare(broker.connection, daemon_topology(settings))
            for to in recipients:
                await broker.publish(text_message("acme", to))
            async with running(settings) as daemon:

                async def aged() -> Samples:
                    m = await scrape(daemon)
                    age = value(m, "wa_queue_oldest_age_seconds", queue=settings.queue, role="main")
                    return m if age > 0.5 else {}

                m = await wait_for(aged)
                assert value(m, "wa_queue_depth", queue=settings.queue, role="main") > 0
                await wait_for(lambda: _all(sandbox, recipients), timeout=30)
                await wait_for(lambda: _posted(hook, 1))
    # The peek hands the head back: every message sent, each once. (A consumer may get the
    # next message while the head is held for a moment; the probe test shows the queue itself
    # keeps its order.)
    assert sorted(sent(sandbox)) == recipients
    [alert] = [b for b in hook.bodies() if b["alert"] == "queue_age"]
    assert alert["code"] == settings.queue
    assert alert["value"] >= 0.5  # seconds, to one decimal


async def test_the_probe_peeks_heads_without_reordering_or_losing_a_message(vhost, sandbox) -> None:
    from wa_consumer.metrics import Metrics
    from wa_consumer.probe import QueueProbe, WatchedQueue

    settings = make_settings(vhost, sandbox.url)
    metrics = Metrics()
    async with broker_for(settings) as broker:
        await declare(broker.connection, daemon_topology(settings))
        messages = [text_message("acme", f"2786400000{i}") for i in range(5)]
        for message in messages:
            await broker.publish(message)  # stamped with the time of publishing
        watched = [WatchedQueue(settings.queue, "main", peek=True)]
        probe = QueueProbe(broker.connection, watched, metrics)
        for _ in range(3):
            assert await probe.sample()
        kept = await broker.drain(settings.queue)
    labels = {"queue": settings.queue, "role": "main"}
    assert metrics.registry.get_sample_value("wa_queue_depth", labels) == 5
    assert (
        0 <= (metrics.registry.get_sample_value("wa_queue_oldest_age_seconds", labels) or -1) < 60
    )
    ids = [m["metadata"]["internalId"] for m in messages]
    assert [m.message_id for m in kept] == ids  # same order, none lost
    assert [m.redelivered for m in kept] == [True, False, False, False, False]  # only the head


def daemon_topology(settings: Any) -> Any:
    from wa_consumer.topology import Topology

    return Topology.from_settings(settings)


async def _all(sandbox: Any, recipients: list[str]) -> bool:
    return set(sent(sandbox)) >= set(recipients)


async def _posted(hook: Receiver, n: int) -> bool:
    return len(hook.posts) >= n


async def test_readyz_flips_to_503_when_the_broker_connection_is_cut(vhost, sandbox) -> None:
    host, port = AMQP_HOST.rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    direct = observed(vhost, sandbox.url)
    settings = direct.model_copy(
        update={"amqp_url": str(URL(direct.amqp_url).with_port(proxy.port))}
    )
    try:
        async with running(settings) as daemon:
            status, body = await get(daemon, "/readyz")
            assert status == 200, body
            assert orjson.loads(body)["checks"] == {"broker": "ok", "consuming": "ok"}

            proxy.down()
            status, body = await wait_for(lambda: _readyz(daemon, 503))
            assert orjson.loads(body)["failed"] == ["broker"]
            assert (await get(daemon, "/healthz"))[0] == 200  # alive all the same
            assert value(await scrape(daemon), "wa_broker_connected") == 0

            await proxy.accept()
            await wait_for(lambda: _readyz(daemon, 200), timeout=30)
            assert value(await scrape(daemon), "wa_broker_connected") == 1
            async with broker_for(direct) as broker:  # and it consumes again
                await broker.publish(text_message("acme", "27863000001"))
                await wait_for(lambda: _all(sandbox, ["27863000001"]))
    finally:
        await proxy.close()


async def _readyz(daemon: Any, status: int) -> tuple[int, str] | None:
    got = await get(daemon, "/readyz")
    return got if got[0] == status else None


async def test_readyz_flips_to_503_when_the_ledger_is_unreachable(vhost, sandbox, database) -> None:
    url = URL(database)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    settings = observed(vhost, sandbox.url, database_url=str(url.with_port(proxy.port)))
    try:
        async with running(settings) as daemon:
            status, body = await get(daemon, "/readyz")
            assert status == 200, body
            assert orjson.loads(body)["checks"]["ledger"] == "ok"

            proxy.down()
            _, body = await wait_for(lambda: _readyz(daemon, 503))
            assert "ledger" in orjson.loads(body)["failed"]
            await wait_for(lambda: _gauge(daemon, "wa_ledger_up", 0))

            await proxy.accept()
            await wait_for(lambda: _readyz(daemon, 200))
            await wait_for(lambda: _gauge(daemon, "wa_ledger_up", 1))
    finally:
        await proxy.close()


async def _gauge(daemon: Any, name: str, expected: float) -> bool:
    return value(await scrape(daemon), name) == expected


async def test_an_account_error_hitting_20_messages_fires_one_webhook_alert(vhost, sandbox) -> None:
    async with receiver() as hook:
        settings = observed(vhost, sandbox.url, alert_webhook_url=hook.url)
        async with running(settings) as daemon, broker_for(settings) as broker:
            for i in range(20):
                await broker.publish(text_message("acme", f"155500206{i:02d}"))  # 131031
            await broker.publish(text_message("globex", "15550020700"))  # another cause
            await broker.dead(21)
            await wait_for(lambda: _posted(hook, 2))
            await asyncio.sleep(0.5)  # room for a wrong third one to arrive
            m = await scrape(daemon)
    bodies = sorted(hook.bodies(), key=lambda b: b["tenant"])
    assert [(b["alert"], b["tenant"], b["code"], b["count"]) for b in bodies] == [
        ("account", "acme", "131031", 1),
        ("account", "globex", "131031", 1),
    ]
    assert value(m, "wa_alerts_total", alert="account") == 2
    assert value(m, "wa_dead_total", category="account") == 21
    dlq = frozenset({("queue", settings.dead_letter_queue), ("role", "dead")})
    assert ("wa_queue_depth", dlq) in m  # its depth is read all the same
    ages = {dict(labels)["role"] for name, labels in m if name == "wa_queue_oldest_age_seconds"}
    assert ages <= {"main"}  # by default no peek at the DLQ (a reader's basic.get must see all)
    for _, raw in hook.posts:  # no token, whatever the cause text said
        assert sandbox.state.token("acme").encode() not in raw
        assert sandbox.state.token("globex").encode() not in raw


async def test_webhook_failures_are_retried_and_never_hold_up_delivery(vhost, sandbox) -> None:
    async with receiver(fail_first=2) as hook:
        settings = observed(vhost, sandbox.url, alert_webhook_url=hook.url)
        recipients = [f"278620000{i:02d}" for i in range(30)]
        async with running(settings) as daemon, broker_for(settings) as broker:
            await broker.publish(text_message("initech", "27862000100"))  # tenant suspended
            for to in recipients:
                await broker.publish(text_message("acme", to))
            await wait_for(lambda: _all(sandbox, recipients))
            delivered_at = time.monotonic()
            await wait_for(lambda: _posted(hook, 3), timeout=10)
            m = await scrape(daemon)
    # Two refusals then an accept, the same alert each time; deliveries never waited for it.
    first, *_, last = hook.bodies()
    assert len(hook.posts) == 3
    assert first == last
    assert first["alert"] == "tenant_suspended"
    assert first["tenant"] == "initech"
    assert hook.posts[-1][0] > delivered_at
    assert value(m, "wa_alert_webhook_failures_total") == 0
    assert value(m, "wa_alerts_dropped_total") == 0


async def test_a_dead_letter_rate_over_the_threshold_fires_one_alert(vhost, sandbox) -> None:
    async with receiver() as hook:
        settings = observed(vhost, sandbox.url, alert_webhook_url=hook.url, alert_dead_rate=5)
        async with running(settings) as daemon, broker_for(settings) as broker:
            for i in range(12):
                await broker.publish(text_message("acme", f"155500006{i:02d}"))  # permanent
            await broker.dead(12)
            await wait_for(lambda: _posted(hook, 1))
            await asyncio.sleep(0.5)
            m = await scrape(daemon)
    [alert] = hook.bodies()
    assert alert["alert"] == "dead_rate"
    assert alert["value"] == 6  # the sixth death within a minute crossed 5/min
    assert value(m, "wa_alerts_total", alert="dead_rate") == 1
    assert value(m, "wa_alerts_total", alert="account") == 0

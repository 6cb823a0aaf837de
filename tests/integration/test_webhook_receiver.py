"""``wa-consumer webhook`` seen from Meta's side and from the queue (SPEC §13).

The receiver runs in the test's event loop on a free loopback port, against the real
RabbitMQ; what it accepted is read back from ``inbound-webhooks`` byte for byte.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from wa_consumer.cli import app
from wa_consumer.errors import SettingsError, WaConsumerError
from wa_consumer.settings import Settings
from wa_consumer.webhooks.receiver import WebhookReceiver
from wa_consumer.webhooks.signature import HEADER, sign

from .harness import Broker, broker_for, make_settings, wait_for
from .proxy import TcpProxy
from .webhook_client import NO_ANSWER, burst, post_signed

pytestmark = pytest.mark.integration

NO_SANDBOX = "http://127.0.0.1:9"
SECRET = "app-secret-of-app-one"
OTHER = "app-secret-of-app-two"
TOKEN = "verify-token-0f3a9c"


def webhook_settings(amqp_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_app_secret": SECRET,
        "webhook_verify_token": TOKEN,
        "webhook_host": "127.0.0.1",
        "webhook_port": 0,
        "webhook_publish_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return make_settings(amqp_url, NO_SANDBOX, **values)


def status_body(n: int | str = 0) -> bytes:
    """A status webhook as Meta sends it (unusual spacing and text kept: bytes must match)."""
    value = {"statuses": [{"id": f"wamid.{n}", "status": "delivered", "recipient_id": "27"}]}
    entry = {"id": "waba", "changes": [{"field": "messages", "value": value}]}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


@dataclass
class Receiving:
    receiver: WebhookReceiver
    base: str
    http: aiohttp.ClientSession
    broker: Broker
    settings: Settings

    @property
    def url(self) -> str:
        return self.base + self.settings.webhook_path

    async def post(self, body: bytes, secret: str | None = SECRET) -> int:
        return await post_signed(self.http, self.url, body, secret.encode() if secret else None)

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        async with self.http.get(self.base + path, params=params) as response:
            return response.status, await response.text()

    async def queued(self) -> list[bytes]:
        return [m.body for m in await self.broker.drain(self.settings.webhook_queue)]

    async def metric(self, result: str) -> float:
        _, text = await self.get("/metrics")
        line = f'wa_webhooks_total{{result="{result}"}} '
        return next(float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line))


@asynccontextmanager
async def receiving(settings: Settings, direct: Settings | None = None) -> AsyncIterator[Receiving]:
    """A started receiver; ``direct``: the settings the test reads the queue with."""
    receiver = WebhookReceiver(settings)
    port = await receiver.start()
    try:
        async with broker_for(direct or settings) as broker, aiohttp.ClientSession() as http:
            yield Receiving(receiver, f"http://127.0.0.1:{port}", http, broker, settings)
    finally:
        await receiver.close()


# -- Meta's subscription check ---------------------------------------------------------------


async def test_subscription_check_with_the_token_echoes_the_challenge(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        status, text = await r.get(
            "/webhook",
            **{"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "1158201444"},
        )
        assert (status, text) == (200, "1158201444")


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": TOKEN[:-1], "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": TOKEN},
        {"hub.mode": "subscribe", "hub.verify_token": "\udcff", "hub.challenge": "1"},
    ],
)
async def test_subscription_check_with_a_wrong_token_or_mode_is_refused(vhost, query) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        status, text = await r.get("/webhook", **query)
        assert status == 403
        assert "1" not in text


async def test_subscription_check_without_a_configured_token_is_refused(vhost) -> None:
    async with receiving(webhook_settings(vhost, webhook_verify_token=None)) as r:
        query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "7"}
        assert (await r.get("/webhook", **query))[0] == 403


# -- signed bodies -----------------------------------------------------------------------------


async def test_signed_body_is_queued_byte_for_byte_before_its_200(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        body = b'{ "object" : "whatsapp_business_account",\n "entry": [], "t": "caf\xc3\xa9" }'
        assert await r.post(body) == 200
        # The 200 came after the confirm: the body is in the queue now, no waiting.
        [message] = await r.broker.drain(r.settings.webhook_queue)
        assert message.body == body
        assert message.delivery_mode == 2  # persistent
        assert message.content_type == "application/json"
        assert await r.metric("accepted") == 1


async def test_bad_missing_or_other_app_signature_is_401_and_nothing_is_queued(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        body = status_body()
        with capture_logs() as logs:
            assert await r.post(body, secret="not-the-secret") == 401
            assert await r.post(body, secret=OTHER) == 401  # another app's, not configured here
            assert await r.post(body, secret=None) == 401
            for bad in ("sha256=", "sha256=zz", sign(body, SECRET.encode())[:-1], "é"):
                async with r.http.post(r.url, data=body, headers={HEADER: bad}) as response:
                    assert response.status == 401
            signed_other = sign(body, SECRET.encode())
            async with r.http.post(r.url, data=body + b" ", headers={HEADER: signed_other}) as x:
                assert x.status == 401  # signature of another body
        assert await r.queued() == []
        assert await r.metric("bad_signature") == 8
        assert await r.metric("accepted") == 0
        # A flood is counted, not logged line by line; no secret in what is logged.
        warnings = [e for e in logs if e["event"] == "webhook_bad_signature"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["remote"] == "127.0.0.1"
        assert SECRET not in repr(logs) and TOKEN not in repr(logs)


async def test_each_configured_apps_signature_is_accepted(vhost) -> None:
    third = "app-secret-of-app-three"
    settings = webhook_settings(vhost, webhook_app_secret=None, webhook_app_secrets=[OTHER, third])
    async with receiving(settings) as r:
        assert await r.post(status_body("a"), secret=OTHER) == 200
        assert await r.post(status_body("b"), secret=third) == 200
        assert await r.post(status_body("c"), secret=SECRET) == 401  # not configured here
        assert await r.queued() == [status_body("a"), status_body("b")]


async def test_body_over_the_limit_is_413_and_not_queued(vhost) -> None:
    async with receiving(webhook_settings(vhost, webhook_max_body_bytes=1024)) as r:
        big = b'{"pad": "' + b"x" * 1100 + b'"}'
        assert await r.post(big) == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to refuse it by
            for _ in range(4):
                yield b"x" * 400

        headers = {HEADER: sign(b"x" * 1600, SECRET.encode())}
        async with r.http.post(r.url, data=chunked(), headers=headers) as response:
            assert response.status == 413
        exactly = b"y" * 1024
        assert await r.post(exactly) == 200  # the limit itself is allowed
        assert await r.queued() == [exactly]
        assert await r.metric("too_large") == 2


async def test_empty_signed_body_is_400(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        assert await r.post(b"") == 400
        assert await r.queued() == []
        assert await r.metric("bad_request") == 1


# -- start-up, probes, stop ----------------------------------------------------------------------


async def test_receiver_refuses_to_start_without_an_app_secret(vhost, monkeypatch) -> None:
    with pytest.raises(SettingsError, match="WA_WEBHOOK_APP_SECRET"):
        WebhookReceiver(webhook_settings(vhost, webhook_app_secret=None))
    for name in ("WA_WEBHOOK_APP_SECRET", "WA_WEBHOOK_APP_SECRETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")  # no .env of a developer's
    result = CliRunner().invoke(app, ["webhook"], env={"WA_AMQP_URL": vhost})
    assert result.exit_code == 2
    assert "WA_WEBHOOK_APP_SECRET" in result.output


async def test_unreachable_broker_at_start_is_one_line_without_the_password(vhost) -> None:
    settings = webhook_settings("amqp://guest:s3cr3tpw@127.0.0.1:9/", startup_wait_seconds=0)
    receiver = WebhookReceiver(settings)
    with pytest.raises(WaConsumerError) as info:
        await receiver.start()
    line = str(info.value)
    assert "cannot connect to RabbitMQ" in line
    assert "s3cr3tpw" not in line and "\n" not in line
    assert receiver.port is None


async def test_probes_and_metrics(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        assert (await r.get("/healthz"))[0] == 200
        status, text = await r.get("/readyz")
        assert status == 200
        assert orjson.loads(text)["checks"] == {"broker": "ok", "channel": "ok"}
        _, text = await r.get("/metrics")
        assert "wa_webhook_ready 1.0" in text
        assert 'wa_webhooks_total{result="unavailable"} 0.0' in text
        assert SECRET not in text and TOKEN not in text


async def test_run_stops_on_request_after_requests_in_flight_are_answered(vhost) -> None:
    settings = webhook_settings(vhost)
    receiver = WebhookReceiver(settings)
    task = asyncio.create_task(receiver.run())
    await wait_for(lambda: _true(receiver.port is not None and receiver.ready), timeout=8)
    url = f"http://127.0.0.1:{receiver.port}{settings.webhook_path}"
    bodies = [status_body(f"stop-{i}") for i in range(300)]
    posting = asyncio.create_task(burst(url, bodies, SECRET.encode(), concurrency=50))
    registry = receiver.metrics.registry
    accepted = {"result": "accepted"}
    await wait_for(
        lambda: _true(bool(registry.get_sample_value("wa_webhooks_total", accepted))), timeout=8
    )
    receiver.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    statuses = await posting
    answered = [body for body, status in zip(bodies, statuses, strict=True) if status == 200]
    assert answered  # some got in before the stop
    assert set(statuses) <= {200, NO_ANSWER}  # in flight: finished; after: refused, never 503
    async with broker_for(settings) as broker:
        queued = {m.body for m in await broker.drain(settings.webhook_queue)}
    assert set(answered) <= queued


async def _true(value: bool) -> bool:
    return value


# -- the broker away ----------------------------------------------------------------------------


async def test_broker_cut_answers_503_then_recovers_and_nothing_answered_200_is_lost(
    vhost,
) -> None:
    proxy = await TcpProxy.before(vhost, "rabbitmq").start()
    direct = webhook_settings(vhost)
    through = direct.model_copy(update={"amqp_url": proxy.route(vhost)})
    answers: list[tuple[bytes, int]] = []
    stop = asyncio.Event()
    try:
        async with receiving(through, direct) as r:

            async def keep_posting(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    body = status_body(f"{worker}-{n}-{uuid.uuid4().hex[:6]}")
                    answers.append((body, await r.post(body)))
                    n += 1
                    await asyncio.sleep(0.005)  # pacing, not waiting for anything

            async def saw(status: int, after: int = 0) -> bool:
                return any(s == status for _, s in answers[after:])

            workers = [asyncio.create_task(keep_posting(i)) for i in range(8)]
            await wait_for(lambda: saw(200), timeout=5)
            mark = len(answers)
            fault = proxy.down()
            assert fault.cut >= 1
            await wait_for(lambda: saw(503, mark), timeout=5)
            status, text = await r.get("/readyz")
            assert status == 503
            assert "broker" in orjson.loads(text)["failed"]
            await proxy.up(fault)
            await wait_for(lambda: _ready(r), timeout=8)
            mark = len(answers)
            await wait_for(lambda: saw(200, mark), timeout=5)
            stop.set()
            await asyncio.gather(*workers)

            statuses = [s for _, s in answers]
            assert set(statuses) <= {200, 503}
            assert await r.metric("unavailable") == statuses.count(503)
            queued = set(await r.queued())
            answered = {body for body, s in answers if s == 200}
            assert answered <= queued  # a 503 may be queued too (Meta's retry is a repeat)
    finally:
        stop.set()
        await proxy.close()


async def _ready(r: Receiving) -> bool:
    return (await r.get("/readyz"))[0] == 200


# -- throughput ---------------------------------------------------------------------------------


async def test_burst_of_2000_signed_posts_are_all_queued(vhost) -> None:
    async with receiving(webhook_settings(vhost)) as r:
        bodies = [status_body(f"burst-{i}") for i in range(2000)]
        statuses = await burst(r.url, bodies, SECRET.encode())
        assert statuses == [200] * len(bodies)
        assert await r.broker.count(r.settings.webhook_queue) == len(bodies)
        assert sorted(await r.queued()) == sorted(bodies)


async def test_past_the_concurrency_limit_a_request_is_503_before_its_body_is_read(
    vhost,
) -> None:
    async with receiving(webhook_settings(vhost, webhook_max_concurrent=1)) as r:
        release = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:  # holds the one slot until released
            yield b'{"object": '
            await release.wait()
            yield b'"x"}'

        body = b'{"object": "x"}'
        headers = {HEADER: sign(body, SECRET.encode())}
        held = asyncio.create_task(r.http.post(r.url, data=slow(), headers=headers))
        await wait_for(lambda: _true(r.receiver._in_flight == 1))
        assert await r.post(status_body("busy")) == 503
        release.set()
        async with await held as response:
            assert response.status == 200  # the held one was signed for what it sent
        assert await r.post(status_body("after")) == 200


async def _true(value: bool) -> bool:
    return value

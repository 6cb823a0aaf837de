"""Start-up waits for RabbitMQ and PostgreSQL (``WA_STARTUP_WAIT_SECONDS``), as a process.

The servers are taken away by a ``TcpProxy`` that refuses connections, then accepts again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest

from wa_consumer.settings import Settings
from wa_consumer.webhooks.receiver import WebhookReceiver

from .harness import broker_for, make_settings, text_message, wait_for
from .proxy import TcpProxy
from .test_process import start_daemon

pytestmark = pytest.mark.integration


async def _lines_until(
    proc: asyncio.subprocess.Process, event: str, seen: list[dict[str, Any]], timeout: float = 20
) -> None:
    """Read the daemon's log lines into ``seen`` until one is ``event``."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while line := await proc.stdout.readline():
            if line.startswith(b"{"):
                seen.append(orjson.loads(line))
                if seen[-1].get("event") == event:
                    return
    raise AssertionError(f"daemon exited before {event!r}: {seen[-3:]}")


async def _proxied(settings: Settings, which: str, proxy: TcpProxy) -> Settings:
    field = "amqp_url" if which == "rabbitmq" else "database_url"
    return settings.model_copy(update={field: proxy.route(getattr(settings, field))})


@pytest.mark.parametrize("which", ["rabbitmq", "postgresql"])
async def test_daemon_started_before_its_server_waits_then_consumes(
    vhost, sandbox, database, which: str
) -> None:
    direct = make_settings(vhost, sandbox.url, database_url=database)
    target = direct.amqp_url if which == "rabbitmq" else database
    proxy = await TcpProxy.before(target, which).start()
    settings = await _proxied(direct, which, proxy)
    fault = proxy.down()
    proc = await start_daemon(settings)
    seen: list[dict[str, Any]] = []
    try:
        await _lines_until(proc, "waiting_for_dependency", seen)
        await asyncio.sleep(2)  # the server comes up a while after the daemon
        await proxy.up(fault)
        await _lines_until(proc, "consuming", seen, timeout=30)
        waits = [e for e in seen if e.get("event") == "waiting_for_dependency"]
        assert waits and all(e["dependency"] == which for e in waits)
        assert [e["attempt"] for e in waits] == list(range(1, len(waits) + 1))
        assert all(e["next_delay_s"] > 0 and e["error"] for e in waits)
        assert not [e for e in seen if "error when creating transport" in str(e)]
        async with broker_for(direct) as broker:
            await broker.publish(text_message("acme", "27850000001"))
        await wait_for(lambda: _sent(sandbox, "27850000001"), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()


async def _sent(sandbox: Any, to: str) -> bool:
    return any(r["body"]["to"] == to and r["outcome"] == "sent" for r in sandbox.state.requests())


@pytest.mark.parametrize("which", ["rabbitmq", "postgresql"])
async def test_a_server_still_down_after_the_bound_is_one_line_and_exit_4(
    vhost, sandbox, database, which: str
) -> None:
    direct = make_settings(vhost, sandbox.url, database_url=database, startup_wait_seconds=1)
    target = direct.amqp_url if which == "rabbitmq" else database
    proxy = await TcpProxy.before(target, which).start()
    proxy.down()
    try:
        started = time.monotonic()
        proc = await start_daemon(await _proxied(direct, which, proxy))
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        took = time.monotonic() - started
    finally:
        await proxy.close()
    assert proc.returncode == 4  # unreachable (the CLI's exit codes)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    what = "cannot connect to RabbitMQ" if which == "rabbitmq" else "cannot open the ledger"
    assert what in lines[0] and "WA_STARTUP_WAIT_SECONDS=1" in lines[0]
    assert "guest:guest" not in lines[0]
    assert b"waiting_for_dependency" in out
    assert took < 8, took  # the interpreter's start, one second of waiting, the last attempt


@pytest.mark.parametrize(
    ("which", "wrong"),
    [
        ("rabbitmq", {"amqp_url": "amqp://guest:not-the-password@127.0.0.1:5672/"}),
        ("rabbitmq", {"amqp_url": "amqp://nobody:s3cr3tpw@127.0.0.1:5672/"}),
        ("postgresql", {"database_url": "postgresql://nobody:s3cr3tpw@127.0.0.1:5432/postgres"}),
        ("postgresql", {"database_url": "no such database"}),
    ],
)
async def test_a_wrong_user_password_or_database_fails_at_once(
    vhost, sandbox, database, which: str, wrong: dict[str, str]
) -> None:
    if wrong.get("database_url") == "no such database":
        wrong = {"database_url": database.rsplit("/", 1)[0] + "/wa_no_such_database"}
    settings = make_settings(vhost, sandbox.url, database_url=database).model_copy(update=wrong)
    assert settings.startup_wait_seconds == 60  # the default: would wait, were it waiting
    started = time.monotonic()
    proc = await start_daemon(settings)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    took = time.monotonic() - started
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert ("RabbitMQ" if which == "rabbitmq" else "ledger") in lines[0]
    assert "s3cr3tpw" not in lines[0] and "not-the-password" not in lines[0]
    assert "WA_STARTUP_WAIT_SECONDS" not in lines[0]
    assert b"waiting_for_dependency" not in out
    assert took < 8, took


async def test_sigterm_while_waiting_exits_0_at_once(vhost, sandbox) -> None:
    direct = make_settings(vhost, sandbox.url)
    proxy = await TcpProxy.before(direct.amqp_url, "rabbitmq").start()
    proxy.down()
    proc = await start_daemon(await _proxied(direct, "rabbitmq", proxy))
    try:
        await _lines_until(proc, "waiting_for_dependency", [])
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert time.monotonic() - stopped < 2
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()
    assert proc.returncode == 0, err
    assert b'"startup_stopped"' in out and not err.strip()


async def test_webhook_receiver_waits_for_the_broker_too(vhost) -> None:
    direct = make_settings(
        vhost, "http://127.0.0.1:9", webhook_app_secret="s", webhook_host="127.0.0.1"
    )
    proxy = await TcpProxy.before(direct.amqp_url, "rabbitmq").start()
    fault = proxy.down()
    receiver = WebhookReceiver(await _proxied(direct, "rabbitmq", proxy))
    try:
        starting = asyncio.create_task(receiver.start(port=0))
        await asyncio.sleep(1.5)
        assert not starting.done() and receiver.port is None
        await proxy.up(fault)
        assert await asyncio.wait_for(starting, 15) > 0
        assert receiver.ready
    finally:
        await receiver.close()
        await proxy.close()

"""The daemon as an operator runs it: a process, signals, exit codes, a broker that drops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aio_pika
import pytest
from yarl import URL

from wa_consumer.settings import Settings

from .harness import broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None or name in ("static_credentials", "tenant_service_token"):
            continue
        env[f"WA_{name.upper()}"] = value if isinstance(value, str) else _json(value)
    env.update(extra)
    return env


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


async def start_daemon(settings: Settings, **extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wa_consumer",
        "run",
        env=env_for(settings, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_consuming(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while line := await proc.stdout.readline():
            if b'"consuming"' in line:
                break
        else:
            raise AssertionError("daemon exited before consuming")
    # keep draining stdout so the daemon never blocks on a full pipe
    asyncio.get_running_loop().create_task(_drain(proc.stdout))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def sent_recipients(sandbox: Any) -> list[str]:
    return [r["body"]["to"] for r in sandbox.state.requests() if r["outcome"] == "sent"]


@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_with_messages_in_flight_loses_none(vhost, sandbox, signals: int) -> None:
    sandbox.state.configure(latency={"ms": 300})
    settings = make_settings(vhost, sandbox.url, prefetch=20, shutdown_grace_seconds=10)
    recipients = [f"2783000{i:04d}" for i in range(100)]
    proc = await start_daemon(settings)
    await wait_consuming(proc)
    async with broker_for(settings) as broker:
        for to in recipients:
            await broker.publish(text_message("acme", to))
        await wait_for(lambda: _some_sent(sandbox, 5))
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0, code
        sent_before = sent_recipients(sandbox)
        left = await broker.count(settings.queue)
        if signals == 1:
            # Graceful: what started was finished, the rest is back in the queue; nothing doubled.
            assert len(sent_before) == len(set(sent_before))
            assert len(sent_before) + left == 100, (len(sent_before), left)
        # Either way a new daemon delivers everything that was not sent.
        sandbox.state.configure(latency={"ms": 0})
        async with running(settings):
            await wait_for(lambda: _all_sent(sandbox, recipients), timeout=30)
    assert await _count(settings, settings.dead_letter_queue) == 0


async def _some_sent(sandbox: Any, n: int) -> bool:
    return len(sent_recipients(sandbox)) >= n


async def _all_sent(sandbox: Any, recipients: list[str]) -> bool:
    return set(sent_recipients(sandbox)) >= set(recipients)


async def _count(settings: Settings, queue: str) -> int:
    async with broker_for(settings) as broker:
        return await broker.count(queue)


async def test_topology_mismatch_exits_with_one_clear_line(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(settings.queue, durable=True, arguments={"x-message-ttl": 1000})
    proc = await start_daemon(settings)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert settings.queue in lines[0] and "x-message-ttl" in lines[0]
    assert "1000" in lines[0] and "86400000" in lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("WA_PREFETCH", "lots"), ("WA_RETRY_DELAYS", "[1, oops]"), ("WA_LOG_FORMAT", "xml")],
)
async def test_bad_setting_stops_startup_with_one_line_naming_it(
    vhost, sandbox, name: str, value: str
) -> None:
    settings = make_settings(vhost, sandbox.url)
    proc = await start_daemon(settings, **{name: value})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and name in lines[0], lines


async def test_consuming_resumes_after_the_broker_connection_drops(vhost, sandbox) -> None:
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    direct = make_settings(vhost, sandbox.url)
    via_proxy = URL(direct.amqp_url).with_port(proxy.port)
    settings = direct.model_copy(update={"amqp_url": str(via_proxy)})
    try:
        async with running(settings), broker_for(direct) as broker:
            await broker.publish(text_message("acme", "27840000001"))
            await wait_for(lambda: _all_sent(sandbox, ["27840000001"]))
            proxy.cut()
            await asyncio.sleep(0.5)
            await broker.publish(text_message("acme", "27840000002"))
            await wait_for(lambda: _all_sent(sandbox, ["27840000002"]), timeout=30)
    finally:
        await proxy.close()


async def run_cli(settings: Settings, *args: str, **extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wa_consumer", *args,
        env=env_for(settings, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_topology_check_then_declare_then_check(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    code, _, err = await run_cli(settings, "topology", "declare", "--check")
    assert code == 1
    assert "does not exist" in err
    assert (await run_cli(settings, "topology", "declare"))[0] == 0
    code, out, _ = await run_cli(settings, "topology", "declare", "--check")
    assert code == 0
    assert "as configured" in out
    async with broker_for(settings) as broker:  # the webhook queues are checked too (§13)
        channel = await broker.connection.channel()
        await channel.queue_delete(settings.webhook_queue)
        await channel.close()
    code, _, err = await run_cli(settings, "topology", "declare", "--check")
    assert code == 1
    assert settings.webhook_queue in err


async def test_no_token_appears_in_logs_or_dead_letter_headers(vhost, sandbox) -> None:
    """190 then refetch, an auth failure to the end, and a dead message: no token anywhere."""
    settings = make_settings(vhost, sandbox.url, log_level="DEBUG")
    old = sandbox.state.token("acme")
    proc = await start_daemon(settings)
    assert proc.stdout is not None
    async with broker_for(settings) as broker:
        async with asyncio.timeout(20):
            lines = [await proc.stdout.readline()]
            while b'"consuming"' not in lines[-1]:
                lines.append(await proc.stdout.readline())
        await broker.publish(text_message("acme", "27860000001"))
        await wait_for(lambda: _all_sent(sandbox, ["27860000001"]))
        sandbox.state.rotate("acme")
        await broker.publish(text_message("acme", "27860000002"))
        await broker.publish(text_message("acme", "15550000001"))  # dead: permanent
        await wait_for(lambda: _all_sent(sandbox, ["27860000002"]))
        [dead] = await broker.dead(1)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = b"".join(lines).decode() + out.decode() + err.decode() + repr(dead.headers)
    assert '"outcome":"sent"' in text  # the log was captured
    for token in (old, sandbox.state.token("acme")):
        assert token not in text


async def test_an_unreachable_broker_is_one_line_of_ours(vhost, sandbox) -> None:
    """No raw line of the AMQP library before ours, and the exit code says unreachable."""
    settings = make_settings("amqp://guest:guest@127.0.0.1:1/", sandbox.url)
    for args in (("topology", "declare"), ("dlq", "stats")):
        code, out, err = await run_cli(settings, *args)
        assert code == 4, (args, err)
        assert err.strip().splitlines() == [
            "wa-consumer: cannot connect to RabbitMQ: [Errno 111] Connection refused"
        ], (args, err, out)
        assert "error when creating transport" not in out

"""Brokers where the daemon may not declare: definitions imported, WA_DECLARE_TOPOLOGY=passive."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from yarl import URL

from wa_consumer.definitions import definitions, render, vhost_of
from wa_consumer.errors import WaConsumerError
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology
from wa_consumer.webhooks.receiver import WebhookReceiver

from .harness import broker_for, make_settings, text_message, wait_for
from .test_process import run_cli, sent_recipients, start_daemon, wait_consuming

pytestmark = pytest.mark.integration

PASSIVE = {"WA_DECLARE_TOPOLOGY": "passive"}


def rabbitmqctl(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, check=True, capture_output=True, timeout=60
    )


@pytest.fixture
def no_configure_user(vhost: str) -> Iterator[tuple[str, str]]:
    """A user that may read and write in the test vhost but configure nothing."""
    name, password = f"wa-test-nocfg-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost_of(vhost), name, "^$", ".*", ".*")
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


def import_definitions(settings: Settings) -> None:
    """As an operator would; through stdin, as rabbitmqctl may run as another user."""
    defs = definitions(Topology.from_settings(settings), vhost_of(settings.amqp_url))
    rabbitmqctl("import_definitions", stdin=render(defs).encode())


async def test_passive_with_nothing_declared_stops_startup_naming_what_is_missing(
    vhost, sandbox
) -> None:
    settings = make_settings(vhost, sandbox.url)
    proc = await start_daemon(settings, **PASSIVE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"exchange {settings.exchange!r} does not exist" in lines[0]
    assert "WA_DECLARE_TOPOLOGY=passive" in lines[0]

    code, _, err_text = await run_cli(settings, "topology", "declare", **PASSIVE)
    assert code == 1 and settings.exchange in err_text
    receiver = WebhookReceiver(
        settings.model_copy(
            update={"declare_topology": "passive", "webhook_app_secret": SecretStr("s")}
        )
    )
    with pytest.raises(WaConsumerError, match=settings.exchange):
        await receiver.start(port=0)
    # Nothing was declared on the way: a check still finds the first exchange missing.
    code, _, err_text = await run_cli(settings, "topology", "declare", "--check")
    assert code == 1 and f"exchange {settings.exchange!r} does not exist" in err_text


async def test_imported_definitions_match_what_the_daemon_would_declare(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url, queue_type="quorum")
    import_definitions(settings)
    # guest may configure, so the check compares every queue's arguments by a full declare.
    code, out, err = await run_cli(settings, "topology", "declare", "--check")
    assert code == 0, err
    assert "as configured" in out


async def test_a_user_without_configure_permission_runs_passive_on_imported_definitions(
    vhost, sandbox, no_configure_user: tuple[str, str]
) -> None:
    settings = make_settings(vhost, sandbox.url)
    import_definitions(settings)
    user, password = no_configure_user
    url = URL(settings.amqp_url).with_user(user).with_password(password)
    limited = settings.model_copy(update={"amqp_url": str(url)})

    code, _, err = await run_cli(limited, "topology", "declare")
    assert code == 1
    assert f"may not declare exchange {settings.exchange!r}" in err
    code, out, err = await run_cli(limited, "topology", "declare", **PASSIVE)
    assert code == 0, err
    assert "passive: none declared" in out

    proc = await start_daemon(limited, **PASSIVE)
    try:
        await wait_consuming(proc)
        async with broker_for(settings) as broker:  # routed by the imported bindings
            await broker.publish(text_message("acme", "27850000001"))
        await wait_for(lambda: _sent(sandbox, "27850000001"))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0


async def _sent(sandbox: object, to: str) -> bool:
    return to in sent_recipients(sandbox)

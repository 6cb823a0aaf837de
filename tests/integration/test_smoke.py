from __future__ import annotations

import pytest

from .harness import body_of, broker_for, running, make_settings, text_message, wait_for

pytestmark = pytest.mark.integration


async def test_text_message_is_delivered_with_the_tenants_token(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        msg = text_message("acme", "27821234567", "hi")
        await broker.publish(msg)
        reqs = await wait_for(lambda: _sent(sandbox))
    assert reqs[0]["token"] == sandbox.state.token("acme")
    assert reqs[0]["body"] == msg["wabaPayload"]
    assert reqs[0]["path"] == "/v23.0/106540352242922/messages"


async def _sent(sandbox):  # type: ignore[no-untyped-def]
    return [r for r in sandbox.state.requests() if r["outcome"] == "sent"]

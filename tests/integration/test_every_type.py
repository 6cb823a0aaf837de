"""Every one of Meta's request examples goes through the daemon to the sandbox unchanged.

The examples are the fixture kept in the repository (``tests/meta_examples.py``).
"""

from __future__ import annotations

import pytest

from tests.meta_examples import EXAMPLES
from wa_consumer.message import with_callback

from .harness import broker_for, make_settings, running, wait_for

pytestmark = pytest.mark.integration


async def test_every_meta_example_is_delivered_unchanged_with_the_right_path_and_token(
    vhost, sandbox
) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        for name, payload in EXAMPLES.items():
            await broker.publish(
                {"metadata": {"tenantId": "globex", "internalId": name}, "wabaPayload": payload}
            )

        async def all_answered() -> bool:
            return len(sandbox.state.requests()) >= len(EXAMPLES)

        await wait_for(all_answered)
        assert await broker.count(settings.dead_letter_queue) == 0
    requests = sandbox.state.requests()
    # Unchanged but for the callback data a status ties back with (SPEC §3, §13).
    sent = [with_callback(payload, name) for name, payload in EXAMPLES.items()]
    assert sorted(map(repr, (r["body"] for r in requests))) == sorted(map(repr, sent))
    token = sandbox.state.token("globex")
    for r in requests:
        assert r["outcome"] == "sent", r
        assert r["token"] == token
        assert r["path"] == "/v23.0/107650492331811/messages"

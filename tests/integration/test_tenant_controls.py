"""SPEC §14 tenant controls, seen from outside: what the sandbox received, what each queue
holds, what the ledger's database says. Counts are published = sent + dead + held."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from wa_consumer.controls import TenantControls, TenantState
from wa_consumer.ledger.audit import recent_actions
from wa_consumer.ledger.migrate import migrate
from wa_consumer.settings import Settings

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

A = "106540352242922"  # acme's first number
B = "106540352242923"  # acme's second number
G = "107650492331811"  # globex's number


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(database)
    await migrate(connection)
    # Each test pauses tenants of its own names, but the tables are shared by the run.
    await connection.execute("DELETE FROM wa_pauses; DELETE FROM wa_holds")
    try:
        yield connection
    finally:
        await connection.close()


def sent_to(sandbox: Any) -> Counter[str]:
    """Recipients Meta accepted a message for, each with how many times."""
    return Counter(r["body"]["to"] for r in sandbox.state.requests() if r["outcome"] == "sent")


def sent_from(sandbox: Any, number: str) -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.state.requests()
        if r["outcome"] == "sent" and r["phone_number_id"] == number
    ]


async def held(broker: Broker, controls: TenantControls, tenant: str) -> int:
    states = await controls.states(tenant)
    return sum(s.held or 0 for s in states)


def settings_for(vhost: str, sandbox: Any, database: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database,
        "controls_poll_seconds": 0.2,
        "number_rate": 0,
    }
    values.update(overrides)
    settings = make_settings(vhost, sandbox.url, **values)
    tag = settings.queue.removeprefix("main-")
    return settings.model_copy(update={"held_queue_prefix": f"held-{tag}"})


async def publish_all(broker: Broker, messages: list[dict[str, Any]]) -> None:
    for m in messages:
        await broker.publish(m)


async def test_paused_tenant_is_held_without_spinning_and_sent_once_after_resume(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(vhost, sandbox, database, number_rates={A: 50})
    async with running(settings), broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        paused = await controls.pause("acme", None, reason="invoice unpaid", actor="alice")
        assert paused.mode == "paused"
        await asyncio.sleep(0.5)  # every replica has read it
        acme = [text_message("acme", f"2782200{i:04d}") for i in range(40)]
        globex = [text_message("globex", f"2782300{i:04d}") for i in range(40)]
        await publish_all(broker, acme + globex)

        await wait_for(lambda: _ge(len(sent_from(sandbox, G)), 40))
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 40))
        assert sent_from(sandbox, A) == []  # 0 sent while paused
        requests_while_paused = sandbox.state.total
        await asyncio.sleep(1.0)  # held, not spinning: no wait-queue loop, no request
        assert sandbox.state.total == requests_while_paused
        assert await broker.count(settings.queue) == 0
        assert await broker.count(settings.dead_letter_queue) == 0

        resumed = await controls.resume("acme", None, reason="paid", actor="alice")
        assert resumed.mode == "active"
        await wait_for(lambda: _ge(len(sent_from(sandbox, A)), 40), timeout=20)
        # In their order, at the number's rate (50/s: 40 messages take about 0.8 s).
        sends = sent_from(sandbox, A)
        assert [r["body"]["to"] for r in sends] == [m["wabaPayload"]["to"] for m in acme]
        span = sends[-1]["at"] - sends[0]["at"]
        assert span >= 0.6, f"40 released at 50/s took {span:.2f} s"
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 0))

    counts = sent_to(sandbox)
    assert len(counts) == 80
    assert set(counts.values()) == {1}  # all sent once
    actions = [a.action for a in await recent_actions(db, 10, "acme")]
    assert actions[:2] == ["resume", "pause"]
    assert await db.fetchval("SELECT count(*) FROM wa_holds") == 0  # held queue gone


def rate(sends: list[dict[str, Any]]) -> float:
    """Sends per second on the sandbox's clock."""
    return (len(sends) - 1) / (sends[-1]["at"] - sends[0]["at"])


async def test_other_tenants_keep_their_rate_while_a_paused_tenant_floods(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(vhost, sandbox, database, number_rates={G: 40}, prefetch=200)
    async with running(settings), broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        # Baseline: globex alone.
        await publish_all(broker, [text_message("globex", f"2783000{i:04d}") for i in range(60)])
        await wait_for(lambda: _ge(len(sent_from(sandbox, G)), 60), timeout=20)
        alone = rate(sent_from(sandbox, G))

        # acme paused and flooding: 600 of its messages among 60 of globex's.
        await controls.pause("acme", None, reason="flood", actor="erin")
        await asyncio.sleep(0.5)
        acme = [text_message("acme", f"2783100{i:04d}") for i in range(600)]
        globex = [text_message("globex", f"2783200{i:04d}") for i in range(60)]
        await asyncio.gather(publish_all(broker, acme), publish_all(broker, globex))
        await wait_for(lambda: _ge(len(sent_from(sandbox, G)), 120), timeout=30)
        beside = rate(sent_from(sandbox, G)[60:])
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 600), timeout=30)
        assert sent_from(sandbox, A) == []  # 0 sent while paused
        print(f"globex alone {alone:.1f}/s, beside a paused flood {beside:.1f}/s")
        assert beside >= 0.8 * alone, (alone, beside)

        await controls.resume("acme", None, reason="ok", actor="erin")
        await wait_for(lambda: _ge(len(sent_from(sandbox, A)), 600), timeout=60)
    counts = sent_to(sandbox)
    assert len(counts) == 720
    assert set(counts.values()) == {1}  # all sent once after the resume


async def test_pause_survives_a_restart_and_reaches_every_replica(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(vhost, sandbox, database)
    async with broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        async with running(settings):
            await controls.pause("globex", None, reason="migration", actor="bob")
        # A new daemon (a restart) and a second replica both hold from their first message.
        async with running(settings), running(settings):
            await publish_all(
                broker, [text_message("globex", f"2782400{i:04d}") for i in range(20)]
            )
            await wait_for(lambda: _eq(held(broker, controls, "globex"), 20))
            assert sent_from(sandbox, G) == []
            await controls.resume("globex", None, reason="done", actor="bob")
            await wait_for(lambda: _ge(len(sent_from(sandbox, G)), 20), timeout=20)
    counts = sent_to(sandbox)
    assert len(counts) == 20
    assert set(counts.values()) == {1}


async def test_a_number_pause_holds_that_number_only(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(vhost, sandbox, database)
    async with running(settings), broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        await controls.pause("acme", B, reason="quality rating", actor="carol")
        await asyncio.sleep(0.5)
        on_a = [text_message("acme", f"2782500{i:04d}") for i in range(10)]
        on_b = [text_message("acme", f"2782600{i:04d}", phoneNumberId=B) for i in range(10)]
        await publish_all(broker, on_a + on_b)
        await wait_for(lambda: _ge(len(sent_from(sandbox, A)), 10))
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 10))
        assert sent_from(sandbox, B) == []
        states = await controls.states("acme")
        assert [(s.number, s.mode, s.held) for s in states] == [(B, "paused", 10)]
        await controls.resume("acme", B, reason="ok", actor="carol")
        await wait_for(lambda: _ge(len(sent_from(sandbox, B)), 10), timeout=20)


async def test_drain_sends_what_is_held_then_holds_new_messages(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(vhost, sandbox, database)
    async with running(settings), broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        await controls.pause("acme", None, reason="maintenance", actor="dave")
        await asyncio.sleep(0.5)
        before = [text_message("acme", f"2782700{i:04d}") for i in range(15)]
        await publish_all(broker, before)
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 15))

        drained = await controls.drain("acme", None, reason="send the backlog", actor="dave")
        assert drained.mode == "draining"
        await wait_for(lambda: _ge(len(sent_from(sandbox, A)), 15), timeout=20)
        after = [text_message("acme", f"2782800{i:04d}") for i in range(5)]
        await publish_all(broker, after)
        await wait_for(lambda: _eq(held(broker, controls, "acme"), 5))
        await wait_for(lambda: _mode(controls, "acme", "paused"))
        assert len(sent_from(sandbox, A)) == 15  # the new ones are held

        await controls.resume("acme", None, reason="done", actor="dave")
        await wait_for(lambda: _ge(len(sent_from(sandbox, A)), 20), timeout=20)
    counts = sent_to(sandbox)
    assert len(counts) == 20
    assert set(counts.values()) == {1}


async def test_breaker_opens_on_a_blocked_account_and_closes_after_the_fix(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    settings = settings_for(
        vhost, sandbox, database, breaker_threshold=3, breaker_probe_seconds=1.0, prefetch=1
    )
    locked = [text_message("acme", f"1555002{i:04d}") for i in range(20)]  # 131031, always
    async with running(settings) as daemon, broker_for(settings) as broker:
        controls = TenantControls(settings, db, broker.connection)
        await publish_all(broker, locked[:3])
        await wait_for(lambda: _eq(broker.count(settings.dead_letter_queue), 3))
        await wait_for(lambda: _breaker_open(controls, "acme"))
        state = (await controls.states("acme"))[0]
        assert (state.number, state.actor) == (A, "breaker")
        assert "3 consecutive account failures" in (state.reason or "")

        # Later messages are held instead of each failing; a probe goes every second and
        # fails (the account is still locked): dead, one per probe, not one per message.
        await publish_all(broker, locked[3:])
        await wait_for(lambda: _ge(held(broker, controls, "acme"), 14))
        dead_while_open = await broker.count(settings.dead_letter_queue)
        assert dead_while_open <= 3 + 3, dead_while_open
        alerts = daemon.metrics.registry.get_sample_value(
            "wa_alerts_total", {"alert": "breaker_open"}
        )
        assert alerts == 1.0  # one alert, not one per message

        sandbox.state.configure(rules=[])  # the fix: the account is unlocked
        await wait_for(lambda: _no_pause(controls, "acme"), timeout=20)

        async def settled() -> bool:
            dead = await broker.count(settings.dead_letter_queue)
            return len(sent_from(sandbox, A)) + dead == len(locked)

        await wait_for(settled, timeout=30)
        dead = await broker.count(settings.dead_letter_queue)
        assert await held(broker, controls, "acme") == 0
    assert len(sent_from(sandbox, A)) + dead == len(locked)  # published = sent + dead
    assert set(sent_to(sandbox).values()) == {1}
    actions = [a.action for a in await recent_actions(db, 10, "acme")]
    assert "breaker_opened" in actions
    assert "breaker_closed" in actions


# -- helpers ------------------------------------------------------------------------------


async def _ge(value: Any, expected: int) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value >= expected)


async def _eq(value: Any, expected: int) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value == expected)


async def _mode(controls: TenantControls, tenant: str, mode: str) -> bool:
    return [s.mode for s in await controls.states(tenant)] == [mode]


async def _breaker_open(controls: TenantControls, tenant: str) -> bool:
    states: list[TenantState] = await controls.states(tenant)
    return any(s.breaker for s in states)


async def _no_pause(controls: TenantControls, tenant: str) -> bool:
    return all(s.mode == "active" for s in await controls.states(tenant))


async def test_a_release_cut_by_broker_outages_loses_and_doubles_nothing(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    proxy = await TcpProxy.before(vhost, "rabbitmq").start()
    settings = settings_for(vhost, sandbox, database, number_rates={A: 100})
    through_proxy = settings.model_copy(update={"amqp_url": proxy.route(vhost)})
    recipients = [f"2783300{i:04d}" for i in range(300)]
    try:
        async with running(through_proxy), broker_for(settings) as broker:
            controls = TenantControls(settings, db, broker.connection)
            await controls.pause("acme", None, reason="outage drill", actor="frank")
            await asyncio.sleep(0.5)
            await publish_all(broker, [text_message("acme", to) for to in recipients])
            await wait_for(lambda: _eq(held(broker, controls, "acme"), 300), timeout=30)
            await controls.resume("acme", None, reason="go", actor="frank")
            # Cut the daemon's broker connection twice while it moves the held messages.
            for at in (50, 150):
                await wait_for(lambda n=at: _ge(len(sent_from(sandbox, A)), n), timeout=30)
                await proxy.outage(0.5)
            await wait_for(lambda: _ge(len(set(sent_to(sandbox))), 300), timeout=60)
            await wait_for(lambda: _eq(held(broker, controls, "acme"), 0), timeout=30)
            assert await broker.count(settings.queue) == 0
            assert await broker.count(settings.dead_letter_queue) == 0
    finally:
        await proxy.close()
    counts = sent_to(sandbox)
    assert set(counts) == set(recipients)
    assert set(counts.values()) == {1}  # each sent once, the cuts notwithstanding


async def test_the_tenant_commands_pause_show_and_resume(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any]
) -> None:
    import json
    import os
    import sys

    settings = settings_for(vhost, sandbox, database)
    env = {**os.environ, "WA_DATABASE_URL": database, "WA_AMQP_URL": vhost,
           "WA_HELD_QUEUE_PREFIX": settings.held_queue_prefix}  # fmt: skip

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wa_consumer", "tenant", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, _ = await cli("pause", "initech", "--number", "108760582410700",
                             "--reason", "number flagged", "--actor", "grace")  # fmt: skip
    assert code == 0, out
    assert out.startswith("initech:108760582410700: paused since ")
    assert "by grace: number flagged" in out
    code, out, _ = await cli("status", "initech", "--json")
    [state] = json.loads(out)
    assert (state["number"], state["mode"], state["held"]) == ("108760582410700", "paused", 0)
    code, out, _ = await cli("resume", "initech", "--number", "108760582410700")
    assert (code, out.strip()) == (0, "initech:108760582410700: active, 0 held")
    code, out, _ = await cli("status", "initech")
    assert (code, out.strip()) == (0, "initech: active")
    code, _, err = await cli("pause", "initech", "--number", "12ab")
    assert code == 2
    assert "phone number id is digits only" in err
    actions = await recent_actions(db, 5, "initech")
    assert [a.action for a in actions][:2] == ["resume", "pause"]
    assert actions[1].actor == "grace"

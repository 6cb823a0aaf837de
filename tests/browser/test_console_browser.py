"""The console in a real browser (Playwright driving the system's Chromium): an operator logs
in, opens a group, replays a canary batch, resolves the rest and pauses a tenant. The daemon
and the sandbox run behind it, so the canary's outcomes are real. Screenshots of each step
are kept in tests/browser/artifacts/ (docs/console.png is one of them)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import async_playwright

from wa_consumer.console import ConsoleServer, hash_password
from wa_consumer.ledger.migrate import migrate
from wa_consumer.topology import Topology, declare

from ..integration.harness import broker_for, make_settings, running, text_message, wait_for
from ..integration.scratch_db import scratch_database

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser test password"

if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium): the browser test needs it",
        allow_module_level=True,
    )


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    async with scratch_database("wa_browser") as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_an_operator_replays_a_canary_resolves_the_rest_and_pauses_a_tenant(
    vhost: str, own_database: str, sandbox: Any, browser: Any
) -> None:
    database = own_database
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    db = await asyncpg.connect(database)
    await migrate(db)
    settings = make_settings(
        vhost,
        sandbox.url,
        database_url=database,
        console_users={"dana": hash_password(PASSWORD)},
        console_secret="b" * 40,
        console_canary=5,
    )
    ids = [str(uuid.uuid4()) for _ in range(30)]
    try:
        async with running(settings), broker_for(settings) as broker:
            await declare(broker.connection, Topology.from_settings(settings))
            for n, internal_id in enumerate(ids):  # 1555000...: undeliverable (permanent)
                await broker.publish(
                    text_message(
                        "acme", f"1555000{n:04d}", "Your order shipped", internal_id=internal_id
                    )
                )
            for n in range(4):  # and another cause: the account is locked
                await broker.publish(text_message("globex", f"1555002{n:04d}", "Hi"))

            async def mirrored() -> bool:
                return bool(
                    await db.fetchval("SELECT count(*) FROM wa_dead WHERE state = 'dead'") >= 34
                )

            await wait_for(mirrored, timeout=30)
            sandbox.state.configure(rules=())  # the cause is fixed: recipients are sent now

            server = ConsoleServer(settings)
            port = await server.start("127.0.0.1", 0)
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before a resolve
            base = f"http://127.0.0.1:{port}"
            try:
                await page.goto(base + "/")
                assert "/login" in page.url  # no session: the login form
                await page.fill("input[name=user]", "dana")
                await page.fill("input[name=password]", PASSWORD)
                await page.click("button[type=submit]")
                await page.wait_for_selector("h1:has-text('What is failing')")
                await page.screenshot(path=ARTIFACTS / "1-overview.png", full_page=True)

                await page.click("table.groups tr:has-text('131026') a.fp")
                await page.wait_for_selector("h1:has-text('Group')")
                assert await page.locator("table.compact tbody tr").count() == 30
                await page.screenshot(path=ARTIFACTS / "2-group.png", full_page=True)

                replay = page.locator("form[aria-label='Replay the group']")
                await replay.locator("input[name=reason]").fill("undeliverable fixed upstream")
                await replay.locator("button").click()
                await page.wait_for_selector("h1:has-text('Group replay')")
                # The page follows the job; the daemon sends the canary.
                await page.wait_for_selector("text=5 sent, 0 dead again, 0 pending", timeout=30_000)
                assert await page.locator(".outcome-sent").count() == 5
                await page.screenshot(path=ARTIFACTS / "3-canary.png", full_page=True)

                # Stop after the canary, and resolve the rest instead of replaying it.
                stop = page.locator("form[aria-label='Stop the replay']")
                await stop.locator("input[name=reason]").fill("the rest are told by phone")
                await stop.locator("button").click()
                await page.wait_for_selector(".phase-stopped")
                await page.click(".crumbs a[href^='/groups/']")
                resolve = page.locator("form[aria-label='Resolve the group']")
                await resolve.locator("input[name=reason]").fill("customers told by phone")
                await resolve.locator("button").click()
                await page.wait_for_selector(".notice:has-text('resolved: 25 removed')")
                await page.screenshot(path=ARTIFACTS / "4-resolved.png", full_page=True)

                control = page.locator("form[aria-label='Pause, resume or drain a tenant']")
                await control.locator("input[name=tenant]").fill("globex")
                await control.locator("input[name=reason]").fill("WhatsApp account locked")
                await control.locator("button[value=pause]").click()
                await page.wait_for_selector(".notice:has-text('globex: paused')")
                tenants = page.locator("#tenants table")
                assert re.search(r"globex\s+all\s+paused", await tenants.inner_text())
                await page.screenshot(path=ARTIFACTS / "5-paused.png", full_page=True)
            finally:
                await page.close()
                await server.close()
            assert await broker.count(settings.dead_letter_queue) == 4  # globex's alone
        sent = [r for r in sandbox.state.requests() if r["outcome"] == "sent"]
        assert len(sent) == 5  # the canary, each once
        actions = [r["action"] for r in await db.fetch("SELECT action FROM wa_actions ORDER BY id")]
        for action in ("group_replay_canary", "group_replay_stop", "group_resolve", "pause"):
            assert action in actions
    finally:
        await db.close()

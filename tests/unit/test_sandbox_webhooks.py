"""The sandbox sends signed status webhooks for what it accepted, shaped like Meta's.

A local aiohttp server plays the webhook receiver; the sandbox runs over real HTTP in the
same loop. Delays are tens of milliseconds, and every wait is for a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wa_consumer.sandbox import (
    RunningSandbox,
    SandboxClient,
    SandboxConfig,
    load_config,
    start_sandbox,
)
from wa_consumer.sandbox.statuses import category_of
from wa_consumer.webhooks.payload import read
from wa_consumer.webhooks.signature import verify

SECRET = "app-secret-for-tests"
ACME_NUMBER = "106540352242922"
ACME_OTHER_NUMBER = "106540352242923"
GLOBEX_NUMBER = "107650492331811"
ACME_WABA = "102290129340398"
GLOBEX_WABA = "103301230451409"


@dataclass
class Post:
    raw: bytes
    headers: dict[str, str]
    status: int
    arrived: float

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return [
            status
            for entry in self.body["entry"]
            for change in entry["changes"]
            for status in change["value"]["statuses"]
        ]


@dataclass
class Receiver:
    """Records every POST; answers the scripted statuses first, then 200."""

    url: str = ""
    posts: list[Post] = field(default_factory=list)
    answers: deque[int] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.answers.popleft() if self.answers else 200
        post = Post(await request.read(), dict(request.headers), status, time.monotonic())
        self.posts.append(post)
        self.arrived.set()
        return web.Response(status=status)

    @property
    def accepted(self) -> list[Post]:
        return [post for post in self.posts if post.status == 200]

    def statuses(self, wamid: str | None = None) -> list[dict[str, Any]]:
        """Statuses of the POSTs answered 200, in arrival order."""
        found = [status for post in self.accepted for status in post.statuses]
        return found if wamid is None else [s for s in found if s["id"] == wamid]

    def kinds(self, wamid: str) -> list[str]:
        return [status["status"] for status in self.statuses(wamid)]

    async def wait(self, condition: Callable[[], bool], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {[p.statuses for p in self.posts]}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/webhook", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    found.url = f"http://{host}:{port}/webhook"
    try:
        yield found
    finally:
        await runner.cleanup()


Start = Callable[..., Awaitable[RunningSandbox]]


@pytest.fixture
async def start(receiver: Receiver) -> AsyncIterator[Start]:
    """Start a sandbox whose webhooks (these settings, fast by default) go to ``receiver``."""
    running: list[RunningSandbox] = []

    async def starter(**webhooks: Any) -> RunningSandbox:
        settings = {
            "url": receiver.url,
            "app_secret": SECRET,
            "delivered_after_ms": 20,
            "read_after_ms": 20,
            "read_share": 0.0,
            "retry_backoff_ms": 10,
        } | webhooks
        config = SandboxConfig(rules=(), webhooks=settings)  # type: ignore[arg-type]  # validated
        sandbox = await start_sandbox(config=config)
        running.append(sandbox)
        return sandbox

    yield starter
    for sandbox in running:
        await sandbox.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    to: str = "27821234567",
    *,
    number: str = ACME_NUMBER,
    **extra: Any,
) -> str:
    """Send a text (or ``extra`` over it) through the Cloud API stand-in; its wamid."""
    tenant = "globex" if number == GLOBEX_NUMBER else "acme"
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}
    async with http.post(
        f"{sandbox.url}/v23.0/{number}/messages",
        json=body | extra,
        headers={"Authorization": f"Bearer {sandbox.state.token(tenant)}"},
    ) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["messages"][0]["id"])


def accept(sandbox: RunningSandbox, n: int, number: str = ACME_NUMBER, to: str = "2782") -> None:
    """Accept ``n`` messages in one go, without HTTP (as a burst of requests would)."""
    tenant = sandbox.state.config.tenants[0 if number != GLOBEX_NUMBER else 1]
    for i in range(n):
        sandbox.webhooks.accepted(
            wamid=sandbox.state.next_wamid(),
            number=number,
            tenant=tenant,
            recipient=f"{to}{i:07d}",
            body={"type": "text"},
        )


# -- shape and signature ------------------------------------------------------------


async def test_status_webhook_is_signed_and_shaped_like_metas(start, receiver, http) -> None:
    sandbox = await start()
    wamid = await send(http, sandbox, "+27 82 123-4567", biz_opaque_callback_data="internal-42")

    await receiver.wait(lambda: receiver.kinds(wamid) == ["sent", "delivered"])

    post = receiver.posts[0]
    expected = hmac.new(SECRET.encode(), post.raw, hashlib.sha256).hexdigest()
    assert post.headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert verify(post.raw, post.headers["X-Hub-Signature-256"], [SECRET.encode()])
    assert post.headers["Content-Type"] == "application/json"
    body = post.body
    assert body["object"] == "whatsapp_business_account"
    [entry] = body["entry"]
    assert entry["id"] == ACME_WABA
    [change] = entry["changes"]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == ACME_NUMBER
    assert value["metadata"]["display_phone_number"].isdigit()
    for status in receiver.statuses(wamid):
        assert status["recipient_id"] == "27821234567"
        assert status["timestamp"].isdigit()
        assert abs(int(status["timestamp"]) - time.time()) < 5
        assert status["biz_opaque_callback_data"] == "internal-42"
        assert status["pricing"] == {
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
        conversation = status["conversation"]
        assert len(conversation["id"]) == 32
        assert conversation["origin"] == {"type": "service"}
        assert int(conversation["expiration_timestamp"]) > time.time()
        assert "errors" not in status


async def test_template_is_billed_in_its_category(start, receiver, http) -> None:
    sandbox = await start()
    template = {"name": "summer_promo", "language": {"code": "en_US"}}
    wamid = await send(http, sandbox, type="template", template=template)

    await receiver.wait(lambda: receiver.kinds(wamid) == ["sent", "delivered"])

    pricing = receiver.statuses(wamid)[0]["pricing"]
    assert pricing == {
        "billable": True,
        "pricing_model": "PMP",
        "category": "marketing",
        "type": "regular",
    }
    assert "biz_opaque_callback_data" not in receiver.statuses(wamid)[0]


def test_pricing_category_comes_from_the_template_name() -> None:
    def template(name: str) -> dict[str, Any]:
        return {"type": "template", "template": {"name": name}}

    assert category_of({"type": "text"}, {}) == "service"
    assert category_of({"type": "image"}, {}) == "service"
    assert category_of(template("order_shipped"), {}) == "utility"
    assert category_of(template("Black_Friday_SALE"), {}) == "marketing"
    assert category_of(template("login_otp"), {}) == "authentication"
    assert category_of(template("order_shipped"), {"order_shipped": "marketing"}) == "marketing"


# -- timing and shares --------------------------------------------------------------


async def test_delivered_arrives_after_the_configured_delay(start, receiver, http) -> None:
    sandbox = await start(delivered_after_ms=300)
    wamid = await send(http, sandbox)

    await receiver.wait(lambda: receiver.kinds(wamid) == ["sent", "delivered"])

    sent, delivered = receiver.accepted
    assert delivered.arrived - sent.arrived >= 0.25
    assert sent.statuses[0]["status"] == "sent"


async def test_read_share_one_reads_every_message_after_delivery(start, receiver, http) -> None:
    sandbox = await start(read_share=1.0)
    wamids = [await send(http, sandbox, f"2782000000{i}") for i in range(5)]

    await receiver.wait(lambda: all(len(receiver.kinds(w)) == 3 for w in wamids))

    for wamid in wamids:
        assert receiver.kinds(wamid) == ["sent", "delivered", "read"]
        read = receiver.statuses(wamid)[2]
        assert "pricing" not in read
        assert "conversation" not in read


@pytest.mark.parametrize(("to", "code"), [("15550100001", 131026), ("15550110001", 131047)])
async def test_failure_rule_accepts_then_reports_sent_and_failed(
    start, receiver, http, to, code
) -> None:
    sandbox = await start(read_share=1.0)  # default failure rules: 1555 01D xxxx
    wamid = await send(http, sandbox, to)

    await receiver.wait(lambda: "failed" in receiver.kinds(wamid))
    await receiver.wait(lambda: sandbox.webhooks.pending == 0)

    assert receiver.kinds(wamid) == ["sent", "failed"]
    [error] = receiver.statuses(wamid)[1]["errors"]
    assert error["code"] == code
    assert error["title"]
    assert error["message"]
    assert error["error_data"]["details"]
    assert error["href"].startswith("https://developers.facebook.com/")


async def test_failure_rule_of_any_code_with_its_own_words(start, receiver, http) -> None:
    rule = {"match": "^4477", "code": 131049, "title": "Not delivered", "details": "Healthy"}
    sandbox = await start(failed=[rule])
    wamid = await send(http, sandbox, "447700900123")

    await receiver.wait(lambda: "failed" in receiver.kinds(wamid))

    [error] = receiver.statuses(wamid)[1]["errors"]
    assert (error["code"], error["title"], error["message"]) == (131049, *["Not delivered"] * 2)
    assert error["error_data"] == {"details": "Healthy"}


async def test_duplicates_one_posts_every_body_twice(start, receiver, http) -> None:
    sandbox = await start(duplicates=1.0)
    wamid = await send(http, sandbox)

    await receiver.wait(lambda: len(receiver.posts) == 4)

    raws = [post.raw for post in receiver.posts]
    assert raws[0] == raws[1] and raws[2] == raws[3]
    assert receiver.kinds(wamid) == ["sent", "sent", "delivered", "delivered"]
    assert sandbox.webhooks.stats()["duplicates"] == 2


async def test_out_of_order_sends_read_before_delivered_before_sent(start, receiver, http) -> None:
    sandbox = await start(out_of_order=1.0, read_share=1.0)
    wamid = await send(http, sandbox)

    await receiver.wait(lambda: len(receiver.kinds(wamid)) == 3)

    assert receiver.kinds(wamid) == ["read", "delivered", "sent"]
    stamps = [int(status["timestamp"]) for status in receiver.statuses(wamid)]
    assert stamps == sorted(stamps, reverse=True)


# -- batching, bounds, retries ------------------------------------------------------


async def test_batch_groups_statuses_by_waba_and_number(start, receiver) -> None:
    sandbox = await start(batch=100)
    accept(sandbox, 4, ACME_NUMBER)
    accept(sandbox, 3, ACME_OTHER_NUMBER)
    accept(sandbox, 2, GLOBEX_NUMBER)

    await receiver.wait(lambda: len(receiver.statuses()) == 18)

    assert len(receiver.posts) == 2  # all the sent, then all the delivered
    entries = {entry["id"]: entry for entry in receiver.posts[0].body["entry"]}
    assert set(entries) == {ACME_WABA, GLOBEX_WABA}
    by_number = {
        change["value"]["metadata"]["phone_number_id"]: len(change["value"]["statuses"])
        for entry in entries.values()
        for change in entry["changes"]
    }
    assert by_number == {ACME_NUMBER: 4, ACME_OTHER_NUMBER: 3, GLOBEX_NUMBER: 2}


async def test_batch_caps_statuses_per_post(start, receiver) -> None:
    sandbox = await start(batch=8)
    accept(sandbox, 20)

    await receiver.wait(lambda: len(receiver.statuses()) == 40)

    assert max(len(post.statuses) for post in receiver.posts) == 8


async def test_a_burst_of_10000_costs_heap_entries_not_tasks(start, receiver) -> None:
    sandbox = await start(batch=100, delivered_after_ms=60_000)
    tasks_before = len(asyncio.all_tasks())

    began = time.perf_counter()
    accept(sandbox, 10_000)
    assert time.perf_counter() - began < 1.0
    assert len(asyncio.all_tasks()) == tasks_before
    await receiver.wait(lambda: len(receiver.statuses()) == 10_000, timeout=2.5)

    assert len(receiver.posts) == 100
    assert sandbox.webhooks.pending == 10_000  # each waiting for its `delivered`


async def test_over_max_pending_new_messages_are_dropped_and_counted(start, receiver) -> None:
    sandbox = await start(max_pending=5, delivered_after_ms=60_000)
    accept(sandbox, 8)

    await receiver.wait(lambda: len(receiver.statuses()) == 5)

    stats = sandbox.webhooks.stats()
    assert stats["pending"] == 5
    assert stats["dropped"] == 3 * 2  # sent and delivered of each dropped message


async def test_receiver_error_is_retried_until_accepted(start, receiver, http) -> None:
    receiver.answers.extend([500, 503])
    sandbox = await start()
    wamid = await send(http, sandbox)

    await receiver.wait(lambda: receiver.kinds(wamid) == ["sent", "delivered"])

    assert [post.status for post in receiver.posts] == [500, 503, 200, 200]
    assert receiver.posts[0].raw == receiver.posts[2].raw
    stats = sandbox.webhooks.stats()
    assert (stats["retried"], stats["failed"], stats["sent"], stats["statuses"]) == (2, 0, 2, 2)


async def test_receiver_that_never_accepts_is_counted_failed(start, receiver, http) -> None:
    receiver.answers.extend([500] * 10)
    sandbox = await start(retries=2, delivered_after_ms=60_000)
    await send(http, sandbox)

    await receiver.wait(lambda: sandbox.webhooks.stats()["failed"] == 1)

    assert len(receiver.posts) == 3
    assert sandbox.webhooks.stats()["retried"] == 2


# -- admin, config ------------------------------------------------------------------


async def test_admin_sends_a_late_failure_for_a_delivered_message(start, receiver, http) -> None:
    sandbox = await start()
    wamid = await send(http, sandbox, "27820000001", biz_opaque_callback_data="id-7")
    await receiver.wait(lambda: receiver.kinds(wamid) == ["sent", "delivered"])

    async with SandboxClient(sandbox.url) as admin:
        queued = await admin.webhook_status(wamid, "failed", code=131049)
        stats = await admin.stats()
    await receiver.wait(lambda: "failed" in receiver.kinds(wamid))

    failed = receiver.statuses(wamid)[-1]
    assert failed == queued
    assert failed["recipient_id"] == "27820000001"
    assert failed["biz_opaque_callback_data"] == "id-7"
    assert failed["errors"][0]["code"] == 131049
    assert stats["webhooks"]["enabled"] is True
    assert (
        receiver.accepted[-1].body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
        == ACME_NUMBER
    )


async def test_admin_status_for_an_unknown_wamid_needs_number_and_recipient(start, http) -> None:
    sandbox = await start()
    url = f"{sandbox.url}/_sandbox/webhooks/status"

    async with http.post(url, json={"wamid": "wamid.X", "status": "read"}) as response:
        assert response.status == 404
    async with http.post(url, json={"wamid": "wamid.X", "status": "lost"}) as response:
        assert response.status == 400
    ask = {"wamid": "wamid.X", "status": "read", "phone_number_id": GLOBEX_NUMBER}
    async with http.post(url, json=ask | {"recipient_id": "27821"}) as response:
        assert response.status == 200


async def test_secret_is_never_shown_and_kept_on_partial_change(start, receiver) -> None:
    sandbox = await start()
    assert SECRET not in repr(sandbox.state.config)

    async with SandboxClient(sandbox.url) as admin:
        shown = await admin.config()
        assert SECRET not in json.dumps(shown)
        await admin.configure(webhooks=shown["webhooks"] | {"batch": 5})
        await admin.configure(webhooks={"url": receiver.url, "delivered_after_ms": 0})

    hooks = sandbox.state.config.webhooks
    assert hooks.app_secret is not None
    assert hooks.app_secret.get_secret_value() == SECRET


def test_a_webhook_url_needs_a_secret_and_cli_style_overrides_apply() -> None:
    with pytest.raises(ValueError, match="app_secret"):
        load_config(webhook_url="http://127.0.0.1:8090/webhook")
    config = load_config(
        webhook_url="http://127.0.0.1:8090/webhook", webhook_app_secret="s", webhook_batch=50
    )
    assert config.webhooks.batch == 50
    assert config.webhooks.url == "http://127.0.0.1:8090/webhook"


async def test_without_a_url_nothing_is_planned(http) -> None:
    async with await start_sandbox() as sandbox:
        await send(http, sandbox, "27821234567")
        assert sandbox.webhooks.stats() == {
            "enabled": False,
            "sent": 0,
            "statuses": 0,
            "retried": 0,
            "failed": 0,
            "dropped": 0,
            "duplicates": 0,
            "pending": 0,
        }


async def test_the_status_consumer_reads_every_field_the_sandbox_sends(
    start, receiver, http
) -> None:
    sandbox = await start(read_share=1.0)
    fine = await send(http, sandbox, biz_opaque_callback_data="internal-1")
    lost = await send(http, sandbox, "15550100001")
    await receiver.wait(lambda: len(receiver.kinds(fine)) == 3 and len(receiver.kinds(lost)) == 2)

    updates = [read(post.raw) for post in receiver.accepted]

    assert all(found.skipped == 0 and not found.inbound for found in updates)
    by_kind = {(u.wamid, u.status): u for found in updates for u in found.statuses}
    delivered = by_kind[fine, "delivered"]
    assert delivered.phone_number_id == ACME_NUMBER
    assert delivered.recipient == "27821234567"
    assert delivered.callback == "internal-1"
    assert delivered.delivered_at is not None
    assert (delivered.billable, delivered.pricing_category, delivered.pricing_model) == (
        False,
        "service",
        "PMP",
    )
    assert delivered.conversation_id and delivered.conversation_expires_at is not None
    assert by_kind[fine, "read"].read_at is not None
    failed = by_kind[lost, "failed"]
    assert (failed.error_code, failed.error_category) == ("131026", "permanent")

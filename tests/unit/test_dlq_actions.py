"""The DLQ actions the console and the CLI share, without a broker or a database: which
messages a canary takes and what its outcomes say, what an edit may change, what the audit
trail is told, and the CLI's refusals before it touches anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from wa_consumer.cli import app
from wa_consumer.dlq import canary
from wa_consumer.dlq.edit import EditRefused, prepare_edit
from wa_consumer.dlq.filters import Filter
from wa_consumer.errors import InvalidMessage
from wa_consumer.ledger.dead import DeadDetail, DeadRow

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def row(n: int, *, internal_id: str | None = None, replays: int = 0, tenant: str = "acme") -> Any:
    return DeadRow(
        id=n, tenant_id=tenant, internal_id=internal_id if internal_id is not None else f"m{n}",
        fingerprint="abc", category="permanent", code="131026", message="x", type="text",
        phone_number_id=None, died_at=NOW - timedelta(minutes=n), retries=0, replays=replays,
    )  # fmt: skip


class Pages:
    def __init__(self, rows: list[DeadRow]) -> None:
        self.rows = rows
        self.asked: list[tuple[Filter, int]] = []

    async def page(
        self, f: Filter, *, before_id: int | None = None, limit: int = 50
    ) -> list[DeadRow]:
        self.asked.append((f, limit))
        return self.rows[:limit]


class Records:
    """``wa_messages`` as the outcomes query reads it: one answer per look."""

    def __init__(self, *looks: list[dict[str, Any]]) -> None:
        self.looks = list(looks)
        self.calls = 0

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.calls += 1
        return self.looks[min(self.calls, len(self.looks)) - 1]


def record(status: str | None, replays: int = 0, **more: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme", "status": status, "replays": replays, "wamid": None,
        "last_error_category": None, "last_error_code": None, "last_error_message": None,
        **more,
    }  # fmt: skip


# -- the canary --------------------------------------------------------------------------------


async def test_a_canary_takes_messages_that_may_be_replayed_and_died_before_it_began() -> None:
    pages = Pages([row(1, replays=3), row(2, internal_id=""), row(3), row(4, replays=1), row(5)])
    group = Filter(fingerprints=("abc",), before=NOW + timedelta(days=1))
    items = await canary.pick(pages, group, 2, before=NOW, max_replays=3)
    assert [(i.dead_id, i.internal_id, i.replays_before) for i in items] == [
        (3, "m3", 0),
        (4, "m4", 1),
    ]
    [(asked, limit)] = pages.asked
    assert asked.before == NOW and asked.fingerprints == ("abc",) and limit == 50


def test_the_canary_is_its_ids_and_the_rest_what_died_before_the_replay_began() -> None:
    items = [canary.CanaryItem(1, "acme", "m1", 0), canary.CanaryItem(2, None, "m2", 0)]
    group = Filter(fingerprints=("abc",), tenants=frozenset({"acme"}))
    first = canary.canary_filter(group, items, NOW)
    assert (first.ids, first.before, first.tenants) == (frozenset({"m1", "m2"}), NOW, group.tenants)
    assert canary.rest_filter(group, NOW).before == NOW
    older = Filter(before=NOW - timedelta(days=30))  # --older-than 30d: the earlier holds
    assert canary.rest_filter(older, NOW).before == older.before


async def test_outcomes_say_sent_dead_again_only_after_a_new_death_else_pending() -> None:
    items = [canary.CanaryItem(n, "acme", f"m{n}", 1) for n in range(4)]
    records = Records(
        [
            record("sent", 2, wamid="wamid.X"),
            record("dead", 2, last_error_category="permanent", last_error_code="131026"),
            record("dead", 1),  # its old death: not replayed yet
            record(None),  # no record at all
        ]
    )
    found = await canary.outcomes(records, items)
    assert [o.outcome for o in found] == ["sent", "dead", "pending", "pending"]
    assert found[1].to_json()["category"] == "permanent" and found[2].category is None
    assert canary.counts(found) == {"sent": 1, "dead": 1, "pending": 2}
    assert await canary.outcomes(records, []) == []


async def test_waiting_for_the_canary_ends_when_none_is_pending_or_at_the_deadline() -> None:
    items = [canary.CanaryItem(1, "acme", "m1", 0)]
    records = Records([record("claimed")], [record("sent")])
    looks: list[int] = []
    found = await canary.settled(records, items, wait=10, seen=lambda o: looks.append(len(o)))
    assert [o.outcome for o in found] == ["sent"] and records.calls == 2 and looks == [1, 1]
    stuck = Records([record("claimed")])
    found = await canary.settled(stuck, items, wait=0)
    assert [o.outcome for o in found] == ["pending"] and stuck.calls == 1


# -- an edit -----------------------------------------------------------------------------------


def detail(state: str = "dead", tenant: str | None = "acme") -> DeadDetail:
    return DeadDetail(
        row=row(7, internal_id="m7", tenant=tenant or ""), body=b"{}", headers={}, state=state,
        resolution=None if state == "dead" else "replayed to main", attempts=[], record=None,
    )  # fmt: skip


def message(internal_id: str = "m7", tenant: str = "acme", **payload: Any) -> bytes:
    waba = {"messaging_product": "whatsapp", "to": "27820001234", "type": "text"}
    waba |= {"text": {"body": "hi"}, **payload}
    return orjson.dumps(
        {"metadata": {"tenantId": tenant, "internalId": internal_id}, "wabaPayload": waba}
    )


def test_an_edit_is_validated_like_any_message_and_written_compact() -> None:
    edit = prepare_edit(detail(), b"\xef\xbb\xbf  " + message().replace(b",", b", ") + b"\n", 4096)
    assert edit.message.internal_id == "m7" and b", " not in edit.body
    with pytest.raises(InvalidMessage, match="unknown type"):
        prepare_edit(detail(), message(type="nonsense"), 4096)
    with pytest.raises(InvalidMessage, match="not JSON"):
        prepare_edit(detail(), b'{"metadata": <oops>', 4096)


@pytest.mark.parametrize(
    ("found", "body", "said"),
    [
        (detail(), message(internal_id="another"), "internalId must stay"),
        (detail(), message(tenant="globex"), "tenantId"),
        (detail(state="replayed"), message(), "replayed already"),
    ],
)
def test_an_edit_replaces_that_dead_message_and_makes_no_other(
    found: DeadDetail, body: bytes, said: str
) -> None:
    with pytest.raises(EditRefused, match=said):
        prepare_edit(found, body, 4096)


# -- what the audit trail is told ---------------------------------------------------------------


def test_an_action_is_recorded_against_one_message_one_group_or_the_queue() -> None:
    assert Filter(ids=frozenset({"m1"})).target("dlq") == "message:m1"
    assert Filter(fingerprints=("abc",), codes=frozenset({"1"})).target("dlq") == "group:abc"
    assert Filter(codes=frozenset({"1", "2"})).target("failed") == "dlq:failed"
    assert Filter(codes=frozenset({"2", "1"}), before=NOW).to_json() == {
        "codes": ["1", "2"],
        "before": NOW.isoformat(),
    }


# -- the CLI's refusals ----------------------------------------------------------------------------


@pytest.fixture
def cwd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.mark.usefixtures("cwd")
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["replay", "--fingerprint", "abc", "--yes"], "--yes and --canary-wait go with --canary"),
        (["replay", "--fingerprint", "abc", "--canary", "2", "--dry-run"], "pass one of them"),
        (["replay", "--fingerprint", "abc", "--canary", "2"], "--canary needs the ledger"),
        (["edit", "m7", "--file", "-", "--reason", "r"], "dlq edit needs the ledger"),
        (["edit", "m7", "--file", "-", "--reason", " "], "--reason must not be empty"),
    ],
)
def test_the_cli_refuses_before_touching_the_broker_or_the_ledger(
    args: list[str], said: str
) -> None:
    # WA_AMQP_URL points nowhere and no ledger is set: the refusal comes first.
    env = {"WA_AMQP_URL": "amqp://x:1/", "WA_DATABASE_URL": ""}
    result = CliRunner().invoke(app, ["dlq", *args], env=env, input="{}")
    assert result.exit_code == 2, result.output
    assert said in result.output

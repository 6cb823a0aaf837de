"""What Meta's delivery statuses show operators, against the real PostgreSQL (SPEC §8, §13):
``failures stats|list|show``, ``report costs``, the statuses in ``status ID``, and ``db
prune`` of delivery rows.

Rows are written with SQL, as the status consumer leaves them; each test has a database of
its own, so counts over the whole table are the test's own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from wa_consumer.dlq import fingerprint
from wa_consumer.ledger.migrate import migrate

from .test_ledger_cli import fresh_database, wa_consumer

pytestmark = pytest.mark.integration

UNDELIVERABLE = "Message undeliverable"


@pytest.fixture
async def url(database: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    async with fresh_database(database) as fresh:
        connection = await asyncpg.connect(fresh)
        try:
            await migrate(connection)
        finally:
            await connection.close()
        yield fresh


@pytest.fixture
async def ledger(url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


def new_wamid() -> str:
    return f"wamid.HBgN{uuid.uuid4().hex.upper()}"


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


async def add_message(
    ledger: asyncpg.Connection[Any],
    tenant: str,
    internal_id: str,
    *,
    type_: str = "text",
    status: str = "sent",
    age: timedelta = timedelta(0),
) -> None:
    await ledger.execute(
        """
        INSERT INTO wa_messages (tenant_id, internal_id, phone_number_id, recipient, type,
            status, created_at, updated_at)
        VALUES ($1, $2, '106540352242922', '4915112345678', $3, $4, now() - $5::interval,
            now() - $5::interval)
        """,
        tenant,
        internal_id,
        type_,
        status,
        age,
    )


async def add_delivery(ledger: asyncpg.Connection[Any], **row: Any) -> str:
    """One wa_deliveries row with these columns; returns its wamid."""
    row.setdefault("wamid", new_wamid())
    columns = ", ".join(row)
    values = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    await ledger.execute(f"INSERT INTO wa_deliveries ({columns}) VALUES ({values})", *row.values())
    return str(row["wamid"])


async def add_failure(
    ledger: asyncpg.Connection[Any],
    tenant: str | None,
    internal_id: str,
    code: str = "131026",
    category: str = "permanent",
    message: str = "Message Undeliverable.",
    *,
    type_: str = "text",
    failed: datetime | None = None,
    recipient: str = "4915112345678",
    title: str = UNDELIVERABLE,
) -> str:
    """A message Meta accepted and then reported failed; ``tenant=None``: a status whose send
    is not recorded yet (no message row, tied to nothing)."""
    if tenant is not None:
        await add_message(ledger, tenant, internal_id, type_=type_)
    return await add_delivery(
        ledger,
        tenant_id=tenant,
        internal_id=internal_id if tenant else None,
        callback=internal_id,
        status="failed",
        accepted_at=None if tenant is None else (failed or ago(minutes=5)) - timedelta(seconds=2),
        failed_at=failed or ago(minutes=5),
        recipient=recipient,
        phone_number_id="106540352242922",
        error_code=code,
        error_category=category,
        error_title=title,
        error_message=message,
    )


async def run_json(url: str, tmp_path: Path, *args: str) -> Any:
    code, out, err = await wa_consumer(tmp_path, url, *args, "--json")
    assert (code, err) == (0, ""), err
    return orjson.loads(out)


async def a_morning_of_failures(ledger: asyncpg.Connection[Any]) -> None:
    """Five failures after acceptance, of three tenants (one unknown yet), and a delivery."""
    await add_failure(ledger, "acme", "a-1", failed=ago(hours=30))
    await add_failure(ledger, "acme", "a-2", failed=ago(hours=1))
    await add_failure(
        ledger, "acme", "a-3", "131049", "permanent", "Not delivered to keep the ecosystem "
        "healthy", type_="template", failed=ago(minutes=30), title="Marketing limit",
    )  # fmt: skip
    await add_failure(
        ledger, "globex", "g-1", "131047", "permanent", "More than 24 hours have passed",
        type_="image", failed=ago(minutes=10), title="Re-engagement message",
    )  # fmt: skip
    await add_failure(ledger, None, "orphan-1", failed=ago(minutes=2))
    await add_message(ledger, "acme", "a-ok")
    await add_delivery(
        ledger, tenant_id="acme", internal_id="a-ok", status="delivered",
        accepted_at=ago(minutes=3), delivered_at=ago(minutes=2),
    )  # fmt: skip


# failures stats


async def test_failures_stats_counts_by_category_code_tenant_type_and_names_the_oldest(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_morning_of_failures(ledger)

    stats = await run_json(url, tmp_path, "failures", "stats")

    assert stats["matched"] == 5  # the delivered message is no failure
    assert stats["by_category"] == {"permanent": 5}
    assert stats["by_code"] == {"131026": 3, "131049": 1, "131047": 1}
    assert stats["by_tenant"] == {"acme": 3, "globex": 1, "-": 1}
    assert stats["by_type"] == {"text": 2, "template": 1, "image": 1, "-": 1}
    oldest = stats["oldest"]
    assert (oldest["tenant_id"], oldest["internal_id"]) == ("acme", "a-1")
    assert 30 * 3600 - 60 < oldest["age_seconds"] < 30 * 3600 + 60


@pytest.mark.parametrize(
    ("filters", "matched", "by_tenant", "oldest"),
    [
        (("--since", "2h", "--code", "131026"), 2, {"acme": 1, "-": 1}, "a-2"),
        (("--type", "image", "--type", "template"), 2, {"acme": 1, "globex": 1}, "a-3"),
        (("--tenant", "globex", "--category", "permanent"), 1, {"globex": 1}, "g-1"),
        (("--older-than", "2h"), 1, {"acme": 1}, "a-1"),
        (("--category", "account"), 0, {}, None),
    ],
)
async def test_failures_stats_counts_only_what_the_filters_select(
    ledger: asyncpg.Connection[Any],
    url: str,
    tmp_path: Path,
    filters: tuple[str, ...],
    matched: int,
    by_tenant: dict[str, int],
    oldest: str | None,
) -> None:
    await a_morning_of_failures(ledger)

    stats = await run_json(url, tmp_path, "failures", "stats", *filters)

    assert (stats["matched"], stats["by_tenant"]) == (matched, by_tenant)
    assert sum(g["count"] for g in stats["by_fingerprint"]) == matched
    assert (stats["oldest"] or {}).get("internal_id") == oldest


async def test_failures_stats_readable_view_shows_the_counts_and_the_oldest(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_morning_of_failures(ledger)

    code, out, err = await wa_consumer(tmp_path, url, "failures", "stats", "--tenant", "acme")

    assert (code, err) == (0, "")
    assert out.startswith("failures after acceptance: 3 match the filters")
    assert "oldest failed 1d 6h ago" in out and "a-1 of acme" in out
    assert "by category" in out and "by code" in out and "by failure fingerprint" in out
    assert "131049" in out and "Not delivered to keep the ecosystem healthy" in out
    assert "globex" not in out and "131047" not in out


async def test_fingerprint_groups_two_failures_whose_texts_differ_only_in_numbers_and_ids(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    first = "Undeliverable to +4915112345678 (wamid.HBgNABC123=) at 2026-11-24T12:00:00Z"
    second = "Undeliverable to +4930123456 (wamid.HBgNXYZ987=) at 2026-11-25T08:30:12Z"
    await add_failure(ledger, "acme", "fp-1", message=first)
    await add_failure(ledger, "globex", "fp-2", message=second)
    await add_failure(ledger, "acme", "fp-3", message="Recipient blocked the business")

    stats = await run_json(url, tmp_path, "failures", "stats")

    groups = {g["fingerprint"]: g for g in stats["by_fingerprint"]}
    assert len(groups) == 2
    shared = stats["by_fingerprint"][0]
    assert (shared["count"], shared["tenants"]) == (2, 2)
    assert shared["pattern"] == "Undeliverable to <n> (<wamid>) at <time>"
    # The DLQ's own fingerprint function: causes are grouped by one rule on both sides.
    assert shared["fingerprint"] == fingerprint("permanent", "131026", first)

    listed = await run_json(
        url, tmp_path, "failures", "list", "--fingerprint", shared["fingerprint"][:6]
    )
    assert sorted(r["internal_id"] for r in listed["records"]) == ["fp-1", "fp-2"]
    assert {r["fingerprint"] for r in listed["records"]} == {shared["fingerprint"]}
    only = await run_json(
        url, tmp_path, "failures", "stats", "--fingerprint", shared["fingerprint"]
    )
    assert (only["matched"], only["by_tenant"]) == (2, {"acme": 1, "globex": 1})


# failures list


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ((), ["orphan-1", "g-1", "a-3", "a-2", "a-1"]),  # newest first
        (("--tenant", "acme"), ["a-3", "a-2", "a-1"]),
        (("--tenant", "acme", "--tenant", "globex"), ["g-1", "a-3", "a-2", "a-1"]),
        (("--category", "permanent", "--code", "131047"), ["g-1"]),
        (("--code", "131026"), ["orphan-1", "a-2", "a-1"]),
        (("--type", "template"), ["a-3"]),
        (("--tenant", "-"), ["orphan-1"]),  # statuses whose send is not recorded yet
        (("--type", "-"), ["orphan-1"]),
        (("--category", "account"), []),
        (("--since", "2h"), ["orphan-1", "g-1", "a-3", "a-2"]),
        (("--since", "2h", "--tenant", "acme", "--code", "131026"), ["a-2"]),
        (("--older-than", "1d"), ["a-1"]),
    ],
)
async def test_failures_list_applies_each_filter(
    ledger: asyncpg.Connection[Any],
    url: str,
    tmp_path: Path,
    filters: tuple[str, ...],
    expected: list[str],
) -> None:
    await a_morning_of_failures(ledger)

    page = await run_json(url, tmp_path, "failures", "list", *filters)

    shown = [r["internal_id"] or r["callback"] for r in page["records"]]
    assert (shown, page["matched"]) == (expected, len(expected))


async def test_failures_list_json_holds_what_meta_said_of_each_failed_wamid(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    wamid = await add_failure(
        ledger, "globex", "g-1", "131047", "permanent", "More than 24 hours have passed",
        type_="image", title="Re-engagement message", recipient="4930123456",
    )  # fmt: skip

    [record] = (await run_json(url, tmp_path, "failures", "list"))["records"]

    assert record["wamid"] == wamid
    assert (record["tenant_id"], record["internal_id"], record["type"]) == (
        "globex",
        "g-1",
        "image",
    )
    assert (record["recipient"], record["code"], record["category"]) == (
        "4930123456",
        "131047",
        "permanent",
    )
    assert record["title"] == "Re-engagement message"
    assert record["message"] == "More than 24 hours have passed"
    assert datetime.fromisoformat(record["failed_at"]) > ago(minutes=6)


def _after_time(row: str) -> list[str]:
    words = row.split()
    at = next(i for i, w in enumerate(words) if re.fullmatch(r"\d\d:\d\d:\d\d", w))
    return words[at + 1 :]


async def test_failures_list_readable_view_shows_one_row_per_failed_wamid(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_morning_of_failures(ledger)

    code, out, err = await wa_consumer(tmp_path, url, "failures", "list", "--limit", "3")

    assert (code, err) == (0, "")
    head, columns, _rule, *rows = out.splitlines()
    assert head == "failures after acceptance: 5 match; showing 1-3 (newest first)"
    assert columns.split()[:3] == ["age", "failed", "(UTC)"]
    # Newest first; a status whose send is not recorded yet has no tenant or id to show.
    # The cells after the failed time (the age before it is one word or two: "2m", "2m 5s").
    orphan, globex, acme = (_after_time(row) for row in rows)
    assert orphan[:3] == ["-", "-", "-"] and "131026" in orphan
    assert globex[:7] == ["globex", "g-1", "image", "4915112345678", "permanent", "131047",
                          "Re-engagement"]  # fmt: skip
    assert rows[1].rstrip().endswith("Re-engagement message: More than 24 hours have passed")
    assert acme[:2] == ["acme", "a-3"] and "template" in acme and "131049" in acme
    assert "a-2" not in out  # beyond --limit


async def test_failures_list_pages_with_limit_and_offset(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_morning_of_failures(ledger)

    page = await run_json(url, tmp_path, "failures", "list", "--limit", "2", "--offset", "2")

    assert (page["matched"], page["offset"], page["limit"]) == (5, 2, 2)
    assert [r["internal_id"] for r in page["records"]] == ["a-3", "a-2"]


async def test_failures_show_finds_a_message_by_internal_id_or_wamid(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    wamid = await add_failure(ledger, "acme", "s-1", message="Undeliverable: 131026")

    by_id = await run_json(url, tmp_path, "failures", "show", "s-1")
    by_wamid = await run_json(url, tmp_path, "failures", "show", wamid)
    code, out, err = await wa_consumer(tmp_path, url, "failures", "show", "s-1")

    assert by_id == by_wamid
    assert [(r["wamid"], r["tenant_id"], r["code"]) for r in by_id] == [(wamid, "acme", "131026")]
    assert (code, err) == (0, "")
    assert wamid in out and "Undeliverable: 131026" in out and by_id[0]["fingerprint"] in out


async def test_failures_show_of_an_id_with_no_failure_exits_1(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_morning_of_failures(ledger)
    code, out, err = await wa_consumer(tmp_path, url, "failures", "show", "a-ok")
    assert (code, out) == (1, "")
    assert "no failure after acceptance of 'a-ok'" in err


async def test_failures_refuse_a_since_they_cannot_read_and_need_a_database(
    url: str, tmp_path: Path
) -> None:
    code, out, err = await wa_consumer(tmp_path, url, "failures", "list", "--since", "yesterday")
    assert (code, out) == (2, "")
    assert "--since" in err and "7d" in err
    code, out, err = await wa_consumer(tmp_path, None, "failures", "stats")
    assert (code, out) == (2, "")
    assert "WA_DATABASE_URL" in err


# report costs


async def priced(
    ledger: asyncpg.Connection[Any],
    tenant: str | None,
    billable: bool | None,
    category: str | None = None,
    *,
    received: timedelta = timedelta(hours=1),
    model: str = "PMP",
) -> None:
    await add_delivery(
        ledger, tenant_id=tenant, internal_id=f"m-{uuid.uuid4().hex[:8]}" if tenant else None,
        status="delivered", received_at=datetime.now(UTC) - received, pricing_billable=billable,
        pricing_category=category, pricing_model=model if billable is not None else None,
    )  # fmt: skip


async def a_week_of_prices(ledger: asyncpg.Connection[Any]) -> None:
    for _ in range(3):
        await priced(ledger, "acme", True, "marketing")
    await priced(ledger, "acme", True, "utility")
    await priced(ledger, "acme", False, "service")
    await priced(ledger, "acme", None)  # accepted, not priced yet
    await priced(ledger, "acme", True, "marketing", received=timedelta(days=10))
    await priced(ledger, "globex", True, "authentication")
    await priced(ledger, "globex", True, "marketing", received=timedelta(days=6))
    await add_failure(ledger, "acme", "never-billed")  # failed unpriced: not in the report


async def test_report_costs_counts_billable_messages_per_tenant_and_category(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_week_of_prices(ledger)

    report = await run_json(url, tmp_path, "report", "costs", "--since", "7d")

    rows = [(r["tenant"], r["category"], r["model"], r["billable"], r["non_billable"])
            for r in report["rows"]]  # fmt: skip
    assert rows == [
        ("acme", "marketing", "PMP", 3, 0),
        ("acme", "service", "PMP", 0, 1),
        ("acme", "utility", "PMP", 1, 0),
        ("globex", "authentication", "PMP", 1, 0),
        ("globex", "marketing", "PMP", 1, 0),
    ]
    assert report["by_tenant"] == {
        "acme": {"billable": 4, "non_billable": 1, "unpriced": 1},
        "globex": {"billable": 2, "non_billable": 0, "unpriced": 0},
    }
    assert report["by_category"]["marketing"] == {"billable": 4, "non_billable": 0, "unpriced": 0}
    assert report["total"] == {"billable": 6, "non_billable": 1, "unpriced": 1}


@pytest.mark.parametrize(
    ("args", "total"),
    [
        (("--since", "1d"), {"billable": 5, "non_billable": 1, "unpriced": 1}),
        (("--since", "30d"), {"billable": 7, "non_billable": 1, "unpriced": 1}),
        (("--tenant", "globex"), {"billable": 2, "non_billable": 0, "unpriced": 0}),
        (
            ("--tenant", "globex", "--since", "2d"),
            {"billable": 1, "non_billable": 0, "unpriced": 0},
        ),
    ],
)
async def test_report_costs_since_and_tenant_narrow_the_report(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path, args: tuple[str, ...], total: Any
) -> None:
    await a_week_of_prices(ledger)

    report = await run_json(url, tmp_path, "report", "costs", *args)

    assert report["total"] == total
    if "--tenant" in args:
        assert report["tenants"] == ["globex"] and set(report["by_tenant"]) == {"globex"}


async def test_report_costs_readable_view_shows_tenants_categories_and_totals(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await a_week_of_prices(ledger)

    code, out, err = await wa_consumer(tmp_path, url, "report", "costs")

    assert (code, err) == (0, "")
    first = out.splitlines()[0]
    assert first.startswith("billable messages since ") and "(7d)" in first
    assert first.endswith("6 billable, 1 not billable, 1 not priced yet")
    table = {tuple(line.split()) for line in out.splitlines()}
    assert ("acme", "marketing", "PMP", "3", "0") in table
    assert ("globex", "authentication", "PMP", "1", "0") in table
    assert any(line[:4] == ("acme", "4", "1", "1") for line in table)  # by tenant


async def test_report_costs_refuses_a_since_it_cannot_read(url: str, tmp_path: Path) -> None:
    code, out, err = await wa_consumer(tmp_path, url, "report", "costs", "--since", "lately")
    assert (code, out) == (2, "")
    assert "--since" in err


# status ID


async def a_message_sent_twice(ledger: asyncpg.Connection[Any]) -> tuple[str, str]:
    """An ambiguous send retried: both went out, one read (priced), the other failed."""
    await add_message(ledger, "acme", "twice")
    # The first accepted sorts last by wamid: the order shown is the order of acceptance.
    read = await add_delivery(
        ledger, wamid=f"wamid.Z{uuid.uuid4().hex}", tenant_id="acme", internal_id="twice",
        status="read",
        accepted_at=ago(minutes=10), sent_at=ago(minutes=10), delivered_at=ago(minutes=9),
        read_at=ago(minutes=8), pricing_billable=True, pricing_category="utility",
        pricing_model="PMP", conversation_id="c0ffee42", conversation_origin="utility",
    )  # fmt: skip
    failed = await add_delivery(
        ledger, wamid=f"wamid.A{uuid.uuid4().hex}", tenant_id="acme", internal_id="twice",
        status="failed",
        accepted_at=ago(minutes=5), failed_at=ago(minutes=4), error_code="131049",
        error_category="permanent", error_title="Marketing limit",
        error_message="Not delivered to keep the ecosystem healthy",
    )  # fmt: skip
    return read, failed


async def test_status_json_carries_each_wamids_statuses_and_pricing(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    read, failed = await a_message_sent_twice(ledger)

    shown = await run_json(url, tmp_path, "status", "twice")

    first, second = shown["statuses"]
    assert (first["wamid"], first["status"], second["wamid"], second["status"]) == (
        read,
        "read",
        failed,
        "failed",
    )
    assert all(first[t] for t in ("accepted_at", "sent_at", "delivered_at", "read_at"))
    assert (first["pricing_billable"], first["pricing_category"]) == (True, "utility")
    assert first["conversation_id"] == "c0ffee42"
    assert (second["error_code"], second["error_category"]) == ("131049", "permanent")
    assert shown["attempts"] == []  # the existing shape is kept


def boxed_rows(text: str) -> list[dict[str, str]]:
    """The two-column boxed tables of ``status``'s readable view, as label -> value."""
    tables: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("┌"):
            tables.append({})
        elif line.startswith("│"):
            label, value = (cell.strip() for cell in line.strip("│").split("│"))
            tables[-1][label] = value
    return tables


async def test_status_readable_view_shows_delivered_read_failed_and_pricing(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    read, failed = await a_message_sent_twice(ledger)

    code, out, err = await wa_consumer(tmp_path, url, "status", "twice")

    assert (code, err) == (0, "")
    message, first, second = boxed_rows(out)
    assert (message["tenant"], message["status"]) == ("acme", "sent")
    assert out.count("delivery statuses (times in UTC)") == 2
    # In the order Meta accepted them: the read one, then the one that failed.
    assert (first["wamid"], first["status"]) == (read, "read")
    for label in ("accepted", "sent", "delivered", "read"):
        assert datetime.fromisoformat(first[label] + "+00:00") > ago(minutes=11)
    assert (first["failed"], first["error"]) == ("-", "-")
    assert first["pricing"] == "billable, utility, PMP"
    assert first["conversation"] == "c0ffee42, utility"
    assert (second["wamid"], second["status"]) == (failed, "failed")
    assert (second["sent"], second["delivered"], second["pricing"]) == ("-", "-", "-")
    assert datetime.fromisoformat(second["failed"] + "+00:00") > ago(minutes=5)
    assert second["error"] == (
        "131049, permanent, Marketing limit, Not delivered to keep the ecosystem healthy"
    )


async def test_status_of_a_message_with_no_wamid_says_no_statuses(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    await add_message(ledger, "acme", "dead-one", status="dead")
    code, out, err = await wa_consumer(tmp_path, url, "status", "dead-one")
    assert (code, err) == (0, "")
    assert "no delivery statuses recorded" in out


# db prune


async def test_prune_removes_old_delivery_rows_with_their_message_and_untied_ones_by_age(
    ledger: asyncpg.Connection[Any], url: str, tmp_path: Path
) -> None:
    old, recent = timedelta(days=100), timedelta(days=1)
    await add_message(ledger, "acme", "old", age=old)
    old_tied = await add_delivery(
        ledger, tenant_id="acme", internal_id="old", status="read", received_at=ago(days=100)
    )
    await add_message(ledger, "acme", "recent", age=recent)
    kept_tied = await add_delivery(
        ledger, tenant_id="acme", internal_id="recent", status="read", received_at=ago(days=1)
    )
    # Tied statuses go by their message's age, not their own: this one's message is recent.
    kept_old_status = await add_delivery(
        ledger, tenant_id="acme", internal_id="recent", status="failed", received_at=ago(days=99)
    )
    old_untied = await add_delivery(ledger, status="delivered", received_at=ago(days=100))
    kept_untied = await add_delivery(ledger, status="delivered", received_at=ago(days=1))
    orphan = await add_delivery(  # its message pruned before statuses were
        ledger, tenant_id="acme", internal_id="gone", status="read", received_at=ago(days=100)
    )

    code, out, err = await wa_consumer(
        tmp_path, url, "db", "prune", "--older-than", "30d", "--batch", "1"
    )

    assert (code, err) == (0, "")
    assert out.startswith("removed 1 sent or dead messages not updated for 30d")
    assert ", 2 older delivery statuses of no message," in out
    left = {r["wamid"] for r in await ledger.fetch("SELECT wamid FROM wa_deliveries")}
    assert left == {kept_tied, kept_old_status, kept_untied}
    assert old_tied not in left and old_untied not in left and orphan not in left

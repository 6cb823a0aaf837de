"""``wa-consumer demo`` as a newcomer runs it: every outcome toured, delivery statuses shown,
then nothing left behind (neither its vhost nor its scratch database)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import asyncpg
import pytest

from tests.conftest import PG_URL

pytestmark = pytest.mark.integration

DEAD_CATEGORIES = (
    "invalid",
    "expired",
    "permanent",
    "account",
    "tenant_suspended",
    "tenant_unknown",
)


def _vhosts() -> set[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {line.strip() for line in out.splitlines()}


def _databases() -> set[str]:
    async def names() -> set[str]:
        connection = await asyncpg.connect(PG_URL, timeout=10)
        try:
            return {r["datname"] for r in await connection.fetch("SELECT datname FROM pg_database")}
        finally:
            await connection.close()

    return asyncio.run(names())


def test_demo_ends_every_message_where_expected_and_removes_its_vhost_and_database() -> None:
    env = dict(os.environ)
    env.setdefault("WA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    env["WA_DATABASE_URL"] = PG_URL  # the server the demo makes its scratch ledger on
    proc = subprocess.run(
        [sys.executable, "-m", "wa_consumer", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "every message ended where expected" in out

    for category in DEAD_CATEGORIES:
        assert re.search(rf"\bdead\s+{category}\b", out), f"no row dead as {category}:\n{out}"

    # Rows like "transient 131000 twice, then sent   text   acme   3   sent".
    retried = re.findall(r"then sent\s+\S+\s+\S+\s+(\d+)\s+sent\b", out)
    assert len(retried) >= 3, out
    assert all(int(attempts) >= 2 for attempts in retried), out
    assert re.search(r"131000 twice, then sent\s+text\s+acme\s+3\s+sent\b", out), out

    vhost = re.search(r"vhost (wa-demo-[0-9a-f]+)", out)
    assert vhost is not None, out
    assert f"removed vhost {vhost[1]}" in out
    assert vhost[1] not in _vhosts()

    # Delivery statuses: counts, and the failures after acceptance as `failures list` shows
    # them, with the undeliverable one ("... acme  demo-...  text  1555010...  permanent  131026").
    database = re.search(r"ledger\s+database (wa_demo_[0-9a-f]+)", out)
    assert database is not None, out
    assert "Delivery statuses" in out
    assert re.search(r"latest status of each: .*\b(delivered|read) [1-9].*\bfailed 2\b", out), out
    assert "failures after acceptance: 2 match" in out
    for recipient, code in (("1555010", "131026"), ("1555011", "131047")):
        row = rf"\bacme\s+demo-[0-9a-f-]+\s+text\s+{recipient}\d+\s+permanent\s+{code}\b"
        assert re.search(row, out), f"no failure {code} after acceptance listed:\n{out}"
    assert "wa-consumer failures list" in out
    assert f"dropped database {database[1]}" in out
    assert database[1] not in _databases()

"""``wa-consumer demo`` as a newcomer runs it: every outcome toured, then nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

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


def test_demo_ends_every_message_where_expected_and_removes_its_vhost() -> None:
    env = dict(os.environ)
    env.setdefault("WA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
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

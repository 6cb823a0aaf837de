"""`topology export --format definitions` and the config/definitions.json made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wa_consumer.cli import app
from wa_consumer.definitions import definitions, render, vhost_of
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology

FILE = Path(__file__).resolve().parents[2] / "config" / "definitions.json"
REGENERATE = "wa-consumer topology export --format definitions > config/definitions.json"


@pytest.fixture
def no_wa_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default settings: no WA_ variable and no .env file in the working directory."""
    import os

    for name in [n for n in os.environ if n.startswith("WA_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_config_definitions_json_is_the_export_of_the_default_settings(no_wa_env: None) -> None:
    fresh = render(definitions(Topology.from_settings(Settings())))
    assert FILE.read_text(encoding="utf-8") == fresh, (
        f"config/definitions.json is stale: run `{REGENERATE}`"
    )


def test_every_queue_exchange_and_binding_of_the_topology_is_in_the_definitions() -> None:
    settings = Settings(_env_file=None, queue_type="quorum", retry_delays=[0.5, 90])
    topology = Topology.from_settings(settings)
    defs = definitions(topology, "prod")
    assert [e["name"] for e in defs["exchanges"]] == list(topology.exchanges)
    assert {q["name"]: q["arguments"] for q in defs["queues"]} == {
        q.name: q.arguments for q in topology.queues
    }
    assert all(q["arguments"]["x-queue-type"] == "quorum" for q in defs["queues"])
    assert {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]} == {
        (q.bind_exchange, q.name, key) for q in topology.queues for key in q.bind_keys
    }
    every = defs["exchanges"] + defs["queues"] + defs["bindings"]
    assert {item["vhost"] for item in every} == {"prod"}
    assert all(item["durable"] and not item["auto_delete"] for item in defs["queues"])


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://rabbit", "/"),
        ("amqp://rabbit/%2F", "/"),
        ("amqps://u:p@rabbit:5671/prod", "prod"),
        ("amqp://rabbit/team%2Fprod", "team/prod"),
    ],
)
def test_the_vhost_is_the_one_the_amqp_url_opens(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_export_writes_the_file_with_the_vhost_of_the_url_or_the_option(
    no_wa_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WA_AMQP_URL", "amqp://u:p@rabbit/prod")
    runner = CliRunner()
    out = tmp_path / "defs.json"
    result = runner.invoke(app, ["topology", "export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert {q["vhost"] for q in json.loads(out.read_text())["queues"]} == {"prod"}
    result = runner.invoke(app, ["topology", "export", "--format", "definitions", "--vhost", "x"])
    assert result.exit_code == 0, result.output
    assert {q["vhost"] for q in json.loads(result.stdout)["queues"]} == {"x"}
    result = runner.invoke(app, ["topology", "export", "--format", "yaml"])
    assert result.exit_code == 2

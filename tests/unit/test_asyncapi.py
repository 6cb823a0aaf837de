"""``config/asyncapi.yaml`` is valid AsyncAPI 3.0 and says what the daemon does.

Valid: against the official AsyncAPI 3.0.0 JSON Schema, kept in ``tests/schemas/`` (from npm
``@asyncapi/specs`` 6.11.1, Apache-2.0: ``ASYNCAPI_LICENSE`` and ``ASYNCAPI_NOTICE`` beside it);
the file bundles every definition it refers to, AMQP bindings included, so nothing is fetched.
True: every exchange, queue and routing key is the topology's (``Topology.from_settings`` with
the default settings, the same as ``config/definitions.json``), every header one the daemon
writes, the dead categories ``categories.DEAD``, and the inbound copy what ``Forwarder``
publishes. Needs PyYAML and jsonschema (the test extra).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from wa_consumer import headers as h
from wa_consumer.categories import DEAD
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology

yaml = pytest.importorskip("yaml", reason="reading the document needs PyYAML")
jsonschema = pytest.importorskip("jsonschema", reason="validating needs jsonschema")

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "config" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"
MESSAGE_SCHEMA = ROOT / "config" / "outbound-message.schema.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def asyncapi_validator() -> Any:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def topology() -> Topology:
    saved = {k: v for k, v in os.environ.items() if k.startswith("WA_")}
    for name in saved:
        del os.environ[name]
    try:
        return Topology.from_settings(Settings(_env_file=None))
    finally:
        os.environ.update(saved)


def _amqp(channel: dict[str, Any]) -> dict[str, Any]:
    binding: dict[str, Any] = channel["bindings"]["amqp"]
    return binding


def _channels(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: c for k, c in doc["channels"].items() if _amqp(c)["is"] == kind}


# -- valid AsyncAPI -----------------------------------------------------------------------------


def test_the_document_is_valid_asyncapi_3(doc: dict[str, Any], asyncapi_validator: Any) -> None:
    assert doc["asyncapi"] == "3.0.0"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in asyncapi_validator.iter_errors(doc)]
    assert errors == []
    assert (ASYNCAPI_SCHEMA.parent / "ASYNCAPI_LICENSE").is_file()


def test_the_validator_applies_the_amqp_bindings(
    doc: dict[str, Any], asyncapi_validator: Any
) -> None:
    broken = json.loads(json.dumps(doc))
    broken["operations"]["sendOutbound"]["bindings"]["amqp"]["deliveryMode"] = 3
    assert not asyncapi_validator.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    broken["channels"]["outboundPublish"]["bindings"]["amqp"]["is"] = "exchange"
    assert not asyncapi_validator.is_valid(broken)


def test_the_outbound_payload_is_the_json_schema_by_reference(doc: dict[str, Any]) -> None:
    for name in ("outboundMessage", "retriedMessage"):
        payload = doc["components"]["messages"][name]["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        target = (DOCUMENT.parent / payload["schema"]["$ref"]).resolve()
        assert target == MESSAGE_SCHEMA
    message_schema = json.loads(MESSAGE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(message_schema)
    for example in doc["components"]["messages"]["outboundMessage"]["examples"]:
        assert [e.message for e in validator.iter_errors(example["payload"])] == []


# -- the daemon's topology ----------------------------------------------------------------------


def test_exchanges_and_queues_are_the_topology_s(doc: dict[str, Any], topology: Topology) -> None:
    exchanges = {_amqp(c)["exchange"]["name"] for c in _channels(doc, "routingKey").values()}
    assert exchanges == set(topology.exchanges)
    queues = _channels(doc, "queue")
    assert {_amqp(c)["queue"]["name"] for c in queues.values()} == {q.name for q in topology.queues}
    for channel in queues.values():
        assert channel["address"] == _amqp(channel)["queue"]["name"]
        assert _amqp(channel)["queue"]["durable"] is True
    for channel in _channels(doc, "routingKey").values():
        assert _amqp(channel)["exchange"]["type"] == "topic"
        assert _amqp(channel)["exchange"]["durable"] is True


def _topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: ``*`` one word, ``#`` zero or more."""
    words = [re.escape(w) if w not in "*#" else w for w in pattern.split(".")]
    regex = r"\.".join(words).replace("*", r"[^.]+")
    regex = regex.replace(r"\.#", r"(?:\.[^.]+)*").replace("#", r"(?:[^.]+(?:\.[^.]+)*)?")
    return re.fullmatch(regex, key) is not None


@pytest.mark.parametrize(
    ("channel", "queue"),
    [
        ("outboundPublish", "outbound-processed"),
        ("deadLetter", "outbound-failed"),
        ("webhookPublish", "inbound-webhooks"),
        ("inboundMessage", "inbound-messages"),
    ],
)
def test_each_routing_key_reaches_its_queue_and_no_other(
    doc: dict[str, Any], topology: Topology, channel: str, queue: str
) -> None:
    spec = doc["channels"][channel]
    exchange = _amqp(spec)["exchange"]["name"]
    key = re.sub(r"\{[^}]+\}", "acme-1", spec["address"])
    reached = {
        q.name
        for q in topology.queues
        if q.bind_exchange == exchange and any(_topic_match(k, key) for k in q.bind_keys)
    }
    assert reached == {queue}
    for parameter in re.findall(r"\{([^}]+)\}", spec["address"]):
        assert parameter in spec["parameters"]


def test_routing_keys_are_the_settings(doc: dict[str, Any]) -> None:
    s = Settings(_env_file=None)
    channels = doc["channels"]
    assert channels["outboundPublish"]["address"] == f"{s.routing_key_prefix}.{{tenantId}}"
    assert channels["deadLetter"]["address"] == s.dead_routing_key
    assert channels["webhookPublish"]["address"] == s.webhook_routing_key
    assert channels["inboundMessage"]["address"] == f"{s.inbound_routing_key}.{{phoneNumberId}}"


def test_producers_publish_persistent_json_confirmed(doc: dict[str, Any]) -> None:
    send = doc["operations"]["sendOutbound"]
    assert send["action"] == "send"
    assert send["channel"] == {"$ref": "#/channels/outboundPublish"}
    assert _amqp(send) == {"deliveryMode": 2, "mandatory": True, "bindingVersion": "0.3.0"}
    message = doc["components"]["messages"]["outboundMessage"]
    assert message["contentType"] == "application/json"
    assert message["correlationId"]["location"] == "$message.payload#/metadata/internalId"


# -- headers and categories ---------------------------------------------------------------------

FAILURE_HEADERS = {
    h.RETRY_COUNT, h.ERROR_CATEGORY, h.ERROR_CODE, h.ERROR_SUBCODE, h.ERROR_MESSAGE,
    h.FIRST_FAILED, h.FAILED_AT, h.ORIGINAL_KEY, h.TENANT, h.REPLAY_COUNT, h.DROPPED,
}  # fmt: skip


def test_the_failure_headers_are_the_daemon_s(doc: dict[str, Any]) -> None:
    defined = {v for k, v in vars(h).items() if k.isupper() and isinstance(v, str)}
    listed = set(doc["components"]["schemas"]["failureHeaders"]["properties"])
    assert listed <= defined, f"not in wa_consumer/headers.py: {sorted(listed - defined)}"
    assert listed == FAILURE_HEADERS
    dead = doc["components"]["messages"]["deadMessage"]["headers"]["allOf"]
    assert dead[0] == {"$ref": "#/components/schemas/failureHeaders"}
    assert set(dead[1]["properties"]) <= FAILURE_HEADERS


def test_the_dead_categories_are_categories_dead(doc: dict[str, Any]) -> None:
    enum = doc["components"]["schemas"]["deadCategory"]["enum"]
    assert enum == [str(c) for c in DEAD]


def test_the_inbound_copy_is_what_the_forwarder_publishes(doc: dict[str, Any]) -> None:
    from wa_consumer.webhooks.forward import Forwarder
    from wa_consumer.webhooks.payload import Inbound

    published: list[tuple[Any, str, bool]] = []

    class Exchange:
        async def publish(
            self, message: Any, routing_key: str, mandatory: bool, timeout: float
        ) -> None:
            published.append((message, routing_key, mandatory))

    forwarder = Forwarder(
        Settings(_env_file=None),
        Exchange(),  # type: ignore[arg-type]
        Exchange(),  # type: ignore[arg-type]
        asyncio.Event(),
    )
    value = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.A"}]}'
    inbound = Inbound("106540352242922", value, 1, waba_id="102290129340398", first_id="wamid.A")
    assert asyncio.run(forwarder.forward([inbound]))

    [(message, routing_key, mandatory)] = published
    spec = doc["components"]["messages"]["inboundMessage"]
    assert set(message.headers) == set(spec["headers"]["properties"])
    assert set(spec["headers"]["required"]) <= set(message.headers)
    assert message.content_type == spec["contentType"]
    assert message.message_id == "wamid.A"
    assert int(message.delivery_mode) == 2 and mandatory
    address = doc["channels"]["inboundMessage"]["address"]
    assert routing_key == address.replace("{phoneNumberId}", "106540352242922")

"""The topology as RabbitMQ definitions, for brokers where the daemon may not declare.

The JSON is what ``rabbitmqctl import_definitions`` and the management plugin's
``load_definitions`` take. It holds only exchanges, queues and bindings: users, vhosts,
permissions and the broker's version belong to whoever runs the broker, and leaving them out
keeps ``config/definitions.json`` the same on every machine.
"""

from __future__ import annotations

import json
from typing import Any

from yarl import URL

from .topology import Topology

#: Keys of the JSON, in the management plugin's spelling.
Definitions = dict[str, list[dict[str, Any]]]


def vhost_of(amqp_url: str) -> str:
    """The vhost a connection to ``amqp_url`` opens, read as aiormq reads it."""
    path = URL(amqp_url).path  # decoded: ``/%2F`` is ``//``, the vhost ``/``
    return "/" if path in ("", "/") else path[1:]


def definitions(topology: Topology, vhost: str = "/") -> Definitions:
    """Every exchange, queue and binding of ``topology``, in the order the daemon declares."""
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name in topology.exchanges
    ]
    queues = [
        {
            "name": spec.name,
            "vhost": vhost,
            "durable": True,
            "auto_delete": False,
            "arguments": dict(spec.arguments or {}),
        }
        for spec in topology.queues
    ]
    bindings = [
        {
            "source": spec.bind_exchange,
            "vhost": vhost,
            "destination": spec.name,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }
        for spec in topology.queues
        if spec.bind_exchange
        for key in spec.bind_keys
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def render(defs: Definitions) -> str:
    """Pretty, keys sorted, a final newline: the file diffs well and regenerates byte-equal."""
    return json.dumps(defs, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

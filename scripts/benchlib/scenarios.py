"""The scenarios, in the order one round measures them, and what each daemon runs with.

floor
    A bare aio-pika consumer in the bench process: same prefetch, same event loop (uvloop),
    a callback that only acks. What a user would write with no features.
zero-off
    The daemon against the sandbox at 0 ms, no ledger (no ``WA_DATABASE_URL``).
zero-on
    The same with the ledger in the run's scratch database.
plain-zero
    What a user would write instead of the daemon, with no features: an aio-pika consumer in
    the bench process that POSTs each ``wabaPayload`` to the sandbox with aiohttp (one session,
    tokens fetched once per tenant) and acks it; the sandbox at 0 ms, the floor's prefetch.
    How close to the floor the HTTP client alone lets a consumer come on this machine.
plain
    The same consumer with the latency and prefetch of ``latency``.
latency
    The sandbox answering after 100 ms (``--latency-ms``), ledger on, ``WA_PREFETCH=500``
    (``--latency-prefetch``).
plain-tls, latency-tls
    ``plain`` and ``latency`` over HTTPS, as Meta serves the Cloud API (issue 17): the
    sandbox's TLS port, its CA trusted by the plain consumer's aiohttp session and by the
    daemon through ``WA_GRAPH_CA_FILE``; HTTP/1.1 (neither client offers h2, ``WA_GRAPH_HTTP2``
    off). The tenant service stays on plain HTTP. Each measurement reports the connections its
    client opened (counted by the sandbox) and its CPU per message.
latency-h2
    ``latency-tls`` over HTTP/2 (``WA_GRAPH_HTTP2=true``, pyreqwest only): every send on one
    connection, at most ``--http2-max-streams`` at once (the sandbox's SETTINGS, 100 as its
    default); reports the HTTP/2 connections among those opened.
workers-1, workers-2
    ``python -m wa_consumer run --workers N`` as ``zero-on`` (0 ms, ledger on, the floor's
    prefetch in each worker): with N = 2 a supervisor and two daemon processes on the same
    queue, each with its own connections; with N = 1 ``run`` is the daemon itself, no
    supervisor, measured the same way beside it. Timed from the moment every worker consumes
    (as many consumers on the queue as workers; the sends answered before are counted apart);
    the supervisor's ``/readyz`` must answer 200 during the drain. Each reports CPU µs per
    message summed over the supervisor and every worker (their pids from the process tree),
    the peak RSS of each worker (the 200 MB target applies per worker) and of the supervisor,
    and the messages each worker sent (the supervisor's merged ``/metrics``); the report adds
    ``workers-2 / workers-1``. On 2 cores the workers share the machine with RabbitMQ,
    PostgreSQL and the sandbox: the ratio says what a second process buys there. Measure it
    on an otherwise idle machine: while other processes compete for the cores, two workers
    also get a larger share of them than one, and the ratio overstates the gain.

Not in the default set, chosen by name in ``--scenarios``:

workers-1-latency, workers-2-latency
    The same at the latency and prefetch of ``latency`` (100 ms, 500 in flight per worker).
    On this machine one daemon is slower at 100 ms than at 0 ms and a second worker gains
    more there; the pair to run when sizing ``--workers`` for the Cloud API's latency, left
    out of the default round to keep it short.

Delivery statuses (issue 14), not in the default set (chosen by name in ``--scenarios``):

webhooks
    ``wa-consumer webhook`` accepting N signed status webhooks from a load generator in a
    process of its own (``--webhook-concurrency`` requests in flight, 200), each published with
    a confirm before its 200; against the floor measured just before it in the same round: the
    same bodies published with confirms from one aio-pika channel, as many in flight.
statuses
    ``wa-consumer run`` (ledger on, nothing to send) applying the statuses of N webhook bodies
    pre-filled into its webhook queue to messages already in the ledger; its own defaults but
    ``WA_STATUSES_PREFETCH`` (``--statuses-prefetch``, default the daemon's).

The daemon runs with its own defaults except: broker names unique to the measurement, the
sandbox as Cloud API and tenant service, ``/metrics`` on a free port, the log level of
``--log-level`` (default the daemon's own, INFO: one JSON line per message, to a file), and
``WA_NUMBER_RATE=0`` unless ``--number-rate`` is given: the per-number limit (80/s by default)
would cap the bench at 80/s per number, and the bench measures the pipeline (the limiter has
tests of its own).

``--transports aiohttp,pyreqwest`` measures every daemon scenario once per Cloud API transport
in each round (``WA_GRAPH_TRANSPORT``), one after the other, their order turned about in every
second round: the first named keeps the scenario's key (the targets are computed for it), the
others are ``<key>@<transport>``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from pydantic import SecretStr

from wa_consumer.settings import Settings

from .broker import unique_names
from .common import free_port

ORDER = (
    "floor",
    "zero-off",
    "zero-on",
    "plain-zero",
    "plain",
    "latency",
    "plain-tls",
    "latency-tls",
    "latency-h2",
    "workers-1",
    "workers-2",
    "workers-1-latency",
    "workers-2-latency",
    "webhooks",
    "statuses",
)
DEFAULT = ORDER[:11]  # the workers at 100 ms and the delivery-status ones only when named
DAEMON_PREFETCH = Settings.model_fields["prefetch"].default
STATUSES_PREFETCH = Settings.model_fields["statuses_prefetch"].default
DAEMON_LOG_LEVEL = Settings.model_fields["log_level"].default
DAEMON_TRANSPORT = Settings.model_fields["graph_transport"].default
TRANSPORTS = ("aiohttp", "pyreqwest")  # the values of WA_GRAPH_TRANSPORT
NUMBER_RATE = "number_rate"  # the per-number limit's field in Settings (WA_NUMBER_RATE)
NO_SANDBOX = "http://127.0.0.1:1"  # Cloud API and tenant service of what sends nothing


Kind = Literal["messages", "webhooks", "statuses"]


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    daemon: bool  # the daemon sends to the sandbox
    latency_ms: float = 0.0
    ledger: bool = False
    prefetch: int = DAEMON_PREFETCH  # webhooks: requests in flight
    http: bool = False  # the bench's own consumer POSTs each message to the sandbox
    kind: Kind = "messages"  # what ``rate`` counts: messages sent, webhooks, statuses
    transport: str | None = None  # the daemon's WA_GRAPH_TRANSPORT (None: its default)
    base: str = ""  # the key of the scenario this is a transport's variant of ("": itself)
    tls: bool = False  # the Cloud API over HTTPS (the sandbox's TLS port, its CA trusted)
    http2: bool = False  # over TLS, HTTP/2 (WA_GRAPH_HTTP2; pyreqwest only)
    workers: int = 0  # ``run --workers N`` (0: plain ``run``, with ``--daemons``)

    def describe(self) -> dict[str, Any]:
        process = "daemon" if self.daemon else "bare aio-pika consumer"
        if self.http:
            process = "aio-pika + aiohttp consumer"
        if self.kind == "webhooks":
            process = "wa-consumer webhook, load generator in its own process"
        elif self.kind == "statuses":
            process = "daemon's status consumer"
        if self.workers:
            process = f"run --workers {self.workers}"
            process += " (supervisor + workers)" if self.workers > 1 else " (the daemon itself)"
        return {
            "label": self.label,
            "process": process,
            "latency_ms": self.latency_ms if self.daemon or self.http else None,
            "ledger": self.ledger,
            "prefetch": self.prefetch,
            "kind": self.kind,
            "transport": self.transport,
            "tls": self.tls,
            "http2": self.http2,
            "workers": self.workers or None,
        }


def plan(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios of ``--scenarios``, in round order."""
    ms = args.latency_ms
    every = {
        "floor": Scenario("floor", "floor (aio-pika consume+ack)", False, prefetch=args.prefetch),
        "zero-off": Scenario(
            "zero-off", "daemon 0 ms, ledger off", True, 0.0, False, args.prefetch
        ),
        "zero-on": Scenario("zero-on", "daemon 0 ms, ledger on", True, 0.0, True, args.prefetch),
        "plain-zero": Scenario(
            "plain-zero",
            "aio-pika + aiohttp 0 ms, no features",
            False,
            0.0,
            prefetch=args.prefetch,
            http=True,
        ),
        "plain": Scenario(
            "plain",
            f"aio-pika + aiohttp {ms:g} ms, no features",
            False,
            ms,
            prefetch=args.latency_prefetch,
            http=True,
        ),
        "latency": Scenario(
            "latency",
            f"daemon {ms:g} ms, ledger on",
            True,
            ms,
            True,
            args.latency_prefetch,
        ),
        "plain-tls": Scenario(
            "plain-tls",
            f"aio-pika + aiohttp {ms:g} ms TLS, no features",
            False,
            ms,
            prefetch=args.latency_prefetch,
            http=True,
            tls=True,
        ),
        "latency-tls": Scenario(
            "latency-tls",
            f"daemon {ms:g} ms TLS, ledger on",
            True,
            ms,
            True,
            args.latency_prefetch,
            tls=True,
        ),
        "latency-h2": Scenario(
            "latency-h2",
            f"daemon {ms:g} ms TLS HTTP/2, ledger on",
            True,
            ms,
            True,
            args.latency_prefetch,
            tls=True,
            http2=True,
        ),
        "workers-1": Scenario(
            "workers-1",
            "run --workers 1, 0 ms, ledger on",
            True,
            ledger=True,
            prefetch=args.prefetch,
            workers=1,
        ),
        "workers-2": Scenario(
            "workers-2",
            "run --workers 2, 0 ms, ledger on",
            True,
            ledger=True,
            prefetch=args.prefetch,
            workers=2,
        ),
        "workers-1-latency": Scenario(
            "workers-1-latency",
            f"run --workers 1, {ms:g} ms, ledger on",
            True,
            ms,
            True,
            args.latency_prefetch,
            workers=1,
        ),
        "workers-2-latency": Scenario(
            "workers-2-latency",
            f"run --workers 2, {ms:g} ms, ledger on",
            True,
            ms,
            True,
            args.latency_prefetch,
            workers=2,
        ),
        "webhooks": Scenario(
            "webhooks",
            "webhooks: receiver",
            False,
            prefetch=args.webhook_concurrency,
            kind="webhooks",
        ),
        "statuses": Scenario(
            "statuses",
            "statuses: daemon, ledger on",
            False,
            ledger=True,
            prefetch=args.statuses_prefetch,
            kind="statuses",
        ),
    }
    chosen = [every[key] for key in ORDER if key in args.scenarios]
    return per_transport(chosen, args.transports)


def in_round(scenarios: Sequence[Scenario], round_no: int) -> list[Scenario]:
    """The order of one round: a scenario's transports turn about from round to round, so
    that neither is always measured first (the ledger's tables grow over a run)."""
    out = list(scenarios)
    if round_no % 2 == 0:
        i = 0
        while i < len(out):
            j = i
            while j + 1 < len(out) and out[i].base and out[j + 1].base == out[i].base:
                j += 1
            out[i : j + 1] = out[i : j + 1][::-1]
            i = j + 1
    return out


def per_transport(scenarios: list[Scenario], transports: list[str]) -> list[Scenario]:
    """Each daemon scenario once per transport, the first named keeping the key."""
    if not transports:
        return scenarios
    out: list[Scenario] = []
    for scenario in scenarios:
        if not scenario.daemon:
            out.append(scenario)
            continue
        # aiohttp's client has no HTTP/2: an HTTP/2 scenario is pyreqwest's alone.
        names = [n for n in transports if n == "pyreqwest"] if scenario.http2 else transports
        for i, name in enumerate(names):
            key = scenario.key if i == 0 else f"{scenario.key}@{name}"
            label = f"{scenario.label} [{name}]" if len(transports) > 1 else scenario.label
            out.append(replace(scenario, key=key, label=label, transport=name, base=scenario.key))
    return out


def overrides(
    scenario: Scenario,
    args: argparse.Namespace,
    amqp_url: str,
    sandbox_url: str,
    database_url: str | None,
    *,
    tls_url: str | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """The settings a measurement sets (field name: value); the daemon defaults the rest.

    A TLS scenario sends to ``tls_url`` trusting ``ca_file``; the tenant service stays on
    ``sandbox_url``.
    """
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        **unique_names(),
        "graph_api_url": sandbox_url,
        "tenant_service_url": sandbox_url,
        "prefetch": scenario.prefetch,
    }
    if scenario.tls and tls_url is not None:  # None: only the queue names are wanted
        if ca_file is None:
            raise ValueError("a TLS scenario needs the sandbox's CA file")
        values["graph_api_url"] = tls_url
        values["graph_ca_file"] = ca_file
        if scenario.daemon:
            values["graph_http2"] = scenario.http2
    if scenario.daemon:
        values["metrics_port"] = free_port()  # /metrics on, as deployed
        values["log_level"] = args.log_level
        values["log_format"] = "json"
        values[NUMBER_RATE] = 0.0 if args.number_rate is None else args.number_rate
        if scenario.transport is not None:
            values["graph_transport"] = scenario.transport
        if scenario.ledger:
            if database_url is None:
                raise ValueError("a ledger-on scenario needs the scratch database")
            values["database_url"] = database_url
    return values


def make_settings(values: dict[str, Any]) -> Settings:
    """The settings the bench reads its queue names from (fields the daemon lacks ignored)."""
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    return Settings(_env_file=None, **known)


def daemon_env(values: dict[str, Any]) -> dict[str, str]:
    """This environment without any ``WA_`` variable, plus ``values`` as ``WA_<NAME>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = orjson.dumps(value).decode()
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        else:
            text = str(value)
        env[f"WA_{name.upper()}"] = text
    return env

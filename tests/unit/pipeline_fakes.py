"""Fakes that drive ``Pipeline`` in milliseconds: no broker, no database, no HTTP.

A recording settler (the ``Settling`` seam), a delivery with the fields the pipeline and
``settle`` read, a scripted Cloud API client, a scripted ledger, a limiter that can be held,
and a credential source that counts its fetches.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from wa_consumer.classify import retry_queue_name
from wa_consumer.credentials import CredentialCache, Credentials, StaticSource
from wa_consumer.errors import GraphApiError
from wa_consumer.graph import SendResult
from wa_consumer.message import MAX_MESSAGE_BYTES, Outbound
from wa_consumer.outcomes import Failure, Outcome
from wa_consumer.pipeline import Pipeline, Policy
from wa_consumer.seams import Attempt, Claim, Death, Record

TENANT = "acme"
NUMBER = "106540352242922"
OTHER_NUMBER = "106540352242923"
TOKEN = "token-1"
ROUTING_KEY = f"outbound.processed.{TENANT}"
LADDER = (30.0, 120.0, 600.0, 1800.0, 3600.0)
MAX_DELIVERIES = 5
POLICY = Policy(
    retry_delays=LADDER,
    retry_queues={step: retry_queue_name(step) for step in LADDER},
    max_retries=5,
    rate_limit_min_delay=60.0,
    pair_limit_min_delay=10.0,
    max_age_seconds=24 * 3600.0,
    max_message_bytes=MAX_MESSAGE_BYTES,
    max_deliveries=MAX_DELIVERIES,
)
METADATA: dict[str, Any] = {"tenantId": TENANT, "internalId": "m-1"}
WABA: dict[str, Any] = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "27821234567",
    "type": "text",
    "text": {"body": "Your order is ready", "preview_url": False},
}


def message(metadata: Mapping[str, Any] | None = None, **waba: Any) -> dict[str, Any]:
    """The SPEC §3 example, with metadata keys and payload fields replaced (a deep copy)."""
    return copy.deepcopy(
        {"metadata": {**METADATA, **(metadata or {})}, "wabaPayload": {**WABA, **waba}}
    )


def body(metadata: Mapping[str, Any] | None = None, **waba: Any) -> bytes:
    return orjson.dumps(message(metadata, **waba))


@dataclass
class FakeDelivery:
    """What ``Pipeline`` and ``Settler`` read of a ``delivery.Delivery``."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = ROUTING_KEY
    redelivered: bool = False
    message_id: str | None = None
    timestamp: datetime | None = None
    delivery_tag: int | None = 1
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    type: str | None = None
    app_id: str | None = None
    channel: Any = None


@dataclass(frozen=True)
class SettleCall:
    delivery: Any
    outcome: Outcome
    tenant_id: str | None


class RecordingSettler:
    """The ``Settling`` seam: records each call, touches no broker."""

    def __init__(self, *, copied: bool = True) -> None:
        self.registered: list[Any] = []
        self.calls: list[SettleCall] = []
        self.flushes = 0
        self.copied = copied  # what ``record`` is told: the copy was confirmed

    def delivered(self, delivery: Any) -> None:
        self.registered.append(delivery)

    async def settle(
        self,
        delivery: Any,
        outcome: Outcome,
        *,
        tenant_id: str | None,
        record: Callable[[bool], Awaitable[None]],
    ) -> str:
        await record(self.copied)
        self.calls.append(SettleCall(delivery, outcome, tenant_id))
        return "recorded"

    async def flush(self) -> None:
        self.flushes += 1

    def of(self, delivery: Any) -> list[SettleCall]:
        return [call for call in self.calls if call.delivery is delivery]


def accepted(wamid: str = "wamid.HBgL") -> SendResult:
    return SendResult(wamid, 200, 12.0, "accepted")


class StubGraph:
    """``GraphClient.send`` answering from a script (the last answer repeats).

    With ``gate``, each send waits for it after being called: a send on the wire.
    """

    def __init__(
        self, *answers: SendResult | BaseException, gate: asyncio.Event | None = None
    ) -> None:
        self.answers = list(answers) or [accepted()]
        self.gate = gate
        self.calls: list[tuple[str, str, bytes]] = []
        self.on_the_wire = asyncio.Event()
        self.finished = 0

    async def send(self, phone_number_id: str, access_token: str, payload: bytes) -> SendResult:
        self.calls.append((phone_number_id, access_token, payload))
        self.on_the_wire.set()
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.finished += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeLedger:
    """The ``Ledger`` seam: ``claim`` answers ``result`` (or raises it); records the rest."""

    healthy = True

    def __init__(
        self, result: Claim | BaseException = Claim.CLAIMED, *, counts_deliveries: bool = False
    ) -> None:
        self.result = result
        self.counts_deliveries = counts_deliveries
        self.claims: list[Outbound] = []
        self.replays: list[int] = []
        self.failure: Failure | None = None
        self.finishes: list[tuple[Outbound, Record, list[Attempt]]] = []
        self.deaths: list[Death] = []

    async def start(self) -> None:
        return None

    async def claim(self, message: Outbound, replays: int = 0) -> Claim:
        self.claims.append(message)
        self.replays.append(replays)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    async def finish(self, message: Outbound, record: Record, attempts: Sequence[Attempt]) -> None:
        self.finishes.append((message, record, list(attempts)))

    async def dead(self, death: Death) -> None:
        self.deaths.append(death)

    def recorded_failure(self, message: Outbound) -> Failure | None:
        return self.failure

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def statuses(self) -> None:
        return None


class HeldLimiter:
    """The ``Limiter`` seam: ``acquire`` answers ``allow``, after ``gate`` if there is one."""

    def __init__(self, *, allow: bool = True, gate: asyncio.Event | None = None) -> None:
        self.allow = allow
        self.gate = gate
        self.waiting = asyncio.Event()
        self.feedbacks: list[tuple[str, str | None, str]] = []
        self.sends: list[tuple[str, str | None]] = []

    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        self.waiting.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.allow

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        self.feedbacks.append((phone_number_id, recipient, code))

    def sent(self, phone_number_id: str, recipient: str | None) -> None:
        self.sends.append((phone_number_id, recipient))


class CountingSource(StaticSource):
    """Static credentials, a fresh token per fetch (``token-1``, ``token-2``, ...), counted.

    With ``gate``, each fetch waits for it first.
    """

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        super().__init__(
            {
                TENANT: {
                    "accessToken": TOKEN,
                    "phoneNumberId": NUMBER,
                    "phoneNumberIds": [OTHER_NUMBER],
                }
            }
        )
        self.fetched = 0
        self.gate = gate
        self.waiting = asyncio.Event()

    async def fetch(self, tenant_id: str) -> Credentials:
        self.waiting.set()
        if self.gate is not None:
            await self.gate.wait()
        creds = await super().fetch(tenant_id)
        self.fetched += 1
        return Credentials(f"token-{self.fetched}", creds.phone_number_id, creds.phone_number_ids)


@dataclass
class Rig:
    """A pipeline and every fake it talks to."""

    pipeline: Pipeline
    settler: RecordingSettler
    graph: StubGraph
    ledger: FakeLedger
    limiter: HeldLimiter
    source: CountingSource
    ledger_down: list[None]


def rig(
    graph: StubGraph | None = None,
    *,
    ledger: FakeLedger | None = None,
    limiter: HeldLimiter | None = None,
    source: CountingSource | None = None,
    policy: Policy = POLICY,
) -> Rig:
    settler = RecordingSettler()
    graph = graph or StubGraph()
    ledger = ledger or FakeLedger()
    limiter = limiter or HeldLimiter()
    source = source or CountingSource()
    down: list[None] = []
    pipeline = Pipeline(
        policy=policy,
        credentials=CredentialCache(source, ttl=300),
        graph=graph,  # type: ignore[arg-type]  # duck-typed stub of GraphClient
        settler=settler,
        ledger=ledger,
        limiter=limiter,
        on_ledger_down=lambda: down.append(None),
    )
    return Rig(pipeline, settler, graph, ledger, limiter, source, down)


async def settle_one(r: Rig, delivery: FakeDelivery, timeout: float = 2.0) -> SettleCall:
    """Receive one delivery, wait for its task (bounded: a stall fails), and return its one
    settle call."""
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]  # a fake Delivery
    await asyncio.wait_for(task, timeout)
    calls = r.settler.of(delivery)
    assert len(calls) == 1, calls
    return calls[0]


def meta_error(status: int, code: int | None = None, subcode: int | None = None) -> GraphApiError:
    """A ``GraphApiError`` as Meta answers it."""
    return GraphApiError(f"HTTP {status} code {code}", status=status, code=code, subcode=subcode)

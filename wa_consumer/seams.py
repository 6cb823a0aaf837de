"""Where the ledger, the rate limiter and metrics plug into a message's life.

Each seam is a small Protocol with a do-nothing version used while the feature is off, so
the pipeline calls the seam and never asks whether the feature exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from .delivery import Delivery
from .message import Outbound
from .outcomes import Failure, Outcome

if TYPE_CHECKING:
    from .ledger.statuses import Applied, Tied
    from .webhooks.payload import StatusUpdate


#: Bound on a Meta ``fbtrace_id`` kept in logs and the ledger (Meta's are about 20-30 chars).
FBTRACE_CHARS = 64


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours to send
    ALREADY_SENT = "already_sent"  # ack without sending
    ALREADY_DEAD = "already_dead"  # its copy is in the DLQ already (a redelivery after a cut)
    DYING = "dying"  # dead, its DLQ copy unconfirmed: dead-letter it again, never send it
    BUSY = "busy"  # another live consumer holds it: come back later
    CRASH_LOOP = "crash_loop"  # claimed too often with no recorded outcome
    REFUSED = "refused"  # the database cannot hold this message's row: a data problem, dead


# Made for every message and never changed after, but not frozen: a frozen dataclass sets
# each field through object.__setattr__, which for Attempt, Record and the ledger's wrappers
# of them was 35,000 instructions (2 µs) a message.
@dataclass(slots=True)
class Attempt:
    """One call to the Cloud API, as the ledger records it."""

    number: int
    started_at: datetime
    latency_ms: float
    outcome: str  # sent | refresh | retry | dead
    http_status: int | None = None
    code: str | None = None
    subcode: int | None = None
    category: str | None = None
    message: str | None = None
    ambiguous: bool = False
    fbtrace_id: str | None = None  # Meta's trace id of an error answer (bounded: FBTRACE_CHARS)


@dataclass(slots=True)  # not frozen: see Attempt
class Record:
    """A message's state after this delivery, as the ledger keeps it."""

    status: str  # sent | retry_scheduled | waiting | dead | dying | pending
    retries: int
    wamid: str | None = None
    code: str | None = None
    category: str | None = None
    message: str | None = None
    next_in: float | None = None  # seconds until it comes back from a wait queue


@dataclass(frozen=True, slots=True)
class Death:
    """A death whose copy went to the DLQ, for the ledger's mirror of the DLQ (``wa_dead``).

    ``failure`` is the reason as the copy states it (its ``x-error-*`` headers), ``headers``
    what the copy carries (never a token: the settler's copy holds none), ``body`` the
    original's, cut at the maximum message size (``body_bytes`` its size before).
    """

    failure: Failure
    body: bytes
    body_bytes: int
    headers: Mapping[str, Any]
    tenant_id: str | None = None
    internal_id: str | None = None
    type: str | None = None
    phone_number_id: str | None = None
    routing_key: str | None = None
    claimed: bool = False  # its ledger record was claimed: it lives one life at a time


class Ledger(Protocol):
    """Claims a message before its send and records its outcome before its ack.

    ``claim`` raises ``LedgerUnavailable`` only for an infrastructure fault (consuming then
    pauses); a row the database refuses is that message's ``Claim.REFUSED``. ``finish`` and
    ``dead`` never raise: what cannot be written now is kept and written when the database is
    back.
    """

    counts_deliveries: bool  # True: the ledger bounds crash loops (no header counting)

    @property
    def healthy(self) -> bool:
        """False since a write failed, until a ping or a write succeeds."""
        ...

    async def start(self) -> None:
        """Begin background work (the heartbeat that keeps this consumer's claims alive)."""
        ...

    async def claim(self, message: Outbound, replays: int = 0) -> Claim:
        """``replays``: the delivery's ``x-replay-count``; a dead message replayed is claimable."""
        ...

    async def finish(
        self, message: Outbound, record: Record, attempts: Sequence[Attempt]
    ) -> None: ...

    async def dead(self, death: Death) -> None:
        """A death whose copy went to the DLQ, claimed or not (an invalid body, expired...)."""
        ...

    def recorded_failure(self, message: Outbound) -> Failure | None:
        """Why a message its claim found ``DYING`` died."""
        ...

    async def ping(self) -> bool:
        """True when the database answers."""
        ...

    async def close(self) -> None:
        """Write what is queued (bounded), release this consumer's claims, and stop."""
        ...

    def statuses(self) -> StatusStore | None:
        """Where delivery statuses are applied (SPEC §13); None: this ledger keeps none."""
        ...


class StatusStore(Protocol):
    async def apply(self, updates: Sequence[StatusUpdate]) -> tuple[list[Applied], list[Tied]]:
        """Apply statuses (one per wamid): each wamid's row before and after, and the
        statuses tied to their message by callback data."""
        ...

    async def retie(self) -> list[Tied]:
        """Try again to tie recent statuses no send has claimed."""
        ...


class Limiter(Protocol):
    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        """Wait for a send slot; False when the wait would be too long (use a wait queue)."""
        ...

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        """Meta answered with a rate-limit code for this number or recipient."""
        ...

    def sent(self, phone_number_id: str, recipient: str | None) -> None:
        """Meta accepted a send: a recipient's back-off, if any, is over."""
        ...


class NullLedger:
    """No ledger: every message is ours to send; nothing is recorded."""

    counts_deliveries = False
    healthy = True

    async def start(self) -> None:
        return None

    async def claim(self, message: Outbound, replays: int = 0) -> Claim:
        return Claim.CLAIMED

    async def finish(self, message: Outbound, record: Record, attempts: Sequence[Attempt]) -> None:
        return None

    async def dead(self, death: Death) -> None:
        return None

    def recorded_failure(self, message: Outbound) -> Failure | None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def statuses(self) -> StatusStore | None:
        return None


class Gate(Protocol):
    """Tenant and number controls (SPEC §14): pauses, holds and the breaker."""

    def held(self, tenant_id: str, number: str | None, release: int | None) -> str | None:
        """The held queue of a paused tenant (``number`` None) or number, or None to go on.

        ``release``: the pause generation a drained or probing message was released for.
        """
        ...

    def settled(self, tenant_id: str | None, number: str | None, outcome: Outcome) -> None:
        """Once per delivery after its settle: what the breaker counts."""
        ...

    async def start(self) -> None:
        """Read the pauses in force before the first message, and begin polling them."""
        ...

    async def close(self) -> None: ...


class NullGate:
    """No controls (no ledger): nothing is ever held."""

    def held(self, tenant_id: str, number: str | None, release: int | None) -> str | None:
        return None

    def settled(self, tenant_id: str | None, number: str | None, outcome: Outcome) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class NullLimiter:
    """No limits: every send goes at once."""

    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        return True

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        return None

    def sent(self, phone_number_id: str, recipient: str | None) -> None:
        return None


class RecordOutcome(Protocol):
    """``record(copied, headers)``: the ledger's write, after the copy's publish and before
    the ack. ``copied``: the copy was confirmed; ``headers``: the copy's (None: no copy)."""

    def __call__(
        self, copied: bool, headers: Mapping[str, Any] | None = None, /
    ) -> Awaitable[None]: ...


class Settling(Protocol):
    """Carries out outcomes at the broker (``settle.Settler``; a fake one in tests)."""

    def delivered(self, delivery: Delivery) -> None:
        """Register a delivery, in delivery order, before anything awaits."""
        ...

    async def settle(
        self,
        delivery: Delivery,
        outcome: Outcome,
        *,
        tenant_id: str | None,
        record: RecordOutcome,
    ) -> str:
        """Carry out ``outcome``; never raises for a broker failure. Returns what happened.

        Awaits ``record(copied, headers)`` once, after the copy's publish and before the ack.
        """
        ...

    async def flush(self) -> None:
        """Write the acks already decided (before the channel closes)."""
        ...

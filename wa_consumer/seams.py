"""Where the ledger, the rate limiter and metrics plug into a message's life.

Each seam is a small Protocol with a do-nothing version used while the feature is off, so
the pipeline calls the seam and never asks whether the feature exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .message import Outbound


class Claim(StrEnum):
    CLAIMED = "claimed"  # ours to send
    ALREADY_SENT = "already_sent"  # ack without sending
    BUSY = "busy"  # another live consumer holds it: come back later


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call to the Cloud API, as the ledger records it."""

    number: int
    latency_ms: float
    outcome: str  # sent | retry | dead
    http_status: int | None = None
    code: str | None = None
    subcode: int | None = None
    category: str | None = None
    message: str | None = None
    wamid: str | None = None
    ambiguous: bool = False


class Ledger(Protocol):
    async def claim(self, message: Outbound) -> Claim: ...

    async def record_attempt(self, message: Outbound, attempt: Attempt) -> None: ...


class Limiter(Protocol):
    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        """Wait for a send slot; False when the wait would be too long (use a wait queue)."""
        ...

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        """Meta answered with a rate-limit code for this number or recipient."""
        ...


class NullLedger:
    """No ledger: every message is ours to send; nothing is recorded."""

    async def claim(self, message: Outbound) -> Claim:
        return Claim.CLAIMED

    async def record_attempt(self, message: Outbound, attempt: Attempt) -> None:
        return None


class NullLimiter:
    """No limits: every send goes at once."""

    async def acquire(self, phone_number_id: str, recipient: str | None) -> bool:
        return True

    def feedback(self, phone_number_id: str, recipient: str | None, code: str) -> None:
        return None

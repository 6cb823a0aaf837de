"""The ways a message's life can end, as values the pipeline returns and ``settle`` carries out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message was retried or is dead; becomes the ``x-error-*`` headers."""

    category: str
    code: str
    message: str
    subcode: int | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """Meta accepted the message: ack."""

    wamid: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already sent (ledger): ack without sending."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait in ``queue`` and come back; ``counts`` is False for throttling, which is no retry."""

    queue: str
    delay: float
    failure: Failure
    counts: bool = True


@dataclass(frozen=True, slots=True)
class Dead:
    """Never to be sent as is: to ``outbound-failed`` with the reason."""

    failure: Failure


@dataclass(frozen=True, slots=True)
class Held:
    """Its tenant or number is paused: to its held queue, not sent, not dead (SPEC §14)."""

    queue: str


@dataclass(frozen=True, slots=True)
class HandBack:
    """Not started (shutdown): back to the queue, not a failure."""


@dataclass(frozen=True, slots=True)
class Recount:
    """A redelivery with no recorded outcome: requeue a copy carrying the delivery count."""

    deliveries: int


Outcome: TypeAlias = Delivered | Duplicate | Retry | Dead | Held | HandBack | Recount

"""A group replay, as the console keeps it: its phase, its canary, its progress; and the
jobs of this process (``Jobs``). ``replays`` runs them.

1. **Canary**: ``canary`` messages of the group are replayed at once.
2. **Waiting**: their outcomes are read from the ledger while the operator decides.
3. **Running**: the rest of the group is replayed at ``rate`` messages per second.
4. **Done**, **stopped** or **failed**.

Jobs live in the console's memory: a restart forgets them (their actions stay in the audit
trail), and one that was running stops between two batches first (``Jobs.close``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from ..dlq.canary import MAX_REPLAYS, CanaryItem, rest_filter
from ..dlq.filters import Filter
from .problems import NotFound

__all__ = ["ACTIVE", "MAX_REPLAYS", "CanaryItem", "Jobs", "Phase", "ReplayJob"]

_KEEP_FINISHED: Final = 50  # finished jobs remembered, newest first
_STOP_GRACE: Final = 30.0  # seconds a job has to stop when the console shuts down


class Phase(StrEnum):
    CANARY = "canary"
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE: Final = frozenset({Phase.CANARY, Phase.RUNNING})


@dataclass(eq=False)
class ReplayJob:
    """One group replay; see the module docstring."""

    fingerprint: str
    actor: str
    reason: str
    canary_size: int
    rate: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    phase: Phase = Phase.CANARY
    canary: list[CanaryItem] = field(default_factory=list)
    canary_replayed: int = 0
    seen: int = 0  # DLQ messages the running pass has looked at
    total: int = 0  # ... of this many in the DLQ when it began
    replayed: int = 0  # after the canary
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    stopped_by: str | None = None
    finished_at: datetime | None = None
    stop_requested: bool = False  # a stop was asked for: taken between two batches
    task: asyncio.Task[None] | None = None  # its pass, while one runs

    @property
    def selection(self) -> Filter:
        """The group as it was when the job began."""
        return rest_filter(self.group, self.created_at)

    @property
    def group(self) -> Filter:
        """The group, whenever its messages died."""
        return Filter(fingerprints=(self.fingerprint,))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "phase": self.phase.value,
            "actor": self.actor,
            "reason": self.reason,
            "rate": self.rate,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "canary_size": self.canary_size,
            "canary_replayed": self.canary_replayed,
            "progress": {"seen": self.seen, "total": self.total, "replayed": self.replayed},
            "skipped": self.skipped,
            "error": self.error,
            "stopped_by": self.stopped_by,
        }


class Jobs:
    """The console's group replays: at most one moving messages at a time (the DLQ lock)."""

    def __init__(self) -> None:
        self._jobs: dict[str, ReplayJob] = {}

    def add(self, job: ReplayJob) -> None:
        self._jobs[job.id] = job
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        for old in sorted(finished, key=lambda j: j.created_at)[:-_KEEP_FINISHED]:
            del self._jobs[old.id]

    def get(self, job_id: str) -> ReplayJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no replay job {job_id!r} (jobs are kept until the console stops)")
        return job

    def all(self) -> list[ReplayJob]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def running(self) -> ReplayJob | None:
        return next((j for j in self._jobs.values() if j.phase in ACTIVE), None)

    async def close(self, grace: float = _STOP_GRACE) -> None:
        """Stop every job between two batches; cancel what has not stopped after ``grace``."""
        tasks = []
        for job in self._jobs.values():
            job.stop_requested = True
            if job.task is not None and not job.task.done():
                tasks.append(job.task)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

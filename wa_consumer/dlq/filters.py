"""Which dead messages a command applies to: every given field must match (AND), and a field
given several times matches any of its values (OR)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..ledger.queries import parse_age
from .record import DeadRecord


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (``2026-11-24T12:00``, UTC unless it says) or an age (``2h``: 2 h ago)."""
    now = now or datetime.now(UTC)
    try:
        return now - parse_age(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time (2026-11-24T12:00:00Z) nor an age (30m, 2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Filter:
    """A selection of dead messages; the empty filter matches every one."""

    tenants: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    fingerprints: tuple[str, ...] = ()  # prefixes: the first few characters are enough
    ids: frozenset[str] = frozenset()
    since: datetime | None = None  # failed at or after
    before: datetime | None = None  # failed before (--older-than)

    @classmethod
    def of(
        cls,
        *,
        tenants: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        codes: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        fingerprints: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        since: str | None = None,
        older_than: str | None = None,
        now: datetime | None = None,
    ) -> Filter:
        """Build from command-line values; raises ``ValueError`` naming a bad time or age."""
        now = now or datetime.now(UTC)
        before = None
        if older_than is not None:
            try:
                before = now - parse_age(older_than)
            except ValueError as exc:
                raise ValueError(f"--older-than: {exc}") from None
        after = None
        if since is not None:
            try:
                after = parse_since(since, now)
            except ValueError as exc:
                raise ValueError(f"--since: {exc}") from None
        return cls(
            tenants=frozenset(tenants or ()),
            categories=frozenset(categories or ()),
            codes=frozenset(codes or ()),
            types=frozenset(types or ()),
            fingerprints=tuple(f.lower() for f in fingerprints or ()),
            ids=frozenset(ids or ()),
            since=after,
            before=before,
        )

    def matches(self, record: DeadRecord) -> bool:
        if self.tenants and record.tenant not in self.tenants:
            return False
        if self.categories and record.category not in self.categories:
            return False
        if self.codes and record.code not in self.codes:
            return False
        if self.types and record.type not in self.types:
            return False
        if self.fingerprints and not record.fingerprint.startswith(self.fingerprints):
            return False
        if self.ids and not (record.ids() & self.ids):
            return False
        if self.since is not None or self.before is not None:
            at = record.failed_at
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.before is not None and at >= self.before:
                return False
        return True

    @property
    def empty(self) -> bool:
        return self == Filter()

    def target(self, queue: str) -> str:
        """What an action on these messages is recorded against in the audit trail: one
        message, one group (as the console names them), or the queue."""
        if len(self.ids) == 1:
            return f"message:{next(iter(self.ids))}"
        if len(self.fingerprints) == 1:
            return f"group:{self.fingerprints[0]}"
        return f"dlq:{queue}"

    def to_json(self) -> dict[str, Any]:
        """The fields given, for the audit trail."""
        out: dict[str, Any] = {}
        for name in ("tenants", "categories", "codes", "types", "fingerprints", "ids"):
            if value := getattr(self, name):
                out[name] = sorted(value)
        for name in ("since", "before"):
            if (at := getattr(self, name)) is not None:
                out[name] = at.isoformat()
        return out

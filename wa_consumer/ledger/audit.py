"""The operators' audit trail: who did what to which tenant, group or message, when and why.

Every action of the CLI, the console and its API, and each breaker that opens or closes,
is one row of ``wa_actions``. Values are bounded here, where they enter the database: an
actor, a target or a reason is operator text and may be long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson


class Db(Protocol):
    """What these queries need of a pool or a connection (asyncpg's both fit)."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


_TEXT = 1000  # characters kept of an actor, an action, a target or a reason
_DETAILS = 16_384  # bytes of JSON details kept; larger details are replaced by their size

_INSERT = """
INSERT INTO wa_actions (actor, action, target, reason, details)
VALUES ($1, $2, $3, $4, $5::jsonb)
"""
_RECENT = """
SELECT id, at, actor, action, target, reason, details::text AS details
FROM wa_actions
WHERE ($2::text IS NULL OR target = $2 OR target LIKE $2 || ':%')
ORDER BY at DESC, id DESC
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class Action:
    """One recorded action."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    details: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "details": self.details,
        }


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_TEXT]


async def record_action(
    db: Db,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one action to the trail."""
    encoded = None
    if details is not None:
        encoded = orjson.dumps(details, default=str).decode()
        if len(encoded) > _DETAILS:
            encoded = orjson.dumps({"truncated_bytes": len(encoded)}).decode()
    await db.execute(
        _INSERT, _cut(actor) or "-", _cut(action) or "-", _cut(target) or "-", _cut(reason), encoded
    )


async def recent_actions(db: Db, limit: int = 50, target: str | None = None) -> list[Action]:
    """The newest actions first; ``target``: only those on it (``acme`` also finds
    ``acme:<number>``)."""
    rows = await db.fetch(_RECENT, limit, target)
    return [
        Action(
            id=row["id"],
            at=row["at"],
            actor=row["actor"],
            action=row["action"],
            target=row["target"],
            reason=row["reason"],
            details=orjson.loads(row["details"]) if row["details"] is not None else None,
        )
        for row in rows
    ]

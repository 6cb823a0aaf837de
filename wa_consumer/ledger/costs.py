"""Billable messages per tenant and pricing category, from Meta's ``pricing`` (SPEC §13).

Counted by wamid (one row per message Meta accepted), by what the latest status said:
``pricing.billable``, ``category`` and ``pricing_model``. A wamid no status has priced yet
(accepted, sent or delivered without pricing) is counted apart as ``unpriced``; a failed one
without pricing is not counted at all (Meta does not bill it; ``failures`` lists it).

The window is on ``received_at``: when the ledger first heard of the wamid, from its send's
result or its first status, seconds apart. It is always set (``accepted_at`` is not while a
status waits for its send; ``sent_at`` is not when Meta skips ``sent``), never changes, and
is indexed, so a week's report reads a week's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .queries import Connection

NO_TENANT = "-"  # a status whose send is not recorded yet (also as a --tenant value)

_COSTS = """
SELECT d.tenant_id, d.pricing_category, d.pricing_model,
    count(*) FILTER (WHERE d.pricing_billable) AS billable,
    count(*) FILTER (WHERE NOT d.pricing_billable) AS non_billable,
    count(*) FILTER (WHERE d.pricing_billable IS NULL AND d.status <> 'failed') AS unpriced
FROM wa_deliveries d
WHERE d.received_at >= $1 AND ($2::text[] IS NULL OR COALESCE(d.tenant_id, '-') = ANY($2))
GROUP BY 1, 2, 3
"""


@dataclass(slots=True)
class Counts:
    """Wamids by what their pricing said."""

    billable: int = 0
    non_billable: int = 0
    unpriced: int = 0

    def add(self, other: Counts) -> None:
        self.billable += other.billable
        self.non_billable += other.non_billable
        self.unpriced += other.unpriced

    def to_json(self) -> dict[str, int]:
        return {
            "billable": self.billable,
            "non_billable": self.non_billable,
            "unpriced": self.unpriced,
        }


@dataclass(frozen=True, slots=True)
class CostRow:
    tenant: str
    category: str
    model: str
    counts: Counts


@dataclass(slots=True)
class CostReport:
    """One row per (tenant, pricing category, pricing model), with totals."""

    since: datetime
    tenants: list[str] | None
    rows: list[CostRow] = field(default_factory=list)
    by_tenant: dict[str, Counts] = field(default_factory=dict)
    by_category: dict[str, Counts] = field(default_factory=dict)
    total: Counts = field(default_factory=Counts)

    def add(self, row: CostRow) -> None:
        if not (row.counts.billable or row.counts.non_billable or row.counts.unpriced):
            return  # failed without pricing: nothing to bill
        self.total.add(row.counts)
        self.by_tenant.setdefault(row.tenant, Counts()).add(row.counts)
        if row.counts.billable or row.counts.non_billable:
            self.rows.append(row)
            self.by_category.setdefault(row.category, Counts()).add(row.counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "tenants": self.tenants,
            "rows": [
                {"tenant": r.tenant, "category": r.category, "model": r.model} | r.counts.to_json()
                for r in self.rows
            ],
            "by_tenant": {t: c.to_json() for t, c in sorted(self.by_tenant.items())},
            "by_category": {c: n.to_json() for c, n in sorted(self.by_category.items())},
            "total": self.total.to_json(),
        }


async def costs(
    conn: Connection, since: datetime, tenants: Sequence[str] | None = None
) -> CostReport:
    """Billable, non-billable and unpriced wamids first heard of at or after ``since``."""
    chosen = sorted(set(tenants)) if tenants else None
    report = CostReport(since, chosen)
    rows = await conn.fetch(_COSTS, since, chosen)
    for r in sorted(rows, key=lambda r: tuple(v or "" for v in r[:3])):
        counts = Counts(r["billable"], r["non_billable"], r["unpriced"])
        category, model = r["pricing_category"] or "-", r["pricing_model"] or "-"
        report.add(CostRow(r["tenant_id"] or NO_TENANT, category, model, counts))
    return report

"""The breaker's count: consecutive account-level failures per tenant or number (SPEC §14).

Pure and in process: each replica counts what it settles. ``account`` (the business account
or number is blocked) counts against the number; ``auth`` (the token still refused after a
refresh) and ``tenant_suspended`` against the whole tenant. A message Meta accepts for the
tenant starts the count again; other outcomes (a retry, an invalid body) say nothing of the
account and leave it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..categories import Category
from ..outcomes import Dead, Delivered, Outcome

#: Categories that open the breaker, and whether they concern the number (else the tenant).
TRIPS: dict[str, bool] = {
    Category.ACCOUNT: True,
    Category.AUTH: False,
    Category.TENANT_SUSPENDED: False,
}
_MAX_KEYS = 10_000  # counts kept; past it the oldest go (a count is a hint, not a record)


@dataclass(frozen=True, slots=True)
class Trip:
    """The threshold was reached: pause ``number`` of ``tenant_id`` (None: the tenant)."""

    tenant_id: str
    number: str | None
    category: str
    code: str
    message: str
    count: int

    @property
    def reason(self) -> str:
        return (
            f"breaker: {self.count} consecutive {self.category} failures "
            f"(code {self.code}: {self.message[:200]})"
        )


class Breaker:
    """Counts failures; ``observe`` returns a ``Trip`` once, when a count reaches the threshold."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold  # 0: never trips
        self._counts: dict[tuple[str, str | None], int] = {}

    def observe(self, tenant_id: str | None, number: str | None, outcome: Outcome) -> Trip | None:
        if self.threshold <= 0 or tenant_id is None:
            return None
        if isinstance(outcome, Delivered):
            self._counts.pop((tenant_id, None), None)
            if number is not None:
                self._counts.pop((tenant_id, number), None)
            return None
        if not isinstance(outcome, Dead):
            return None
        failure = outcome.failure
        per_number = TRIPS.get(failure.category)
        if per_number is None:
            return None
        key = (tenant_id, number if per_number else None)
        count = self._counts.pop(key, 0) + 1  # re-inserted last: the newest is kept longest
        if len(self._counts) >= _MAX_KEYS:
            del self._counts[next(iter(self._counts))]
        self._counts[key] = count
        if count != self.threshold:
            return None
        return Trip(key[0], key[1], failure.category, failure.code, failure.message, count)

    def forget(self, tenant_id: str, number: str | None) -> None:
        """The pause is over (resumed or probed): count from zero."""
        self._counts.pop((tenant_id, number), None)

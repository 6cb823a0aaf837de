"""When a dead worker is started again: back-off, and a budget per window.

A worker that dies is started again after a delay that doubles with each of its deaths in the
window (0.5 s, 1 s, 2 s, ... at most 30 s), so a crash loop does not spin the CPU or hammer
the broker and the database with connections. More than ``limit`` restarts of one worker in
the window and the supervisor gives up: a worker that cannot stay up is a fault for an
operator (or the service manager around the supervisor), not for more restarts. Deaths older
than the window are forgotten, so a worker that ran well for a while starts again at once.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

FIRST_DELAY = 0.5
MAX_DELAY = 30.0


@dataclass
class RestartPolicy:
    """Pure bookkeeping of deaths per worker; the caller gives the time (monotonic seconds)."""

    limit: int = 5
    window: float = 300.0
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    _deaths: defaultdict[int, deque[float]] = field(
        default_factory=lambda: defaultdict(deque), repr=False
    )

    def after_death(self, worker: int, now: float) -> float | None:
        """Seconds to wait before starting ``worker`` again, or None: over the budget."""
        deaths = self._deaths[worker]
        deaths.append(now)
        while deaths and deaths[0] <= now - self.window:
            deaths.popleft()
        if len(deaths) > self.limit:
            return None
        return min(self.max_delay, self.first_delay * 2.0 ** (len(deaths) - 1))

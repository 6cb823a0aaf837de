"""GCRA: each number's next free send time, booked ahead so a caller learns its wait at once.

The generic cell rate algorithm keeps one value per key, the theoretical arrival time (TAT):
the earliest moment the next send may go. Booking returns how long to wait and moves the TAT
one interval on; a wait longer than the caller accepts books nothing, so a refused message
gives its slot back at once instead of sleeping to find out. There is no burst beyond one
send: at 50/s sends go 20 ms apart and a one-second window holds at most 51.

``GCRA_LUA`` is the same arithmetic run inside Redis, on the server's clock, so every daemon
sharing that Redis books on one schedule with one round trip and no clock agreement.
"""

from __future__ import annotations

_EPSILON = 1e-9  # float noise: a wait equal to the maximum is accepted

# KEYS[1]: the number's key. ARGV: interval, longest acceptable wait, and a floor for the
# next slot (this daemon's own bookings made while Redis was away), all in microseconds from
# now. Returns the wait in microseconds, or a negative number when it would be too long.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = now + tonumber(ARGV[3])
if tat < floor then tat = floor end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return -1 - wait end
local interval = tonumber(ARGV[1])
local ttl_ms = math.ceil((wait + interval) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', ttl_ms)
return wait
"""


class LocalSchedule:
    """GCRA in this process: one TAT per key, on the caller's clock."""

    __slots__ = ("_tat",)

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def book(self, key: str, now: float, interval: float, max_wait: float) -> float | None:
        """Seconds to wait for the next slot of ``key`` (booked), or None if over ``max_wait``."""
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        wait = tat - now
        if wait > max_wait + _EPSILON:
            return None
        self._tat[key] = tat + interval
        return wait

    def ahead(self, key: str, now: float) -> float:
        """How far ahead of ``now`` the next free slot of ``key`` lies (0 when free)."""
        return max(0.0, self._tat.get(key, now) - now)

    def hold(self, key: str, until: float) -> None:
        """Book nothing for ``key`` before ``until`` (slots booked elsewhere)."""
        if self._tat.get(key, until) <= until:
            self._tat[key] = until

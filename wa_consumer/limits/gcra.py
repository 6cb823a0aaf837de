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
#
# KEYS[2]: the number's last rate cut (``adaptive.Cut``), shared by the daemons so that they
# book at one rate: a hash of rate, step (as given) and at (microseconds, Redis's clock).
# ARGV[4], ARGV[5], ARGV[6] (empty strings: none): a cut this daemon made, its rate, step
# and age in microseconds; kept unless a newer one is. The reply is then
# {wait, rate, step, age of the kept cut} (rate empty: no cut kept).
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cut = {'', '', 0}
if KEYS[2] then
  if ARGV[4] ~= '' then
    local at = now - tonumber(ARGV[6])
    local kept = tonumber(redis.call('HGET', KEYS[2], 'at') or '-1')
    if at > kept then
      redis.call('HSET', KEYS[2], 'rate', ARGV[4], 'step', ARGV[5], 'at', string.format('%.0f', at))
      redis.call('PEXPIRE', KEYS[2], 3600000)
    end
  end
  local kept = redis.call('HMGET', KEYS[2], 'rate', 'step', 'at')
  if kept[1] then cut = {kept[1], kept[2], now - tonumber(kept[3])} end
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = now + tonumber(ARGV[3])
if tat < floor then tat = floor end
local wait = tat - now
if wait > tonumber(ARGV[2]) then
  wait = -1 - wait
else
  local interval = tonumber(ARGV[1])
  local ttl_ms = math.ceil((wait + interval) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', ttl_ms)
end
if not KEYS[2] then return wait end
return {wait, cut[1], cut[2], cut[3]}
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

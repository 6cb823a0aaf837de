"""The sandbox's live state: the effective config, tokens, counters, the request log.

Everything the request handler reads per request is prepared here when the config is
applied (compiled regexes, token and number maps, buckets), so a request costs a few dict
look-ups. One event loop owns the state; nothing here is thread-safe, nor needs to be.
"""

from __future__ import annotations

import itertools
import random
import re
import secrets
import time
from collections import deque
from typing import Any, NamedTuple

from wa_consumer.sandbox.config import FailureRule, SandboxConfig, TenantConfig
from wa_consumer.sandbox.throughput import NumberLimit, number_limit


class CompiledRule(NamedTuple):
    """A failure rule with its regex compiled once."""

    position: int
    pattern: re.Pattern[str]
    rule: FailureRule


def new_token(tenant_id: str) -> str:
    """A fake token that says what it is: ``sandbox-<tenant>-<random>``."""
    return f"sandbox-{tenant_id}-{secrets.token_hex(8)}"


class SandboxState:
    """Behaviour and bookkeeping of one sandbox; change it at run time with ``configure``."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self._config = SandboxConfig()
        self._tenants: dict[str, TenantConfig] = {}
        self._by_token: dict[str, TenantConfig] = {}
        self._numbers: dict[str, frozenset[str]] = {}
        self._expired: dict[str, str] = {}
        self._rules: tuple[CompiledRule, ...] = ()
        self._random = random.Random()
        self._wamid_prefix = secrets.token_hex(4).upper()
        self._wamids = itertools.count(1)
        self.log: deque[dict[str, Any]] = deque(maxlen=1)
        self.reset()
        self.apply(config or SandboxConfig())

    # -- configuration -------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The effective config, with every tenant's current token filled in."""
        return self._config

    def configure(self, **changes: Any) -> SandboxConfig:
        """Replace the given top-level settings (validated); the rest stays."""
        return self.apply(self._config.updated(changes))

    def apply(self, config: SandboxConfig) -> SandboxConfig:
        """Make ``config`` the behaviour; tenants without a token keep theirs or get one."""
        tenants = []
        for tenant in config.tenants:
            token = tenant.token
            if token is None:
                current = self._tenants.get(tenant.id)
                token = current.token if current is not None else new_token(tenant.id)
            tenants.append(tenant.model_copy(update={"token": token}))
        config = config.model_copy(update={"tenants": tuple(tenants)})
        for old in self._tenants.values():
            if old.token is not None:
                self._expired[old.token] = old.id
        self._config = config
        self._tenants = {t.id: t for t in config.tenants}
        self._by_token = {t.token: t for t in config.tenants if t.token is not None}
        self._numbers = {t.id: frozenset(t.phone_number_ids) for t in config.tenants}
        for token in self._by_token:
            self._expired.pop(token, None)
        self._rules = tuple(
            CompiledRule(i, re.compile(rule.match), rule) for i, rule in enumerate(config.rules)
        )
        self._random = random.Random(config.seed)
        self._latency = config.latency.ms / 1000.0
        self._jitter = config.latency.jitter_ms / 1000.0
        self._limited = config.number_rate > 0 or bool(config.number_rates)
        self._buckets: dict[str, NumberLimit | None] = {}
        self._failures: dict[tuple[int, str], int] = {}
        self.record_requests = config.record_requests
        if self.log.maxlen != config.max_requests:
            self.log = deque(self.log, maxlen=config.max_requests)
        return config

    # -- tenants -------------------------------------------------------------------

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant, or ``None`` when unknown."""
        return self._tenants.get(tenant_id)

    def token(self, tenant_id: str) -> str:
        """The tenant's current token (``KeyError`` when unknown)."""
        token = self._tenants[tenant_id].token
        assert token is not None  # apply() fills every token
        return token

    def by_token(self, token: str) -> TenantConfig | None:
        """The tenant that currently owns ``token``."""
        return self._by_token.get(token)

    def is_expired(self, token: str) -> bool:
        """Whether ``token`` was once valid and has been rotated out."""
        return token in self._expired

    def owns(self, tenant: TenantConfig, number: str) -> bool:
        """Whether ``tenant`` may send from phone number id ``number``."""
        return number in self._numbers[tenant.id]

    def rotate(self, tenant_id: str, token: str | None = None) -> TenantConfig:
        """Give the tenant a new token; the old one answers 190/463 from now on."""
        if tenant_id not in self._tenants:
            raise KeyError(tenant_id)
        tenants = tuple(
            t.model_copy(update={"token": token or new_token(t.id)}) if t.id == tenant_id else t
            for t in self._config.tenants
        )
        self.apply(self._config.model_copy(update={"tenants": tenants}))
        return self._tenants[tenant_id]

    @staticmethod
    def credentials(tenant: TenantConfig) -> dict[str, Any]:
        """The tenant service's answer for ``tenant``."""
        return {
            "accessToken": tenant.token,
            "phoneNumberId": tenant.phone_number_ids[0],
            "phoneNumberIds": list(tenant.phone_number_ids),
        }

    # -- per-request decisions -----------------------------------------------------

    def take(self, number: str, now: float) -> bool:
        """Whether ``number`` is under its throughput limit (and count this request)."""
        if not self._limited:
            return True
        try:
            bucket = self._buckets[number]
        except KeyError:
            config = self._config
            rate = config.number_rates.get(number, config.number_rate)
            bucket = number_limit(config.number_rate_window, rate, now) if rate > 0 else None
            self._buckets[number] = bucket
        return bucket is None or bucket.take(now)

    def rule_for(self, digits: str) -> tuple[bool, FailureRule | None]:
        """(a rule matched, the rule to fail with): the first matching rule decides.

        A rule with ``times`` fails the first N requests of each recipient and then lets
        that recipient through (``(True, None)``: no random failure either).
        """
        for position, pattern, rule in self._rules:
            if pattern.search(digits) is None:
                continue
            if rule.times is None:
                return True, rule
            key = (position, digits)
            done = self._failures.get(key, 0)
            if done < rule.times:
                self._failures[key] = done + 1
                return True, rule
            return True, None
        return False, None

    def random_failure(self) -> bool:
        """Whether this request is one of the ``failure_rate`` fraction."""
        rate = self._config.failure_rate
        return rate > 0 and self._random.random() < rate

    def delay(self) -> float:
        """Seconds to wait before answering (latency plus jitter)."""
        if self._jitter:
            return self._latency + self._random.random() * self._jitter
        return self._latency

    def next_wamid(self) -> str:
        """A message id unique across sandbox runs, shaped like Meta's."""
        return f"wamid.HBgL{self._wamid_prefix}{next(self._wamids):012d}"

    # -- bookkeeping ---------------------------------------------------------------

    def record(
        self,
        *,
        path: str,
        number: str,
        token: str,
        body: Any,
        status: int | None,
        code: int | None,
        wamid: str | None,
        outcome: str,
    ) -> None:
        """Count one ``/messages`` request and, if enabled, keep it in the log."""
        self.total += 1
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        if status is not None:
            self.by_status[status] = self.by_status.get(status, 0) + 1
        per = self.by_number.get(number)
        if per is None:
            per = self.by_number[number] = {"requests": 0, "sent": 0, "by_code": {}}
        per["requests"] += 1
        if code is not None:
            self.by_code[code] = self.by_code.get(code, 0) + 1
            per["by_code"][code] = per["by_code"].get(code, 0) + 1
        elif outcome == "sent":
            per["sent"] += 1
        if self.record_requests:
            self.seq += 1
            self.log.append(
                {
                    "seq": self.seq,
                    "at": time.time(),
                    "path": path,
                    "phone_number_id": number,
                    "token": token,
                    "body": body,
                    "status": status,
                    "code": code,
                    "wamid": wamid,
                    "outcome": outcome,
                }
            )

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """The logged requests with ``seq`` above ``since``, oldest first."""
        if not self.log:
            return []
        start = max(0, since - self.log[0]["seq"] + 1)
        return list(itertools.islice(self.log, start, None))

    def stats(self) -> dict[str, Any]:
        """Counts by outcome, HTTP status, Meta code and number, and credential fetches."""
        return {
            "requests": self.total,
            "by_outcome": dict(self.by_outcome),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "by_code": {str(k): v for k, v in self.by_code.items()},
            "by_number": {
                number: {**per, "by_code": {str(k): v for k, v in per["by_code"].items()}}
                for number, per in self.by_number.items()
            },
            "credential_fetches": dict(self.credential_fetches),
        }

    def reset(self) -> None:
        """Forget requests, statistics and counters (``times`` rules and buckets too)."""
        self.log.clear()
        self.seq = 0
        self.total = 0
        self.by_outcome: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.by_code: dict[int, int] = {}
        self.by_number: dict[str, dict[str, Any]] = {}
        self.credential_fetches: dict[str, int] = {}
        self._failures = {}
        self._buckets = {}

"""Meta codes -> category -> retry rule, and the ladder of wait queues.

The classification is data: ``TABLE`` lists Meta's codes (from WHATSAPP.md) with the
category we give them; adding a code is adding a row. ``classify`` decides on Meta's
``code`` first (Meta says the HTTP status is unreliable: rate limits come as 400), and only
for a code we do not know falls back on the HTTP status 401 (auth), ``is_transient`` and then
the HTTP status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from .categories import Category
from .errors import GraphError, GraphTransportError

__all__ = ["BY_CODE", "RULES", "TABLE", "Category", "Rule", "classify", "rule_for"]


#: A Meta code, or an inclusive range of them written ``range(first, last + 1)``.
Codes = int | range

#: The classification, per category: (code or codes, what Meta means by it).
TABLE: Mapping[Category, tuple[tuple[Codes, str], ...]] = MappingProxyType(
    {
        # Meta's side is down or busy: retry through the ladder (whose max retries caps 1 too).
        Category.TRANSIENT: (
            (1, "unknown error"),
            (2, "service temporarily unavailable"),
            (131000, "something went wrong"),
            (131016, "service unavailable"),
            (133004, "server temporarily unavailable"),
            (131057, "account in maintenance (throughput upgrade, about 1 min)"),
        ),
        # Too fast: retry no sooner than the rate-limit minimum, and slow the number down.
        Category.RATE_LIMITED: (
            (4, "app call rate limit"),
            (17, "user call rate limit"),
            (80007, "WABA rate limit"),
            (80008, "WABA rate limit"),
            (130429, "number throughput reached"),
            (131056, "pair rate limit: too many to one recipient"),
        ),
        # The token is bad: refresh the credentials and resend once.
        Category.AUTH: (
            (0, "auth exception"),
            (102, "session invalid"),
            (190, "access token expired or invalid (subcodes 458-467, 492)"),
        ),
        # The business account or number is blocked: an operator must act.
        Category.ACCOUNT: (
            (3, "capability or permission missing"),
            (10, "permission denied"),
            (range(200, 299 + 1), "permission errors"),
            (131005, "access denied"),
            (368, "temporarily blocked for policy violations"),
            (131031, "account locked"),
            (130497, "business restricted from messaging this country"),
            (131042, "payment problem"),
            (131045, "number not registered (certificate)"),
            (133010, "number not registered"),
            (33, "number deleted"),
            (131037, "display name not approved"),
            (131063, "account restricted"),
            (134011, "account restricted"),
            (131048, "spam rate limit: quality too low"),
            (131064, "template-classification limit"),
        ),
        # This recipient or payload can never succeed as it is.
        Category.PERMANENT: (
            (100, "invalid parameter"),
            (131008, "required parameter missing"),
            (131009, "parameter value invalid"),
            (131051, "unsupported message type"),
            (131053, "media upload failed"),
            (135000, "generic user error"),
            (range(132000, 132018 + 1), "template errors (132001 missing, 132015/6 paused)"),
            (132068, "flow blocked"),
            (132069, "flow throttled"),
            (131026, "message undeliverable"),
            (131047, "24 h window closed: a template is needed"),
            (131049, "per-user marketing limit (wait 24 h)"),
            (131050, "user stopped marketing messages"),
            (130403, "recipient blocked by the business"),
            (130472, "user in a marketing experiment holdout"),
            (131021, "sender is the recipient"),
            (131030, "recipient not in the allowed list"),
        ),
    }
)


def _index(table: Mapping[Category, tuple[tuple[Codes, str], ...]]) -> Mapping[int, Category]:
    """Expand the table into one dict, refusing a code listed twice (a table typo)."""
    index: dict[int, Category] = {}
    for category, rows in table.items():
        for codes, _meaning in rows:
            for code in codes if isinstance(codes, range) else (codes,):
                if code in index:
                    raise ValueError(f"Meta code {code} is listed twice in the classification")
                index[code] = category
    return MappingProxyType(index)


#: Every known code -> its category (the table, expanded once at import).
BY_CODE: Mapping[int, Category] = _index(TABLE)

PAIR_LIMIT_CODE = 131056


def classify(err: GraphError) -> Category:
    """The category of a failed send: Meta's code, else a 401, else ``is_transient``, the status.

    A 401 without a code we know (no Meta body, a proxy's, a new code) is auth, like 190: the
    token was refused, so fetching it again and resending once is what may help (SPEC §5).
    """
    if err.code is not None:
        known = BY_CODE.get(err.code)
        if known is not None:
            return known
    status = err.status
    if status == 401:
        return Category.AUTH
    if err.is_transient:
        return Category.TRANSIENT
    if isinstance(err, GraphTransportError) or status is None:
        return Category.TRANSIENT  # connect errors and timeouts
    if status == 429:
        return Category.RATE_LIMITED
    if 400 <= status < 500:
        return Category.PERMANENT
    # 5xx, and anything odd such as a 200 without a wamid: let the ladder try again.
    return Category.TRANSIENT


@dataclass(frozen=True, slots=True)
class Rule:
    """What to do about one failure: retry or not, how long at least, refresh first or not."""

    retry: bool
    min_delay: float  # seconds floor for the wait queue; 0 for none
    refresh_credentials: bool


#: The rule per category. Rate-limit floors come from settings, so ``rule_for`` fills them.
RULES: Mapping[Category, Rule] = MappingProxyType(
    {
        Category.TRANSIENT: Rule(retry=True, min_delay=0.0, refresh_credentials=False),
        Category.RATE_LIMITED: Rule(retry=True, min_delay=0.0, refresh_credentials=False),
        # The pipeline resends once at once after the refresh; a second failure is dead.
        Category.AUTH: Rule(retry=False, min_delay=0.0, refresh_credentials=True),
        Category.ACCOUNT: Rule(retry=False, min_delay=0.0, refresh_credentials=False),
        Category.PERMANENT: Rule(retry=False, min_delay=0.0, refresh_credentials=False),
    }
)


def rule_for(
    category: Category,
    code: int | None,
    *,
    rate_limit_min_delay: float,
    pair_min_delay: float = 10.0,
) -> Rule:
    """The rule for ``category``; a rate limit waits at least its minimum (131056: the pair's)."""
    rule = RULES[category]
    if category is Category.RATE_LIMITED:
        floor = pair_min_delay if code == PAIR_LIMIT_CODE else rate_limit_min_delay
        return replace(rule, min_delay=floor)
    return rule


def retry_delay(retry_number: int, ladder: Sequence[float], min_delay: float = 0) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based): its step, the last repeating."""
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    if not ladder:
        raise ValueError("the retry ladder needs at least one delay")
    step = ladder[min(retry_number, len(ladder)) - 1]
    return max(step, min_delay)


def wait_queue_for(delay: float, ladder: Sequence[float]) -> float:
    """The ladder step whose wait queue serves ``delay``: the smallest step >= it, else the largest.

    Only the ladder's delays have wait queues, so a floor longer than the chosen step (a rate
    limit) moves the message up to the next queue that waits at least that long.
    """
    if not ladder:
        raise ValueError("the retry ladder needs at least one delay")
    fitting = [step for step in ladder if step >= delay]
    return min(fitting) if fitting else max(ladder)


def _number(value: float) -> str:
    """``30`` for 30.0, ``1.5`` for 1.5: no trailing zeros, no exponent."""
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def retry_queue_name(delay: float, prefix: str = "outbound-retry-") -> str:
    """The wait queue's name for ``delay`` seconds: ``30s``, ``2m``, ``1h``, ``500ms``, ``1.5s``."""
    if not math.isfinite(delay) or delay <= 0:
        raise ValueError(f"a retry delay must be positive seconds, got {delay!r}")
    if delay < 1:
        return f"{prefix}{_number(round(delay * 1000, 6))}ms"
    if delay % 3600 == 0:
        return f"{prefix}{int(delay // 3600)}h"
    if delay % 60 == 0:
        return f"{prefix}{int(delay // 60)}m"
    return f"{prefix}{_number(delay)}s"

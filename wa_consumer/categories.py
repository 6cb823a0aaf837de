"""Every category a failure can carry, once: the value of ``x-error-category``.

The first five are what a Cloud API error means (``classify`` maps Meta's codes to them);
the rest are what the pipeline decides itself. ``DEAD`` lists those a message can be dead
with (SPEC §4); ``ACCOUNT_LEVEL`` those an operator must act on.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    # A Cloud API answer
    TRANSIENT = "transient"  # Meta's side is down or busy: retry
    RATE_LIMITED = "rate_limited"  # too fast: retry later, slow the number down
    AUTH = "auth"  # the token is bad (dead when still bad after one refresh)
    ACCOUNT = "account"  # the business account or number is blocked
    PERMANENT = "permanent"  # this recipient or payload can never succeed as is
    # The pipeline's own
    RETRIES_EXHAUSTED = "retries_exhausted"
    INVALID = "invalid"  # a data problem of this message: never retried
    EXPIRED = "expired"
    TENANT_UNKNOWN = "tenant_unknown"  # tenant service 404
    TENANT_SUSPENDED = "tenant_suspended"  # tenant service 403
    TENANT_MISMATCH = "tenant_mismatch"  # the number is not the tenant's
    CRASH_LOOP = "crash_loop"  # redelivered again and again with no recorded outcome
    # Waits that are no retry
    THROTTLED = "throttled"  # the number's or recipient's rate: a wait queue, no count
    BUSY = "busy"  # another consumer holds the message


#: What a Cloud API error can mean (``classify.TABLE`` has a row set for each).
CLOUD_API = (
    Category.TRANSIENT, Category.RATE_LIMITED, Category.AUTH, Category.ACCOUNT, Category.PERMANENT,
)  # fmt: skip

#: What a message in ``outbound-failed`` can carry as its category (SPEC §4).
DEAD = (
    Category.RETRIES_EXHAUSTED, Category.INVALID, Category.EXPIRED, Category.PERMANENT,
    Category.AUTH, Category.ACCOUNT, Category.TENANT_UNKNOWN, Category.TENANT_SUSPENDED,
    Category.TENANT_MISMATCH, Category.CRASH_LOOP,
)  # fmt: skip

#: Dead categories an operator must act on (an alert each).
ACCOUNT_LEVEL = frozenset({Category.ACCOUNT, Category.AUTH, Category.TENANT_SUSPENDED})

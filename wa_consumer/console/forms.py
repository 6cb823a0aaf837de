"""Reading what a request gives: filters from the query string, numbers, fingerprints.

Pages and the API read the same names, so a link to a filtered overview and the API call
behind it look alike: ``?tenant=acme&category=account&age=24h`` (each may be repeated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from multidict import MultiMapping

from ..dlq.filters import Filter
from .problems import Invalid

FILTERS: Final = ("tenant", "category", "code", "type", "age")
_FINGERPRINT: Final = re.compile(r"[0-9a-f]{4,40}")
_MAX_VALUES: Final = 50


def selection(query: MultiMapping[str]) -> tuple[Filter, dict[str, Any]]:
    """The filter of the query string, and its values as given (for links and the reply)."""
    given: dict[str, Any] = {}
    for name in ("tenant", "category", "code", "type"):
        values = [v.strip() for v in query.getall(name, []) if v.strip()]
        if len(values) > _MAX_VALUES:
            raise Invalid(f"at most {_MAX_VALUES} values of {name}")
        if values:
            given[name] = values
    age = query.get("age", "").strip() or None
    if age is not None:
        given["age"] = age
    try:
        f = Filter.of(
            tenants=given.get("tenant"),
            categories=given.get("category"),
            codes=given.get("code"),
            types=given.get("type"),
            since=age,
        )
    except ValueError as exc:
        raise Invalid(str(exc).replace("--since", "age")) from None
    return f, given


def fingerprint(text: str) -> str:
    """A group's fingerprint (or a prefix of one) as the URL gives it."""
    text = text.strip().lower()
    if not _FINGERPRINT.fullmatch(text):
        raise Invalid(f"{text[:60]!r} is not a fingerprint (hex, as the overview lists them)")
    return text


def whole_number(value: object, name: str, *, low: int = 1, high: int = 2**62) -> int:
    """An integer from a form, JSON or the path, within bounds."""
    if isinstance(value, bool):
        raise Invalid(f"{name} must be a whole number")
    try:
        number = int(value) if isinstance(value, int | str) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise Invalid(f"{name} must be a whole number from {low} to {high}")
    return number


def positive(value: object, name: str) -> float:
    """A rate from a form or JSON: a number above 0."""
    if isinstance(value, bool):
        raise Invalid(f"{name} must be a number above 0")
    try:
        number = float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        number = None
    if number is None or not 0 < number <= 10_000:
        raise Invalid(f"{name} must be a number above 0 (at most 10000)")
    return number


def text(values: Mapping[str, Any], name: str) -> str | None:
    """An optional text field; None when absent or blank."""
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be text")
    return value.strip() or None

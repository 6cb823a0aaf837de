"""HTML from Jinja2 templates (``templates/``), escaped by default.

Why Jinja2 rather than f-strings and ``html.escape``: every value a page shows comes from a
producer or from Meta (bodies, error texts, tenant ids), and with autoescape on each one is
escaped unless a template says otherwise, where with hand-written strings one forgotten
``escape`` is a stored XSS. Template inheritance also keeps each page to its own content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2
from aiohttp import web


def ago(at: datetime | str | None, now: datetime | None = None) -> str:
    """``3 min ago``, ``2 h ago``, ``5 d ago`` (``-`` for nothing)."""
    if at is None:
        return "-"
    if isinstance(at, str):
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            return at
    else:
        moment = at
    seconds = max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())
    return duration(seconds) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def when(at: datetime | str | None) -> str:
    """An ISO time to the second, UTC (for ``title`` attributes and tables)."""
    if at is None:
        return "-"
    if isinstance(at, str):
        return at
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def bars(hourly: list[int], width: int = 4, gap: int = 1, height: int = 24) -> list[dict[str, Any]]:
    """The rectangles of a 24-hour chart: one per hour, oldest first, scaled to the largest."""
    top = max(hourly, default=0) or 1
    out = []
    for i, n in enumerate(hourly):
        h = 0 if n == 0 else max(1, round(n / top * height))
        hours_ago = len(hourly) - i
        out.append(
            {"x": i * (width + gap), "y": height - h, "w": width, "h": h, "n": n, "ago": hours_ago}
        )
    return out


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wa_consumer.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, duration=duration, when=when)
    env.globals.update(bars=bars)
    return env


def html(name: str, status: int = 200, **context: Any) -> web.Response:
    body = environment().get_template(name).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

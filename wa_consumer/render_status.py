"""The readable view of ``status INTERNAL_ID`` (``--json`` is for scripts): the message's
record, its attempts, and what Meta's webhooks said of each of its wamids.

Values are wrapped in ``Text`` so that brackets in error messages or metadata are shown as
they are, not read as rich markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# A message's status and a wamid's: green once Meta has it, red where it ended badly.
_STATUS_STYLE = {
    "sent": "green",
    "delivered": "green",
    "read": "green",
    "dead": "red",
    "failed": "red",
}
# (header, column, right-aligned)
_ATTEMPT_COLUMNS = (
    ("#", "attempt", True),
    ("started", "started_at", False),
    ("latency ms", "latency_ms", True),
    ("HTTP", "http_status", True),
    ("code", "code", False),
    ("subcode", "subcode", True),
    ("category", "category", False),
    ("outcome", "outcome", False),
    ("ambiguous", "ambiguous", False),
)
_PIPED_WIDTH = 200
_WIDE = 100  # below this the attempts' columns are one space apart

_FIELDS = (
    ("tenant", "tenant_id"),
    ("number", "phone_number_id"),
    ("recipient", "recipient"),
    ("type", "type"),
    ("status", "status"),
    ("wamid", "wamid"),
    ("retries", "retries"),
    ("deliveries", "deliveries"),
    ("last error code", "last_error_code"),
    ("last error category", "last_error_category"),
    ("last error message", "last_error_message"),
    ("created (UTC)", "created_at"),
    ("updated (UTC)", "updated_at"),
    ("sent (UTC)", "sent_at"),
    ("resolution", "resolution"),
    ("metadata", "metadata"),
)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        # Seconds are enough for a person; --json keeps the full precision.
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def show_record(record: dict[str, Any]) -> None:
    """The message's record, its attempts, then each of its wamids' statuses."""
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped into grep or a file: keep a wamid on one line instead of breaking it at 80.
        console = Console(highlight=False, width=_PIPED_WIDTH)
    title = Text(f"message {record['internal_id']} of tenant {record['tenant_id']}")
    message = Table(title=title, show_header=False, title_justify="left")
    message.add_column(style="bold", no_wrap=True)
    # fold: a long wamid breaks at the edge instead of being cut off with an ellipsis.
    message.add_column(overflow="fold")
    for label, column in _FIELDS:
        style = _STATUS_STYLE.get(record["status"], "yellow") if column == "status" else ""
        message.add_row(label, Text(_text(record[column]), style=style))
    console.print(message)

    _show_attempts(console, record["attempts"])
    _show_statuses(console, record["statuses"])


def _show_attempts(console: Console, attempts: list[dict[str, Any]]) -> None:
    if not attempts:
        console.print("no attempts recorded")
        return
    # No vertical rules and narrow gaps: nine columns and a whole timestamp fit in 80.
    table = Table(
        title="attempts (times in UTC)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0) if console.width >= _WIDE else 0,
        show_edge=False,
    )
    for header, column, right in _ATTEMPT_COLUMNS:
        table.add_column(
            header,
            justify="right" if right else "left",
            # Only the latency header may wrap ("latency" / "ms"): the values are short.
            no_wrap=column != "latency_ms",
        )
    for attempt in attempts:
        table.add_row(*(Text(_text(attempt[column])) for _, column, _ in _ATTEMPT_COLUMNS))
    console.print(table)
    # Meta's trace ids (what its support asks for) under the table: too wide for a column.
    for attempt in attempts:
        if trace := attempt.get("fbtrace_id"):
            console.print(Text(f"attempt {attempt['attempt']} fbtrace_id {trace}"))


# One table per wamid: when our send got its 200 (accepted), then what Meta's webhooks said.
_STATUS_TIMES = (
    ("accepted", "accepted_at"),
    ("sent", "sent_at"),
    ("delivered", "delivered_at"),
    ("read", "read_at"),
    ("failed", "failed_at"),
)
_BILLABLE = {True: "billable", False: "not billable", None: None}


def _show_statuses(console: Console, statuses: list[dict[str, Any]]) -> None:
    if not statuses:
        console.print("no delivery statuses recorded")
    for status in statuses:
        # The wamid is a row, not the title: a title wraps at the table's width.
        title = "delivery statuses (times in UTC)"
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("wamid", Text(status["wamid"]))
        style = _STATUS_STYLE.get(status["status"], "yellow")
        table.add_row("status", Text(status["status"], style=style))
        for label, column in _STATUS_TIMES:
            table.add_row(label, Text(_text(status[column])))
        for label, value in _status_details(status):
            table.add_row(label, Text(value))
        console.print(table)


def _status_details(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The error, pricing and conversation of one wamid, each on one line (``-``: none)."""
    message = s["error_message"] if s["error_message"] != s["error_title"] else None
    expires = s["conversation_expires_at"]
    rows = {
        "error": (s["error_code"], s["error_category"], s["error_title"], message),
        "pricing": (_BILLABLE[s["pricing_billable"]], s["pricing_category"], s["pricing_model"]),
        "conversation": (
            s["conversation_id"],
            s["conversation_origin"],
            expires and f"expires {_text(expires)}",
        ),
    }
    return [(label, ", ".join(w for w in words if w) or "-") for label, words in rows.items()]

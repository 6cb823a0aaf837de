"""The outcome line written without structlog's chain is the line the chain would write."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from wa_consumer import logs
from wa_consumer.logs import EventLine, configure_logging, get_logger


class _Stdout:
    """What the lines written to stdout say (configure_logging writes to ``sys.stdout``'s
    buffer, which pytest captures)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self._capsys.readouterr().out.splitlines()]


@pytest.fixture
def stdout(capsys: pytest.CaptureFixture[str]) -> Iterator[_Stdout]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    try:
        yield _Stdout(capsys)
    finally:
        logging.getLogger().handlers[:] = handlers
        structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()
        logs._chain = None


FIELDS: dict[str, Any] = {
    "tenant_id": "acme",
    "internal_id": "m-1",
    "attempt": 1,
    "outcome": "dead",
    "latency_ms": 12.3,
    "error": "Meta said: Invalid OAuth access token Bearer EAAG.secret-token",
    "access_token": "EAAG.secret-token",
}


def _without_time(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "timestamp"}


@pytest.mark.parametrize("worker", [None, 3])
def test_the_direct_line_has_the_fields_order_and_masking_of_structlogs(
    stdout: _Stdout, worker: int | None
) -> None:
    configure_logging("INFO", "json", worker=worker)
    get_logger("pipeline").warning("message", **FIELDS)
    EventLine("pipeline").emit(logging.WARNING, "message", dict(FIELDS))
    chained, direct = stdout.lines()  # no loop runs: each line is written at once
    assert list(direct) == list(chained)  # same keys, same order
    assert _without_time(direct) == _without_time(chained)
    assert direct["access_token"] == "***" and "secret-token" not in direct["error"]
    assert direct["timestamp"].endswith("Z") and len(direct["timestamp"]) == 27


def test_an_info_line_is_dropped_below_the_level_and_a_warning_is_not(stdout: _Stdout) -> None:
    configure_logging("WARNING", "json")
    line = EventLine("pipeline")
    line.emit(logging.INFO, "message", {"outcome": "sent"})
    line.emit(logging.WARNING, "message", {"outcome": "dead"})
    assert [(e["outcome"], e["level"]) for e in stdout.lines()] == [("dead", "warning")]


def test_context_bound_with_structlog_reaches_the_direct_line(stdout: _Stdout) -> None:
    """The direct line reads structlog's registry of bound context variables (a private name,
    ``structlog.contextvars._CONTEXT_VARS``): this fails if an upgrade moves it."""
    configure_logging("INFO", "json")
    structlog.contextvars.bind_contextvars(request_id="r-1")
    EventLine("pipeline").emit(logging.INFO, "message", {"outcome": "sent"})
    [line] = stdout.lines()
    assert line["request_id"] == "r-1"


def test_captured_or_reconfigured_logging_gets_the_line_through_structlog(
    stdout: _Stdout,
) -> None:
    configure_logging("INFO", "json")
    line = EventLine("pipeline")
    with capture_logs() as captured:
        line.emit(logging.WARNING, "message", {"outcome": "dead"})
    assert captured == [
        {"component": "pipeline", "outcome": "dead", "event": "message", "log_level": "warning"}
    ]
    configure_logging("INFO", "console")
    assert logs._chain is None
    assert stdout.lines() == []  # neither line went to the JSON stream

"""OpenTelemetry (the ``otel`` extra): a span per delivery under the producer's trace, its
children, the ``trace_id`` in the outcome line; nothing of it while tracing is off."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

from tests.unit.pipeline_fakes import (
    FakeDelivery,
    Rig,
    StubGraph,
    body,
    meta_error,
    rig,
    settle_one,
)
from wa_consumer import headers, otel, tracing
from wa_consumer.errors import SettingsError

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHILDREN = ["wa.credentials", "wa.ledger.claim", "wa.graph.send", "wa.ledger.finish"]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def traced(provider: TracerProvider) -> Rig:
    r = rig()
    r.pipeline.tracer = otel.OtelTracer(provider)
    return r


@pytest.fixture(autouse=True)
def _info_lines() -> Iterator[None]:
    """The outcome line is INFO; the suite's logging keeps WARNING and up (conftest)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        yield
    finally:
        structlog.configure(**saved)


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def outcome_line(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    [line] = [line for line in logs if line["event"] == "message"]
    return line


# -- tracing on --------------------------------------------------------------------------------


async def test_a_delivery_is_one_span_under_the_producers_trace_with_a_child_per_step(
    traced: Rig, exporter: InMemorySpanExporter
) -> None:
    await settle_one(traced, FakeDelivery(body(), headers={"traceparent": TRACEPARENT}))
    spans = exporter.get_finished_spans()
    deliver = named(spans, "wa.deliver")
    assert deliver.parent is not None and deliver.parent.is_remote
    assert trace.format_trace_id(deliver.context.trace_id) == TRACE_ID
    assert trace.format_span_id(deliver.parent.span_id) == PARENT_ID
    assert deliver.kind is trace.SpanKind.CONSUMER
    attributes = dict(deliver.attributes or {})
    assert attributes["wa.tenant_id"] == "acme"
    assert attributes["wa.internal_id"] == "m-1"
    assert attributes["wa.type"] == "text"
    assert attributes["wa.outcome"] == "sent"
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == deliver.context.span_id
    ]
    assert [s.name for s in sorted(children, key=lambda s: s.start_time or 0)] == CHILDREN
    assert named(spans, "wa.graph.send").attributes["http.response.status_code"] == 200  # type: ignore[index]
    assert named(spans, "wa.ledger.claim").attributes["wa.claim"] == "claimed"  # type: ignore[index]


async def test_the_outcome_line_carries_the_trace_id(traced: Rig) -> None:
    with capture_logs() as logs:
        await settle_one(traced, FakeDelivery(body(), headers={"traceparent": TRACEPARENT}))
    assert outcome_line(logs)["trace_id"] == TRACE_ID


async def test_a_metas_error_answer_marks_the_send_span_with_its_status_and_code(
    exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    r = rig(StubGraph(meta_error(400, 131026)))
    r.pipeline.tracer = otel.OtelTracer(provider)
    await settle_one(r, FakeDelivery(body()))
    send = named(exporter.get_finished_spans(), "wa.graph.send")
    assert send.attributes is not None
    assert (send.attributes["http.response.status_code"], send.attributes["wa.meta.code"]) == (
        400,
        "131026",
    )
    assert send.status.status_code is StatusCode.ERROR
    assert named(exporter.get_finished_spans(), "wa.deliver").attributes["wa.outcome"] == "dead"  # type: ignore[index]


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # the invalid all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        TRACEPARENT + "-" + "x" * 10_000,
        TRACEPARENT.encode() + b"\xff",
        12345,
        ["not", "a", "string"],
    ],
)
async def test_a_malformed_traceparent_is_ignored_and_the_message_is_delivered(
    traced: Rig, exporter: InMemorySpanExporter, value: object
) -> None:
    with capture_logs() as logs:
        call = await settle_one(traced, FakeDelivery(body(), headers={"traceparent": value}))
    assert type(call.outcome).__name__ == "Delivered"
    deliver = named(exporter.get_finished_spans(), "wa.deliver")
    assert deliver.parent is None  # a trace of its own
    assert trace.format_trace_id(deliver.context.trace_id) != TRACE_ID
    assert outcome_line(logs)["trace_id"] == trace.format_trace_id(deliver.context.trace_id)


def test_traceparent_is_read_as_bytes_and_tracestate_is_bounded() -> None:
    carrier = headers.trace_context({"traceparent": TRACEPARENT.encode(), "tracestate": "k=v"})
    assert carrier == {"traceparent": TRACEPARENT, "tracestate": "k=v"}
    long_state = {"traceparent": TRACEPARENT, "tracestate": "k=" + "v" * 600}
    assert headers.trace_context(long_state) == {"traceparent": TRACEPARENT}
    assert headers.trace_context(None) is None
    assert headers.trace_context({}) is None


def test_the_publisher_injects_the_current_span_and_keeps_a_callers_own(
    provider: TracerProvider,
) -> None:
    assert tracing.inject({"a": 1}) == {"a": 1}  # no span current: unchanged
    with provider.get_tracer("test").start_as_current_span("publish") as span:
        injected = tracing.inject({"a": 1})
        own = tracing.inject({"traceparent": TRACEPARENT})
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    assert injected["a"] == 1
    assert headers.trace_context(injected) is not None
    assert injected["traceparent"].split("-")[1] == trace_id
    assert own == {"traceparent": TRACEPARENT}


def test_an_exporter_that_is_not_installed_fails_at_start_naming_the_variable() -> None:
    assert otel.exporter_names(None) == []
    assert otel.exporter_names("none") == []
    assert otel.exporter_names("otlp, console") == ["otlp", "console"]
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        otel._exporter("no-such-exporter")


# -- tracing off -------------------------------------------------------------------------------


async def test_with_tracing_off_no_span_is_made_and_the_line_has_no_trace_id() -> None:
    tracer = tracing.build(enabled=False)
    assert isinstance(tracer, tracing.NullTracer)
    assert tracer.delivery({"traceparent": TRACEPARENT}) is tracing.NULL_SPAN
    assert tracer.child("wa.graph.send") is tracing.NULL_SPAN
    r = rig()
    assert isinstance(r.pipeline.tracer, tracing.NullTracer)
    with capture_logs() as logs:
        await settle_one(r, FakeDelivery(body(), headers={"traceparent": TRACEPARENT}))
    assert "trace_id" not in outcome_line(logs)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}  # WA_OTEL_ENABLED unset
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


DAEMON = (
    "import sys\n"
    "import wa_consumer.cli, wa_consumer.consumer, wa_consumer.pipeline, wa_consumer.publisher\n"
    "from wa_consumer.settings import Settings\n"
    "from wa_consumer.tracing import NullTracer, build\n"
    "assert isinstance(build(Settings(_env_file=None).otel_enabled), NullTracer)\n"
)


def test_with_tracing_off_the_daemon_never_loads_its_opentelemetry_code() -> None:
    # (redis-py imports OpenTelemetry by itself when it is installed: not ours to check)
    done = run_python(DAEMON + "assert 'wa_consumer.otel' not in sys.modules\n")
    assert done.returncode == 0, done.stderr


def test_without_the_extra_the_daemon_runs_untraced_and_enabling_it_fails_at_start() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        + DAEMON
        + "from wa_consumer.errors import SettingsError\n"
        "try:\n"
        "    build(True)\n"
        "except SettingsError as exc:\n"
        "    assert 'WA_OTEL_ENABLED' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr

"""The OpenTelemetry implementation of ``tracing.Tracer`` (the ``otel`` extra).

Imported only by ``tracing`` when tracing is on, or when a publishing process already uses
OpenTelemetry. Spans go to the global tracer provider: one the process set up itself (or
``opentelemetry-instrument``) is used as it is; otherwise ``configure`` installs the SDK's
provider, named by ``OTEL_SERVICE_NAME`` (default ``wa-consumer``) and
``OTEL_RESOURCE_ATTRIBUTES``, exporting with the exporters ``OTEL_TRACES_EXPORTER`` names
(comma-separated: ``otlp`` needs ``opentelemetry-exporter-otlp``, ``console`` is the SDK's
own). Unset or ``none``: spans are made (their ``trace_id`` is in the log line) but go
nowhere. The exporter reads its own variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ...).

The producer's context is read with the W3C trace-context propagator only, from headers
``headers.trace_context`` has bounded and checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span as OtelSpan
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import headers as hdr
from .errors import SettingsError
from .tracing import Value

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_SCOPE: Final = "wa_consumer"
_ROOT: Final = Context()  # no producer context: a trace of its own


class _Span:
    """One OpenTelemetry span, current in its task between ``__enter__`` and ``__exit__``."""

    __slots__ = ("_scope", "_span")

    def __init__(self, span: OtelSpan) -> None:
        self._span = span
        self._scope: Any = None

    @property
    def trace_id(self) -> str | None:
        context = self._span.get_span_context()
        return trace.format_trace_id(context.trace_id) if context.is_valid else None

    def set(self, key: str, value: Value) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def __enter__(self) -> _Span:
        self._scope = trace.use_span(self._span, end_on_exit=True)
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.__exit__(exc_type, exc, tb)


class OtelTracer:
    """``tracing.Tracer`` on the global tracer provider."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=provider)  # None: the global

    def delivery(self, headers: Mapping[str, Any] | None) -> _Span:
        carrier = hdr.trace_context(headers)
        parent = _PROPAGATOR.extract(carrier) if carrier is not None else _ROOT
        # Each delivery starts from the producer's context, never from whatever is current.
        span = self._tracer.start_span("wa.deliver", context=parent, kind=SpanKind.CONSUMER)
        return _Span(span)

    def child(self, name: str) -> _Span:
        return _Span(self._tracer.start_span(name))


def inject(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` with the current span's W3C context, when there is a valid one."""
    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return {**headers, **carrier}


def configure() -> None:
    """Install the SDK's tracer provider, unless the process has set one already."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the application's own (or opentelemetry-instrument's): used as it is
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "wa-consumer"}))
    provider = TracerProvider(resource=resource)
    # The SDK's own variable, read as its auto-configuration reads it (not one of our settings).
    for name in exporter_names(os.environ.get("OTEL_TRACES_EXPORTER")):
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)


def exporter_names(value: str | None) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; none when unset or ``none``."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return [] if names in ([], ["none"]) else names


def _exporter(name: str) -> Any:
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER names {name!r}, but no such span exporter is installed "
            f"(otlp: pip install opentelemetry-exporter-otlp)"
        )
    return next(iter(found)).load()()

"""Trace context for each delivery: the tracing seam, and its null version.

With ``WA_OTEL_ENABLED=true`` and the ``otel`` extra installed (``pip install
'wa-consumer[otel]'``), each delivery is one ``wa.deliver`` span, a child of the producer's
span when its message carries a valid ``traceparent`` header (``headers.trace_context``),
with children ``wa.credentials``, ``wa.ledger.claim``, ``wa.graph.send`` and
``wa.ledger.finish``; the outcome line carries its ``trace_id``. ``wa_consumer.otel`` holds
that implementation; this module never imports OpenTelemetry, so with tracing off (the
default) nothing of it is loaded and each delivery costs a call returning one shared,
do-nothing span.

Exporters are the SDK's, chosen with its standard variables (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...); see ``wa_consumer.otel``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Protocol

from .errors import SettingsError
from .headers import TRACEPARENT

#: A span attribute's value (OpenTelemetry's primitive types; None: not set).
Value = str | int | float | bool | None


class Span(Protocol):
    """One step of a delivery's life; a context manager that ends the step on exit."""

    @property
    def trace_id(self) -> str | None:
        """The trace's id (32 hex digits) when there is a valid one, for the log line."""
        ...

    def set(self, key: str, value: Value) -> None:
        """Set an attribute (None: left unset)."""
        ...

    def __enter__(self) -> Span: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Tracer(Protocol):
    """Where the pipeline opens its spans (``NullTracer`` while tracing is off)."""

    def delivery(self, headers: Mapping[str, Any] | None) -> Span:
        """The span of one delivery, under the producer's trace from its headers, if any."""
        ...

    def child(self, name: str) -> Span:
        """A span under the current one (the delivery's, in its task)."""
        ...


class _NullSpan:
    """Does nothing; one shared instance, so tracing off allocates nothing per message."""

    __slots__ = ()

    @property
    def trace_id(self) -> str | None:
        return None

    def set(self, key: str, value: Value) -> None:
        return None

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NULL_SPAN: Final = _NullSpan()


class NullTracer:
    """Tracing off: every span is ``NULL_SPAN``."""

    def delivery(self, headers: Mapping[str, Any] | None) -> Span:
        return NULL_SPAN

    def child(self, name: str) -> Span:
        return NULL_SPAN


def build(enabled: bool) -> Tracer:
    """The daemon's tracer: ``NullTracer`` unless ``enabled``. Raises ``SettingsError`` (at
    start, naming the setting) when enabled without OpenTelemetry installed, or when
    ``OTEL_TRACES_EXPORTER`` names an exporter that is not installed."""
    if not enabled:
        return NullTracer()
    try:
        from . import otel  # only with tracing on: off costs no import
    except ImportError as exc:
        raise SettingsError(
            "WA_OTEL_ENABLED is true but OpenTelemetry is not installed: "
            "pip install 'wa-consumer[otel]'"
        ) from exc
    otel.configure()
    return otel.OtelTracer()


def inject(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` with the current span's ``traceparent`` (and ``tracestate``) added, for a
    message being published; unchanged when OpenTelemetry is not in use by this process (not
    imported: the publisher never imports it itself), when no span is current, or when the
    caller set a ``traceparent`` of its own."""
    if "opentelemetry.trace" not in sys.modules or TRACEPARENT in headers:
        return headers
    from . import otel  # OpenTelemetry is loaded already: this costs nothing

    return otel.inject(headers)

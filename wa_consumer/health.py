"""``GET /metrics``, ``/healthz`` and ``/readyz`` on ``WA_METRICS_HOST:WA_METRICS_PORT``.

- ``/healthz``: 200 while the event loop runs (a wedged loop cannot answer at all), for a
  liveness probe.
- ``/readyz``: 200 only when every check of the daemon passes (broker connected, consuming,
  ledger reachable when there is one), else 503 with a JSON body naming what failed, for a
  readiness probe. The ledger check is a ``SELECT 1`` bounded at 2 s: give the probe a
  timeout of 3 s or more.
- ``/metrics``: the daemon's own registry, Prometheus text (or OpenMetrics when asked).
  ``refresh``, when given, runs before each scrape (``run --workers`` gathers its workers'
  metrics into the registry then).

Scrapes and probes are not access-logged: they would drown the message lines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .errors import WaConsumerError
from .logs import get_logger

log = get_logger("health")

Readiness = Callable[[], Awaitable[dict[str, str]]]
"""Each check's state: ``"ok"`` when it passes, else why not."""

Refresh = Callable[[], Awaitable[None]]


class HealthServer:
    """The HTTP side of the daemon: metrics and probes, on one aiohttp runner."""

    def __init__(
        self, registry: CollectorRegistry, readiness: Readiness, refresh: Refresh | None = None
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._refresh = refresh
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); returns the bound port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise WaConsumerError(
                f"cannot serve metrics on {host}:{port} (WA_METRICS_HOST, WA_METRICS_PORT): "
                f"{exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("http_listening", host=host, port=self.port, paths="/metrics /healthz /readyz")
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        if self._refresh is not None:
            await self._refresh()
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness()
        failed = [name for name, state in checks.items() if state != "ok"]
        body = {"status": "not ready" if failed else "ready", "checks": checks, "failed": failed}
        return web.json_response(body, status=503 if failed else 200)

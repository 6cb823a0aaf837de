"""The JSON API under ``/api/``: every read and every action of the pages, for runbooks.

Documented in ``config/console-openapi.yaml`` (a test holds the file and these routes to
each other). A bearer token (``WA_CONSOLE_API_TOKENS``) or a console session is required
(see ``guard.auth_middleware``); errors are ``{"error": "..."}`` with the status of
``problems``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..ledger.audit import recent_actions
from ..ledger.deliveries import failure_stats
from . import actions, reads, replays
from .auth import PRINCIPAL
from .forms import fingerprint, positive, selection, text, whole_number
from .problems import Invalid
from .state import CONSOLE, Console


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str),
        status=status,
        content_type="application/json",
    )


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _actor(request: web.Request) -> str:
    return request[PRINCIPAL].actor


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is no body)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


# -- reads -----------------------------------------------------------------------------------


async def get_overview(request: web.Request) -> web.Response:
    f, given = selection(request.query)
    view = await reads.overview(_console(request), f, given)
    return _json(view.to_json())


async def get_groups(request: web.Request) -> web.Response:
    f, given = selection(request.query)
    stats = await _console(request).dead.stats(f)
    return _json({"filters": given, **reads.dead_stats_json(stats)})


async def get_group(request: web.Request) -> web.Response:
    fp = fingerprint(request.match_info["fingerprint"])
    before = request.query.get("before")
    limit = whole_number(request.query.get("limit", reads.PAGE_SIZE), "limit", high=500)
    page = await reads.group_page(
        _console(request),
        fp,
        before=None if before is None else whole_number(before, "before"),
        limit=limit,
    )
    return _json(page.to_json())


async def get_message(request: web.Request) -> web.Response:
    dead_id = whole_number(request.match_info["id"], "id")
    view = await reads.message_view(_console(request), dead_id)
    return _json(view.to_json())


async def get_queues(request: web.Request) -> web.Response:
    depths = await reads.queue_depths(_console(request))
    return _json({"queues": [q.to_json() for q in depths]})


async def get_failures(request: web.Request) -> web.Response:
    f, given = selection(request.query)
    async with _console(request).db.acquire() as connection:
        stats = await failure_stats(connection, f)
    return _json({"filters": given, **stats.to_json()})


async def get_rates(request: web.Request) -> web.Response:
    rates = await reads.send_rates(_console(request))
    return _json({"window_seconds": reads.RATE_WINDOW, "rates": [r.to_json() for r in rates]})


async def get_tenants(request: web.Request) -> web.Response:
    states = await _console(request).controls.states(request.query.get("tenant") or None)
    return _json({"tenants": [s.to_json() for s in states]})


async def get_actions(request: web.Request) -> web.Response:
    limit = whole_number(request.query.get("limit", 50), "limit", high=500)
    found = await recent_actions(_console(request).db, limit, request.query.get("target") or None)
    return _json({"actions": [a.to_json() for a in found]})


async def get_jobs(request: web.Request) -> web.Response:
    return _json({"jobs": [j.to_json() for j in _console(request).jobs.all()]})


async def get_job(request: web.Request) -> web.Response:
    console = _console(request)
    job = console.jobs.get(request.match_info["id"])
    return _json(await reads.job_view(console, job))


# -- actions ---------------------------------------------------------------------------------


async def post_group_replay(request: web.Request) -> web.Response:
    console, data = _console(request), await _body(request)
    s = console.settings
    job = await replays.start(
        console,
        fingerprint(request.match_info["fingerprint"]),
        actor=_actor(request),
        reason=actions.reason_of(text(data, "reason")),
        canary=whole_number(data.get("canary", s.console_canary), "canary", high=1000),
        rate=positive(data.get("rate", s.console_replay_rate), "rate"),
    )
    return _json(await reads.job_view(console, job), status=202)


async def post_group_resolve(request: web.Request) -> web.Response:
    data = await _body(request)
    result = await actions.resolve_group(
        _console(request),
        fingerprint(request.match_info["fingerprint"]),
        actor=_actor(request),
        reason=actions.reason_of(text(data, "reason")),
    )
    return _json(result)


async def post_job_continue(request: web.Request) -> web.Response:
    console, data = _console(request), await _body(request)
    job = console.jobs.get(request.match_info["id"])
    rate = data.get("rate")
    await replays.go_on(
        console, job, actor=_actor(request), rate=None if rate is None else positive(rate, "rate")
    )
    return _json(await reads.job_view(console, job), status=202)


async def post_job_stop(request: web.Request) -> web.Response:
    console, data = _console(request), await _body(request)
    job = console.jobs.get(request.match_info["id"])
    await replays.stop(console, job, actor=_actor(request), reason=text(data, "reason"))
    return _json(await reads.job_view(console, job))


async def post_message_replay(request: web.Request) -> web.Response:
    data = await _body(request)
    result = await actions.replay_one(
        _console(request),
        whole_number(request.match_info["id"], "id"),
        actor=_actor(request),
        reason=actions.reason_of(text(data, "reason")),
    )
    return _json(result)


async def post_message_retry(request: web.Request) -> web.Response:
    data = await _body(request)
    body = data.get("body")
    if isinstance(body, dict):
        body = orjson.dumps(body).decode()
    if not isinstance(body, str) or not body.strip():
        raise Invalid("body: the edited message, as a JSON object or its text")
    result = await actions.edit_and_retry(
        _console(request),
        whole_number(request.match_info["id"], "id"),
        body,
        actor=_actor(request),
        reason=actions.reason_of(text(data, "reason")),
    )
    return _json(result)


def _tenant_action(action: str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        data = await _body(request)
        state = await actions.control_tenant(
            _console(request),
            action,
            request.match_info["tenant"],
            text(data, "number"),
            actor=_actor(request),
            reason=actions.reason_of(text(data, "reason")),
        )
        return _json(state.to_json())

    handle.__name__ = f"post_tenant_{action}"
    return handle


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/overview", get_overview)
    r.add_get("/api/groups", get_groups)
    r.add_get("/api/groups/{fingerprint}", get_group)
    r.add_post("/api/groups/{fingerprint}/replay", post_group_replay)
    r.add_post("/api/groups/{fingerprint}/resolve", post_group_resolve)
    r.add_get("/api/messages/{id}", get_message)
    r.add_post("/api/messages/{id}/replay", post_message_replay)
    r.add_post("/api/messages/{id}/retry", post_message_retry)
    r.add_get("/api/jobs", get_jobs)
    r.add_get("/api/jobs/{id}", get_job)
    r.add_post("/api/jobs/{id}/continue", post_job_continue)
    r.add_post("/api/jobs/{id}/stop", post_job_stop)
    r.add_get("/api/queues", get_queues)
    r.add_get("/api/failures", get_failures)
    r.add_get("/api/rates", get_rates)
    r.add_get("/api/tenants", get_tenants)
    for action in actions.TENANT_ACTIONS:
        r.add_post(f"/api/tenants/{{tenant}}/{action}", _tenant_action(action))
    r.add_get("/api/actions", get_actions)

"""The console's HTML pages and their forms: each form does what an API call does, then
sends the browser on (303) to the page that shows the result, with a one-line notice.

Readable without JavaScript: every action is a plain form POST, a running job's page
refreshes itself (``<noscript>`` meta refresh); ``static/console.js`` only updates a job's
progress in place and asks before a destructive form is sent.
"""

from __future__ import annotations

import secrets
from typing import Any, Final, NoReturn

from aiohttp import web

from . import actions, jobs, reads, replays
from .auth import PRINCIPAL
from .forms import fingerprint, positive, selection, text, whole_number
from .guard import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE
from .problems import Invalid
from .render import html
from .state import CONSOLE, Console

FLASH_COOKIE: Final = "wa_console_notice"
_FLASH_MAX: Final = 300


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
            max_age: int | None = None) -> None:  # fmt: skip
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_console(request).settings.console_secure_cookie,
    )


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page with what every page shows: who is logged in, the CSRF token, the notice."""
    principal = request.get(PRINCIPAL)
    session = principal.session if principal is not None else None
    console = _console(request)
    notice = request.cookies.get(FLASH_COOKIE)
    response = html(
        template,
        status,
        user=principal.name if principal is not None else None,
        csrf=console.sessions.csrf_token(session) if session is not None else "",
        notice=notice[:_FLASH_MAX] if notice else None,
        **context,
    )
    if notice:
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


def done(request: web.Request, location: str, notice: str) -> NoReturn:
    """Send the browser on to ``location``, with ``notice`` shown there once."""
    response = web.HTTPSeeOther(location)
    _cookie(request, response, FLASH_COOKIE, notice[:_FLASH_MAX].replace("\n", " "), 60)
    raise response


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return page(request, "error.html", status, code=status, message=message)


async def _form(request: web.Request) -> dict[str, Any]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _actor(request: web.Request) -> str:
    return request[PRINCIPAL].actor


# -- logging in and out ----------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Where to go after logging in: a path of this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_form(
    request: web.Request, status: int = 200, error: str | None = None
) -> web.Response:
    # The same token while the form is shown again (a wrong password), a new one otherwise.
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if len(token) != 32:
        token = secrets.token_urlsafe(24)
    response = page(
        request, "login.html", status, login_csrf=token, error=error,
        next=_next(request.query.get("next")),
    )  # fmt: skip
    _cookie(request, response, LOGIN_COOKIE, token, 3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    form = await _form(request)
    given = form.get(CSRF_FIELD, "")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        return web.Response(status=403, text="The login form expired: reload it and try again.")
    source = request.remote or "-"
    if console.accounts.throttled(source):
        return await login_form(request, 429, "Too many failed logins: wait a few minutes.")
    user, password = form.get("user", ""), form.get("password", "")
    if not await console.accounts.login(user, password):
        console.accounts.failed(source)
        return await login_form(request, 401, "Wrong user or password.")
    console.accounts.succeeded(source)
    cookie, _ = console.sessions.issue(user)
    response = web.HTTPSeeOther(_next(form.get("next")))
    _cookie(request, response, SESSION_COOKIE, cookie)  # a browser session's cookie
    response.del_cookie(LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session = request[PRINCIPAL].session
    if session is not None:
        _console(request).sessions.end(session)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


# -- reading ---------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    console = _console(request)
    f, given = selection(request.query)
    view = await reads.overview(console, f, given)
    running = console.jobs.running()
    return page(
        request, "overview.html", view=view, filters=given,
        jobs=console.jobs.all()[:5], running=running, settings=_shown_settings(console),
    )  # fmt: skip


def _shown_settings(console: Console) -> dict[str, Any]:
    """The few settings the forms offer as defaults (never the secrets)."""
    s = console.settings
    return {"canary": s.console_canary, "rate": s.console_replay_rate}


async def group(request: web.Request) -> web.Response:
    fp = fingerprint(request.match_info["fingerprint"])
    before = request.query.get("before")
    view = await reads.group_page(
        _console(request), fp, before=None if before is None else whole_number(before, "before")
    )
    return page(
        request, "group.html", view=view, settings=_shown_settings(_console(request)),
        first_page=before is None,
    )  # fmt: skip


async def message(request: web.Request) -> web.Response:
    return await _message(request, whole_number(request.match_info["id"], "id"))


async def _message(
    request: web.Request, dead_id: int, *, status: int = 200, edited: str | None = None,
    error: str | None = None,
) -> web.Response:  # fmt: skip
    view = await reads.message_view(_console(request), dead_id)
    return page(
        request, "message.html", status, view=view, edited=edited, edit_error=error,
    )  # fmt: skip


async def job(request: web.Request) -> web.Response:
    console = _console(request)
    found = console.jobs.get(request.match_info["id"])
    return page(request, "job.html", job=await reads.job_view(console, found), active=jobs.ACTIVE)


# -- actions ---------------------------------------------------------------------------------


async def group_replay(request: web.Request) -> NoReturn:
    console, form = _console(request), await _form(request)
    fp = fingerprint(request.match_info["fingerprint"])
    started = await replays.start(
        console, fp, actor=_actor(request), reason=actions.reason_of(form.get("reason")),
        canary=whole_number(form.get("canary") or console.settings.console_canary, "canary",
                            high=1000),
        rate=positive(form.get("rate") or console.settings.console_replay_rate, "rate"),
    )  # fmt: skip
    done(request, f"/jobs/{started.id}", f"Replaying a canary of {len(started.canary)}.")


async def group_resolve(request: web.Request) -> NoReturn:
    form = await _form(request)
    fp = fingerprint(request.match_info["fingerprint"])
    result = await actions.resolve_group(
        _console(request), fp, actor=_actor(request), reason=actions.reason_of(form.get("reason"))
    )
    done(request, "/", f"Group {fp} resolved: {result['removed']} removed from the DLQ.")


async def job_continue(request: web.Request) -> NoReturn:
    console, form = _console(request), await _form(request)
    found = console.jobs.get(request.match_info["id"])
    rate = form.get("rate")
    await replays.go_on(
        console, found, actor=_actor(request), rate=positive(rate, "rate") if rate else None
    )
    done(request, f"/jobs/{found.id}", f"Replaying the rest at {found.rate:g} per second.")


async def job_stop(request: web.Request) -> NoReturn:
    console, form = _console(request), await _form(request)
    found = console.jobs.get(request.match_info["id"])
    await replays.stop(console, found, actor=_actor(request), reason=text(form, "reason"))
    done(request, f"/jobs/{found.id}", "Stopped; what was not replayed stays in the DLQ.")


async def message_replay(request: web.Request) -> NoReturn:
    form = await _form(request)
    dead_id = whole_number(request.match_info["id"], "id")
    result = await actions.replay_one(
        _console(request), dead_id, actor=_actor(request),
        reason=actions.reason_of(form.get("reason")),
    )  # fmt: skip
    said = f"Replayed {result['replayed']}."
    if result["skipped"]:
        said += " Not replayed: " + ", ".join(f"{k} ({v})" for k, v in result["skipped"].items())
    done(request, f"/messages/{dead_id}", said)


async def message_retry(request: web.Request) -> web.Response:
    form = await _form(request)
    dead_id = whole_number(request.match_info["id"], "id")
    body = form.get("body", "")
    try:
        result = await actions.edit_and_retry(
            _console(request), dead_id, body, actor=_actor(request),
            reason=actions.reason_of(form.get("reason")),
        )  # fmt: skip
    except Invalid as exc:  # shown above the form, with the edit kept
        return await _message(request, dead_id, status=exc.status, edited=body, error=str(exc))
    done(
        request,
        f"/messages/{dead_id}",
        f"Edited copy sent to {result['published_to']}; "
        f"{result['removed_from_dlq']} original removed from the DLQ.",
    )


async def tenant_action(request: web.Request) -> NoReturn:
    form = await _form(request)
    action = form.get("action", "")
    state = await actions.control_tenant(
        _console(request), action, form.get("tenant", ""), text(form, "number"),
        actor=_actor(request), reason=actions.reason_of(form.get("reason")),
    )  # fmt: skip
    target = state.tenant_id + (f" number {state.number}" if state.number else "")
    done(request, "/#tenants", f"{target}: {state.mode}.")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/healthz", healthz)
    r.add_get("/", overview)
    r.add_get("/groups/{fingerprint}", group)
    r.add_post("/groups/{fingerprint}/replay", group_replay)
    r.add_post("/groups/{fingerprint}/resolve", group_resolve)
    r.add_get("/messages/{id}", message)
    r.add_post("/messages/{id}/replay", message_replay)
    r.add_post("/messages/{id}/retry", message_retry)
    r.add_get("/jobs/{id}", job)
    r.add_post("/jobs/{id}/continue", job_continue)
    r.add_post("/jobs/{id}/stop", job_stop)
    r.add_post("/tenants", tenant_action)

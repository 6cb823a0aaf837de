"""The console's middlewares: who is asking (and may they), errors as answers, and the
headers every answer carries.

- Pages need a session; without one a GET is sent to the login form and a POST refused the
  same way (303 to ``/login``). Every POST of a page must carry the session's CSRF token in
  its ``csrf`` field, else 403.
- ``/api/*`` needs a bearer token, or a session (the pages' own scripts) whose unsafe
  requests carry the CSRF token in ``X-CSRF-Token``; else 401 (403 for the token).
- Only ``/login``, ``/healthz`` and ``/static/`` are open.

Every answer forbids framing and inline scripts (CSP), sniffing and caching of pages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, NoReturn
from urllib.parse import quote

import asyncpg
import orjson
from aiohttp import web

from ..errors import WaConsumerError
from ..logs import get_logger
from .auth import PRINCIPAL, Principal
from .problems import ConsoleError
from .state import CONSOLE

log = get_logger("console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_COOKIE: Final = "wa_console_session"
LOGIN_COOKIE: Final = "wa_console_login"  # the login form's double-submit CSRF token
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN: Final = frozenset({"/login", "/healthz"})
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def json_error(status: int, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


def to_login(request: web.Request) -> NoReturn:
    target = request.path_qs if request.method in SAFE else "/"
    raise web.HTTPSeeOther(f"/login?next={quote(target, safe='')}")


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and aiohttp's own 404/405
        exc.headers.update(_HEADERS)
        raise
    response.headers.update(_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in _OPEN or path.startswith("/static/"):
        return await handler(request)
    console = request.app[CONSOLE]
    session = console.sessions.read(request.cookies.get(SESSION_COOKIE))
    if session is not None and not console.accounts.has_user(session.user):
        session = None  # a user taken out of WA_CONSOLE_USERS
    if is_api(request):
        name = console.accounts.bearer(request.headers.get("Authorization"))
        if name is not None:
            request[PRINCIPAL] = Principal(name)
        elif session is None:
            response = json_error(401, "log in, or send Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="wa-console"'
            return response
        elif request.method not in SAFE and not console.sessions.csrf_ok(
            session, request.headers.get(CSRF_HEADER)
        ):
            return json_error(403, f"a session's {CSRF_HEADER} header is missing or wrong")
        else:
            request[PRINCIPAL] = Principal(session.user, session)
        return await handler(request)
    if session is None:
        to_login(request)
    if request.method not in SAFE:
        form = await request.post()
        token = form.get(CSRF_FIELD)
        if not console.sessions.csrf_ok(session, token if isinstance(token, str) else None):
            return web.Response(
                status=403,
                text="The form's CSRF token is missing or wrong: reload the page and try again.",
            )
    request[PRINCIPAL] = Principal(session.user, session)
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A ``ConsoleError`` as its status; the ledger or broker away as a 503."""
    from .pages import error_page  # pages import this module's names

    try:
        return await handler(request)
    except ConsoleError as exc:
        status, message = exc.status, str(exc)
    except (WaConsumerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        status, message = 503, str(exc) or type(exc).__name__
        log.warning("console_request_failed", path=request.path, error=message)
    if is_api(request):
        return json_error(status, message)
    return error_page(request, status, message)

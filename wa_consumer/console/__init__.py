"""``wa-consumer console``: failures and tenants in a browser, and the same as a JSON API.

One module per job::

    app       the aiohttp application, start-up and shut-down (ConsoleServer)
    guard     middlewares: sessions or bearer tokens, CSRF, errors, security headers
    auth      password hashes, signed session cookies, CSRF tokens, API tokens
    state     what the handlers share (Console) and the seams they call
    reads     the overview, a group's page, one message (from PostgreSQL; queue depths)
    actions   replay one, edit and retry, resolve a group, pause/resume/drain
    jobs      a group replay: a canary, then the rest at a rate, in the background
    pages     HTML pages and their forms (templates/, static/)
    api       the JSON API under /api/ (config/console-openapi.yaml)
    forms     reading filters and values from requests
    render    Jinja2, escaped by default
    shown     what may be shown: tokens masked
    problems  the errors a request can meet, with their HTTP status
"""

from .app import ConsoleServer, build_app, routes
from .auth import hash_password, verify_password

__all__ = ["ConsoleServer", "build_app", "hash_password", "routes", "verify_password"]

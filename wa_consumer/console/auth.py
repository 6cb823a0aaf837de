"""Who may use the console: users with password hashes, signed session cookies, CSRF tokens
for every form, bearer tokens for the API, and a brake on guessing passwords.

- Passwords are hashed with scrypt from the standard library, in a self-describing string
  ``scrypt$N$r$p$salt$hash`` (base64), so the cost can be raised later without breaking the
  hashes already in settings. Checking one takes tens of milliseconds and 16 MiB: it runs in
  a thread, and an unknown user costs the same as a wrong password.
- A session is a signed cookie (HMAC-SHA256 over user, expiry and a random id) rather than a
  table: the console stays stateless, and a ``WA_CONSOLE_SECRET`` shared by replicas lets any
  of them read it. Logging out forgets the id in this process (a copy of the cookie is
  refused until it expires anyway).
- The CSRF token of a session is an HMAC of its id: every form carries it and every unsafe
  request must give it back. The login form (no session yet) uses a double-submit cookie.
- API tokens are compared by their SHA-256 digests with ``hmac.compare_digest``, against
  every configured token, so neither the time nor the order says which one came close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from pydantic import SecretStr

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_MAXMEM: Final = 256 * 1024 * 1024  # allows N up to 2^17 at r=8 in hashes from settings
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
SESSION_SECONDS: Final = 12 * 3600
#: Failed logins from one address within the window before it must wait.
_MAX_FAILURES: Final = 5
_FAILURE_WINDOW: Final = 300.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_BYTES
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` is the one ``hashed`` was made from; False for a malformed hash."""
    try:
        scheme, n, r, p, salt, key = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, MemoryError):  # a bad field, or a cost past maxmem
        return False
    return hmac.compare_digest(got, expected)


# A hash of a password nobody has: checked for unknown users, so they cost the same time.
_DUMMY: Final = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in user, read from a valid cookie."""

    user: str
    sid: str  # random; the CSRF token is derived from it
    expires: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making a request: a session's user or an API token's name."""

    name: str
    session: Session | None = None

    @property
    def actor(self) -> str:
        """As the audit trail names them: ``alice`` (console) or ``api:runbook`` (token)."""
        return self.name if self.session is not None else f"api:{self.name}"


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


class Sessions:
    """Signed session cookies and the CSRF tokens derived from them."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"wa-console-session\x00" + secret).digest()
        self._csrf_key = hashlib.sha256(b"wa-console-csrf\x00" + secret).digest()
        self._ended: dict[str, int] = {}  # sid -> expiry, of sessions logged out

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, user: str, now: float | None = None) -> tuple[str, Session]:
        """A new session's cookie value, and the session."""
        expires = int((now or time.time()) + SESSION_SECONDS)
        session = Session(user, secrets.token_urlsafe(16), expires)
        user_b64 = base64.urlsafe_b64encode(user.encode()).decode()
        payload = f"{user_b64}.{expires}.{session.sid}"
        return f"{payload}.{self._sign(payload)}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a valid, unexpired cookie; None for anything else."""
        if not cookie or len(cookie) > 1024:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._sign(payload).encode()):
            return None
        try:
            user_b64, expires_text, sid = payload.split(".")
            user = base64.urlsafe_b64decode(user_b64.encode()).decode()
            expires = int(expires_text)
        except (ValueError, UnicodeDecodeError):
            return None
        if expires < (now or time.time()) or sid in self._ended:
            return None
        return Session(user, sid, expires)

    def end(self, session: Session) -> None:
        now = time.time()
        self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
        self._ended[session.sid] = session.expires

    def csrf_token(self, session: Session) -> str:
        mac = hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), self.csrf_token(session).encode()
        )


class Accounts:
    """The users and API tokens of the settings, and the checks against them."""

    def __init__(self, users: Mapping[str, SecretStr], tokens: Mapping[str, SecretStr]) -> None:
        self._users = {name: hashed.get_secret_value() for name, hashed in users.items()}
        self._tokens = [
            (name, hashlib.sha256(token.get_secret_value().encode()).digest())
            for name, token in tokens.items()
        ]
        self._failures: dict[str, deque[float]] = {}

    @property
    def empty(self) -> bool:
        return not self._users and not self._tokens

    def has_user(self, user: str) -> bool:
        """Whether ``user`` may still log in (a session of a removed user is refused)."""
        return user in self._users

    async def login(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is theirs (off the event loop)."""
        hashed = self._users.get(user)
        ok = await asyncio.to_thread(verify_password, password, hashed or _DUMMY)
        return ok and hashed is not None

    def bearer(self, header: str | None) -> str | None:
        """The name of the token in an ``Authorization: Bearer`` header, or None."""
        if not header or header[:7].lower() != "bearer ":
            return None
        given = hashlib.sha256(header[7:].strip().encode()).digest()
        found = None
        for name, digest in self._tokens:  # all of them, whatever matched first
            if hmac.compare_digest(given, digest):
                found = name
        return found

    # -- the brake on guessing ---------------------------------------------------------------

    def throttled(self, source: str, now: float | None = None) -> bool:
        """Whether ``source`` (an address) failed too often lately to try again now."""
        now = now or time.monotonic()
        failures = self._failures.get(source)
        if failures is None:
            return False
        while failures and failures[0] < now - _FAILURE_WINDOW:
            failures.popleft()
        return len(failures) >= _MAX_FAILURES

    def failed(self, source: str, now: float | None = None) -> None:
        if len(self._failures) > 10_000:  # bounded: forget the lot rather than grow
            self._failures.clear()
        self._failures.setdefault(source, deque(maxlen=_MAX_FAILURES)).append(
            now or time.monotonic()
        )

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)

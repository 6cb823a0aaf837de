"""Where the demo's queues live, so that it never touches anyone else's messages.

Preferred: a vhost of its own on the local broker (``rabbitmqctl add_vhost``), deleted at the
end with everything in it. Where ``rabbitmqctl`` is missing or refused (a remote broker, no
rights), every exchange and queue gets a name unique to this run in the configured vhost
instead, and those are deleted at the end.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from ..settings import Settings
from ..topology import Topology, connect

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_CTL_TIMEOUT = 30.0
AMQP_PORT = 5672


class CtlError(Exception):
    """``rabbitmqctl`` could not do what was asked."""


@dataclass(frozen=True, slots=True)
class Place:
    """The broker settings of the demo's run, and how to clean them up."""

    amqp_url: str
    vhost: str | None
    """The demo's own vhost; None when unique names in the configured vhost are used."""
    names: dict[str, Any] = field(default_factory=dict)
    """Settings overrides renaming every exchange and queue (unique-names mode only)."""
    prefix: str = ""
    note: str = ""
    """Why the unique-names mode was chosen."""
    tag: str = ""
    """This run's tag, in every name it makes (the scratch ledger's too)."""

    def where(self) -> str:
        """The place in words, without the password."""
        url = URL(self.amqp_url)
        host = f"{url.host}:{url.port or AMQP_PORT}"
        if self.vhost is not None:
            return f"vhost {self.vhost} on {host} (its own, deleted at the end)"
        vhost = url.path[1:] or "/"
        return f"names starting {self.prefix}- in vhost {vhost} on {host} ({self.note})"


def _ctl(*args: str) -> None:
    try:
        subprocess.run(  # noqa: S603 - fixed program, arguments built here
            ["rabbitmqctl", "-q", *args],  # noqa: S607 - found on PATH, checked by prepare()
            check=True,
            capture_output=True,
            timeout=_CTL_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
        raise CtlError(detail.splitlines()[-1] if detail else f"exit {exc.returncode}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CtlError(str(exc)) from None


def prepare(settings: Settings) -> Place:
    """A fresh vhost when the broker is local and ``rabbitmqctl`` works, else unique names."""
    tag = secrets.token_hex(4)
    url = URL(settings.amqp_url)
    if shutil.which("rabbitmqctl") is None:
        note = "rabbitmqctl not found"
    elif url.host not in _LOCAL_HOSTS or (url.port or AMQP_PORT) != AMQP_PORT:
        note = f"rabbitmqctl may not manage the broker at {url.host}:{url.port or AMQP_PORT}"
    else:
        vhost = f"wa-demo-{tag}"
        try:
            _ctl("add_vhost", vhost)
            _ctl("set_permissions", "-p", vhost, url.user or "guest", ".*", ".*", ".*")
        except CtlError as exc:
            remove_vhost(vhost)  # a half-made vhost; an error here means there was none
            note = f"rabbitmqctl failed: {exc}"
        except BaseException:  # Ctrl-C while rabbitmqctl ran: leave nothing behind
            remove_vhost(vhost)
            raise
        else:
            return Place(str(url.with_path(f"/{vhost}")), vhost, tag=tag)
    prefix = f"wa-demo-{tag}"
    names = {
        "exchange": f"{prefix}-exchange",
        "dead_letter_exchange": f"{prefix}-dlx",
        "queue": f"{prefix}-processed",
        "dead_letter_queue": f"{prefix}-failed",
        "retry_queue_prefix": f"{prefix}-retry-",
        "webhook_exchange": f"{prefix}-webhooks",
        "webhook_queue": f"{prefix}-inbound-webhooks",
        "webhook_failed_queue": f"{prefix}-inbound-webhooks-failed",
        "inbound_messages_queue": f"{prefix}-inbound-messages",
    }
    return Place(settings.amqp_url, None, names, prefix, note, tag)


def remove_vhost(vhost: str) -> str | None:
    """Delete the vhost and all in it; the error in words if that failed."""
    try:
        _ctl("delete_vhost", vhost)
    except CtlError as exc:
        return str(exc)
    return None


async def remove_names(settings: Settings) -> None:
    """Delete the queues and exchanges of a unique-names run (whatever is left of them)."""
    connection = await connect(settings.amqp_url)
    try:
        # Deleting what does not exist succeeds: a run that failed early cleans up the same way.
        topology = Topology.from_settings(settings)
        async with connection.channel() as channel:
            for spec in topology.queues:
                await channel.queue_delete(spec.name)
            for name in topology.exchanges:
                await channel.exchange_delete(name)
    finally:
        await connection.close()

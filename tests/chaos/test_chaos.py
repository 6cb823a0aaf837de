"""Faults injected into the real daemon under load, counted from outside.

Each scenario runs ``python -m wa_consumer run`` with the ledger on against the sandbox,
publishes messages with unique internalIds and recipients (a backlog, before the daemon
starts), injects a fault while the daemon is busy, waits (by condition, bounded) for the
system to settle, stops the daemon and places every message: sent (the sandbox accepted
it), dead (in the DLQ) or waiting (main or wait queue). Promised everywhere: 0 lost, nothing
in two places, nothing left waiting (retries here are short), 0 duplicates wherever the
daemon lived, and after kill -9 no more duplicates than sends that were on the wire. Each
prints one summary line (see conftest.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import pytest

from wa_consumer.sandbox import FailureRule

from ..integration.proxy import Fault
from .harness import Chaos, Daemon, judge, poll, until

pytestmark = pytest.mark.integration

# How long the messages a killed daemon held may take to be sent after its restart: "within
# seconds", a quarter of the claim lease below, not the lease itself.
LEASE_SECONDS = 60
HELD_LIMIT = 15.0


def _alive(daemon: Daemon) -> list[str]:
    """Call before ``finish`` (which stops every daemon)."""
    return [] if daemon.alive else [f"the daemon died (exit {daemon.exit_code})"]


def _failed(chaos: Chaos) -> int:
    """Requests the sandbox answered with a failure so far."""
    chaos.view.update()
    return sum(1 for h in chaos.view.history.values() for _, outcome, *_ in h if outcome != "sent")


@pytest.mark.parametrize(
    ("kind", "messages", "latency_ms", "seconds"),
    [("cut", 2000, 20, 5.0), ("blip", 1000, 1500, 0.0)],
)
async def test_broker_cut_under_load_loses_and_doubles_nothing(
    chaos, sandbox, report, kind: str, messages: int, latency_ms: int, seconds: float
) -> None:
    """The broker connection is cut under load: for 5 s, or a blip (cut, and accepted again
    at once) while 1.5 s sends are in flight, so redeliveries arrive before they finish."""
    c: Chaos = await chaos(f"broker_{kind}")
    sandbox.state.configure(latency={"ms": latency_ms})
    await c.publish(c.recipients(messages, "2791"))
    daemon = await c.daemon(WA_PREFETCH=200, WA_HTTP_TIMEOUT_SECONDS=10)
    await c.wait_sent(messages // 5)
    fault = await c.outage(c.amqp, seconds, f"broker {kind} {seconds:g}s")
    await c.settle(timeout=40)
    problems = _alive(daemon)
    result = await c.finish(fault.end, daemon_lived=not problems)
    await judge(c, result, report, dead_allowed=False, problems=problems)


@pytest.mark.parametrize("flow", ["retrying", "dead_lettering"])
async def test_broker_cut_while_republishing(chaos, sandbox, report, flow: str) -> None:
    """Every other message fails: transiently twice (copies flow to the wait queues and
    back) or permanently (copies flow to the DLQ); the broker is cut in the middle of it."""
    c: Chaos = await chaos(f"broker_cut_{flow}")
    failing = "27921" if flow == "retrying" else "27931"
    code, times = (131000, 2) if flow == "retrying" else (131026, None)
    sandbox.state.configure(
        latency={"ms": 20}, rules=[FailureRule(match=f"^{failing}", code=code, times=times)]
    )
    good, bad = c.recipients(600, failing[:-1] + "0"), c.recipients(600, failing)
    await c.publish(to for pair in zip(good, bad, strict=True) for to in pair)
    bad_ids = {c.id_by_recipient[to] for to in bad}
    daemon = await c.daemon(WA_PREFETCH=200)
    if flow == "retrying":
        await until(lambda: _failed(c) >= 150, 30, "150 transient failures answered")
    else:
        await until(lambda: len(c.witness.dead_at) >= 100, 30, "100 messages dead")
    fault = await c.outage(c.amqp, 4, f"broker cut 4s while {flow}")
    await c.settle(timeout=40)
    problems = _alive(daemon)
    result = await c.finish(fault.end, daemon_lived=not problems)
    if flow == "dead_lettering":
        permanent_sent = c.view.sent() & bad_ids
        sendable_dead = set(result.dead) - bad_ids
        if permanent_sent or sendable_dead:
            problems.append(
                f"{len(permanent_sent)} permanent failures sent, {len(sendable_dead)} sendable"
                " messages dead"
            )
    await judge(c, result, report, dead_allowed=flow == "dead_lettering", problems=problems)


async def test_database_cut_under_load_pauses_then_resumes(chaos, sandbox, report) -> None:
    c: Chaos = await chaos("database_cut")
    sandbox.state.configure(latency={"ms": 20})
    await c.publish(c.recipients(2000, "2793"))
    daemon = await c.daemon(WA_PREFETCH=200)
    await c.wait_sent(400)
    fault = await c.outage(c.postgres, 4, "PostgreSQL cut 4s")
    await c.settle(timeout=40)
    paused, resumed = daemon.events("consuming_paused"), daemon.events("consuming_resumed")
    problems = _alive(daemon)
    result = await c.finish(
        fault.end, daemon_lived=not problems, paused=len(paused), resumed=len(resumed)
    )
    if not paused or not resumed:
        problems.append(f"consuming_paused x{len(paused)}, consuming_resumed x{len(resumed)}")
    await judge(c, result, report, dead_allowed=False, problems=problems)


def _busiest_second(times: list[float]) -> int:
    """The most of ``times`` (sorted) in any one-second window."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_redis_cut_falls_back_to_in_process_limits(chaos, sandbox, report) -> None:
    """The number's limit is shared through Redis; Redis is cut off for 3 s under load: the
    limit is kept in process meanwhile (one log line), then in Redis again."""
    c: Chaos = await chaos("redis_cut")
    sandbox.state.configure(latency={"ms": 20})
    rate = 400
    await c.publish(c.recipients(1600, "2794"))
    daemon = await c.daemon(WA_PREFETCH=200, WA_NUMBER_RATE=rate, **c.redis_via_proxy())
    await c.wait_sent(500)
    fault = await c.outage(c.redis, 3, "Redis cut 3s")
    await c.settle(timeout=40)
    away = daemon.events("rate_limit_store_unavailable")
    back = daemon.events("rate_limit_store_back")
    sends = sorted(t for h in c.view.history.values() for t, outcome, *_ in h if outcome == "sent")
    busiest = {
        "before": _busiest_second([t for t in sends if t < fault.start]),
        "during": _busiest_second([t for t in sends if fault.start <= t < fault.end]),
        "after": _busiest_second([t for t in sends if t >= fault.end]),
    }
    problems = _alive(daemon)
    result = await c.finish(
        fault.end,
        daemon_lived=not problems,
        rate=rate,
        busiest_second=busiest,
        store_unavailable=len(away),
        store_back=len(back),
    )
    if not away or not back:
        problems.append(f"rate_limit_store_unavailable x{len(away)}, _back x{len(back)}")
    await judge(c, result, report, dead_allowed=False, problems=problems)


async def test_kill_9_three_times_under_load(chaos, sandbox, report) -> None:
    """Killed three times, each time with a backlog and ``WA_PREFETCH`` sends in flight,
    restarted at once. The messages a dead daemon held are sent within seconds of the
    restart (liveness), not after the claim lease; only a send on the wire at a kill (the
    sandbox accepted it, the ledger had not recorded it) may be repeated, once."""
    c: Chaos = await chaos("kill_9_x3")
    sandbox.state.configure(latency={"ms": 20})
    settings: dict[str, Any] = {"WA_PREFETCH": 100, "WA_CLAIM_LEASE_SECONDS": LEASE_SECONDS}
    on_wire: set[str] = set()
    kills: list[dict[str, Any]] = []
    problems = []
    await c.publish(c.recipients(600, "2795"))
    daemon = await c.daemon(**settings)
    for round_ in range(1, 4):
        base = c.view.sent_count()
        if round_ > 1:
            await c.publish(c.recipients(600, "2795"))  # a backlog again
        await c.wait_sent(base + 150)
        daemon.kill9()
        await daemon.wait(10)
        await c.wait_quiet(0.3)  # requests already written reach the sandbox's log
        status = await c.ledger_status(c.published)
        wire = {i for i in c.view.update().sent() if status.get(i) != "sent"} - on_wire
        on_wire |= wire
        held = {i for i, s in status.items() if s not in ("sent", "dead")}
        daemon = await c.daemon(**settings)

        async def held_done(held: set[str] = held) -> bool:
            now = await c.ledger_status(held)
            return all(now.get(i) in ("sent", "dead") for i in held)

        done = await poll(held_done, HELD_LIMIT, interval=0.25)
        took = round(time.time() - daemon.consuming_at, 2) if done else None
        kills.append({"round": round_, "on_wire": len(wire), "held": len(held), "held_s": took})
        if not done:
            problems.append(
                f"kill {round_}: the {len(held)} messages the dead daemon held were not all"
                f" recorded sent/dead within {HELD_LIMIT:g}s of the restart"
            )
    await c.settle(timeout=LEASE_SECONDS + 20)
    result = await c.finish(daemon.consuming_at, kills=kills, on_wire=len(on_wire))
    await judge(c, result, report, dead_allowed=False, may_double=on_wire, problems=problems)


async def test_cloud_api_failures_timeouts_and_outage(chaos, sandbox, report) -> None:
    """15% of requests answered 500 (131000) at random, a tenth never answered once (client
    timeout, ambiguous), then every request answered 503 for 3 s, then back."""
    c: Chaos = await chaos("cloud_api_outage")
    hang = FailureRule(match="7$", hang=True, times=1, note="no answer once (timeout)")
    sandbox.state.configure(
        latency={"ms": 20},
        rules=[hang],
        failure_rate=0.15,
        failure_code=131000,
        seed=7,
        hang_seconds=3,
    )
    await c.publish(c.recipients(1200, "2796"))
    daemon = await c.daemon(WA_PREFETCH=200, WA_HTTP_TIMEOUT_SECONDS=1, WA_MAX_RETRIES=8)
    await c.wait_sent(300)
    fault = Fault("Cloud API 503 for every request, 3s", time.time())
    fault.sent_before = c.view.sent_count()
    sandbox.state.configure(rules=[FailureRule(match="", body="empty", status=503), hang])
    await asyncio.sleep(3)  # the outage's length
    sandbox.state.configure(rules=[hang])
    fault.end = time.time()
    c.faults.append(fault)
    await c.settle(timeout=45)
    problems = _alive(daemon)
    result = await c.finish(fault.end, daemon_lived=not problems)
    other = {k: v for k, v in Counter(result.dead.values()).items() if k != "retries_exhausted"}
    if other:
        problems.append(f"dead other than retries_exhausted: {other}")
    await judge(c, result, report, dead_allowed=True, problems=problems)


async def test_tenant_service_down_under_load(chaos, sandbox, report) -> None:
    """Credentials expire every half second, so the tenant service is asked all the time;
    it is cut off for 4 s (connections refused)."""
    c: Chaos = await chaos("tenant_service_down")
    sandbox.state.configure(latency={"ms": 20})
    for _ in range(6):  # the two tenants interleaved, 100 at a time
        await c.publish(c.recipients(100, "27970"), tenant="acme")
        await c.publish(c.recipients(100, "27971"), tenant="globex")
    daemon = await c.daemon(
        WA_PREFETCH=200,
        WA_CREDENTIAL_TTL_SECONDS=0.5,
        WA_MAX_RETRIES=8,
        **c.tenant_service_via_proxy(),
    )
    await c.wait_sent(300)
    fault = await c.outage(c.tenants, 4, "tenant service refused 4s")
    await c.settle(timeout=45)
    problems = _alive(daemon)
    result = await c.finish(
        fault.end, daemon_lived=not problems, credential_fetches=sandbox.state.credential_fetches
    )
    await judge(c, result, report, dead_allowed=False, problems=problems)


async def test_sigterm_twice_under_heavy_traffic_then_a_new_daemon(chaos, sandbox, report) -> None:
    """300 ms per send, 200 in flight, a short grace; the second SIGTERM comes while the
    first shutdown is under way. A new daemon then finishes: nothing lost, nothing doubled."""
    c: Chaos = await chaos("sigterm_twice")
    sandbox.state.configure(latency={"ms": 300})
    await c.publish(c.recipients(1200, "2798"))
    first = await c.daemon(WA_PREFETCH=200, WA_SHUTDOWN_GRACE_SECONDS=1)
    await c.wait_sent(500)
    first.send(signal.SIGTERM)
    await until(lambda: bool(first.events("shutdown_started")), 10, "shutdown_started logged")
    first.send(signal.SIGTERM)
    code = await first.wait(30)
    stopped_at = time.time()
    sent_by_first = c.view.sent_count()
    await c.daemon(WA_PREFETCH=200)
    await c.settle(timeout=40)
    result = await c.finish(stopped_at, first_exit=code, sent_by_first=sent_by_first)
    problems = [] if code == 0 else [f"the signalled daemon exited {code}, not 0"]
    await judge(c, result, report, dead_allowed=False, problems=problems)

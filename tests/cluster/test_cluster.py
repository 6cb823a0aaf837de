"""A node of a three-node cluster stops under load: with quorum queues and the ledger,
nothing is lost and nothing is sent twice (the sandbox's request log, counted from outside).

Two cases: a follower node stops (the daemon stays connected to the leader's node), and the
node the daemon is connected to, which leads the queue, stops (a new leader is elected and
the daemon reconnects, through a proxy, to a node that is up). Run with
``WA_TEST_CLUSTER=1 python -m pytest tests/cluster -v -s``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aio_pika
import pytest

from tests.integration.harness import Broker, make_settings, running, text_message, wait_for
from tests.integration.proxy import TcpProxy
from wa_consumer.publisher import PublishError

from .conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

N = 1000


def sends(sandbox: Any) -> collections.Counter[str]:
    return collections.Counter(
        r["body"]["to"] for r in sandbox.state.requests() if r["outcome"] == "sent"
    )


def leader_of(cluster: Cluster, queue: str) -> str:
    out = cluster.run("status")  # list_queues name type leader members messages
    for line in out.splitlines():
        fields = line.split("\t")
        if fields and fields[0] == queue:
            return fields[2]
    raise AssertionError(f"{queue} not listed:\n{out}")


async def cluster_sh(cluster: Cluster, *args: str) -> None:
    """``scripts/cluster.sh`` without blocking the event loop (the daemon keeps working)."""
    await asyncio.to_thread(cluster.run, *args)


@pytest.mark.parametrize("stopped", ["follower", "leader"])
async def test_a_node_stops_under_load_nothing_lost_or_sent_twice(
    cluster: Cluster, sandbox: Any, database: str, stopped: str
) -> None:
    sandbox.state.configure(latency={"ms": 5})
    # The daemon reaches the cluster through a proxy, as a load balancer would: node 1 first,
    # then whichever node is up.
    proxy = await TcpProxy.before(cluster.urls[0], "amqp").start()
    settings = make_settings(
        proxy.route(cluster.urls[0]),
        sandbox.url,
        database_url=database,
        queue_type="quorum",
        prefetch=50,
        max_retries=5,
        retry_delays=[0.5, 1.0, 2.0],
    )
    recipients = [f"2783{i:07d}" for i in range(N)]
    messages = [text_message("acme", to) for to in recipients]
    victim = 0
    # The test publishes and counts on node 2, which never stops.
    outside = await aio_pika.connect(cluster.urls[1])
    broker = Broker(outside, settings)
    started = time.monotonic()
    republished = 0
    try:
        async with running(settings):
            leader = leader_of(cluster, settings.queue)
            assert leader == cluster.node(1), leader  # declared through node 1: led there
            victim = 1 if stopped == "leader" else 3

            async def publish_all() -> None:
                nonlocal republished
                for message in messages:
                    for attempt in range(20):  # a producer retries an unconfirmed message
                        try:
                            await broker.publish(message)
                            break
                        except PublishError:
                            republished += 1
                            await asyncio.sleep(0.25 * (attempt + 1))
                    else:
                        raise AssertionError("a message was never confirmed")

            publishing = asyncio.create_task(publish_all())
            await wait_for(lambda: _sent(sandbox, N // 4), timeout=60)
            sent_at_stop = sum(sends(sandbox).values())
            if victim == 1:  # new connections go to node 2; node 1's die with it
                proxy.target = ("127.0.0.1", int(cluster.urls[1].rsplit(":", 1)[1].strip("/")))
            await cluster_sh(cluster, "stop", str(victim))
            stopped_at = time.monotonic()
            await asyncio.wait_for(publishing, 120)
            await wait_for(lambda: _all(sandbox, recipients), timeout=120)
            recovered = time.monotonic() - stopped_at
            new_leader = leader_of(cluster, settings.queue)
            await wait_for(lambda: _empty(broker, settings.queue), timeout=30)
        dead = await broker.count(settings.dead_letter_queue)
        left = await broker.count(settings.queue)
    finally:
        await outside.close()
        await proxy.close()
        if victim:
            await cluster_sh(cluster, "start", str(victim))  # the next case has three nodes
    counted = sends(sandbox)
    duplicates = {to: n for to, n in counted.items() if n > 1}
    missing = set(recipients) - set(counted)
    print(
        f"\ncluster {stopped}: stopped {cluster.node(victim)} (queue leader was {leader}, now "
        f"{new_leader}) at {sent_at_stop}/{N} sent; all sent {recovered:.1f}s after the stop; "
        f"republished={republished} duplicates={len(duplicates)} missing={len(missing)} "
        f"dead={dead} left={left}; {time.monotonic() - started:.1f}s"
    )
    assert not missing
    assert not duplicates, duplicates
    assert dead == 0
    assert left == 0


async def _sent(sandbox: Any, n: int) -> bool:
    return sum(sends(sandbox).values()) >= n


async def _all(sandbox: Any, recipients: list[str]) -> bool:
    return set(sends(sandbox)) >= set(recipients)


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.count(queue) == 0

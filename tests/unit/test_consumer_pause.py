"""The daemon's pause and resume around a ledger outage, driven without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from wa_consumer.consumer import Daemon
from wa_consumer.settings import Settings

from .pipeline_fakes import FakeLedger, rig


class FlakyLedger(FakeLedger):
    """Unreachable for the first ``down`` pings."""

    def __init__(self, down: int) -> None:
        super().__init__(counts_deliveries=True)
        self.down = down
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        return self.pings > self.down


class Channel:
    """The consuming channel: ``basic_consume`` fails ``failures`` times (a reconnect)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.consumes = 0
        self.cancels: list[str] = []

    async def get_underlay_channel(self) -> Channel:
        return self

    async def basic_consume(self, queue: str, callback: Any, no_ack: bool) -> Any:
        self.consumes += 1
        if self.consumes <= self.failures:
            raise ConnectionError("channel reopening")
        return SimpleNamespace(consumer_tag=f"ctag-{self.consumes}")

    async def basic_cancel(self, tag: str) -> None:
        self.cancels.append(tag)


def daemon_with(ledger: FakeLedger, channel: Channel) -> Daemon:
    daemon = Daemon(Settings(metrics_port=0))
    daemon.pipeline = rig(ledger=ledger).pipeline
    daemon._channel = channel  # type: ignore[assignment]
    return daemon


async def test_a_ledger_outage_pauses_consuming_and_resumes_when_it_answers() -> None:
    channel = Channel()
    daemon = daemon_with(FlakyLedger(down=2), channel)
    await daemon._consume()
    assert daemon.consuming.is_set()

    daemon._ledger_down()
    daemon._ledger_down()  # a second report joins the first pause
    for _ in range(100):
        if channel.cancels:
            break
        await asyncio.sleep(0.01)
    assert daemon.pipeline is not None and daemon.pipeline.paused
    assert not daemon.consuming.is_set()
    assert channel.cancels == ["ctag-1"]

    task = daemon._pause_task
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert daemon.consuming.is_set() and not daemon.pipeline.paused
    assert channel.consumes == 2


async def test_resuming_while_the_broker_reconnects_tries_again_instead_of_giving_up() -> None:
    channel = Channel()
    daemon = daemon_with(FlakyLedger(down=0), channel)
    await daemon._consume()
    channel.failures = 3  # the next two consumes fail: the channel is reopening
    daemon._ledger_down()
    task = daemon._pause_task
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert daemon.consuming.is_set()
    assert channel.consumes == 4  # the first, two failures, then the one that held


async def test_a_stop_during_the_pause_ends_it_without_consuming_again() -> None:
    channel = Channel()
    daemon = daemon_with(FlakyLedger(down=1_000), channel)
    await daemon._consume()
    daemon._ledger_down()
    await asyncio.sleep(0.05)
    daemon.request_stop()
    task = daemon._pause_task
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert not daemon.consuming.is_set()
    assert channel.consumes == 1

"""Coalesced acks against a model of RabbitMQ's own ack bookkeeping."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wa_consumer.acks import ACK_DELAY, AckCoalescer


class FakeChannel:
    """RabbitMQ's rules: a multiple ack needs its tag, or a later one, still outstanding."""

    is_closed = False

    def __init__(self) -> None:
        self.outstanding: list[int] = []
        self.acked: list[int] = []
        self.nacked: list[int] = []
        self.frames = 0

    def _settle(self, tag: int, multiple: bool) -> list[int]:
        if multiple:
            done = [t for t in self.outstanding if t <= tag]
            if not any(t >= tag for t in self.outstanding):
                raise AssertionError(f"PRECONDITION_FAILED unknown delivery tag {tag}")
        else:
            if tag not in self.outstanding:
                raise AssertionError(f"PRECONDITION_FAILED unknown delivery tag {tag}")
            done = [tag]
        self.outstanding = [t for t in self.outstanding if t not in done]
        self.frames += 1
        return done

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        for _ in range(tag * 7 % 3):  # a put on aiormq's full queue may yield, unevenly
            await asyncio.sleep(0)
        self.acked += self._settle(tag, multiple)

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        for _ in range(tag * 5 % 3):
            await asyncio.sleep(0)
        self.nacked += self._settle(tag, False)


class Delivery:
    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, 31))), st.sets(st.integers(1, 30), max_size=8))
def test_every_delivery_is_settled_once_and_no_ack_names_an_unknown_tag(
    order: list[int], nacks: set[int]
) -> None:
    async def run() -> FakeChannel:
        channel = FakeChannel()
        acks = AckCoalescer()
        deliveries = {t: Delivery(channel, t) for t in range(1, 31)}
        for t in range(1, 31):
            channel.outstanding.append(t)
            acks.delivered(deliveries[t])  # type: ignore[arg-type]
        for i, t in enumerate(order):
            d: Any = deliveries[t]
            if t in nacks:
                acks.nack(d, requeue=True)
            else:
                acks.ack(d)
            if i % 3 == 0:
                await asyncio.sleep(0)  # let some flushes happen mid-way
        await acks.drain()
        return channel

    channel = asyncio.run(run())
    assert sorted(channel.acked) == sorted(set(range(1, 31)) - nacks)
    assert sorted(channel.nacked) == sorted(nacks)
    assert channel.outstanding == []


def _delivered(n: int) -> tuple[FakeChannel, AckCoalescer]:
    """A channel with deliveries 1..n outstanding, each registered with a new coalescer."""
    channel = FakeChannel()
    acks = AckCoalescer()
    for t in range(1, n + 1):
        channel.outstanding.append(t)
        acks.delivered(Delivery(channel, t))  # type: ignore[arg-type]
    return channel, acks


def test_in_order_completions_go_as_few_frames() -> None:
    async def run() -> FakeChannel:
        channel, acks = _delivered(100)
        for t in range(1, 101):
            acks.ack(Delivery(channel, t))  # type: ignore[arg-type]
        await acks.drain()
        return channel

    channel = asyncio.run(run())
    assert channel.acked == list(range(1, 101))
    assert channel.frames == 1


def test_acks_decided_over_many_loop_turns_within_the_delay_go_as_one_frame() -> None:
    async def run() -> FakeChannel:
        channel, acks = _delivered(50)
        for t in range(1, 51):  # one completion per loop turn, as sends finish at full speed
            acks.ack(Delivery(channel, t))  # type: ignore[arg-type]
            await asyncio.sleep(0)
        await asyncio.sleep(ACK_DELAY * 5)  # the timer fires; no drain
        return channel

    channel = asyncio.run(run())
    assert channel.acked == list(range(1, 51))
    assert channel.frames == 1

"""The ledger's group commit: what it keeps through an outage, what it never keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from wa_consumer.ledger.batch import Batcher, Waits


class Outage(Exception):
    pass


class Bug(Exception):
    pass


def _batcher(write, **kwargs):  # type: ignore[no-untyped-def]
    return Batcher(
        write,
        keep=lambda item: item.startswith("finish"),
        transient=lambda exc: isinstance(exc, Outage),
        retry_interval=0.01,
        **kwargs,
    )


async def test_an_outage_keeps_results_and_fails_claims_then_writes_results_when_back() -> None:
    down = True
    written: list[str] = []

    async def write(items: Sequence[str]) -> list[str]:
        if down:
            raise Outage
        written.extend(items)
        return list(items)

    batcher = _batcher(write)
    claim = batcher.submit("claim-1")
    finish = batcher.submit("finish-1")
    with pytest.raises(Outage):
        await claim
    await asyncio.sleep(0.05)
    assert not finish.done()  # kept, retried
    down = False
    assert await asyncio.wait_for(finish, 2) == "finish-1"
    assert written == ["finish-1"]
    assert await batcher.close() == []


async def test_an_error_that_is_no_outage_is_never_kept_to_fail_every_later_batch() -> None:
    calls: list[list[str]] = []

    async def write(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        if "finish-bad" in items:
            raise Bug("not an outage")
        return list(items)

    batcher = _batcher(write)
    bad = batcher.submit("finish-bad")
    with pytest.raises(Bug):
        await asyncio.wait_for(bad, 2)
    assert await asyncio.wait_for(batcher.submit("finish-good"), 2) == "finish-good"
    assert ["finish-good"] in calls  # written alone: the bad result was not put back
    assert await batcher.close() == []


async def test_close_names_the_results_an_outage_kept_past_the_grace() -> None:
    async def write(items: Sequence[str]) -> list[str]:
        raise Outage

    batcher = _batcher(write)
    batcher.submit("finish-1")
    batcher.submit("finish-2")
    await asyncio.sleep(0.03)
    assert sorted(await batcher.close(grace=0.1)) == ["finish-1", "finish-2"]


# -- bounded waits (the ledger's finish) -------------------------------------------------------


async def test_a_wait_ends_when_its_future_is_done_whatever_the_future_holds() -> None:
    waits = Waits(timeout=5.0)
    loop = asyncio.get_running_loop()
    ok, failed = loop.create_future(), loop.create_future()
    loop.call_soon(ok.set_result, "written")
    loop.call_soon(failed.set_exception, Bug("refused"))
    assert list(await asyncio.gather(waits.wait(ok), waits.wait(failed))) == [True, True]
    assert await waits.wait(ok) is True  # done already: no wait at all
    assert len(waits) == 0


async def test_a_wait_ends_after_the_timeout_and_the_future_goes_on() -> None:
    waits = Waits(timeout=0.05)
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started = asyncio.get_running_loop().time()
    assert list(await asyncio.gather(waits.wait(future), waits.wait(future))) == [False, False]
    assert asyncio.get_running_loop().time() - started < 1.0
    assert not future.done()  # still written when the database answers
    future.set_result("written")
    assert await waits.wait(future) is True
    assert len(waits) == 0


async def test_waits_started_later_get_their_whole_timeout() -> None:
    waits = Waits(timeout=0.1)
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    early = asyncio.create_task(waits.wait(first))
    await asyncio.sleep(0.06)
    late = asyncio.create_task(waits.wait(second))
    assert await early is False  # at about 0.1 s
    assert not late.done()  # its own deadline is 0.06 s later
    second.set_result(None)
    assert await late is True


async def test_a_cancelled_waiter_leaves_its_future_alone() -> None:
    waits = Waits(timeout=5.0)
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(waits.wait(future))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not future.cancelled()
    assert len(waits) == 0

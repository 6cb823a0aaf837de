"""The ledger's group commit: what it keeps through an outage, what it never keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from wa_consumer.ledger.batch import Batcher


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

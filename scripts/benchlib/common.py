"""Errors, deadlines and small helpers shared by every part of the bench."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

from aio_pika.abc import AbstractConnection

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


class BenchError(Exception):
    """A step failed or missed its deadline; the text says how far it got."""


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """``awaitable`` within ``seconds``, or a ``BenchError`` naming ``what``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise BenchError(f"{what}: no answer within {seconds:.0f} s") from None


async def close_quietly(connection: AbstractConnection) -> None:
    """Close on the way out, without hiding the error that got us there."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


class Deadline:
    """A wait's end; ``missed(progress)`` is the error that says how far it got."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.end

    def missed(self, progress: str) -> BenchError:
        return BenchError(f"{self.what}: not done within {self.seconds:.0f} s; {progress}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def crossing(samples: Sequence[tuple[float, int]], target: float) -> float:
    """When the count in ``(time, count)`` samples reached ``target``, interpolated."""
    prev_t, prev_c = samples[0]
    for t, c in samples:
        if c >= target:
            if c == prev_c:
                return t
            return prev_t + (target - prev_c) / (c - prev_c) * (t - prev_t)
        prev_t, prev_c = t, c
    return samples[-1][0]


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line[:300]}" for line in text[-lines:]) or "    (empty)"


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rates(n: int, t10: float, t90: float, seconds: float) -> tuple[float, float]:
    """(``n`` over ``seconds``, the rate between the 10% and the 90% mark at ``t10``, ``t90``)."""
    steady = 0.8 * n / (t90 - t10) if t90 > t10 else n / seconds
    return n / seconds, steady


def per_unit(used: dict[str, float | None], units: int) -> dict[str, float | None]:
    """CPU µs per unit of each process, from its CPU seconds over the measurement."""
    return {name: None if s is None else round(s * 1e6 / units, 1) for name, s in used.items()}

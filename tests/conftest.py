"""Shared fixtures: a RabbitMQ vhost per test run, unique names per test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

AMQP_HOST = os.environ.get("WA_TEST_AMQP_HOST", "127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    """A vhost of this test run's own, deleted afterwards; yields its AMQP URL."""
    name = f"wa-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture
async def sandbox():  # type: ignore[no-untyped-def]
    """The sandbox on a free loopback port, in this event loop."""
    from wa_consumer.sandbox import start_sandbox

    running = await start_sandbox(port=0)
    try:
        yield running
    finally:
        await running.close()


PG_URL = os.environ.get("WA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A PostgreSQL database of this test run's own, dropped afterwards; yields its URL."""
    import asyncio

    import asyncpg

    name = f"wa_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(PG_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

"""Shared fixtures: a RabbitMQ vhost per test run, unique names per test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import structlog

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


@pytest.fixture(autouse=True)
def _logging_as_in_production() -> Iterator[None]:
    """Log as ``wa-consumer run`` does (JSON lines, tracebacks as plain text), warnings and up.

    structlog's default, which an in-process daemon gets otherwise, renders each traceback
    with rich and every local variable: seconds of the event loop for one hostile body, long
    enough to time out confirms and sends of every other message in the test.
    """
    saved = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)

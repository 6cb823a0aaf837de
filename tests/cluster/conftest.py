"""The three-node cluster of ``scripts/cluster.sh``, for this directory's tests only.

They run only with ``WA_TEST_CLUSTER=1`` (three extra RabbitMQ nodes take ~20 s to start
and ~1 GB of memory): ``WA_TEST_CLUSTER=1 python -m pytest tests/cluster -v -s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs scripts/cluster.sh (WA_TEST_CLUSTER=1)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("WA_TEST_CLUSTER") == "1":
        return
    skip = pytest.mark.skip(reason="a three-node cluster: set WA_TEST_CLUSTER=1 to run")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


class Cluster:
    """The nodes of ``scripts/cluster.sh`` in a directory of their own."""

    def __init__(self, directory: str) -> None:
        self.env = {**os.environ, "WA_CLUSTER_DIR": directory}
        self.urls: list[str] = []

    def run(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.Popen(
            [str(SCRIPT), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)}: {out}{err}")
        return out

    def up(self) -> None:
        self.urls = self.run("up").split()

    def down(self) -> None:
        self.run("down")

    def node(self, n: int) -> str:
        return f"wa{n}@localhost"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("WA_TEST_CLUSTER") != "1":
        pytest.skip("set WA_TEST_CLUSTER=1")
    directory = tempfile.mkdtemp(prefix="wa-cluster-")
    nodes = Cluster(directory)
    try:
        nodes.up()
        yield nodes
    finally:
        nodes.down()  # every node, and the directory (also when `up` failed half-way)

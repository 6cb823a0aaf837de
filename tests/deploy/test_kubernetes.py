"""deploy/kubernetes/: the kustomize base and its overlays render, and every object is valid.

Core kinds are checked with ``kubernetes-validate`` (strict: an unknown field fails) against
the oldest Kubernetes the manifests support; KEDA's and the Prometheus Operator's objects
against the CRDs kept in ``tests/deploy/schemas/`` (see its README), made strict the same
way. Then what a schema cannot say: the probes hit the daemon's ports and paths, the
termination grace covers the real shutdown, the settings are real settings, KEDA scales the
right Deployment on the right queue, the scrape jobs are the ones the alert rules name.

What renders needs ``kubectl`` (``kubectl kustomize``) and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from wa_consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"

#: The oldest Kubernetes the manifests are for (the receiver's preStop ``sleep`` needs 1.30).
KUBERNETES_VERSION = "1.30"
TARGETS = ["base", "overlays/quorum"]
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")

DAEMON = "wa-consumer"
RECEIVER = "wa-consumer-webhook"
SECRET = "wa-consumer-secrets"

KUBECTL = shutil.which("kubectl")

Obj = dict[str, Any]


# -- rendering ------------------------------------------------------------------------------


@cache
def render(target: str) -> tuple[Obj, ...]:
    """Every object ``kubectl kustomize`` renders for ``target``; skips without kubectl."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    objects = tuple(o for o in yaml.safe_load_all(done.stdout) if o)
    assert objects, f"kubectl kustomize {target} rendered nothing"
    return objects


def one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def only(objects: tuple[Obj, ...], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def settings_data(objects: tuple[Obj, ...]) -> dict[str, str]:
    """The environment the pods get: the ConfigMap's data and the Secret's."""
    config = only(objects, "ConfigMap")["data"]
    secret = one(objects, "Secret", SECRET)["stringData"]
    return {**config, **secret}


@pytest.fixture(params=TARGETS)
def objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    return render(request.param)


@pytest.fixture
def settings(objects: tuple[Obj, ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod builds from its ConfigMap and Secret, as the CLI does (from env)."""
    for name in list(os.environ):
        if name.upper().startswith("WA_"):
            monkeypatch.delenv(name)
    for name, value in settings_data(objects).items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


# -- schemas --------------------------------------------------------------------------------


def test_core_objects_are_valid_for_kubernetes(objects: tuple[Obj, ...]) -> None:
    import kubernetes_validate

    core = [o for o in objects if not o["apiVersion"].startswith(CRD_GROUPS)]
    assert {o["kind"] for o in core} >= {
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for obj in core:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


def _strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as ``kubectl apply`` (strict field
    validation) would, instead of pruned in silence."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> the strict openAPIV3Schema, from every CRD in SCHEMAS."""
    found: dict[tuple[str, str], Obj] = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                found[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return found


def test_custom_resources_match_their_crd_schemas(objects: tuple[Obj, ...]) -> None:
    custom = [o for o in objects if o["apiVersion"].startswith(CRD_GROUPS)]
    assert {o["kind"] for o in custom} == {
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PrometheusRule",
    }
    schemas = crd_schemas()
    for obj in custom:
        schema = schemas.get((obj["apiVersion"], obj["kind"]))
        assert schema is not None, f"no CRD in {SCHEMAS} for {obj['apiVersion']} {obj['kind']}"
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: e.json_path
        )
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{e.json_path}: {e.message}" for e in errors
        )


def test_the_strict_crd_schema_refuses_a_misspelt_field() -> None:
    schema = crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    scaled: Obj = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "x"},
            "triggers": [{"type": "cpu", "metadata": {"value": "70"}}],
            "minReplicas": 1,  # KEDA's field is minReplicaCount
        },
    }
    assert not jsonschema.Draft202012Validator(schema).is_valid(scaled)
    del scaled["spec"]["minReplicas"]
    assert jsonschema.Draft202012Validator(schema).is_valid(scaled)


# -- the pods -------------------------------------------------------------------------------


def daemon_shutdown_worst_case(s: Settings) -> float:
    """Seconds from SIGTERM to exit of ``wa-consumer run`` at worst (wa_consumer/consumer.py).

    The fixed bounds are the code's own (``close(grace=min(5, grace))``, ``wait_for(..., 5)``).
    """
    close_grace = min(5.0, s.shutdown_grace_seconds)
    return (
        s.shutdown_grace_seconds  # Pipeline.drain: in flight finish or are handed back
        + s.database_statement_timeout_ms / 1000  # a message claimed just before the deadline
        + s.http_timeout_seconds  # ... and its send, never cut off once on the wire
        + 5 + close_grace + 1  # StatusConsumer.close: cancel, the batch in hand, stragglers
        + 5  # the queue probe
        + close_grace  # Alerts.close
        + 5 + 2 + 2  # PostgresLedger.close: queued writes, heartbeat stop, goodbye row
        + 5  # the AMQP connection
    )  # fmt: skip


def receiver_shutdown_worst_case(s: Settings, pre_stop: float) -> float:
    """``wa-consumer webhook`` (wa_consumer/webhooks/receiver.py): aiohttp's shutdown
    timeout is the grace, then the channel and the connection close within 5 s each."""
    return pre_stop + s.shutdown_grace_seconds + 5 + 5


def test_daemon_probes_hit_the_metrics_port(objects: tuple[Obj, ...], settings: Settings) -> None:
    main = container(one(objects, "Deployment", DAEMON))
    assert main["args"] == ["run"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"metrics": settings.metrics_port}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = main[probe]["httpGet"]
        assert (get["path"], ports.get(get["port"], get["port"])) == (path, settings.metrics_port)
    # /readyz pings the ledger with a 2 s bound (wa_consumer/health.py)
    assert main["readinessProbe"]["timeoutSeconds"] >= 3


def test_receiver_probes_hit_the_webhook_port(objects: tuple[Obj, ...], settings: Settings) -> None:
    main = container(one(objects, "Deployment", RECEIVER))
    assert main["args"] == ["webhook"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": settings.webhook_port}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = main[probe]["httpGet"]
        assert (get["path"], ports.get(get["port"], get["port"])) == (path, settings.webhook_port)


def test_termination_grace_outlasts_the_worst_case_shutdown(
    objects: tuple[Obj, ...], settings: Settings
) -> None:
    daemon = one(objects, "Deployment", DAEMON)["spec"]["template"]["spec"]
    assert daemon["terminationGracePeriodSeconds"] > daemon_shutdown_worst_case(settings)
    receiver = one(objects, "Deployment", RECEIVER)["spec"]["template"]["spec"]
    pre_stop = receiver["containers"][0].get("lifecycle", {}).get("preStop", {})
    worst = receiver_shutdown_worst_case(settings, pre_stop.get("sleep", {}).get("seconds", 0))
    assert receiver["terminationGracePeriodSeconds"] > worst


def test_the_defaults_shut_down_within_the_documented_85_seconds() -> None:
    # deployment.yaml's comment adds these up; a change of a default shows here first.
    assert daemon_shutdown_worst_case(Settings(_env_file=None)) == 85


@pytest.mark.parametrize("name", [DAEMON, RECEIVER])
def test_pods_run_unprivileged_on_a_read_only_root(objects: tuple[Obj, ...], name: str) -> None:
    pod = one(objects, "Deployment", name)["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    for key in ("runAsUser", "runAsGroup"):  # a name cannot be checked by runAsNonRoot
        assert isinstance(security[key], int) and security[key] > 0, key
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    main = pod["containers"][0]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in main["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
    for kind in ("requests", "limits"):
        assert set(main["resources"][kind]) == {"cpu", "memory"}, kind


# -- settings -------------------------------------------------------------------------------


def test_every_setting_given_is_a_real_one(objects: tuple[Obj, ...]) -> None:
    for name in settings_data(objects):
        assert name.startswith("WA_"), name
        assert name[3:].lower() in Settings.model_fields, f"{name} is not a setting"


def test_settings_are_valid_and_secrets_stay_in_the_secret(
    objects: tuple[Obj, ...], settings: Settings
) -> None:
    config = only(objects, "ConfigMap")["data"]
    secret = one(objects, "Secret", SECRET)["stringData"]
    assert not set(config) & set(secret)
    must_be_secret = {
        "WA_AMQP_URL",
        "WA_DATABASE_URL",
        "WA_REDIS_URL",
        "WA_TENANT_SERVICE_TOKEN",
        "WA_WEBHOOK_APP_SECRET",
        "WA_WEBHOOK_VERIFY_TOKEN",
        "WA_WEBHOOK_APP_SECRETS",
        "WA_STATIC_CREDENTIALS",
        "WA_ALERT_WEBHOOK_URL",
    }
    assert not set(config) & must_be_secret
    assert set(secret) >= must_be_secret - {
        "WA_WEBHOOK_APP_SECRETS",
        "WA_STATIC_CREDENTIALS",
        "WA_ALERT_WEBHOOK_URL",
    }
    assert settings.webhook_secrets  # the receiver will not start without one
    for deployment in (DAEMON, RECEIVER):
        refs = container(one(objects, "Deployment", deployment))["envFrom"]
        names = {r.get("configMapRef", r.get("secretRef"))["name"] for r in refs}
        assert names == {only(objects, "ConfigMap")["metadata"]["name"], SECRET}


def test_quorum_overlay_sets_quorum_queues_and_three_daemons() -> None:
    assert only(render("base"), "ConfigMap")["data"]["WA_QUEUE_TYPE"] == "classic"
    objects = render("overlays/quorum")
    assert only(objects, "ConfigMap")["data"]["WA_QUEUE_TYPE"] == "quorum"
    assert one(objects, "ScaledObject", DAEMON)["spec"]["minReplicaCount"] >= 3


# -- scaling and disruption -----------------------------------------------------------------


def test_keda_scales_the_daemon_on_the_main_queue(
    objects: tuple[Obj, ...], settings: Settings
) -> None:
    scaled = one(objects, "ScaledObject", DAEMON)["spec"]
    target = scaled["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", DAEMON)
    assert scaled["minReplicaCount"] >= 1  # `run` also applies statuses and raises alerts
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert (
        trigger["metadata"]["queueName"] == settings.queue == Settings.model_fields["queue"].default
    )
    assert trigger["metadata"]["mode"] == "QueueLength"
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == ("host", SECRET, "WA_AMQP_URL")
    assert ref["key"] in one(objects, "Secret", SECRET)["stringData"]


def test_keda_scales_the_receiver_on_cpu(objects: tuple[Obj, ...]) -> None:
    scaled = one(objects, "ScaledObject", RECEIVER)["spec"]
    assert scaled["scaleTargetRef"]["name"] == RECEIVER
    assert [t["type"] for t in scaled["triggers"]] == ["cpu"]
    assert scaled["minReplicaCount"] >= 1  # a cpu trigger cannot scale to zero
    assert "cpu" in container(one(objects, "Deployment", RECEIVER))["resources"]["requests"]


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pods(objects: tuple[Obj, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["metadata"]["labels"]


def test_every_selector_picks_exactly_its_own_pods(objects: tuple[Obj, ...]) -> None:
    for name in (DAEMON, RECEIVER):
        pdb = one(objects, "PodDisruptionBudget", name)["spec"]
        assert "maxUnavailable" in pdb  # minAvailable: 1 blocks every drain of one replica
        picked = [n for n, labels in _pods(objects) if _selects(pdb["selector"], labels)]
        assert picked == [name], f"PodDisruptionBudget/{name} picks {picked}"
        service = one(objects, "Service", name)["spec"]
        picked = [
            n
            for n, labels in _pods(objects)
            if _selects({"matchLabels": service["selector"]}, labels)
        ]
        assert picked == [name], f"Service/{name} picks {picked}"
        ports = {p["name"] for p in container(one(objects, "Deployment", name))["ports"]}
        assert {p["targetPort"] for p in service["ports"]} <= ports


# -- monitoring -----------------------------------------------------------------------------


def test_service_monitors_scrape_the_jobs_the_alert_rules_name(objects: tuple[Obj, ...]) -> None:
    jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")))
    assert jobs == {DAEMON, RECEIVER}
    services = [o for o in objects if o["kind"] == "Service"]
    scraped: set[str] = set()
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        spec = monitor["spec"]
        assert "jobLabel" not in spec  # the job is the Service's name
        picked = [s for s in services if _selects(spec["selector"], s["metadata"]["labels"])]
        assert len(picked) == 1, f"ServiceMonitor/{monitor['metadata']['name']} picks {picked}"
        port_names = {p["name"] for p in picked[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint.get("path", "/metrics") == "/metrics"
        scraped.add(picked[0]["metadata"]["name"])
    assert scraped == jobs


def _rule_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "k8s_prometheus_rule", ROOT / "scripts" / "k8s_prometheus_rule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_rule_is_generated_from_the_alert_rules_file() -> None:
    generator = _rule_generator()
    path: Path = generator.OUTPUT_PATH
    assert path.is_file(), f"{path} is missing: run `{generator.COMMAND}`"
    committed = path.read_text(encoding="utf-8")
    assert committed == generator.render(ALERTS.read_text(encoding="utf-8")), (
        f"{path.relative_to(ROOT)} is stale (deploy/prometheus-alerts.yml changed): "
        f"run `{generator.COMMAND}`"
    )


def test_prometheus_rule_renders_to_the_rules_files_groups() -> None:
    rule = only(render("base"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))

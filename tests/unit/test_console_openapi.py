"""config/console-openapi.yaml documents the console: every route of the application is in
the file with its method, every path and method of the file is a route, and the file holds
together (references resolve, operation ids are unique, every operation has answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from wa_consumer.console import build_app, routes

FILE = Path(__file__).resolve().parents[2] / "config" / "console-openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(FILE.read_text(encoding="utf-8"))
    return loaded


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def served() -> set[tuple[str, str]]:
    return routes(build_app(console=None))  # type: ignore[arg-type]  # routes need no state


def test_every_route_is_documented_and_every_documented_path_is_a_route(
    spec: dict[str, Any],
) -> None:
    app, doc = served(), documented(spec)
    assert not app - doc, f"routes missing from {FILE.name}: {sorted(app - doc)}"
    assert not doc - app, f"{FILE.name} names what is not served: {sorted(doc - app)}"
    assert any(path.startswith("/api/") for _, path in app)


def test_the_file_is_openapi_3_1_and_holds_together(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    operations = [op for item in spec["paths"].values() for m, op in item.items() if m in METHODS]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for op in operations:
        assert op["responses"], op["operationId"]
    missing = [ref for ref in _refs(spec) if _resolve(spec, ref) is None]
    assert not missing, f"references that lead nowhere: {missing}"
    for path, item in spec["paths"].items():
        named = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        for method, op in item.items():
            if method not in METHODS:
                continue
            params = [
                _resolve(spec, p["$ref"]) if "$ref" in p else p for p in op.get("parameters", [])
            ]
            in_path = {p["name"] for p in params if p and p["in"] == "path"}
            assert in_path == named, f"{method} {path}: path parameters {in_path} != {named}"


def test_every_api_action_needs_a_reason_or_says_why_not(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        op = item.get("post")
        if not path.startswith("/api/") or op is None or path.startswith("/api/jobs/"):
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = _resolve(spec, schema["$ref"])
        assert "reason" in schema["required"], path


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node

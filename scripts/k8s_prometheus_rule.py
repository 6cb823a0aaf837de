"""Wrap deploy/prometheus-alerts.yml into the Prometheus Operator's PrometheusRule.

    python scripts/k8s_prometheus_rule.py          # (re)write the PrometheusRule
    python scripts/k8s_prometheus_rule.py --check  # exit 1 when it is stale

It writes ``deploy/kubernetes/base/prometheusrule.yaml``.

The rules file stays the one source: its groups become the object's ``spec`` line for line
(comments kept), only its leading comment block is left out. ``tests/deploy/test_kubernetes.py``
fails when the committed file differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "deploy" / "prometheus-alerts.yml"
OUTPUT_PATH = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
COMMAND = "python scripts/k8s_prometheus_rule.py"

HEADER = f"""\
# GENERATED from deploy/prometheus-alerts.yml by `{COMMAND}`:
# edit that file, then rerun.
# A Prometheus that selects rules by label (kube-prometheus-stack: release=<name>) needs
# that label added, e.g. in an overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: wa-consumer
  labels:
    app.kubernetes.io/name: wa-consumer
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule's exact text for the rules file's text."""
    lines = rules_text.splitlines()
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].startswith("#")):
        start += 1  # the file's own header speaks of rule_files and promtool, not of this
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render(RULES_PATH.read_text(encoding="utf-8"))
    if args.check:
        current = OUTPUT_PATH.read_text(encoding="utf-8") if OUTPUT_PATH.is_file() else None
        if current != text:
            print(f"{OUTPUT_PATH.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    OUTPUT_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The delivery-status scenarios (issue 14) in the report: medians, the ratio, their table.

``webhooks`` reports webhooks/s and the same round's floor (the bodies published with
confirms from one channel); the ratio of their medians is shown without a target (the issue
sets none), with the ratio within each round beside it. ``statuses`` reports statuses/s and
bodies/s. Both give the median CPU µs per unit of each process measured: the receiver or the
daemon, the load generator (``client``), the broker, PostgreSQL, and the whole machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import median_or_none
from .measure import Run

PLURAL = {"webhook": "webhooks", "status": "statuses"}


def _clean(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.problems]


def _median_cpu(figures: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    names = dict.fromkeys(name for f in figures for name in f)
    return {
        name: median_or_none([v for f in figures if (v := f.get(name)) is not None])
        for name in names
    }


def part(runs: Sequence[Run]) -> dict[str, Any]:
    """What the scenario's entry in the JSON adds to the messages scenarios' figures."""
    good = _clean(runs)
    figures: dict[str, Any] = {
        "unit": good[0].unit if good else (runs[0].unit if runs else None),
        "median_units": median_or_none([r.units for r in good if r.units is not None]),
        "median_cpu_us": _median_cpu([r.cpu_us for r in good]),
    }
    floors = [r.floor for r in good if r.floor]
    if floors:
        rate = median_or_none([f["rate"] for f in floors])
        figures["median_floor_s"] = rate
        figures["median_floor_steady_s"] = median_or_none([f["steady_rate"] for f in floors])
        figures["median_floor_cpu_us"] = _median_cpu([f["cpu_us"] for f in floors])
        figures["over_floor"] = None
        receiver = median_or_none([r.rate for r in good])
        if receiver is not None and rate:
            figures["over_floor"] = receiver / rate
    bodies = [r.detail["bodies_per_s"] for r in good if "bodies_per_s" in r.detail]
    if bodies:
        figures["median_bodies_s"] = median_or_none(bodies)
    return figures


def targets(results: dict[str, list[Run]], parts: dict[str, Any]) -> dict[str, Any]:
    """The receiver over its floor, for the target table: no target, shown for the record."""
    if "webhooks" not in parts:
        return {}
    runs = results.get("webhooks", [])
    value = parts["webhooks"].get("over_floor")
    every = [r.rate / r.floor["rate"] for r in runs if r.floor.get("rate")]
    return {
        "webhooks_over_floor": {
            "what": "webhooks/s accepted / publish-with-confirms floor",
            "issue": "14",
            "value": value,
            "target": "-",
            "verdict": None if value is None else "info",
            "per_round": [r.rate / r.floor["rate"] for r in _clean(runs) if r.floor.get("rate")],
            "indicative_all_runs": median_or_none(every) if value is None else None,
        }
    }


def _us(cpu: dict[str, float | None], names: Sequence[str]) -> str:
    shown = [f"{name} {cpu[name]:,.0f}" for name in names if cpu.get(name) is not None]
    return ", ".join(shown) or "n/a"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def table(report: dict[str, Any]) -> list[str]:
    """The lines of the delivery-status block, or none if neither scenario ran."""
    parts = [p for p in report["scenarios"].values() if p.get("kind", "messages") != "messages"]
    parts = [p for p in parts if p["runs"]]
    if not parts:
        return []
    cpus = report["settings"]["cpus"]
    lines = [
        "",
        f"delivery statuses: the load generator, the broker, the receiver or the daemon and"
        f" PostgreSQL share these {cpus} cpus",
        f"{'scenario':<44}{'in flight':>10}{'/s':>9}{'steady':>9}   runs (/s)",
    ]
    for p in parts:
        runs = " ".join(f"{r['rate']:,.0f}{'*' if r['problems'] else ''}" for r in p["runs"])
        unit = p["unit"] or "?"
        if p["kind"] == "webhooks":
            names: tuple[str, ...] = ("receiver", "client", "broker", "machine")
        else:
            names = ("daemon", "postgres", "broker", "machine")
        lines.append(
            f"{p['label'] + f' ({PLURAL.get(unit, unit)})':<44}{p['prefetch']:>10}"
            f"{_rate(p['median_msg_s']):>9}{_rate(p['median_steady_msg_s']):>9}   {runs}"
        )
        lines.append(f"    CPU µs per {unit} (median): {_us(p['median_cpu_us'], names)}")
        if "median_floor_s" in p:
            floors = " ".join(f"{r['floor']['rate']:,.0f}" for r in p["runs"] if r["floor"])
            lines.append(
                f"{'  floor: aio-pika publish + confirm':<44}{p['prefetch']:>10}"
                f"{_rate(p['median_floor_s']):>9}{_rate(p['median_floor_steady_s']):>9}   {floors}"
            )
            cpu = _us(p["median_floor_cpu_us"], ("bench", "broker", "machine"))
            lines.append(f"    CPU µs per webhook (median): {cpu}")
            ratio = p.get("over_floor")
            lines.append(f"  receiver / floor: {'n/a' if ratio is None else f'{ratio:.3f}'}")
        if "median_bodies_s" in p:
            per_body = p["runs"][0]["detail"].get("statuses_per_body", 0)
            lines.append(
                f"  = {_rate(p['median_bodies_s'])} webhook bodies/s"
                f" ({per_body:.1f} statuses per body)"
            )
    return lines


def describe(run: Run, label: str) -> str:
    """One line per measurement, printed as it completes."""
    cpu = ", ".join(
        f"{name} {'n/a' if share is None else f'{share * 100:.0f}%'}"
        for name, share in run.cpu.items()
    )
    text = (
        f"  #{run.round} {label}: {run.units or run.messages:,} {PLURAL.get(run.unit, run.unit)} in"
        f" {run.seconds:.2f} s = {run.rate:,.0f}/s (steady {run.steady_rate:,.0f});"
        f" cpu {cpu}; µs/{run.unit} {_us(run.cpu_us, list(run.cpu_us))}"
    )
    if run.floor:
        text += (
            f"; floor {run.floor['rate']:,.0f}/s (steady {run.floor['steady_rate']:,.0f}),"
            f" µs/webhook {_us(run.floor['cpu_us'], list(run.floor['cpu_us']))}"
        )
    if run.prefill_rate is not None:
        text += f"; prefill {run.prefill_rate:,.0f} bodies/s"
    if run.rss_at_start_mb is not None:
        text += (
            f"; start {run.startup_seconds or 0:.2f} s, stop {run.shutdown_seconds or 0:.2f} s;"
            f" rss {run.rss_at_start_mb:.0f} -> {run.max_rss_mb or 0:.0f} MB"
        )
    return text

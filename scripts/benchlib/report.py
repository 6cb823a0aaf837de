"""Medians per scenario, the ratios the issues set targets for, the table and the JSON.

Targets:

- issue 7: the daemon at 0 ms with the ledger on, at least 0.5 of the floor;
- issue 4: the same ratio at least 0.35, with every feature on;
- issue 5: ledger on at least 0.80 of ledger off, both at 0 ms;
- issue 7: at 100 ms, at least 0.80 of min(the 0 ms ledger-on rate, prefetch / latency);
- issue 7: the daemon's resident memory under 200 MB in every scenario (the higher of the
  sampled ``VmRSS`` and the kernel's ``VmHWM``);
- issue 17: the daemon at 100 ms, every feature on, at least 1.2 times as fast as the plain
  consumer a user would write instead (aio-pika + aiohttp, no features), same latency and
  prefetch (at least as fast before issue 17); the same over TLS (``latency-tls`` /
  ``plain-tls``), at least 1.2.

A block lists, per scenario that sends to the sandbox, the sending process's CPU µs per
message (the daemon's, or the bench's own for the plain consumer) and the connections it
opened, as the sandbox counted them (over TLS: handshakes).

Two ratios have no target and are shown for context: that plain consumer at 0 ms against the
floor (how far the HTTP client alone lets a consumer come), and the daemon against it. The
delivery-status scenarios (issue 14) have a block of their own (``report_delivery``).

Ratios are taken between medians; ``per_round`` in the JSON has the same ratio within each
round, where both sides were measured (the rounds alternate the scenarios, so a round's
figures share the machine's load of the moment).

The ``workers-N`` scenarios (``run --workers N``) have a block of their own: the rate, CPU µs
per message summed over the supervisor and every worker, the peak RSS of each worker (the
target applies per worker: the highest of any) and of the supervisor, and each against the
one-worker scenario at the same latency (``workers-2 / workers-1``, no target: the machine's
2 cores are shared with RabbitMQ, PostgreSQL and the sandbox).

With ``--transports``, a block compares each daemon scenario's transports: the rate and the
daemon's CPU µs per message, each against the first transport named, as a ratio of medians
and within each round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import report_delivery
from .common import median_or_none
from .measure import Run
from .scenarios import Scenario

RSS_LIMIT_MB = 200.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def clean(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.problems]


def _paired(results: dict[str, list[Run]], top: str, bottom: str) -> list[float]:
    """The ratio within each round where both sides were measured cleanly."""
    below = {r.round: r.rate for r in clean(results.get(bottom, []))}
    return [r.rate / below[r.round] for r in clean(results.get(top, [])) if below.get(r.round)]


def _bound(medians: dict[str, float | None], latency: Scenario | None) -> float | None:
    """min(0 ms ledger-on rate, prefetch / latency) of the latency scenario."""
    if latency is None:
        return None
    ceiling = latency.prefetch / (latency.latency_ms / 1000) if latency.latency_ms else None
    candidates = [c for c in (medians.get("zero-on"), ceiling) if c is not None]
    return min(candidates) if candidates else None


def _ratios(medians: dict[str, float | None], latency: Scenario | None) -> dict[str, Any]:
    m = medians.get
    return {
        "zero_on_over_floor": _ratio(m("zero-on"), m("floor")),
        "zero_on_over_floor_all_features": _ratio(m("zero-on"), m("floor")),
        "ledger_on_over_off": _ratio(m("zero-on"), m("zero-off")),
        "latency_over_bound": _ratio(m("latency"), _bound(medians, latency)),
        "latency_over_plain": _ratio(m("latency"), m("plain")),
        "latency_tls_over_plain_tls": _ratio(m("latency-tls"), m("plain-tls")),
        "latency_h2_over_latency_tls": _ratio(m("latency-h2"), m("latency-tls")),
        "plain_zero_over_floor": _ratio(m("plain-zero"), m("floor")),
        "zero_on_over_plain_zero": _ratio(m("zero-on"), m("plain-zero")),
        "workers_2_over_1": _ratio(m("workers-2"), m("workers-1")),
    }


def summary(
    results: dict[str, list[Run]], scenarios: Sequence[Scenario], meta: dict[str, Any]
) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    medians: dict[str, float | None] = {}  # of the clean runs
    all_medians: dict[str, float | None] = {}  # of every run, clean or not: indicative only
    for scenario in scenarios:
        runs = results.get(scenario.key, [])
        good = clean(runs)
        medians[scenario.key] = median_or_none([r.rate for r in good])
        all_medians[scenario.key] = median_or_none([r.rate for r in runs])
        rss = [max(r.max_rss_mb or 0, r.peak_rss_mb or 0) for r in runs if r.max_rss_mb is not None]
        parts[scenario.key] = {
            **scenario.describe(),
            "median_msg_s": medians[scenario.key],
            "median_steady_msg_s": median_or_none([r.steady_rate for r in good]),
            "clean_runs": len(good),
            "median_msg_s_all_runs": all_medians[scenario.key],
            "max_rss_mb": max(rss, default=None),  # over every run, clean or not
            "runs": [dataclasses.asdict(r) for r in runs],
        }
        if scenario.kind != "messages":
            parts[scenario.key].update(report_delivery.part(runs))

    latency = next((s for s in scenarios if s.key == "latency"), None)
    values, indicative = _ratios(medians, latency), _ratios(all_medians, latency)
    bound = _bound(medians, latency)
    ms = f"{latency.latency_ms:g}" if latency else "?"
    described = {
        "zero_on_over_floor": ("0 ms ledger-on / floor", "7", 0.5, ("zero-on", "floor")),
        "zero_on_over_floor_all_features": (
            "0 ms ledger-on / floor, every feature on",
            "4",
            0.35,
            ("zero-on", "floor"),
        ),
        "ledger_on_over_off": ("ledger-on / ledger-off at 0 ms", "5", 0.8, ("zero-on", "zero-off")),
        "latency_over_bound": (f"{ms} ms rate / min(0 ms rate, prefetch/latency)", "7", 0.8, None),
        "latency_over_plain": (
            f"{ms} ms daemon / aio-pika + aiohttp consumer",
            "17",
            1.2,
            ("latency", "plain"),
        ),
        "latency_tls_over_plain_tls": (
            f"{ms} ms TLS daemon / aio-pika + aiohttp consumer over TLS",
            "17",
            1.2,
            ("latency-tls", "plain-tls"),
        ),
        "latency_h2_over_latency_tls": (
            f"{ms} ms TLS daemon, HTTP/2 / HTTP/1.1",
            "-",
            None,
            ("latency-h2", "latency-tls"),
        ),
        "plain_zero_over_floor": (
            "aio-pika + aiohttp 0 ms, no features / floor",
            "-",
            None,
            ("plain-zero", "floor"),
        ),
        "zero_on_over_plain_zero": (
            "0 ms ledger-on / aio-pika + aiohttp 0 ms",
            "-",
            None,
            ("zero-on", "plain-zero"),
        ),
        "workers_2_over_1": (
            "run --workers 2 / --workers 1, 0 ms ledger-on",
            "-",
            None,
            ("workers-2", "workers-1"),
        ),
    }
    targets: dict[str, Any] = {}
    chosen = {s.key for s in scenarios}
    for name, (what, issue, target, pair) in described.items():
        if not chosen.issuperset(pair or ("latency",)):
            continue  # a side of the ratio was not measured in this run
        if pair is None:
            rounds = [r.rate / bound for r in clean(results.get("latency", [])) if bound]
        else:
            rounds = _paired(results, *pair)
        value = values[name]
        targets[name] = {
            "what": what,
            "issue": issue,
            "value": value,
            "target": "-" if target is None else f">= {target:g}",
            "verdict": (
                None
                if value is None
                else "info"
                if target is None
                else ("PASS" if value >= target else "MISS")
            ),
            "per_round": rounds,
            # With no clean run on a side: the same ratio over every run, for orientation.
            "indicative_all_runs": indicative[name] if value is None else None,
        }
    if latency is not None and "latency_over_bound" in targets:
        ceiling = latency.prefetch / (latency.latency_ms / 1000) if latency.latency_ms else None
        on = medians.get("zero-on")
        targets["latency_over_bound"]["bound"] = (
            f"min(0 ms ledger-on {'n/a' if on is None else f'{on:,.0f}'}, prefetch/latency "
            f"{'n/a' if ceiling is None else f'{ceiling:,.0f}'}) = {bound or 0:,.0f} msg/s"
        )
    targets.update(report_delivery.targets(results, parts))
    for scenario in scenarios:
        rss = parts[scenario.key]["max_rss_mb"]
        if scenario.daemon:
            targets[f"rss_{scenario.key}"] = {
                "what": f"max RSS{' per worker' if scenario.workers else ''}, {scenario.label}",
                "issue": "7",
                "value": rss,
                "target": f"< {RSS_LIMIT_MB:g} MB",
                "verdict": None if rss is None else ("PASS" if rss < RSS_LIMIT_MB else "MISS"),
                "per_round": [r["peak_rss_mb"] for r in parts[scenario.key]["runs"]],
            }
    unclean = [
        {
            "scenario": r.scenario,
            "round": r.round,
            "problems": r.problems,
            "warnings": r.log_warnings,
        }
        for runs in results.values()
        for r in runs
        if r.problems
    ]
    return {
        "settings": meta,
        "scenarios": parts,
        "targets": targets,
        "transports": _transports(results, scenarios),
        "workers": _workers(results, scenarios),
        "clients": _clients(results, scenarios),
        "not_clean": unclean,
    }


def _client_us(run: Run) -> float | None:
    """CPU µs per message of the process that sent: the daemon, or the bench's consumer."""
    if not run.cpu_us:
        return None
    return run.cpu_us.get("daemon") if run.pid is not None else run.cpu_us.get("bench")


def _clients(results: dict[str, list[Run]], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """Per scenario that sends to the sandbox: the sender's CPU per message and the
    connections it opened (issue 17: over TLS, every connection is a handshake)."""
    block: dict[str, Any] = {}
    for scenario in scenarios:
        if not (scenario.daemon or scenario.http):
            continue
        runs = results.get(scenario.key, [])
        good = clean(runs)
        indicative = not good  # no clean run: every run, for orientation (marked *)
        if indicative:
            good = runs
        opened = [r.detail["connections_opened"] for r in good if "connections_opened" in r.detail]
        h2 = [r.detail.get("h2_connections_opened", 0) for r in good if "tls" in r.detail]
        block[scenario.key] = {
            "label": scenario.label,
            "tls": scenario.tls,
            "http": "HTTP/2" if scenario.http2 else "HTTP/1.1",
            "h2_connections_opened_per_round": h2,
            # HTTP/2 against HTTP/1.1 over TLS, sender CPU per message within each round
            "cpu_over_latency_tls_per_round": _cpu_paired(results, scenario.key, "latency-tls")
            if scenario.http2
            else None,
            "indicative_all_runs": indicative and bool(runs),
            "median_msg_s": median_or_none([r.rate for r in good]),
            "median_sender_cpu_us": median_or_none(
                [u for r in good if (u := _client_us(r)) is not None]
            ),
            "median_connections_opened": median_or_none([float(o) for o in opened]),
            "connections_opened_per_round": opened,
        }
    return block


def _cpu_paired(results: dict[str, list[Run]], top: str, bottom: str) -> list[float]:
    """The sender's CPU per message of ``top`` over ``bottom``, within each clean round."""
    below = {r.round: u for r in clean(results.get(bottom, [])) if (u := _client_us(r))}
    return [
        u / below[r.round]
        for r in clean(results.get(top, []))
        if (u := _client_us(r)) is not None and r.round in below
    ]


def _client_lines(report: dict[str, Any]) -> list[str]:
    rows = report.get("clients", {})
    if not rows:
        return []
    lines = [
        "",
        f"{'sender (CPU of the sending process)':<48}{'msg/s':>9}{'µs/msg':>8}{'conns':>7}",
    ]
    for c in rows.values():
        rate, us, conns = (
            c["median_msg_s"],
            c["median_sender_cpu_us"],
            c["median_connections_opened"],
        )
        lines.append(
            f"{c['label']:<48}{'n/a' if rate is None else f'{rate:,.0f}':>9}"
            f"{'n/a' if us is None else f'{us:,.0f}':>8}"
            f"{'n/a' if conns is None else f'{conns:,.0f}':>7}"
            + ("  * no clean run: over every run" if c["indicative_all_runs"] else "")
        )
    return lines


def _daemon_us(run: Run) -> float | None:
    return run.cpu_us.get("daemon") if run.cpu_us else None


def _transports(results: dict[str, list[Run]], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """Per daemon scenario measured with several transports: each against the first."""
    groups: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        if scenario.base and scenario.transport:
            groups.setdefault(scenario.base, []).append(scenario)
    block: dict[str, Any] = {}
    for base, variants in groups.items():
        if len(variants) < 2:
            continue
        first = clean(results.get(variants[0].key, []))
        first_rate = median_or_none([r.rate for r in first])
        first_us = median_or_none([u for r in first if (u := _daemon_us(r)) is not None])
        rounds = {r.round: r for r in first}
        entry: dict[str, Any] = {}
        for variant in variants:
            good = clean(results.get(variant.key, []))
            rate = median_or_none([r.rate for r in good])
            us = median_or_none([u for r in good if (u := _daemon_us(r)) is not None])
            paired = [(r, rounds[r.round]) for r in good if r.round in rounds]
            entry[str(variant.transport)] = {
                "key": variant.key,
                "median_msg_s": rate,
                "median_daemon_cpu_us": us,
                "rate_ratio": _ratio(rate, first_rate),
                "cpu_ratio": _ratio(us, first_us),
                "rate_ratio_per_round": [a.rate / b.rate for a, b in paired],
                "cpu_ratio_per_round": [
                    ua / ub
                    for a, b in paired
                    if (ua := _daemon_us(a)) is not None and (ub := _daemon_us(b))
                ],
            }
        block[base] = entry
    return block


def _range(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "n/a"


def _transport_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for base, entry in report.get("transports", {}).items():
        if not lines:
            lines += ["", "transports (against the first named; per round: within each round)"]
        for name, t in entry.items():
            rate, us = t["median_msg_s"], t["median_daemon_cpu_us"]
            rr, cr = t["rate_ratio"], t["cpu_ratio"]
            lines.append(
                f"  {base:<12}{name:<11}"
                f"{'n/a' if rate is None else f'{rate:,.0f}':>8} msg/s"
                f"{'n/a' if us is None else f'{us:,.0f}':>6} µs CPU/msg (daemon)"
                f"   rate x{'n/a' if rr is None else f'{rr:.2f}'}"
                f" ({_range(t['rate_ratio_per_round'])})"
                f"   CPU x{'n/a' if cr is None else f'{cr:.2f}'}"
                f" ({_range(t['cpu_ratio_per_round'])})"
            )
    return lines


def _workers(results: dict[str, list[Run]], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """Per ``workers-N`` scenario: rate, CPU per message (supervisor and workers), peak RSS per
    worker and of the supervisor; against the one-worker scenario at the same latency."""
    chosen = [s for s in scenarios if s.workers]
    block: dict[str, Any] = {}
    for scenario in chosen:
        runs = results.get(scenario.key, [])
        good = clean(runs)
        rss = [max(r.max_rss_mb or 0, r.peak_rss_mb or 0) for r in runs if r.max_rss_mb]
        own = [r.detail["supervisor_peak_rss_mb"] for r in runs]
        entry: dict[str, Any] = {
            "label": scenario.label,
            "workers": scenario.workers,
            "median_msg_s": median_or_none([r.rate for r in good]),
            "msg_s_per_round": [r.rate for r in good],
            "median_cpu_us": median_or_none([u for r in good if (u := _daemon_us(r)) is not None]),
            "cpu_us_per_round": [_daemon_us(r) for r in good],
            "max_rss_mb_per_worker": max(rss, default=None),  # over every run, clean or not
            "supervisor_peak_rss_mb": max((m for m in own if m is not None), default=None),
            "sent_by_worker_per_round": [r.detail.get("sent_by_worker") for r in runs],
        }
        one = next(
            (
                s
                for s in chosen
                if s.workers == 1
                and s.latency_ms == scenario.latency_ms
                and s.transport == scenario.transport
            ),
            None,
        )
        if one is not None and one is not scenario:
            first = clean(results.get(one.key, []))
            rate, us = entry["median_msg_s"], entry["median_cpu_us"]
            rounds = {r.round: r for r in first}
            paired = [(r, rounds[r.round]) for r in good if r.round in rounds]
            entry["against"] = one.key
            entry["rate_ratio"] = _ratio(rate, median_or_none([r.rate for r in first]))
            entry["cpu_ratio"] = _ratio(
                us, median_or_none([u for r in first if (u := _daemon_us(r)) is not None])
            )
            entry["rate_ratio_per_round"] = [a.rate / b.rate for a, b in paired]
            entry["cpu_ratio_per_round"] = [
                ua / ub
                for a, b in paired
                if (ua := _daemon_us(a)) is not None and (ub := _daemon_us(b))
            ]
        block[scenario.key] = entry
    return block


def _worker_lines(report: dict[str, Any]) -> list[str]:
    rows = report.get("workers", {})
    if not rows:
        return []
    lines = [
        "",
        "run --workers N (CPU: supervisor + workers; RSS: the highest worker's, the supervisor's)",
    ]
    for key, w in rows.items():
        rate, us = w["median_msg_s"], w["median_cpu_us"]
        rss, own = w["max_rss_mb_per_worker"], w["supervisor_peak_rss_mb"]
        line = (
            f"  {key:<19}{'n/a' if rate is None else f'{rate:,.0f}':>8} msg/s"
            f"{'n/a' if us is None else f'{us:,.0f}':>6} µs CPU/msg"
            f"   RSS {'n/a' if rss is None else f'{rss:.0f} MB':>6} per worker,"
            f" supervisor {'-' if own is None else f'{own:.0f} MB'}"
        )
        if "against" in w:
            rr, cr = w["rate_ratio"], w["cpu_ratio"]
            line += (
                f"   / {w['against']}: rate x{'n/a' if rr is None else f'{rr:.2f}'}"
                f" ({_range(w['rate_ratio_per_round'])})"
                f", CPU/msg x{'n/a' if cr is None else f'{cr:.2f}'}"
                f" ({_range(w['cpu_ratio_per_round'])})"
            )
        lines.append(line)
    return lines


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def describe(run: Run, label: str) -> str:
    """One line per measurement, printed as it completes."""
    if run.unit != "msg":
        return report_delivery.describe(run, label)
    cpu = ", ".join(f"{name} {_pct(share)}" for name, share in run.cpu.items())
    text = (
        f"  #{run.round} {label}: {run.units or run.messages:,} in {run.seconds:.2f} s"
        f" = {run.rate:,.0f} msg/s"
        f" (steady {run.steady_rate:,.0f}); prefill {run.prefill_rate:,.0f} msg/s; cpu {cpu}"
    )
    if "connections_opened" in run.detail:
        us = _client_us(run)
        text += f"; {run.detail['connections_opened']:,} connections opened"
        text += " (TLS)" if run.detail.get("tls") else ""
        if run.detail.get("h2_connections_opened"):
            text += f", {run.detail['h2_connections_opened']:,} of them HTTP/2"
        text += "" if us is None else f", sender {us:,.0f} µs CPU/msg"
    if run.pid is not None:
        text += (
            f"; start {run.startup_seconds:.2f} s, stop {run.shutdown_seconds:.2f} s;"
            f" rss {run.rss_at_start_mb:.0f} -> {run.max_rss_mb:.0f} MB"
            f" (peak {run.peak_rss_mb or 0:.0f}); {run.log_lines:,} log lines"
        )
        extra = {k: v for k, v in run.log_outcomes.items() if k != "sent"}
        if extra or run.log_warnings:
            text += f"; other outcomes {extra}, warnings {run.log_warnings}"
    if "workers" in run.detail:
        d = run.detail
        text += (
            f"; by worker: peak rss {d['peak_rss_mb_by_worker']} MB, sent {d['sent_by_worker']};"
            f" supervisor peak {d['supervisor_peak_rss_mb'] or '-'} MB;"
            f" timed from all consuming, {d['sent_before_all_consuming']:,} sent before"
            f" ({d['all_consuming_after_first_s']:.2f} s after the first);"
            f" /readyz 200 at {d['readyz_200_after_spawn_s']} s"
        )
    return text


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} MB" if unit == "MB" else f"{value:.3f}"


def table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"N={s['messages']:,}  repeat={s['repeat']}  python {s['python']}  {s['loop']}  "
        f"{s['cpus']} cpus  load {s['loadavg_at_start'][0]:.2f}  "
        f"daemon log {s['daemon_log']}  WA_NUMBER_RATE={s['number_rate']}"
        + (f"  {s['daemons']} daemons per daemon scenario" if s.get("daemons", 1) > 1 else ""),
    ]
    sends = [
        part
        for part in report["scenarios"].values()
        if part["runs"] and part.get("kind", "messages") == "messages"
    ]
    if sends:
        header = f"{'scenario':<38}{'prefetch':>9}{'msg/s':>9}{'steady':>9}{'max RSS':>9}"
        lines += ["", f"{header}   runs (msg/s)"]
    for part in sends:
        rss = "-" if part["max_rss_mb"] is None else f"{part['max_rss_mb']:.0f} MB"
        runs = " ".join(f"{r['rate']:,.0f}{'*' if r['problems'] else ''}" for r in part["runs"])
        rate, steady = part["median_msg_s"], part["median_steady_msg_s"]
        lines.append(
            f"{part['label']:<38}{part['prefetch']:>9}"
            f"{'n/a' if rate is None else f'{rate:,.0f}':>9}"
            f"{'n/a' if steady is None else f'{steady:,.0f}':>9}{rss:>9}   {runs}"
        )
    lines += _client_lines(report)
    lines += _transport_lines(report)
    lines += _worker_lines(report)
    lines += report_delivery.table(report)
    lines += ["", f"{'target':<58}{'issue':>6}{'value':>9}{'target':>11}"]
    for target in report["targets"].values():
        unit = "MB" if target["target"].endswith("MB") else ""
        verdict = target["verdict"] or "n/a"
        if target.get("indicative_all_runs") is not None:
            verdict += f" (no clean run; {target['indicative_all_runs']:.3f} over every run)"
        lines.append(
            f"{target['what']:<58}{target['issue']:>6}{_value(target['value'], unit):>9}"
            f"{target['target']:>11}  {verdict}"
        )
        if target.get("bound"):
            lines.append(f"    bound: {target['bound']}")
    if report["not_clean"]:
        lines += ["", "* not clean, left out of the medians:"]
        for bad in report["not_clean"]:
            lines.append(f"  {bad['scenario']} round {bad['round']}: {'; '.join(bad['problems'])}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")

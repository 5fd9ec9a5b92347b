"""The results writer: JSON for machines, a markdown table and the bar verdicts for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._workloads import OURS

Row = dict[str, Any]


def _fmt(value: object, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _ratio(value: object) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.2f}x"


_HEADER = (
    "| contender | makespan s | x floor | CPU ms/req | x floor | peak RSS MB | "
    "loop lag p99 ms | 429s | expired | gen->dl p99 s | ok rounds |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def table(summary: list[Row]) -> str:
    lines = [_HEADER]
    lines.extend(
        f"| {e['contender']} | {_fmt(e['makespan_s'])} | {_ratio(e['makespan_s_ratio'])} | "
        f"{_fmt(e['cpu_ms_per_request'], '.3f')} | {_ratio(e['cpu_ms_per_request_ratio'])} | "
        f"{_fmt(e['peak_rss_mb'], '.0f')} | {_fmt(e['loop_lag_p99_ms'], '.1f')} | "
        f"{_fmt(e['http_429'], '.0f')} | {_fmt(e['expired'], '.0f')} | "
        f"{_fmt(e['gen_to_download_p99_s'], '.3f')} | {e['ok_rounds']}/{e['rounds']} |\n"
        for e in summary
    )
    return "".join(lines)


def _ours(summary: list[Row]) -> list[Row]:
    return [e for e in summary if e["contender"] in OURS and e["ok_rounds"]]


def _verdict(met: bool, text: str) -> str:
    return f"{'met' if met else 'NOT met'}: {text}"


def _check_w1(result: Row) -> list[str]:
    out = []
    for e in _ours(result["variants"][0]["summary"]):
        r = e["cpu_ms_per_request_ratio"]
        if r is None:
            out.append(f"{e['contender']}: no floor to compare with")
            continue
        out.append(
            f"{e['contender']}: "
            + _verdict(
                r <= 2.0,
                f"CPU/request {r:.2f}x floor (bar <= 2x), {e['cpu_ms_per_request']:.3f} ms",
            )
        )
    return out


def _check_w2(result: Row) -> list[str]:
    out = []
    for e in _ours(result["variants"][0]["summary"]):
        m, c = e["makespan_s_ratio"], e["cpu_ms_per_request_ratio"]
        if m is None or c is None:
            out.append(f"{e['contender']}: no floor to compare with")
            continue
        out.append(
            f"{e['contender']}: "
            + _verdict(
                m <= 1.05 and c <= 2.0,
                f"makespan {m:.3f}x floor (bar <= 1.05x, {e['makespan_s']:.2f} s), "
                f"CPU/request {c:.2f}x floor (bar <= 2x, {e['cpu_ms_per_request']:.3f} ms)",
            )
        )
    return out


def _check_w3(result: Row) -> list[str]:
    workload = result["workload"]
    out = []
    target = 1.10 * (workload["generations"] / 25 + float(workload["server"]["latency"]))
    for e in _ours(result["variants"][0]["summary"]):
        share = (e["http_429"] or 0) / workload["generations"]
        # Both are paced now: single calls take their turns from the client's pacer too.
        out.append(
            f"{e['contender']}: "
            + _verdict(
                e["makespan_s"] <= target and share <= 0.02 and e["ok_rounds"] == e["rounds"],
                f"makespan {e['makespan_s']:.2f} s (bar <= {target:.2f} s), "
                f"429s {e['http_429']:.0f} = {share:.1%} of requests (bar <= 2%)",
            )
        )
    return out


def _check_w4(result: Row) -> list[str]:
    out = []
    for e in _ours(result["variants"][0]["summary"]):
        rss, lag = e["peak_rss_mb"], e["loop_lag_p99_ms"]
        out.append(
            f"{e['contender']}: "
            + _verdict(
                rss <= 300 and lag is not None and lag <= 10,
                f"peak RSS {rss:.0f} MB (bar <= 300), loop lag p99 {_fmt(lag, '.1f')} ms "
                "(bar <= 10)",
            )
        )
    return out


def _check_w5(result: Row) -> list[str]:
    out = []
    for e in _ours(result["variants"][0]["summary"]):
        delay = e["gen_to_download_p99_s"]
        out.append(
            f"{e['contender']}: "
            + _verdict(
                e["expired"] == 0 and delay is not None and delay <= 1.0,
                f"{e['expired']:.0f} expired (bar 0), generation-to-download p99 "
                f"{_fmt(delay, '.3f')} s (bar <= 1 s)",
            )
        )
    return out


def _check_w6(result: Row) -> list[str]:
    by_conc: dict[int, dict[str, Row]] = {}
    for variant in result["variants"]:
        by_conc[variant["concurrency"]] = {e["contender"]: e for e in variant["summary"]}
    if not by_conc:
        return []
    low, high = min(by_conc), max(by_conc)
    out = []
    for contender in OURS:
        a, b = by_conc[low].get(contender), by_conc[high].get(contender)
        if not a or not b or not a["ok_rounds"] or not b["ok_rounds"]:
            continue
        ratio = b["cpu_ms_per_request"] / a["cpu_ms_per_request"]
        steps = ", ".join(
            f"c={c}: {by_conc[c][contender]['cpu_ms_per_request']:.3f}"
            for c in sorted(by_conc)
            if contender in by_conc[c] and by_conc[c][contender]["ok_rounds"]
        )
        out.append(
            f"{contender}: "
            + _verdict(
                ratio <= 1.5,
                f"CPU/request at c={high} is {ratio:.2f}x that at c={low} (bar <= 1.5x); "
                f"ms/request {steps}",
            )
        )
    return out


CHECKS: dict[str, Callable[[Row], list[str]]] = {
    "W1": _check_w1,
    "W2": _check_w2,
    "W3": _check_w3,
    "W4": _check_w4,
    "W5": _check_w5,
    "W6": _check_w6,
    "W7": _check_w3,  # the same bars: every call ok, 429s <= 2%, makespan <= 1.10x ideal
}


def verdicts(result: Row) -> list[str]:
    check = CHECKS.get(result["workload"]["name"])
    return check(result) if check else []


def markdown(results: Row) -> str:
    meta = results["meta"]
    parts = [
        (
            f"Run {meta['date']} on {meta['machine']}; rounds: {meta['rounds']}"
            f"{' (quick: workloads shrunk ~10x)' if meta['quick'] else ''}. "
            "Medians across rounds; ratios are medians of per-round ratios to the aiohttp floor.\n"
        ),
    ]
    imports = results.get("import_time")
    if imports:
        parts.append(
            "\nImport time (median of 5 fresh interpreters, minus an empty interpreter): "
            + ", ".join(f"`{k}` {v['wall_ms']:.0f} ms" for k, v in imports.items())
            + "\n"
        )
    for result in results["workloads"]:
        workload = result["workload"]
        parts.append(f"\n### {workload['name']}: {workload['title']}\n\nBar: {workload['bars']}.\n")
        for variant in result["variants"]:
            if len(result["variants"]) > 1:
                parts.append(f"\n{variant['label']}:\n")
            parts.append("\n" + table(variant["summary"]))
        lines = verdicts(result)
        if lines:
            parts.append("\n" + "".join(f"- {line}\n" for line in lines))
        failures = [
            f"{e['contender']} ({variant['label']}): {'; '.join(e['errors'])}"
            for variant in result["variants"]
            for e in variant["summary"]
            if e["errors"]
        ]
        if failures:
            parts.append("\nErrors: " + " / ".join(failures) + "\n")
    skipped = results.get("skipped")
    if skipped:
        parts.append("\nNot run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n")
    return "".join(parts)


def write(results: Row, out: Path, markdown_path: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(results))

"""Issue #4's targets, checked against the result files of the harness in ``../shared/bench``.

    .venv/bin/python benchmarks/targets.py /tmp/bench/results-20261125T182622Z.json [more results ...]

The harness writes ``results-<stamp>.json`` next to its Markdown table, with
every figure of every row. This reads them and says, per run, which of the
issue's targets the run measured and whether each was met, so that a claim
in RESULTS.md or a closing note is the output of a command rather than a
reading of a table by eye. The ratios are the harness's own (``x_replies``:
replies/s over bare Flask's req/s in the same run and mode; ``x_p99``:
callback p99 over bare's) and are compared unrounded: the tables print 0.347
as 0.35, which does not meet "≥ 0.35".

What each kind of run can show:

* a comparison run (no injected faults): at 100 ms API latency, sync and
  gthread, replies/bare req ≥ 0.30, lost 0, every reply in within 5 s after
  the load; at 0 ms, replies/bare req ≥ 0.35 and callback p99 ≤ 3x bare's;
* a fault run (``--fail-429``/``--fail-500``): lost 0 and no reply
  delivered twice, in every mode;
* a Redis run (``cometchat_bot_redis2`` and ``cometchat_bot_redis4`` at
  100 ms): 4 worker processes deliver ≥ 1.6x the replies/s of 2, lost 0.

The crash tests (``benchmarks/crash.py``) print their own verdict. With
several files, a last table counts in how many runs each target was met.
Exit status: 0 when every target measured was met, 1 when one was missed, 2
when the files measured none.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER = "cometchat_bot"
REDIS_SERVERS = ("cometchat_bot_redis2", "cometchat_bot_redis4")

MIN_REPLIES_AT_100MS = 0.30  # replies per bare request, sync and gthread
MIN_REPLIES_AT_0MS = 0.35
MAX_P99_AT_0MS = 3.0  # x bare's callback p99
MAX_DRAIN_S = 5.0  # all replies in within this long after the load stops
MIN_REDIS_SCALING = 1.6  # replies/s with 4 worker processes over 2


@dataclass(frozen=True)
class Check:
    """One target as one run measured it."""

    target: str
    measured: str
    met: bool


def check_results(doc: dict[str, Any], server: str = SERVER) -> dict[int, list[Check]]:
    """The targets each run of one results file measured, by run number (``--runs 3`` gives runs 1 to 3)."""
    settings = doc.get("meta", {}).get("settings", {})
    faults = bool(settings.get("fail_429") or settings.get("fail_500"))
    by_run: dict[int, list[dict[str, Any]]] = {}
    for row in doc.get("results", []):
        by_run.setdefault(int(row.get("run", 1)), []).append(row)
    return {
        run: checks
        for run, rows in sorted(by_run.items())
        if (checks := _fault_checks(rows, server) if faults else _comparison_checks(rows, server) + _redis_checks(rows))
    }


def _comparison_checks(rows: list[dict[str, Any]], server: str) -> list[Check]:
    checks: list[Check] = []
    for row in _rows_of(rows, server):
        where = f"{_latency(row)} ms {row['mode']}"
        if _latency(row) >= 100:
            checks.append(
                _at_least(f"{where}: replies/bare req ≥ {MIN_REPLIES_AT_100MS:.2f}", row, MIN_REPLIES_AT_100MS)
            )
            checks.append(_nothing_lost(where, row))
            drained = row.get("drain") == "complete" and row.get("drain_s", float("inf")) <= MAX_DRAIN_S
            checks.append(
                Check(f"{where}: all replies in within {MAX_DRAIN_S:g} s", f"{row.get('drain_s')} s", drained)
            )
        elif _latency(row) == 0:
            checks.append(_at_least(f"{where}: replies/bare req ≥ {MIN_REPLIES_AT_0MS:.2f}", row, MIN_REPLIES_AT_0MS))
            x_p99 = row.get("x_p99")
            checks.append(
                Check(
                    f"{where}: callback p99 ≤ {MAX_P99_AT_0MS:g}x bare",
                    f"{x_p99:.2f}x ({row['p99_ms']:.1f} ms)" if x_p99 is not None else "no bare row",
                    x_p99 is not None and x_p99 <= MAX_P99_AT_0MS,
                )
            )
    return checks


def _fault_checks(rows: list[dict[str, Any]], server: str) -> list[Check]:
    checks: list[Check] = []
    for row in _rows_of(rows, server):
        where = f"fault run, {_latency(row)} ms {row['mode']}"
        checks.append(_nothing_lost(where, row))
        checks.append(Check(f"{where}: no reply delivered twice", f"dup {row.get('dup')}", row.get("dup") == 0))
    return checks


def _redis_checks(rows: list[dict[str, Any]]) -> list[Check]:
    checks: list[Check] = []
    for mode in ("sync", "gthread"):
        two, four = (
            next((r for r in rows if r["server"] == name and r["mode"] == mode and _latency(r) >= 100), None)
            for name in REDIS_SERVERS
        )
        if two is None or four is None:
            continue
        where = f"Redis, {_latency(four)} ms {mode}"
        ratio = four["replies_per_s"] / two["replies_per_s"] if two["replies_per_s"] else 0.0
        checks.append(
            Check(
                f"{where}: 4 workers ≥ {MIN_REDIS_SCALING}x the replies/s of 2",
                f"{ratio:.2f}x ({four['replies_per_s']:.0f} vs {two['replies_per_s']:.0f})",
                ratio >= MIN_REDIS_SCALING,
            )
        )
        lost = (two.get("lost"), four.get("lost"))
        checks.append(Check(f"{where}: lost 0", f"lost {lost[0]} / {lost[1]}", lost == (0, 0)))
    return checks


def _rows_of(rows: list[dict[str, Any]], server: str) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["server"] == server), key=lambda r: (_latency(r), r["mode"] != "sync"))


def _latency(row: dict[str, Any]) -> int:
    return round(row["latency_ms"])


def _at_least(target: str, row: dict[str, Any], minimum: float) -> Check:
    ratio = row.get("x_replies")
    if ratio is None:
        return Check(target, "no bare row", False)
    return Check(target, f"{ratio:.3f} ({row['replies_per_s']:.0f} replies/s)", ratio >= minimum)


def _nothing_lost(where: str, row: dict[str, Any]) -> Check:
    return Check(f"{where}: lost 0", f"lost {row.get('lost')}", row.get("lost") == 0)


def render(name: str, by_run: dict[int, list[Check]]) -> str:
    lines = [f"## {name}", "", "| run | target | measured | met |", "|---|---|---|---|"]
    for run, checks in by_run.items():
        lines += [f"| {run} | {c.target} | {c.measured} | {'yes' if c.met else '**no**'} |" for c in checks]
    return "\n".join(lines)


def render_summary(runs: Iterable[list[Check]]) -> str:
    met: dict[str, list[bool]] = {}
    for checks in runs:
        for check in checks:
            met.setdefault(check.target, []).append(check.met)
    lines = ["## In how many runs each target was met", "", "| target | met in |", "|---|---|"]
    lines += [f"| {target} | {sum(results)} of {len(results)} |" for target, results in met.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results-<stamp>.json files the harness wrote")
    parser.add_argument("--server", default=SERVER, help=f"the harness entry to check (default {SERVER})")
    args = parser.parse_args(argv)
    all_runs: list[list[Check]] = []
    for path in args.results:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: not a results file of the harness ({exc})")
        by_run = check_results(doc, args.server)
        print(render(path.name, by_run) if by_run else f"## {path.name}\n\nno target measured (no {args.server} rows)")
        print()
        all_runs += by_run.values()
    if len(all_runs) > 1:
        print(render_summary(all_runs))
    checks = [check for run in all_runs for check in run]
    if not checks:
        return 2
    return 0 if all(check.met for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

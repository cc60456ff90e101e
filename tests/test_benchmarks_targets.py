"""benchmarks/targets.py: issue #4's targets read from the harness's result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import targets


def row(server: str = "cometchat_bot", mode: str = "sync", latency: float = 0.0, run: int = 1, **changes: Any) -> dict:
    """A result row as the harness writes it, meeting every target unless ``changes`` say otherwise."""
    values = {
        "run": run, "server": server, "mode": mode, "latency_ms": latency, "baseline": False,
        "replies_per_s": 1600.0, "x_replies": 0.37, "p99_ms": 12.0, "x_p99": 2.8, "lost": 0, "dup": 0,
        "drain": "complete", "drain_s": 0.2,
    }  # fmt: skip
    values.update(changes)
    return values


def comparison(*rows: dict, fail_429: float = 0.0) -> dict:
    return {"meta": {"settings": {"fail_429": fail_429, "fail_500": 0.0}}, "results": list(rows)}


def all_four(**changes_by_cell: dict) -> list[dict]:
    """Our four rows of a comparison run; ``changes_by_cell["sync_0"]`` etc. change one of them."""
    return [
        row(mode=mode, latency=latency, **changes_by_cell.get(f"{mode}_{latency}", {}))
        for latency in (0, 100)
        for mode in ("sync", "gthread")
    ]


def verdicts(doc: dict) -> dict[str, bool]:
    return {check.target: check.met for check in targets.check_results(doc)[1]}


def test_a_run_meeting_every_target_says_so_for_each() -> None:
    result = verdicts(comparison(*all_four(), row(server="bare_flask", baseline=True)))

    assert result == {
        "0 ms sync: replies/bare req ≥ 0.35": True,
        "0 ms sync: callback p99 ≤ 3x bare": True,
        "0 ms gthread: replies/bare req ≥ 0.35": True,
        "0 ms gthread: callback p99 ≤ 3x bare": True,
        "100 ms sync: replies/bare req ≥ 0.30": True,
        "100 ms sync: lost 0": True,
        "100 ms sync: all replies in within 5 s": True,
        "100 ms gthread: replies/bare req ≥ 0.30": True,
        "100 ms gthread: lost 0": True,
        "100 ms gthread: all replies in within 5 s": True,
    }


@pytest.mark.parametrize(
    ("cell", "changes", "missed"),
    [
        ("sync_0", {"x_replies": 0.3499}, "0 ms sync: replies/bare req ≥ 0.35"),  # printed as 0.35 in the tables
        ("gthread_0", {"x_replies": 0.34}, "0 ms gthread: replies/bare req ≥ 0.35"),
        ("sync_0", {"x_p99": 3.01}, "0 ms sync: callback p99 ≤ 3x bare"),
        ("sync_0", {"x_p99": None}, "0 ms sync: callback p99 ≤ 3x bare"),  # no bare row to compare with
        ("gthread_100", {"x_replies": 0.29}, "100 ms gthread: replies/bare req ≥ 0.30"),
        ("sync_100", {"lost": 3}, "100 ms sync: lost 0"),
        ("sync_100", {"drain_s": 5.1}, "100 ms sync: all replies in within 5 s"),
        ("gthread_100", {"drain": "stalled", "drain_s": 0.5}, "100 ms gthread: all replies in within 5 s"),
    ],
)
def test_each_missed_target_is_the_only_one_reported_missed(cell: str, changes: dict, missed: str) -> None:
    result = verdicts(comparison(*all_four(**{cell: changes})))

    assert [target for target, met in result.items() if not met] == [missed]


def test_the_limits_themselves_are_met() -> None:
    doc = comparison(
        row(latency=0, x_replies=0.35, x_p99=3.0), row(latency=100, mode="gthread", x_replies=0.30, drain_s=5.0)
    )

    assert all(verdicts(doc).values())


def test_a_fault_run_is_held_to_lost_and_doubled_replies_only() -> None:
    slow_but_whole = {"x_replies": 0.29, "x_p99": 4.5}
    doc = comparison(row(**slow_but_whole), row(mode="gthread", dup=2, **slow_but_whole), fail_429=0.05)

    assert verdicts(doc) == {
        "fault run, 0 ms sync: lost 0": True,
        "fault run, 0 ms sync: no reply delivered twice": True,
        "fault run, 0 ms gthread: lost 0": True,
        "fault run, 0 ms gthread: no reply delivered twice": False,
    }


@pytest.mark.parametrize(("four", "met"), [(160.0, True), (159.0, False)])
def test_redis_scaling_compares_four_workers_with_two(four: float, met: bool) -> None:
    doc = comparison(
        row(server="cometchat_bot_redis2", latency=100, replies_per_s=100.0),
        row(server="cometchat_bot_redis4", latency=100, replies_per_s=four),
    )

    assert verdicts(doc) == {
        "Redis, 100 ms sync: 4 workers ≥ 1.6x the replies/s of 2": met,
        "Redis, 100 ms sync: lost 0": True,
    }


def test_redis_lost_replies_in_either_server_miss_the_target() -> None:
    doc = comparison(
        row(server="cometchat_bot_redis2", latency=100, replies_per_s=100.0, lost=1),
        row(server="cometchat_bot_redis4", latency=100, replies_per_s=200.0),
    )

    assert verdicts(doc)["Redis, 100 ms sync: lost 0"] is False


def write(folder: Path, name: str, doc: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_the_command_prints_a_table_per_file_and_a_count_over_runs(tmp_path: Path, capsys) -> None:
    good = write(tmp_path, "results-a.json", comparison(*all_four()))
    two_runs = write(
        tmp_path, "results-b.json", comparison(row(run=1), row(run=2, x_p99=3.3), row(run=2, mode="gthread"))
    )

    status = targets.main([str(good), str(two_runs)])

    out = capsys.readouterr().out
    assert status == 1
    assert "## results-a.json" in out and "## results-b.json" in out
    assert "| 2 | 0 ms sync: callback p99 ≤ 3x bare | 3.30x (12.0 ms) | **no** |" in out
    assert "| 0 ms sync: callback p99 ≤ 3x bare | 2 of 3 |" in out
    assert "| 0 ms gthread: replies/bare req ≥ 0.35 | 2 of 2 |" in out


def test_the_command_exits_0_when_every_measured_target_is_met(tmp_path: Path, capsys) -> None:
    assert targets.main([str(write(tmp_path, "results.json", comparison(*all_four())))]) == 0
    assert "**no**" not in capsys.readouterr().out


def test_a_file_without_the_server_measures_nothing(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "results.json", comparison(row(server="bolt_peer")))

    assert targets.main([str(path)]) == 2
    assert "no target measured (no cometchat_bot rows)" in capsys.readouterr().out


def test_another_server_can_be_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "results.json", comparison(row(server="my_bot")))

    assert targets.main([str(path), "--server", "my_bot"]) == 0


def test_a_file_that_is_not_a_results_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.md"
    path.write_text("| lat ms | workers |")

    with pytest.raises(SystemExit) as exit_info:
        targets.main([str(path)])

    assert exit_info.value.code == 2
    assert "results.md: not a results file of the harness" in capsys.readouterr().err

"""The benchmark adapter's settings from the harness's environment, and its clean-up of earlier runs' journals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def adapter(tmp_path_factory, monkeypatch):
    # Importing it builds the app: its journal goes to a folder of its own, not to /tmp/bench.
    monkeypatch.setenv("JOURNAL_PATH", str(tmp_path_factory.mktemp("app") / "journal.sqlite3"))
    from benchmarks import adapter
    from bot.factory import bot_app

    yield adapter
    bot_app(adapter.app).delivery.stop(0)


def test_harness_settings_map_the_harness_names_to_ours(adapter):
    settings = adapter.harness_settings(
        {"CALLBACK_BASIC_AUTH": "user:pass:word", "COMETCHAT_API_BASE": "http://127.0.0.1:9/v3", "JOURNAL_PATH": "j"}
    )
    assert settings["CALLBACK_USERNAME"] == "user"
    assert settings["CALLBACK_PASSWORD"] == "pass:word"
    assert settings["COMETCHAT_API_URL"] == "http://127.0.0.1:9/v3"
    assert "JOURNAL_PATH" not in settings  # the environment's own is used


def test_journals_of_finished_runs_are_removed_and_running_ones_kept(adapter, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    running_pid = os.getpid()
    names = [
        f"cometchat-bot-journal-{pid}.sqlite3{suffix}"
        for pid in (dead_pid, running_pid)
        for suffix in ("", "-wal", "-shm")
    ]
    for name in [*names, "unrelated.txt"]:
        (tmp_path / name).write_bytes(b"x")

    adapter.remove_finished_runs(str(tmp_path))

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[3:], "unrelated.txt"])

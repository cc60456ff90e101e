"""The Procfile: gunicorn accepts its web command, and the docs quote it as it is."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())


def test_the_procfile_has_a_web_and_a_worker_process():
    assert set(PROCESSES) == {"web", "worker"}
    assert PROCESSES["web"].startswith("gunicorn 'app:create_app()' ")
    assert PROCESSES["worker"] == "flask --app app bot worker"


def test_gunicorn_accepts_the_web_command_and_loads_the_app(tmp_path):
    args = shlex.split(PROCESSES["web"].replace("${PORT:-8000}", "0").replace("${WEB_CONCURRENCY:-2}", "2"))
    env = {**os.environ, "JOURNAL_PATH": str(tmp_path / "journal.sqlite3")}
    env.pop("REDIS_URL", None)
    # --check-config imports the app (create_app() runs) and validates every option, then exits.
    result = subprocess.run(
        [sys.executable, "-m", *args, "--check-config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_runs_the_web_command():
    [cmd] = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert f"exec {PROCESSES['web'].replace('${PORT:-8000}', '${PORT}')}" in cmd


@pytest.mark.parametrize("doc", ["docs/deployment.md", "docs/tutorial.md"])
def test_the_docs_quote_the_procfile_as_it_is(doc):
    text = (ROOT / doc).read_text()
    quoted = [line for line in text.splitlines() if line.startswith(("web: ", "worker: "))]
    assert len(quoted) == 2, f"{doc} no longer quotes both lines of the Procfile"
    for line in quoted:
        name, command = line.split(": ", 1)
        assert PROCESSES.get(name) == command, f"{doc} quotes the Procfile's {name!r} line differently"

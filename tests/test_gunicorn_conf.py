"""gunicorn.conf.py: gunicorn reads it from the project's root, and its hook freezes the worker's objects out of the
cyclic garbage collector's sight (full collections had stalled workers for 20-45 ms)."""

from __future__ import annotations

import gc
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import gc

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(gc.get_freeze_count()).encode()]
"""


def test_post_worker_init_freezes_what_is_allocated():
    hook = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["post_worker_init"]
    assert gc.get_freeze_count() == 0
    try:
        hook(None)
        assert gc.get_freeze_count() > 1000  # the test session's modules, functions, classes...
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_a_worker_started_from_the_project_root_runs_the_hook(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    log = tmp_path / "gunicorn.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:0", "--pythonpath", str(tmp_path), "probe:app"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("ab"), start_new_session=True,
    )  # fmt: skip
    try:
        deadline, url = time.monotonic() + 30, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.findall(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
            url = found[0] if found else time.sleep(0.05)
        assert url, log.read_text()
        answer = urllib3.request("GET", url, timeout=10, retries=urllib3.Retry(connect=50, backoff_factor=0.02))
        assert answer.status == 200 and int(answer.data) > 1000  # frozen in the worker, after it loaded the app
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)

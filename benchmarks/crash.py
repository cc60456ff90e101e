"""Crash test under load: every callback answered 200 must get its reply, once, in order per conversation.

    .venv/bin/python benchmarks/crash.py              # embedded mode (SQLite journal in each gunicorn worker)
    .venv/bin/python benchmarks/crash.py --redis      # Redis + RQ mode (needs redis-server on PATH)
    .venv/bin/python benchmarks/crash.py --gthread    # gthread workers (8 threads each), as in the Procfile

Embedded: 16 client threads post callbacks to gunicorn (2 workers) for
``--seconds``; a third of the way in, one worker is killed with SIGKILL
(gunicorn starts another); two thirds in, the master and every worker are
killed with SIGKILL and gunicorn is started again on the same journal.
Redis: one of two RQ workers is killed with SIGKILL mid-load and a new one
started; RQ must find the abandoned job and run it again.

Then the script waits (bounded) until every answered callback has its reply
and prints one line: answered, delivered, lost, doubled, out of order, and how
many replies were looked up (List Messages) before being sent again.
Everything runs on 127.0.0.1 with ports chosen by the OS; the CometChat API is
a small recording fake in this process (it answers after ``--latency-ms``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_KEY = "crash-api-key"
USER, PASSWORD = "cometchat", "crash-pass"
MARK = re.compile(r"\[crash #(\d+)\]")


class Recorder(ThreadingHTTPServer):
    """The CometChat send API, recording the number in each reply's ``[crash #N]`` marker, in arrival order."""

    daemon_threads = True

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.replies: list[tuple[str, int, str]] = []  # (receiver, N, muid)
        self.messages: dict[str, list[dict]] = defaultdict(list)  # conversation id -> the messages created
        self.lookups = 0
        super().__init__(("127.0.0.1", 0), _RecorderHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v3"

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a killed worker's connection (reset, broken pipe): expected here, not worth a traceback
        super().handle_error(request, client_address)


class _RecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("apikey") != API_KEY:
            return self._answer(401, {"error": {"code": "AUTH_ERR_APIKEY_NOT_FOUND", "message": "bad key"}})
        time.sleep(self.server.latency)
        found = MARK.search(body.get("data", {}).get("text", ""))
        conversation = "_user_".join(sorted(("bot", body["receiver"])))
        message = {**body, "id": str(time.time_ns()), "conversationId": conversation, "sentAt": int(time.time())}
        with self.server.lock:
            if found:
                self.server.replies.append((body["receiver"], int(found.group(1)), body.get("muid", "")))
            self.server.messages[conversation].append(message)
        self._answer(200, {"data": message})

    def do_GET(self) -> None:
        """List Messages of one conversation (``conversationId``, ``fromTimestamp``, ``limit``), oldest first: the
        lookup of a reply that may have been sent before a crash."""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path != "/v3/messages" or self.headers.get("apikey") != API_KEY:
            return self._answer(404, {"error": {"code": "ERR_API_NOT_FOUND", "message": self.path}})
        since, limit = int(query.get("fromTimestamp", 0)), int(query.get("limit", 100))
        with self.server.lock:
            self.server.lookups += 1
            listed = [m for m in self.server.messages[query.get("conversationId", "")] if m["sentAt"] >= since]
        self._answer(200, {"data": listed[:limit]})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """gunicorn running ``benchmarks.adapter:app`` (and, in Redis mode, the RQ workers)."""

    def __init__(self, env: dict[str, str], workdir: str, worker_args: list[str]) -> None:
        self.env, self.port, self.log = env, free_port(), os.path.join(workdir, "gunicorn.log")
        self.worker_args = worker_args  # gunicorn's worker class and threads (none: sync workers)
        self.gunicorn: subprocess.Popen | None = None
        self.rq_workers: list[subprocess.Popen] = []

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gunicorn", "-w", "2", *self.worker_args, "-b", f"127.0.0.1:{self.port}",
               "--graceful-timeout", "10", "--error-logfile", self.log, "benchmarks.adapter:app"]  # fmt: skip
        self.gunicorn = subprocess.Popen(cmd, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gunicorn did not start; see " + self.log)

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.gunicorn.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_one_worker(self) -> None:
        os.kill(self.workers()[0], signal.SIGKILL)

    def kill_all(self) -> None:
        pids = [self.gunicorn.pid, *self.workers()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.gunicorn.wait(10)

    def start_rq_worker(self) -> None:
        cmd = [sys.executable, "-m", "flask", "--app", "benchmarks.adapter:app", "bot", "worker"]
        self.rq_workers.append(subprocess.Popen(cmd, cwd=ROOT, env=self.env))

    def stop(self) -> None:
        for proc in [self.gunicorn, *self.rq_workers]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.gunicorn, *self.rq_workers]:
            if proc is not None:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Load:
    """16 threads posting callbacks; thread k owns users k, k+16, ... so each conversation's order is known."""

    def __init__(self, app: App, threads: int = 16, users_per_thread: int = 4) -> None:
        self.app, self.threads, self.users_per_thread = app, threads, users_per_thread
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered: dict[int, str] = {}  # N -> user, for callbacks answered 200
        self.sent = 0
        self.counter = iter(range(1, 10**9))
        self.auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def run(self) -> list[threading.Thread]:
        workers = [threading.Thread(target=self._post_loop, args=(k,), daemon=True) for k in range(self.threads)]
        for worker in workers:
            worker.start()
        return workers

    def _post_loop(self, k: int) -> None:
        conn = None
        i = 0
        while not self.stop.is_set():
            with self.lock:
                n = next(self.counter)
                self.sent += 1
            user = f"user{k + self.threads * (i % self.users_per_thread)}"
            i += 1
            body = json.dumps({
                "trigger": "after_message", "bot": "bot", "appId": "crashapp", "region": "us",
                "data": {"id": f"crash-{os.getpid()}-{n}", "conversationId": f"{user}_user_bot", "sender": user,
                         "receiverType": "user", "receiver": "bot", "category": "message", "type": "text",
                         "data": {"text": f"hello [crash #{n}]", "entities": {"sender": {"entity": {
                             "uid": user, "name": user, "role": "default"}}}},
                         "sentAt": int(time.time()), "updatedAt": int(time.time())},
            })  # fmt: skip
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=10)
                headers = {"Content-Type": "application/json", "Authorization": self.auth}
                conn.request("POST", "/cometchat/callback", body, headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    with self.lock:
                        self.answered[n] = user
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)  # the server is down (killed): try again shortly


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", action="store_true", help="Redis + RQ mode (kills an RQ worker)")
    parser.add_argument("--gthread", action="store_true", help="gthread workers with 8 threads (default: sync)")
    parser.add_argument("--seconds", type=float, default=6.0, help="load duration")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake API's answer time")
    parser.add_argument("--drain-timeout", type=float, default=240.0, help="max seconds to wait for the replies")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="cometchat-crash-")
    recorder = Recorder(args.latency_ms / 1000)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "COMETCHAT_APP_ID": "crashapp", "COMETCHAT_REGION": "us", "COMETCHAT_API_KEY": API_KEY,
        "COMETCHAT_BOT_UID": "bot", "COMETCHAT_API_BASE": recorder.url,
        "CALLBACK_BASIC_AUTH": f"{USER}:{PASSWORD}", "JOURNAL_PATH": os.path.join(workdir, "journal.sqlite3"),
    }  # fmt: skip
    redis = contextlib.ExitStack()
    if args.redis:
        sys.path.insert(0, ROOT)  # run as a script: only benchmarks/ is on the path
        from bot.testing import redis_server

        env["REDIS_URL"] = redis.enter_context(redis_server(workdir))

    app = App(env, workdir, ["-k", "gthread", "--threads", "8"] if args.gthread else [])
    app.start()
    if args.redis:
        app.start_rq_worker()
        app.start_rq_worker()
    load = Load(app)
    started = time.monotonic()
    threads = load.run()
    events = []
    try:
        time.sleep(args.seconds / 3)
        if args.redis:
            victim = app.rq_workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait(5)
            app.start_rq_worker()
            events.append(f"{time.monotonic() - started:.1f}s: SIGKILL RQ worker {victim.pid}, started another")
        else:
            app.kill_one_worker()
            events.append(f"{time.monotonic() - started:.1f}s: SIGKILL one gunicorn worker")
            time.sleep(args.seconds / 3)
            app.kill_all()
            events.append(f"{time.monotonic() - started:.1f}s: SIGKILL gunicorn master and workers")
            app.start()
            events.append(f"{time.monotonic() - started:.1f}s: gunicorn started again")
        time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(15)
    load_end = time.monotonic()
    answered = dict(load.answered)
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        with recorder.lock:
            delivered = {n for _, n, _ in recorder.replies}
        if set(answered) <= delivered:
            break
        time.sleep(0.2)
    drain = time.monotonic() - load_end
    app.stop()
    redis.close()
    recorder.shutdown()

    with recorder.lock:
        replies = list(recorder.replies)
    delivered = [n for _, n, _ in replies]
    unique = set(delivered)
    lost = sorted(set(answered) - unique)
    doubled = len(delivered) - len(unique)
    # A reply sent again after a crash carries the same muid, which lets CometChat recognise it.
    same_muid = len(replies) - len({(n, muid) for _, n, muid in replies})
    per_user: dict[str, list[int]] = defaultdict(list)
    first_seen: set[int] = set()
    for user, n, _ in replies:
        if n not in first_seen:  # order is about first deliveries; a repeat is counted as doubled
            first_seen.add(n)
            per_user[user].append(n)
    out_of_order = sum(
        1 for ns in per_user.values() for a, b in itertools.pairwise(ns) if b < a
    )  # each user's callbacks were posted one after another by one thread, in increasing N
    if args.redis:
        mode = "redis+rq (2 RQ worker processes, 1 killed)"
    else:
        mode = f"embedded (gunicorn -w 2{' -k gthread --threads 8' if args.gthread else ''}, kill -9 twice)"
    print("\n".join(events))
    print(
        "| mode | posted | answered 200 | delivered | lost | doubled (same muid) | out of order | looked up | drain s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {mode} | {load.sent} | {len(answered)} | {len(unique & set(answered))} | {len(lost)} "
        f"| {doubled} ({same_muid}) | {out_of_order} | {recorder.lookups} | {drain:.1f} |"
    )
    if lost:
        print("lost:", lost[:20])
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if lost or out_of_order else 0


if __name__ == "__main__":
    sys.exit(main())

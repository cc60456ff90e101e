"""bot/threads.py: background threads run under SCHED_BATCH, so waking them does not preempt the request thread;
the process id without a system call."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bot import threads
from bot.threads import current_pid, start_background, use_background_policy

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")


def run_in_background() -> tuple[threading.Thread, int]:
    """Start a background thread that reports its own scheduling policy; returns the thread and the policy."""
    seen: list[int] = []
    thread = start_background(lambda: seen.append(os.sched_getscheduler(0)), "bot-test")
    thread.join(5)
    assert not thread.is_alive()
    return thread, seen[0]


@linux_only
def test_a_background_thread_runs_as_a_batch_thread():
    thread, policy = run_in_background()
    assert policy == os.SCHED_BATCH
    assert thread.daemon and thread.name == "bot-test"


@linux_only
def test_the_thread_has_its_policy_when_start_background_returns(monkeypatch):
    # A thread slow to set itself up (a busy machine) must not be handed back before it did.
    def slow_naming(name: str) -> bool:
        time.sleep(0.2)
        return True

    monkeypatch.setattr(threads, "name_os_thread", slow_naming)
    release = threading.Event()
    thread = start_background(lambda: release.wait(5), "bot-test")
    try:
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH
    finally:
        release.set()
        thread.join(5)


@linux_only
def test_the_starting_thread_keeps_its_policy():
    before = os.sched_getscheduler(0)
    run_in_background()
    assert os.sched_getscheduler(0) == before == os.SCHED_OTHER


@linux_only
def test_the_policy_is_per_thread():
    results: list[tuple[bool, int]] = []

    def other() -> None:  # a plain thread switching itself does not change the caller either
        results.append((use_background_policy(), os.sched_getscheduler(0)))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(5)
    assert results == [(True, os.SCHED_BATCH)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_without_the_policy_the_thread_runs_as_usual(monkeypatch):
    # What macOS and Windows look like: the call does not exist. The work must run all the same.
    monkeypatch.delattr(os, "sched_setscheduler", raising=False)
    assert use_background_policy() is False
    ran = threading.Event()
    start_background(ran.set, "bot-test").join(5)
    assert ran.is_set()


def test_current_pid_is_the_process_id_also_in_a_forked_child():
    assert current_pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports both ids and leaves at once, without pytest's exit handlers
        os.write(write, f"{current_pid()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported, actual = pipe.read().split()
    os.waitpid(child, 0)
    assert reported == actual == str(child)


@linux_only
def test_a_background_thread_carries_its_name_at_the_os_level():
    names: list[str] = []

    def report() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
            names.append(comm.read().strip())

    start_background(report, "bot-a-long-thread-name").join(5)
    assert names == ["bot-a-long-thre"]  # the kernel keeps 15 bytes

"""The background threads of the delivery pipeline, started so that waking them does not delay a callback's answer.

Every message wakes a few threads (a handler thread, the transfer thread, the
finisher). On Linux's default scheduling policy a thread that wakes up
usually preempts the one running on that CPU, so the request thread, which
holds the GIL while answering the callback, was pushed off the CPU for a
thread that could only wait for the GIL: measured with
benchmarks/cpu_per_callback.sh, 18 context switches per callback in sync
workers and 47 in gthread workers.

Background threads therefore run with ``SCHED_BATCH``: same priority (nice
value) and share of the CPU, but a waking batch thread does not preempt a
running thread; it waits for the next scheduler tick or for the running
thread to block (sched(7): "the scheduler will apply a small scheduling
penalty with respect to wakeup behavior"). With it: 9-13 context switches per
callback, and 7 % (sync) to 60 % (gthread) more callbacks per second.
Threads and processes a handler starts inherit the policy (it is harmless
for them: only wake-up preemption differs).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's id, as ``os.getpid()`` without its system call (glibc no longer caches it).

    The pipeline, the journal and the transfer loop each ask several times
    per message whether they run in the process that made them (threads and
    connections do not survive a fork).
    """
    return _pid


def start_background(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread running ``target`` under the background scheduling policy, named ``name`` for the
    operating system too (``top -H``, ``ps -L``, ``/proc/PID/task/*/comm``: which thread uses the CPU).

    Returns once the thread has its name and policy (two system calls), so that what the caller does next, such
    as handing it work, already finds it set up.
    """
    ready = threading.Event()
    thread = threading.Thread(target=_run_in_background, args=(target, ready), name=name, daemon=True)
    thread.start()
    ready.wait()
    return thread


def _run_in_background(target: Callable[[], object], ready: threading.Event) -> None:
    try:
        name_os_thread(threading.current_thread().name)
        use_background_policy()
    finally:
        ready.set()
    target()


def name_os_thread(name: str) -> bool:
    """Give the calling thread ``name`` (its first 15 bytes) at the OS level; False where that cannot be done.

    Python does so itself from 3.14 on; before, ``top`` shows every thread as ``python``.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # prctl(PR_SET_NAME, name): Linux's name of the calling thread, at most 16 bytes with the final NUL.
        return libc.prctl(15, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to load, or no prctl in it (not Linux)
        return False


def use_background_policy() -> bool:
    """Put the calling thread on ``SCHED_BATCH``; False where that does not exist (not Linux) or is refused."""
    try:
        # pid 0 is the calling thread on Linux (the policy is per thread).
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # AttributeError: no such call on this platform
        log.debug("background threads keep the default scheduling policy: %s", exc)
        return False
    return True

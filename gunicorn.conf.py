"""gunicorn's settings for this app: gunicorn reads this file from its working directory (the Procfile and the
Dockerfile run it in the project's root). Workers and threads are on their command lines; this adds a hook."""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    """The worker has loaded the app: keep what it allocated so far out of the cyclic garbage collector's sight.

    Those objects (Flask, the routers, the libraries) live as long as the
    worker, yet every full collection walked them all: 20-45 ms with the
    worker's every thread stopped, every few seconds under load (measured
    with ``gc.callbacks`` in the benchmark), a stall every callback queued
    behind it waited for. After ``gc.freeze()`` a full collection takes
    ~0.5 ms. Python's documentation recommends the same for pre-fork servers.
    """
    gc.freeze()

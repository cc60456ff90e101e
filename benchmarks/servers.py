"""This project's servers for the harness in ``../shared/bench``: pass this file with ``--extra-servers``.

    cd ../shared/bench
    PYTHON=/path/to/venv/bin/python ./run.sh --extra-servers /path/to/benchmarks/servers.py \
        --servers cometchat_bot

``cometchat_bot`` is the embedded default (SQLite journal + delivery threads in
each gunicorn worker); ``cometchat_bot_paced`` the same with a rate limit far
above the load (each reply takes a token from the journal's bucket).
``cometchat_bot_redis2`` / ``cometchat_bot_redis4`` are the scale-out mode:
gunicorn only records callbacks in Redis and 2 or 4 RQ worker processes deliver;
:mod:`benchmarks.gunicorn_redis` starts a private ``redis-server`` and the
workers with gunicorn and stops them with it.
"""

import os

from servers import Server  # the harness's own module (its folder is on sys.path when it loads this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDIS_CONFIG = os.path.join(ROOT, "benchmarks", "gunicorn_redis.py")


def _server(name: str, env: dict[str, str] | None = None, gunicorn_args: list[str] | None = None) -> Server:
    return Server(
        name,
        "benchmarks.adapter:app",
        shape="cometchat",
        path="/cometchat/callback",
        env=env or {},
        chdir=ROOT,
        pythonpath=[ROOT],
        gunicorn_args=gunicorn_args or [],
    )


SERVERS = [
    _server("cometchat_bot"),
    # With a rate limit that never binds: what taking a token for each reply costs (docs/rest-api.md, pacing).
    _server("cometchat_bot_paced", {"COMETCHAT_RATE_LIMIT": "600000/min"}),
    _server("cometchat_bot_redis2", {"BENCH_RQ_WORKERS": "2"}, ["-c", REDIS_CONFIG]),
    _server("cometchat_bot_redis4", {"BENCH_RQ_WORKERS": "4"}, ["-c", REDIS_CONFIG]),
]

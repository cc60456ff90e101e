"""Prometheus metrics (prometheus-client): what an operator watches on a busy bot.

One :class:`Metrics` per app, on a registry of its own (no global state for
tests to reset). Counters and histograms are updated where things happen:
the blueprint (callbacks by outcome), the dispatcher's outcomes (handler
time), :class:`MeteredSender` (each attempt to post a reply: time, errors by
CometChat code; the lookups of replies in doubt apart) and the delivery
(callback accepted -> reply accepted). Queue depth and dead letters are read
from the journal (or Redis) when scraped, so they are right whichever process
answers the scrape.

Under gunicorn each worker process counts its own callbacks and sends; set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, before the app starts) to
have ``/metrics`` sum them over all processes (prometheus-client's
multiprocess mode). RQ worker processes serve no HTTP: ``bot.health.serve``
gives each its own ``/metrics`` (``WORKER_METRICS``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .api import SendRequest
from .dispatch import Outcome
from .errors import CometChatError

PREFIX = "cometchat_bot"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, depth: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.callbacks = Counter(f"{PREFIX}_callbacks", "Callbacks answered, by outcome", ["outcome"], registry=r)
        self.interactions = Counter(
            f"{PREFIX}_interactions", "Form and card submissions answered, by outcome", ["outcome"], registry=r
        )
        self.handler_seconds = Histogram(
            f"{PREFIX}_handler_seconds", "Time handling a message, by outcome", ["outcome"], registry=r,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.send_seconds = Histogram(
            f"{PREFIX}_send_seconds", "One attempt to post a reply to CometChat", registry=r, buckets=LATENCY_BUCKETS
        )
        self.send_errors = Counter(
            f"{PREFIX}_send_errors", "Failed attempts to post a reply, by CometChat error code", ["code"], registry=r
        )
        self.lookup_seconds = Histogram(
            f"{PREFIX}_lookup_seconds", "One lookup of a reply in doubt in CometChat (List Messages)", registry=r,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.lookup_errors = Counter(
            f"{PREFIX}_lookup_errors", "Failed lookups of replies in doubt, by CometChat error code", ["code"],
            registry=r,
        )  # fmt: skip
        self.found_delivered_total = Counter(
            f"{PREFIX}_replies_found_delivered",
            "Replies not sent again: CometChat had them from an attempt cut off by a crash or a timeout", registry=r,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            f"{PREFIX}_delivery_seconds", "From callback accepted to reply accepted by CometChat", registry=r,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.depth = depth  # queue depth source, set by the app once its delivery exists
        self._callbacks = _Children(self.callbacks)
        self._interactions = _Children(self.interactions)
        self._handler_seconds = _Children(self.handler_seconds)
        self._send_errors = _Children(self.send_errors)
        self._lookup_errors = _Children(self.lookup_errors)

    def callback(self, outcome: str) -> None:
        """Count a callback answered with ``outcome`` (accepted, duplicate, ignored, rejected_<status>)."""
        self._callbacks[outcome].inc()

    def interaction(self, outcome: str) -> None:
        """Count a submission answered with ``outcome``."""
        self._interactions[outcome].inc()

    def handled(self, outcome: Outcome) -> None:
        self._handler_seconds[outcome.status].observe(outcome.seconds)

    def send_failed(self, code: str) -> None:
        """Count a failed attempt to post a reply, by CometChat's error code."""
        self._send_errors[code].inc()

    def lookup_failed(self, code: str) -> None:
        """Count a failed lookup of a reply in doubt, by CometChat's error code."""
        self._lookup_errors[code].inc()

    def found_delivered(self) -> None:
        self.found_delivered_total.inc()

    def delivered(self, accepted_at: float) -> None:
        self.delivery_seconds.observe(max(0.0, time.time() - accepted_at))

    def render(self) -> tuple[bytes, str]:
        """The exposition text for ``/metrics`` and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = self.registry
        if self.depth is not None:
            registry = _WithDepth(registry, self.depth)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Children:
    """A labelled metric's children by label value, each looked up once: ``labels()`` costs a dozen Python
    calls, and counting happens several times per message."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def __getitem__(self, value: str) -> Any:
        child = self._children.get(value)
        if child is None:  # two threads may both look it up: labels() gives both the same child
            child = self._children[value] = self._metric.labels(value)
        return child


class _WithDepth(Collector):
    """A registry's metrics plus the queue depth, read at scrape time."""

    def __init__(self, registry: CollectorRegistry, depth: Callable[[], Any]) -> None:
        self._registry, self._depth = registry, depth

    def collect(self) -> Iterator[Any]:
        yield from self._registry.collect()
        gauge = GaugeMetricFamily(f"{PREFIX}_queue", "Messages and replies in the journal or Redis", labels=["state"])
        for state, value in asdict(self._depth()).items():
            gauge.add_metric([state], value)
        yield gauge


class MeteredSender:
    """A sender that times each attempt and counts failures by CometChat's error code.

    A GET is a lookup of a reply in doubt (bot.client.find_delivered; the delivery reads nothing else through
    its sender): it has metrics of its own, so that the send metrics count what was posted.
    """

    def __init__(self, sender: Any, metrics: Metrics) -> None:
        self.sender, self.metrics = sender, metrics
        if callable(getattr(sender, "start", None)):
            self.start = self._start  # only a sender that can send without blocking has start()

    def _start(self, request: SendRequest, done: Callable[[Any, CometChatError | None], None]) -> None:
        started = time.perf_counter()

        def timed(data: Any, error: CometChatError | None) -> None:
            self._observe(request, time.perf_counter() - started, error)
            done(data, error)

        self.sender.start(request, timed)

    def attempt(self, request: SendRequest) -> dict[str, Any]:
        started, failure = time.perf_counter(), None
        try:
            return self.sender.attempt(request)
        except CometChatError as error:
            failure = error
            raise
        finally:
            self._observe(request, time.perf_counter() - started, failure)

    def _observe(self, request: SendRequest, seconds: float, error: CometChatError | None) -> None:
        m = self.metrics
        if request.method == "GET":
            m.lookup_seconds.observe(seconds)
            if error is not None:
                m.lookup_failed(error.code)
            return
        m.send_seconds.observe(seconds)
        if error is not None:
            m.send_failed(error.code)

    def __getattr__(self, name: str) -> Any:  # the wrapped sender's extras (LocalSender.sent, close, ...)
        return getattr(self.sender, name)

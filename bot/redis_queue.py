"""Scale-out delivery on Redis + RQ (``REDIS_URL`` set).

Web processes validate, deduplicate and enqueue; RQ worker processes
(``flask --app app bot worker``, the Procfile's ``worker:`` line) run the
handlers and send the replies, ``WORKER_THREADS`` messages at once each
(an RQ worker per thread, :class:`ThreadWorker`). Any number of both, on any
number of hosts.

How the guarantees are kept, with the engine's own mechanisms:

* **Deduplication**: ``SET cometchat-bot:seen:{bot}:{id} NX EX ttl`` at accept
  time; a redelivered callback is answered 200 and not enqueued again.
* **Per-conversation order**: each message's job depends on the previous
  job of its conversation (RQ job dependencies, ``allow_failure=True`` so a
  failed job does not hold its conversation forever). The id of a
  conversation's last job is swapped atomically (``SET ... GET``), so two
  web processes cannot both chain onto the same predecessor. Different
  conversations run on whatever workers are free.
* **Nothing lost**: jobs are retried (``Retry``) when a handler's process
  dies; RQ moves a job whose worker was killed mid-job out of the started
  registry once its heartbeat lapses (:class:`HeartbeatWorker`, about 20 s)
  and retries it (abandoned-job handling, checked every
  ``MAINTENANCE_INTERVAL`` s); one killed after taking a job off the queue but before starting it leaves
  the job in RQ's intermediate queue, retried after ``STUCK_AFTER`` s (:class:`TakenJobs`). A reply's muid is
  recorded in Redis once CometChat accepted it (with its CometChat id, which
  later edits and form submissions look up), so a job that runs again does
  not send that reply twice; one whose first try was under way when the
  worker died (``{"sending": true}`` in the same key) is looked up in
  CometChat by its muid before it is sent again.
* **Flow control**: a reply is retried in its job, honouring ``Retry-After``,
  which keeps the conversation's later messages behind it; other
  conversations go on on other workers (and threads). A shared token bucket in Redis
  (``COMETCHAT_RATE_LIMIT``) paces all workers. Replies that finally fail are
  pushed to ``cometchat-bot:dead-letters``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import ConnectionPool, Redis, RedisError, WatchError
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import StopRequested
from rq.intermediate_queue import IntermediateQueue
from rq.job import Dependency, Job, JobStatus
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from .api import SendRequest
from .client import RetryPolicy, Sender, already_delivered, perform
from .dispatch import Dispatcher
from .errors import CometChatError, DeliveryUnavailable
from .journal import SENT_TTL, RateLimit, SentRecord
from .message import Message
from .metrics import Metrics
from .schemas import parse_stored

log = logging.getLogger(__name__)

PREFIX = "cometchat-bot"
QUEUE = PREFIX
#: How long finished jobs, and the pointers to a conversation's last job, are kept.
#: A pointer never outlives its job: it is set at enqueue, the job expires this long after finishing.
CHAIN_TTL = 3600
JOB_TIMEOUT = 600
#: How often a worker looks for jobs of workers that died (RQ's default, 10 minutes, would leave a killed
#: worker's message and the rest of its conversation waiting that long).
MAINTENANCE_INTERVAL = 10
#: A running job's heartbeat: renewed every HEARTBEAT_EVERY s, it lapses HEARTBEAT_TTL s after its worker died;
#: the next maintenance then runs the job again. (RQ's SimpleWorker would let it lapse only after the job's
#: timeout + 60 s: 11 minutes of a conversation waiting behind a killed worker's message.)
HEARTBEAT_EVERY = 5
HEARTBEAT_TTL = 20
#: A job taken off the queue by a worker that died before starting it runs again after this long (RQ's own
#: check waits a minute and more; a live worker starts a job it took within milliseconds).
STUCK_AFTER = HEARTBEAT_TTL
#: How long the maintenance lock outlives a worker killed during maintenance (RQ's: 899 s, a quarter of an hour
#: in which no worker would look for abandoned jobs). Maintenance itself takes milliseconds.
MAINTENANCE_LOCK_TTL = 60
#: A reply's ``sent:{muid}`` record while it is being sent (replaced once CometChat accepted it).
SENDING = json.dumps({"sending": True})
#: Runs of a job before it counts as failed: its first run plus retries after a crash or a killed worker.
JOB_RETRIES = 3
#: Seconds an idle worker thread waits on the queue before it looks for a stop request again.
THREAD_POLL = 1

# Token bucket shared by all workers: KEYS[1] bucket; ARGV rate/s, burst. Returns seconds to wait (0 = taken).
# The time is Redis's own (TIME), so workers on hosts whose clocks differ share one clock. (A script may write
# after TIME since Redis 5, which replicates a script's effects rather than the script.)
_TAKE_TOKEN = """
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
if tokens < 1 then
  return tostring((1 - tokens) / rate)
end
-- 'at' never moves back (Redis's clock stepped back): no span refills twice.
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', math.max(at, now))
redis.call('EXPIRE', KEYS[1], 3600)
return '0'
"""


@dataclass(frozen=True)
class Depth:
    queued: int
    running: int
    waiting: int  # deferred behind an earlier message of their conversation, or scheduled for a retry
    dead_letters: int


def queue_depth(queue: Queue) -> Depth:
    """The bot's queue (:data:`QUEUE`) at a glance: messages queued, running, waiting (behind an earlier message of
    their conversation, or for a retry), and the dead letters."""
    return Depth(
        queued=queue.count,
        running=StartedJobRegistry(queue=queue).count,
        waiting=DeferredJobRegistry(queue=queue).count + ScheduledJobRegistry(queue=queue).count,
        dead_letters=queue.connection.llen(f"{PREFIX}:dead-letters"),
    )


class RedisDelivery:
    """Same role as :class:`~bot.pipeline.Pipeline` (``submit``, ``wait_idle``), on Redis + RQ."""

    def __init__(
        self,
        redis: Redis,
        dispatcher: Dispatcher,
        sender: Sender,
        *,
        dedup_ttl: float = 3600.0,
        retry: RetryPolicy | None = None,
        rate_limit: RateLimit | None = None,
        metrics: Metrics | None = None,
        sent_ttl: float = SENT_TTL,
    ) -> None:
        self.redis = redis
        self.metrics = metrics or Metrics()
        self.queue = BotQueue(QUEUE, connection=self.redis)
        self.dispatcher = dispatcher
        self.sender = sender
        self.bot_uid = dispatcher.bot_uid
        self.dedup_ttl = max(1, int(dedup_ttl))
        self.retry = retry or RetryPolicy()
        self.rate_limit = rate_limit
        self.sent_ttl = sent_ttl
        self._take_token = self.redis.register_script(_TAKE_TOKEN)

    # ------------------------------------------------------------ web side

    def submit(
        self,
        msg: Message,
        body: bytes,
        *,
        dedup_ttl: float | None = None,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> str:
        """Deduplicate and enqueue; returns "accepted" or "duplicate". (``defer`` is not used: RQ workers handle
        every message.)"""
        try:
            return self._enqueue(msg, body, self.dedup_ttl if dedup_ttl is None else max(1, int(dedup_ttl)))
        except RedisError as exc:
            log.error("message %s in %s: Redis unavailable: %s", msg.id, msg.conversation_id, exc)
            raise DeliveryUnavailable("the bot cannot record messages right now (Redis); try again") from exc

    def _enqueue(self, msg: Message, body: bytes, dedup_ttl: int) -> str:
        bot = msg.bot_uid or self.bot_uid
        seen_key = f"{PREFIX}:seen:{bot}:{msg.id}"
        if not self.redis.set(seen_key, 1, nx=True, ex=dedup_ttl):
            return "duplicate"
        job_id = job_id_for(msg.id, bot)
        try:
            previous = self.redis.set(f"{PREFIX}:lane:{bot}:{msg.conversation_id}", job_id, get=True, ex=CHAIN_TTL)
            depends_on = Dependency(jobs=[previous.decode()], allow_failure=True) if previous else None
            self._enqueue_job(body, job_id, depends_on, msg)
        except RedisError:
            self.redis.delete(seen_key)  # not accepted after all: a redelivery must get through
            raise
        return "accepted"

    def _enqueue_job(self, body: bytes, job_id: str, depends_on: Dependency | None, msg: Message) -> None:
        self.queue.enqueue(
            process_message,
            body,
            time.time(),  # accepted at: the delivery latency is measured from here
            job_id=job_id,
            depends_on=depends_on,
            retry=Retry(max=JOB_RETRIES - 1),
            job_timeout=JOB_TIMEOUT,
            result_ttl=CHAIN_TTL,
            failure_ttl=7 * 24 * 3600,
            description=f"message {msg.id} in {msg.conversation_id}",
        )

    @property
    def sent_log(self) -> RedisDelivery:
        """Where the ids of delivered replies others refer to are kept (Redis)."""
        return self

    def start(self) -> None:
        """Nothing runs in web processes: RQ workers do the work."""

    def stop(self, timeout: float | None = None) -> bool:
        return True

    # ------------------------------------------------------------ worker side

    def process(self, body: bytes, accepted_at: float | None = None) -> str:
        """Run one message's handler and send its replies (in an RQ worker)."""
        msg = parse_stored(body, bot_uid=self.bot_uid)
        if msg is None:
            return "no message"
        outcome = self.dispatcher.handle(msg, lambda request: self.deliver(request, accepted_at))
        self.metrics.handled(outcome)
        return outcome.status

    def deliver(self, request: SendRequest, accepted_at: float | None = None, *, verify: bool = False) -> None:
        """Send a reply now (retrying in place), unless an earlier run of this job already sent it.

        ``accepted_at``: when the callback it answers was accepted (the lookups start there; the delivery
        latency metric). ``verify``: it may have been sent already (a dead letter sent again): look it up first.
        """
        if request.muid and self._sent_before(request, accepted_at, verify=verify):
            return
        retries, in_doubt = 0, False
        while True:
            if in_doubt and self._found(request, accepted_at):  # the last attempt may have been carried out
                return
            self._pace()
            try:
                perform(self.sender, request, self)  # records the id of a reply others refer to
            except CometChatError as error:
                wait = self.retry.delay(retries, error)
                if wait is None:
                    self._dead_letter(request, error, retries + 1, accepted_at, in_doubt or error.in_doubt)
                    return
                retries, in_doubt = retries + 1, in_doubt or error.in_doubt
                log.warning(
                    "message %s in %s: reply attempt %d failed (%s); retrying in %.2f s",
                    request.message_id, request.conversation_id, retries, error.code, wait,
                )  # fmt: skip
                time.sleep(wait)
                continue
            self._mark_sent(request)
            if accepted_at is not None:
                self.metrics.delivered(accepted_at)
            return

    def _sent_before(self, request: SendRequest, accepted_at: float | None, *, verify: bool = False) -> bool:
        """Whether an earlier run of this job sent the reply: it recorded so, or CometChat has it (that run's
        worker was killed after the POST went out, before the answer was recorded; or, with ``verify``, an
        attempt of it may have been carried out before the mark expired). Marks it as being sent."""
        key = f"{PREFIX}:sent:{request.muid}"
        with self.redis.pipeline(transaction=False) as both:  # one round trip
            both.get(key)
            both.set(key, SENDING, nx=True, ex=self.dedup_ttl)
            before, _ = both.execute()
        if before is None and not verify:
            return False  # the first try
        if before is not None and not json.loads(before).get("sending"):
            log.info("message %s: reply %s was sent by an earlier run; skipped", request.message_id, request.muid)
            return True
        return self._found(request, accepted_at)

    def _found(self, request: SendRequest, accepted_at: float | None) -> bool:
        """Whether CometChat has the reply already (then it is recorded as sent)."""
        since = time.time() if accepted_at is None else accepted_at
        if not already_delivered(self.sender, request, self, bot_uid=self.bot_uid, since=since):
            return False
        self._mark_sent(request)
        self.metrics.found_delivered()
        return True

    def _mark_sent(self, request: SendRequest) -> None:
        """Record a delivered reply (one that others refer to was recorded with its id by remember_sent)."""
        if request.muid and not request.remember:
            self.redis.set(f"{PREFIX}:sent:{request.muid}", "{}", ex=self.dedup_ttl)

    def remember_sent(self, muid: str, message_id: str, conversation: str, body: Any = None) -> None:
        """Record a delivered reply's CometChat id (and an interactive message's body) under its muid."""
        record = {"id": message_id, "conversation": conversation, "body": body}
        ttl = int(max(self.dedup_ttl, self.sent_ttl))
        self.redis.set(f"{PREFIX}:sent:{muid}", json.dumps(record, ensure_ascii=False), ex=ttl)

    def sent(self, muid: str) -> SentRecord | None:
        raw = self.redis.get(f"{PREFIX}:sent:{muid}")
        record = json.loads(raw) if raw else {}
        if "id" not in record:
            return None
        return SentRecord(muid, record["id"], record.get("conversation", ""), record.get("body"))

    def _pace(self) -> None:
        if self.rate_limit is None:
            return
        while True:
            wait = float(
                self._take_token(keys=[f"{PREFIX}:rate"], args=[self.rate_limit.per_second, self.rate_limit.burst])
            )
            if wait <= 0:
                return
            time.sleep(wait)

    def _dead_letter(
        self, request: SendRequest, error: CometChatError, attempts: int, accepted_at: float | None, in_doubt: bool
    ) -> None:
        log.error(
            "message %s in %s: reply %s failed for good after %d attempts: %s; kept as a dead letter",
            request.message_id, request.conversation_id, request.muid, attempts, error,
        )  # fmt: skip
        letter = {
            "id": uuid.uuid4().hex[:12],
            "kind": "reply",
            "conversation": request.conversation_id,
            "message_id": request.message_id,
            "path": request.path,
            "body": request.body,
            "meta": request.meta(),
            "error_code": error.code,
            "error": str(error),
            "attempts": attempts,
            "failed_at": time.time(),
            "accepted_at": accepted_at,  # when the callback it answers was accepted
            "in_doubt": in_doubt,  # an attempt may have been carried out: looked up if sent again
        }
        self.redis.lpush(f"{PREFIX}:dead-letters", json.dumps(letter, ensure_ascii=False))

    # ------------------------------------------------------------ observing

    def depth(self) -> Depth:
        return queue_depth(self.queue)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(f"{PREFIX}:dead-letters", 0, limit - 1)]

    def requeue_dead_letter(self, letter_id: str) -> bool:
        """Send a dead reply again (after fixing its cause) from an RQ job; True if it existed.

        The letter leaves the list and its job is enqueued in one transaction (watched, so that two
        processes cannot both take it): it is never lost in between, nor sent twice.
        """
        key = f"{PREFIX}:dead-letters"
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = next((r for r in pipe.lrange(key, 0, -1) if json.loads(r).get("id") == letter_id), None)
                    if raw is None:
                        return False
                    letter = json.loads(raw)
                    request = SendRequest.restore(
                        letter["path"], letter["body"], letter.get("meta"), message_id=letter["message_id"],
                        conversation_id=letter["conversation"],
                    )  # fmt: skip
                    pipe.multi()
                    pipe.lrem(key, 1, raw)
                    # A letter written before accepted_at and in_doubt were kept: looked up, from its failure on.
                    since, verify = letter.get("accepted_at") or letter["failed_at"], letter.get("in_doubt", True)
                    self.queue.enqueue_call(
                        send_again, args=(request.to_json(), since, verify), timeout=JOB_TIMEOUT,
                        result_ttl=CHAIN_TTL, pipeline=pipe,
                    )  # fmt: skip
                    pipe.execute()
                    return True
                except WatchError:
                    continue  # the list changed meanwhile (a new dead letter, another retry): look again

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no job is queued, running or waiting (True), or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            depth = self.depth()
            if depth.queued == depth.running == depth.waiting == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def work(self, *, burst: bool = False, name: str | None = None, threads: int = 1) -> bool:
        """Run RQ workers for this app in the current process (``burst``: until the queue is empty).

        ``threads`` jobs (messages) run at once (:class:`WorkerProcess`). Returns whether any job was run;
        raises :class:`WorkerFailed` when a worker thread ended on an error (the others were stopped).
        """
        global _current
        _current = self
        if not burst:  # a burst runs the scheduler in this process: nothing is forked
            _tidy_forked_processes(self.redis.connection_pool)
        workers = [
            ThreadWorker(
                [self.queue],
                connection=self.redis,
                name=(name if n == 0 else f"{name}-{n}") if name else None,
                maintenance_interval=MAINTENANCE_INTERVAL,
            )
            for n in range(threads)
        ]
        return WorkerProcess(workers).run(burst=burst)


class BotQueue(Queue):
    """RQ's Queue, with a prompt recovery of jobs taken by a worker that died before starting them
    (:class:`TakenJobs`) and a maintenance lock that a killed worker holds for a minute, not a quarter of an hour.
    """

    @property
    def intermediate_queue(self) -> TakenJobs:
        return TakenJobs(self.key, connection=self.connection)

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_TTL))


class TakenJobs(IntermediateQueue):
    """RQ's intermediate queue: the ids of jobs a worker has taken off the queue (BLMOVE) and not yet started.

    A worker killed between the two leaves its job there, in no registry, and the job's conversation waits
    behind it. RQ's maintenance runs such a job again once it has been seen there for a minute, going by a
    first-seen key per job id that outlives the job by a day: a later run of the same job (a retry) caught in
    that window would count as stuck at once, while a live worker is about to start it. Here instead:

    * a job counts as stuck once every maintenance pass over ``STUCK_AFTER`` s found it there, queued, not
      started and not back in the queue (a retry), by Redis's clock (workers' clocks may differ);
    * the times are kept in one hash holding only the jobs found waiting at the last pass;
    * an entry left behind by a job that has since run (a dead worker's stale copy) is dropped, not run again.
    """

    @property
    def waiting_since_key(self) -> str:
        return f"{self.key}:waiting-since"

    def cleanup(self, worker: Any, queue: Queue) -> None:
        """One maintenance pass (under the queue's maintenance lock, so one worker at a time)."""
        seconds, micros = self.connection.time()
        now = seconds + micros / 1_000_000
        started = set(queue.started_job_registry.get_job_ids(cleanup=False))
        since = {key.decode(): float(value) for key, value in self.connection.hgetall(self.waiting_since_key).items()}
        waiting: dict[str, float] = {}
        for job_id in dict.fromkeys(self.get_job_ids()):
            if job_id in started:
                continue
            job = queue.fetch_job(job_id)
            status = job.get_status(refresh=False) if job else None
            if job is None or status in _FINAL_STATUSES:
                self.remove(job_id)  # a stale copy: the job has run since
            elif status != JobStatus.QUEUED or self.connection.lpos(queue.key, job_id) is not None:
                continue  # abandoned-job handling has it, or a retry of it waits in the queue
            elif now - (first_found := since.get(job_id, now)) < STUCK_AFTER:
                waiting[job_id] = first_found
            else:
                log.warning("job %s: its worker died after taking it off the queue; it runs again", job_id)
                worker.handle_job_failure(job, queue, exc_string="taken off the queue by a worker that died")
                self.remove(job_id)
        with self.connection.pipeline() as pipeline:
            pipeline.delete(self.waiting_since_key)
            if waiting:
                pipeline.hset(self.waiting_since_key, mapping=waiting)
                pipeline.expire(self.waiting_since_key, 3600)
            pipeline.execute()


_FINAL_STATUSES = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


class HeartbeatWorker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker process: no fork per message), with a heartbeat while a job runs.

    A thread renews the job's entry in the started-job registry every ``HEARTBEAT_EVERY`` s for
    ``HEARTBEAT_TTL`` s. If the worker is killed, the entry lapses and RQ's maintenance (any worker, every
    ``MAINTENANCE_INTERVAL`` s) retries the job: the conversation goes on within about half a minute.
    """

    def get_heartbeat_ttl(self, job: Job) -> int:
        return HEARTBEAT_TTL

    def execute_job(self, job: Job, queue: Queue) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, done), name="rq-heartbeat", daemon=True)
        beat.start()
        try:
            super().execute_job(job, queue)
        finally:
            done.set()
            beat.join()

    def _beat(self, job: Job, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_EVERY):
            execution = self.execution
            if execution is None:
                continue
            try:
                with self.connection.pipeline() as pipeline:
                    execution.heartbeat(job.started_job_registry, HEARTBEAT_TTL, pipeline)
                    self.heartbeat(HEARTBEAT_TTL + 60, pipeline=pipeline)
                    pipeline.execute()
            except RedisError as exc:  # the job goes on; a lapsed heartbeat only means it may run again
                log.warning("worker %s: heartbeat of job %s failed: %s", self.name, job.id, exc)


class ThreadWorker(HeartbeatWorker):
    """An RQ worker in a thread of a worker process (:class:`WorkerProcess`), so that a process runs several
    jobs at once.

    Each is a whole RQ worker (registered, with its own heartbeat), so a killed process's jobs run again as
    any killed worker's do. Two things differ from RQ's worker in a main thread: signals reach only the main
    thread, so a thread worker looks for a stop request between jobs and, idle, every ``THREAD_POLL`` s; and
    a job's time limit is a timer, not SIGALRM (which only the main thread can set).
    """

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listening = threading.Event()  # registered, scheduler forked (if it runs one), about to take jobs

    def request_thread_stop(self) -> None:
        """Stop after the current job (a warm shutdown), or within ``THREAD_POLL`` s if idle."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def _install_signal_handlers(self) -> None:
        """Signals are the main thread's (:class:`WorkerProcess`), which passes a stop request on.

        RQ calls this once the worker is registered and RQ's scheduler forked, just before its loop.
        """
        self.listening.set()

    @property
    def dequeue_timeout(self) -> int:
        return THREAD_POLL

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        if timeout is None:  # burst: no waiting
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        # RQ's own dequeue loop waits on, timeout after timeout; here each wait is one try, then the stop flag.
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=timeout)
            if result is not None:
                return result
        raise StopRequested()


class WorkerFailed(Exception):
    """A worker thread ended on an error RQ does not handle (logged); the process stopped so it is restarted."""


class WorkerProcess:
    """The :class:`ThreadWorker` s of a worker process, each in its own thread; the main thread takes the signals.

    The main thread runs no job, so a signal is handled at once, not when a handler's blocking call returns:
    the first SIGTERM or SIGINT asks every thread to finish its current job and take no other (a warm
    shutdown); another one ends the process at once (a cold shutdown, exit status 1: the interrupted jobs run
    again when their heartbeat lapses). The first worker also runs RQ's scheduler. If a worker thread ends on
    its own (RQ ends a worker's loop on an error it does not handle), the others are stopped as well: a process
    one worker short would go unnoticed, one that exits is restarted.
    """

    def __init__(self, workers: list[ThreadWorker]) -> None:
        self.workers = workers
        self._signalled = False
        self._failed: list[str] = []
        self._worked: list[bool] = []

    def run(self, *, burst: bool = False) -> bool:
        """Run the workers until they stop (``burst``: until the queue is empty); True if any job was run."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            threads = [
                threading.Thread(
                    target=self._run_worker,
                    args=(worker, burst, n == 0),
                    name=f"rq-worker-{n}",
                    daemon=True,
                )
                for n, worker in enumerate(self.workers)
            ]
            # The first worker forks RQ's scheduler as it starts; the others start after that, so that none is
            # opening a Redis connection during the fork (a socket the child has no record of yet, it cannot
            # close: see _close_inherited_connections).
            started = threads[:1]
            threads[0].start()
            while not self.workers[0].listening.wait(0.1):
                if not threads[0].is_alive():  # it failed as it started (and stopped the others)
                    break
            else:
                for thread in threads[1:]:
                    thread.start()
                    started.append(thread)
            for thread in started:
                thread.join()  # interrupted by a signal's handler (on POSIX), which may end the process
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._failed:
            raise WorkerFailed(f"worker {', '.join(self._failed)} ended on an error; the others were stopped")
        return any(self._worked)

    def stop(self) -> None:
        """Ask every worker to stop after its current job."""
        for worker in self.workers:
            worker.request_thread_stop()

    def _run_worker(self, worker: ThreadWorker, burst: bool, with_scheduler: bool) -> None:
        _forks_end_with_thread.add(threading.get_ident())  # RQ's scheduler process, forked by the first worker
        try:
            self._worked.append(worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING"))
            failed = not burst and not worker.stop_requested
        except Exception:  # before RQ's loop (Redis unreachable at start, say): the thread's end, like any
            log.exception("worker %s failed", worker.name)
            failed = True
        finally:
            _forks_end_with_thread.discard(threading.get_ident())
        if failed:
            log.error("worker %s ended on its own; stopping the other workers of this process", worker.name)
            self._failed.append(worker.name)
            self.stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._signalled:
            log.warning("worker process %d: %s again: stopping now", os.getpid(), signal.Signals(signum).name)
            logging.shutdown()  # flushes the log
            # Not SystemExit: the interpreter would wait for threads that are not daemons (RQ's job timers, a
            # handler's own). Like a kill: the running jobs run again once their heartbeat lapses.
            os._exit(1)
        self._signalled = True
        log.info(
            "worker process %d: %s: stopping after the running jobs (again to stop now)",
            os.getpid(), signal.Signals(signum).name,
        )  # fmt: skip
        self.stop()


#: Linux's prctl option for the signal a process gets when its parent ends (<linux/prctl.h>).
_PR_SET_PDEATHSIG = 1
_forked_by = 0  # as a forked child sees it: its parent's pid if it is to end with the thread that forked it, else 0
_forks_end_with_thread: set[int] = set()  # threads (besides the main thread) whose forked children end with them
_worker_pool: ConnectionPool | None = None  # the worker's Redis connections, which a forked child lets go of
_at_fork_registered = False


def _tidy_forked_processes(pool: ConnectionPool) -> None:
    """Have the processes a worker forks (RQ's scheduler) let go of its Redis connections and end with it.

    * Connections: a child inherits the sockets of the worker's connections, and redis-py in the child only
      forgets them (it opens its own). While the child held them, a killed worker's blocked dequeues stayed
      open in Redis, and jobs pushed meanwhile went to those dead readers: stuck for a minute or two, until
      RQ's maintenance found them in its intermediate queue. The child now closes its copies at once.
    * Lifetime: RQ forks a scheduler process per worker that loops until it is told to stop. When its worker
      was killed it lived on, an orphan holding the scheduler lock, one more with each crash. On Linux a child
      forked by a worker thread (the first forks the scheduler) or the main thread now asks for SIGTERM when
      that thread ends; RQ's scheduler then stops cleanly (releasing its lock). (Only those threads': the signal
      comes when the forking *thread* ends, and a thread a handler started may end long before the process.)
      Elsewhere nothing changes.
    """
    global _worker_pool, _at_fork_registered
    _worker_pool = pool
    if not _at_fork_registered:
        os.register_at_fork(before=_note_forking_process, after_in_child=_in_forked_child)
        _at_fork_registered = True


def _note_forking_process() -> None:
    global _forked_by
    ends_with_thread = threading.current_thread() is threading.main_thread() or (
        threading.get_ident() in _forks_end_with_thread
    )
    _forked_by = os.getpid() if ends_with_thread else 0


def _in_forked_child() -> None:
    _close_inherited_connections()
    _ask_for_parent_death_signal()


def _close_inherited_connections() -> None:
    if _worker_pool is None:
        return
    # The pool's own disconnect() would first reset the pool (a new process) and take its lock, which another
    # thread of the parent may have held at the fork: its lists are read directly. In a child, a connection's
    # disconnect() closes only the child's copy of the socket (no shutdown): the parent's connection is intact.
    # (A connection another thread was opening at the fork has its socket but not yet a record of it: that one
    # stays open in the child. WorkerProcess starts its other workers after the scheduler's fork for this.)
    inherited = [
        *getattr(_worker_pool, "_available_connections", ()),
        *getattr(_worker_pool, "_in_use_connections", ()),
    ]
    for connection in inherited:
        connection.disconnect()


def _ask_for_parent_death_signal() -> None:
    if not _forked_by:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != _forked_by:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent ended between the fork and the prctl


#: The delivery of the app this worker process serves (set by :meth:`RedisDelivery.work`).
_current: RedisDelivery | None = None


def process_message(body: bytes, accepted_at: float | None = None) -> str:
    """The RQ job: handle one callback with the worker's app (``accepted_at`` is missing in jobs queued by
    versions before it was added)."""
    return _worker_delivery().process(body, accepted_at)


def send_again(request: str, accepted_at: float | None = None, verify: bool = True) -> str:
    """The RQ job of a dead letter sent again: one request, retried as any reply (a dead letter again if it fails);
    looked up in CometChat first with ``verify`` (a job enqueued before that argument existed: always)."""
    sent = SendRequest.from_json(request)
    _worker_delivery().deliver(sent, accepted_at, verify=verify)
    return sent.describe()


def _worker_delivery() -> RedisDelivery:
    if _current is None:
        raise RuntimeError("no bot app in this worker: start workers with `flask --app app bot worker`")
    return _current


def job_id_for(message_id: str, bot: str) -> str:
    """The RQ job id of a message: readable when RQ allows it (letters, digits, ``_``, ``-``), else a digest
    (submission ids hold ``:`` and user uids)."""
    readable = f"msg-{bot}-{message_id}"
    if _JOB_ID.fullmatch(readable):
        return readable
    return "msg-" + hashlib.sha256(f"{bot}\x1f{message_id}".encode()).hexdigest()[:40]


_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")


def job_for(message_id: str, bot: str, redis: Redis) -> Job:
    """The RQ job of a message (for tests and inspection)."""
    return Job.fetch(job_id_for(message_id, bot), connection=redis)

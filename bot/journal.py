"""The local journal: what makes an acknowledged callback survive a crash.

One SQLite file (WAL mode, standard library) shared by every process of the
app on a host. Its tables:

* ``inbox``: accepted callbacks not yet handled (one row per message);
* ``outbox``: replies not yet delivered (one row per CometChat request),
  ``verify`` set on those that may have been sent already (by a process
  that died, or by an attempt that timed out after sending);
* ``seen``: the ids of handled messages and the muids of queued replies
  within the dedup window, so a redelivered callback is not handled twice
  and a re-run handler does not send a reply twice (a message still in the
  inbox is its own dedup record);
* ``dead_letters``: replies that finally failed, kept for inspection;
* ``sent``: the CometChat ids of replies that later requests refer to (an
  edit of a "working on it..." message, the submissions of a form);
* ``state``: conversation state (:class:`bot.state.SqliteStateStore`);
* ``helpers``: processes offering to handle messages others accept
  (bot/sharing.py).

**Lanes.** A row may run only when no earlier row of the same conversation is
still in its table (running or waiting). That keeps handlers, and separately
replies, in the order of the conversation's messages, across processes,
while other conversations run concurrently. A process claims a row by
writing its ``owner`` id; a row whose owner process died is released again
(:meth:`Journal.recover`).

Writes use ``BEGIN IMMEDIATE`` (no lock upgrades, no deadlocks) and
``synchronous=NORMAL``: in WAL mode a commit survives the process being
killed; only an OS crash or power loss can lose the last commits
(``JOURNAL_SYNC=full`` closes that too, at a cost per callback).

A new journal uses 2 KB pages (SQLite's default is 4 KB). A commit writes
every page it changed to the WAL (two write() calls each), and accepting a
message changes a page of the inbox and of two of its indexes: with 4 KB
pages that is 17 KB of WAL per message (accepted and finished), with 2 KB
10.8 KB. 1 KB pages write less (7.6 KB), but a callback of more than ~1 KB
(the benchmark's are 1.1 KB) then takes an overflow page, allocated and
freed per message: in the benchmark harness 17.4 write() and 11.2 read()
calls per callback against 12.8 and 10.0 with 2 KB pages, for the same
instructions (callgrind). A journal created with other pages keeps them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .api import SendRequest
from .errors import ConfigError
from .threads import current_pid

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 2048  # bytes, for new journals (see the module's docstring)
WAL_RESTART_PAGES = 4096  # a WAL longer than this is started over by the next checkpoint (Journal.checkpoint)
WAL_RESTART_WAIT_MS = 20  # how long that checkpoint waits for other processes' readers and writer
FINISH_CHUNK = 1000  # messages per transaction of Journal.finish_many
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes: a WAL file grown past this in a burst is cut back when it starts over

#: The send tokens the rate limit's bucket holds now (?1 the burst, ?2 tokens per second, ?3 now): it fills up
#: from ``tokens`` at ``updated_at`` (a bucket with no row yet is full). A write never moves ``updated_at`` back:
#: a statement whose ``now`` was read before another thread's or process's later one was written (statements
#: written together, waits for the lock) would otherwise have the time between them refilled twice.
_REFILLED = "min(?1, tokens + max(0.0, ?3 - updated_at) * ?2)"
_UPDATED = "updated_at = max(updated_at, ?3)"
_TOKENS = f"SELECT {_REFILLED} FROM rate_bucket WHERE name = 'send'"
#: Takes ?4 tokens if the bucket holds them; a row comes back only then.
_TAKE_TOKENS = (
    "INSERT INTO rate_bucket (name, tokens, updated_at) SELECT 'send', ?1 - ?4, ?3 WHERE ?1 >= ?4"
    f" ON CONFLICT (name) DO UPDATE SET tokens = {_REFILLED} - ?4, {_UPDATED} WHERE {_REFILLED} >= ?4"
    " RETURNING tokens"
)
#: Gives back ?5 tokens a lease did not use, then takes up to ?4 whole ones: as many as the bucket holds. How many
#: were taken comes back (0: the bucket is empty). (SET's expressions all read the row as it was.)
_AVAILABLE = f"min(?1, {_REFILLED} + ?5)"
_TAKEN = f"min(?4, CAST({_AVAILABLE} AS INTEGER))"
_LEASE_TOKENS = (
    "INSERT INTO rate_bucket (name, tokens, updated_at, taken)"
    " SELECT 'send', ?1 - min(?4, CAST(?1 AS INTEGER)), ?3, min(?4, CAST(?1 AS INTEGER))"
    f" ON CONFLICT (name) DO UPDATE SET taken = {_TAKEN}, tokens = {_AVAILABLE} - {_TAKEN}, {_UPDATED}"
    " RETURNING taken"
)
#: Tokens taken for direct sends are spent within this many seconds of being taken (Journal.take_token).
LEASE_SECONDS = 0.1
#: ... and at most this many are taken at once.
LEASE_MAX = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq          INTEGER PRIMARY KEY,  -- (no AUTOINCREMENT: its sqlite_sequence row was one more page per write)
    conversation TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    body         BLOB    NOT NULL,  -- the callback as received, re-parsed when another process handles it
    owner        TEXT,              -- NULL: waiting; else the process handling it
    attempts     INTEGER NOT NULL DEFAULT 0,
    accepted_at  REAL    NOT NULL,
    dedup_key    TEXT,              -- the message's dedup key, unique while it is here, then kept in ``seen`` ...
    dedup_until  REAL               -- ... until then (see the triggers inbox_seen and inbox_remember)
);
CREATE INDEX IF NOT EXISTS inbox_lane ON inbox (conversation, seq);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_key ON inbox (dedup_key);

CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY,
    conversation TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    body         TEXT    NOT NULL,  -- JSON request body, muid included
    meta         TEXT,              -- JSON: method, headers, ref, remember (NULL: a plain POST)
    owner        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,  -- failed attempts so far
    not_before   REAL    NOT NULL DEFAULT 0,  -- retry time after a failure
    accepted_at  REAL    NOT NULL,            -- when the callback it answers was accepted
    verify       INTEGER NOT NULL DEFAULT 0   -- 1: it may have been sent already: look it up first
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (conversation, seq);

CREATE TABLE IF NOT EXISTS seen (
    key        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,  -- 'reply' (a request that failed) or 'message' (a handler that kept crashing)
    conversation TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    path         TEXT,
    body         TEXT    NOT NULL,
    meta         TEXT,
    error_code   TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    failed_at    REAL    NOT NULL,
    accepted_at  REAL,              -- a reply's: when the callback it answers was accepted (NULL in older journals)
    verify       INTEGER NOT NULL DEFAULT 0  -- 1: an attempt may have been carried out: looked up if sent again
);

CREATE TABLE IF NOT EXISTS sent (
    muid         TEXT PRIMARY KEY,  -- a reply others refer to (an edit of it, a form's submissions)
    message_id   TEXT NOT NULL,     -- the id CometChat gave it
    conversation TEXT NOT NULL,
    body         TEXT,              -- the request body, for interactive messages
    expires_at   REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS state (
    key          TEXT    PRIMARY KEY,  -- bot, conversation (and user): see bot/state.py
    data         TEXT    NOT NULL,
    step         TEXT,
    version      INTEGER NOT NULL,
    expires_at   REAL    NOT NULL
) WITHOUT ROWID;

-- Accepting a message and finishing one are single statements (each its own transaction, or accepts written
-- together when several wait: the fewest round trips and lock operations on the hot path); these triggers do the
-- rest of the work inside them.
-- Dedup: a message whose key is in the inbox (the unique index inbox_key) or was seen within the dedup window is
-- not inserted (a redelivery). Its key goes to ``seen`` only when it leaves the inbox, with the other messages
-- finished in the same transaction: written while accepting, ``seen`` and its index were two more pages in the
-- WAL per callback.
CREATE TRIGGER IF NOT EXISTS inbox_seen BEFORE INSERT ON inbox WHEN NEW.dedup_key IS NOT NULL
BEGIN
    SELECT RAISE(IGNORE) WHERE EXISTS
        (SELECT 1 FROM seen WHERE key = NEW.dedup_key AND expires_at >= NEW.accepted_at);
END;
CREATE TRIGGER IF NOT EXISTS inbox_remember AFTER DELETE ON inbox WHEN OLD.dedup_key IS NOT NULL
BEGIN
    INSERT INTO seen (key, expires_at) VALUES (OLD.dedup_key, OLD.dedup_until)
        ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at;
END;

-- A handled message leaves the inbox and its process takes the next message of the conversation, if one waits.
CREATE TRIGGER IF NOT EXISTS inbox_next AFTER DELETE ON inbox WHEN OLD.owner IS NOT NULL
BEGIN
    UPDATE inbox SET owner = OLD.owner, attempts = attempts + 1
     WHERE seq = (SELECT min(seq) FROM inbox WHERE conversation = OLD.conversation) AND owner IS NULL;
END;

-- A process whose request side idles while others are busy offers to handle their messages until ``until``
-- (bot/sharing.py); an offer that ran out counts for nothing.
CREATE TABLE IF NOT EXISTS helpers (
    owner TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rate_bucket (
    name       TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL,
    taken      INTEGER NOT NULL DEFAULT 0  -- how many the last lease took (Journal.take_token)
);
"""


@dataclass(frozen=True)
class InboxItem:
    seq: int
    conversation: str
    message_id: str
    body: bytes
    attempts: int  # claims so far, this one included
    accepted_at: float
    # Replies of the conversation waited in the outbox when this was claimed: its replies must queue behind them.
    # (Nothing adds any while the claim holds the conversation's lane, so this stays true or turns false.)
    replies_waiting: bool = True


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    conversation: str
    message_id: str
    request: SendRequest
    attempts: int  # failed attempts so far
    accepted_at: float
    # It may have been sent already (a process that died held the row or ran the message's handler before, or
    # an attempt timed out after sending): CometChat is asked for its muid first (bot.client.find_delivered).
    verify: bool = False


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` sends per ``seconds`` across all processes, e.g. ``500/min``; bursts up to 1 s worth."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        text = text.strip()
        if not text:
            return None
        units = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
        try:
            count, unit = text.split("/", 1)
            limit = cls(int(count), float(units[unit.strip().lower()]))
        except (ValueError, KeyError):
            raise ConfigError(
                f"COMETCHAT_RATE_LIMIT must look like 500/min, 20/s or 1000/hour (got {text!r})"
            ) from None
        if limit.count <= 0:
            raise ConfigError("COMETCHAT_RATE_LIMIT must allow at least one send")
        return limit

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def burst(self) -> float:
        return max(1.0, self.per_second)

    @property
    def lease(self) -> int:
        """How many tokens a process takes at once for its direct sends: ``LEASE_SECONDS`` worth of the rate
        (one at CometChat's free plan's 500/min), at most ``LEASE_MAX``."""
        return max(1, min(LEASE_MAX, int(self.per_second * LEASE_SECONDS)))


@dataclass
class _Batch:
    until: float  # time.monotonic() by which its tokens are spent
    tokens: int  # left


@dataclass(eq=False)
class _Lease:
    """Tokens this process took from the rate limit's bucket for its direct sends (Journal.take_token): in
    batches, spent oldest first, each before its ``until``; what a batch did not spend by then is ``unused``,
    given back with the next take."""

    pid: int
    batches: deque[_Batch] = field(default_factory=deque)  # oldest first
    unused: int = 0
    topping_up: bool = False  # a thread is taking the next batch
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spend(self, now: float) -> bool:
        """Spend one token, if a batch holds one still."""
        while self.batches and self.batches[0].until <= now:
            self.unused += self.batches.popleft().tokens
        if not self.batches:
            return False
        oldest = self.batches[0]
        oldest.tokens -= 1
        if not oldest.tokens:
            self.batches.popleft()
        return True

    def left(self) -> int:
        return sum(batch.tokens for batch in self.batches)


@dataclass(frozen=True)
class SentRecord:
    """A delivered reply that later requests may refer to."""

    muid: str
    message_id: str
    conversation: str
    body: Any = None


@dataclass(frozen=True)
class Depth:
    inbox: int
    inbox_running: int
    outbox: int
    outbox_waiting_retry: int
    dead_letters: int


#: How long the ids of replies others refer to are kept (an interactive form may be answered days later).
SENT_TTL = 7 * 24 * 3600


@dataclass(slots=True)
class _Statement:
    """A single write statement of one thread, written by whichever thread holds the write lock (_statement)."""

    sql: str
    args: tuple[Any, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


def _meta_json(request: SendRequest) -> str | None:
    meta = request.meta()
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":")) if meta else None


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a journal written by an earlier version up to this schema (columns added since, a trigger replaced;
    tables, indexes and triggers that do not exist yet are made by the schema)."""
    for table, column, kind in (
        ("outbox", "meta", "TEXT"),
        ("dead_letters", "meta", "TEXT"),
        ("inbox", "dedup_key", "TEXT"),
        ("inbox", "dedup_until", "REAL"),
        ("outbox", "verify", "INTEGER NOT NULL DEFAULT 0"),
        ("dead_letters", "accepted_at", "REAL"),
        ("dead_letters", "verify", "INTEGER NOT NULL DEFAULT 0"),
        ("rate_bucket", "taken", "INTEGER NOT NULL DEFAULT 0"),
    ):
        columns = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        if columns and column not in columns:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    # Wrote a message's key to ``seen`` as it was accepted; now inbox_seen checks and inbox_remember writes it.
    con.execute("DROP TRIGGER IF EXISTS inbox_dedup")
    # The unique index inbox_key is new. Before it, a message still waiting after its dedup window could be
    # accepted a second time when redelivered: such a later copy keeps its row (it is handled, as it was then)
    # but not the key, or the index could not be made and the journal would not open.
    if _exists(con, "table", "inbox") and not _exists(con, "index", "inbox_key"):
        con.execute(
            "UPDATE inbox SET dedup_key = NULL WHERE dedup_key IS NOT NULL AND seq NOT IN"
            " (SELECT min(seq) FROM inbox WHERE dedup_key IS NOT NULL GROUP BY dedup_key)"
        )


def _exists(con: sqlite3.Connection, kind: str, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)).fetchone() is not None


def process_owner() -> str:
    """This process's owner id: host, pid and process start time (so a reused pid is not taken for us)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True  # not ours to judge; the journal is meant to be host-local anyway
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return _start_time(pid) == started


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()  # field 22: starttime in clock ticks
    except (OSError, IndexError):
        return "0"


#: What claiming a reply reads of its row, in the order :meth:`Journal._outbox_item` takes it.
_OUTBOX_COLUMNS = "seq, conversation, message_id, path, body, meta, attempts, accepted_at, verify"
#: What claiming or handing on a message reads of its row, in the order :func:`_inbox_item` takes it
#: (the last: whether replies of its conversation wait in the outbox).
_INBOX_COLUMNS = (
    "seq, conversation, message_id, body, attempts, accepted_at,"
    " EXISTS (SELECT 1 FROM outbox WHERE outbox.conversation = inbox.conversation)"
)


def _inbox_item(row: Sequence[Any]) -> InboxItem:
    seq, conversation, message_id, body, attempts, accepted_at, replies_waiting = row
    return InboxItem(seq, conversation, message_id, body, attempts, accepted_at, bool(replies_waiting))


class Journal:
    def __init__(
        self,
        path: str | Path,
        *,
        dedup_ttl: float = 3600.0,
        rate_limit: RateLimit | None = None,
        synchronous: str = "NORMAL",
        sent_ttl: float = SENT_TTL,
    ) -> None:
        self.path = str(path)
        self.dedup_ttl = dedup_ttl
        self.sent_ttl = sent_ttl  # at least as long as a form can be submitted (its id is checked then)
        self.rate_limit = rate_limit
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ConfigError("JOURNAL_SYNC must be normal or full")
        self._pid = current_pid()
        self.owner = process_owner()
        self._write_lock = threading.Lock()
        self._waiting: deque[_Statement] = deque()  # single statements waiting for the write lock (_statement)
        self._local = threading.local()
        self._lease = _Lease(self._pid)  # rate-limit tokens taken for direct sends (take_token)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._connection()
        with self._write_lock:
            self._retrying(lambda: _migrate(con))  # an older journal's tables get their new columns first
            self._retrying(lambda: con.executescript(SCHEMA))

    # ------------------------------------------------------------ connections

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread and process (sqlite3 connections must not cross a fork)."""
        pid = current_pid()
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != pid:
            if self._pid != pid:  # a forked child: a new owner id, and a write lock no thread holds
                self._pid, self.owner, self._write_lock = pid, process_owner(), threading.Lock()
                self._waiting = deque()  # (statements of the parent's threads are the parent's to write)
            # timeout=0: waiting for another process's write lock is done by _retrying(), in finer steps than
            # SQLite's own busy handler (which sleeps 1, 2, 5, 10... ms).
            con = sqlite3.connect(self.path, isolation_level=None, timeout=0, check_same_thread=True)
            con.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only a new, empty file takes it (before WAL mode)
            self._retrying(lambda: con.execute("PRAGMA journal_mode=WAL"))
            con.execute(f"PRAGMA synchronous={self.synchronous}")
            con.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the claimer thread, off the request path
            con.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._local.con, self._local.pid = con, pid
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. Threads of this process queue on a lock; other processes are waited for."""
        con = self._connection()
        with self._write_lock, self._transaction(con):
            yield con

    @contextmanager
    def _transaction(self, con: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error), for a thread that holds the write lock."""
        self._retrying(lambda: con.execute("BEGIN IMMEDIATE"))
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._retrying(lambda: con.execute("COMMIT"))

    def _statement(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One write statement, all its rows read; committed before this returns.

        Alone, it is its own transaction (autocommit). When other threads of
        this process wait for the write lock with statements of their own
        (gunicorn's gthread workers accepting callbacks at once), the thread
        that gets the lock writes all of them in one transaction and the
        others find theirs done (flat combining): one commit for several
        callbacks. With eight request threads: mostly batches of 2 to 8, and
        16-25 % less CPU per callback in one process (benchmarks/in_process.py
        --threads 8, benchmarks/RESULTS.md); a single request thread (sync
        workers) always writes its own, as before.
        """
        con = self._connection()  # first: in a forked child it replaces the parent's queue
        mine = _Statement(sql, args)
        self._waiting.append(mine)  # deque appends and pops are atomic: no lock needed to queue
        with self._write_lock:
            if not mine.done:  # else an earlier holder of the lock wrote it with its own
                batch = []
                while self._waiting:
                    batch.append(self._waiting.popleft())
                self._write_batch(con, batch, mine)
        if mine.error is not None:
            raise mine.error
        return mine.rows

    def _write_batch(self, con: sqlite3.Connection, batch: list[_Statement], mine: _Statement) -> None:
        """Write ``batch`` (``mine`` among them); each gets its rows, or the error that stopped the batch (a
        copy for the other threads, each of which raises its own)."""
        try:
            if len(batch) == 1:
                mine.rows = self._retrying(lambda: con.execute(mine.sql, mine.args).fetchall())
            else:
                with self._transaction(con):
                    for statement in batch:
                        statement.rows = con.execute(statement.sql, statement.args).fetchall()
        except BaseException as exc:
            for statement in batch:
                statement.error = exc if statement is mine else copy.copy(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            for statement in batch:
                statement.done = True

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = self._connection()
        return self._retrying(lambda: con.execute(sql, args).fetchall())

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction on the journal's file, for other stores that keep their table here."""
        return self._write()

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query (retried while another process holds the lock)."""
        return self._read(sql, args)

    @staticmethod
    def _retrying(operation: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``operation``, retrying while another process holds the database lock (up to ``timeout`` s)."""
        delay, deadline = 0.00005, time.monotonic() + timeout
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            # At most 0.2 ms: another process holds the lock for well under a millisecond, and a callback
            # waiting here waits for the whole sleep (with 2 ms, the benchmark's callback p99 was ~1 ms higher).
            delay = min(delay * 2, 0.0002)

    def checkpoint(self) -> int:
        """Copy the WAL into the database file; the claimer calls this each second. Returns the WAL's length (pages).

        A PASSIVE checkpoint never waits, but while writes go on without a
        pause it never catches up with them either, and the WAL only starts
        over from its beginning once a checkpoint did: under steady load it
        grew without bound (150 MB after 8 s of the benchmark, every lookup
        of a page slower as it grew). So a WAL longer than
        ``WAL_RESTART_PAGES`` gets a RESTART checkpoint, which holds writers
        off while it copies what the passive one left (a few milliseconds)
        and lets the next write start the WAL over.
        """
        _, pages, _ = self._read("PRAGMA wal_checkpoint(PASSIVE)")[0]
        if pages <= WAL_RESTART_PAGES:
            return pages
        con = self._connection()
        with self._write_lock:  # this process's writers wait here, other processes' in _retrying
            con.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")  # for other processes' readers and writer
            try:
                busy, pages, _ = con.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                con.execute("PRAGMA busy_timeout=0")
        if busy:
            log.debug("journal: the WAL (%d pages) could not be started over yet (busy); next checkpoint", pages)
        return pages

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ------------------------------------------------------------ inbox

    def accept(
        self, bot: str, conversation: str, message_id: str, body: bytes, *, claim: bool, dedup_ttl: float | None = None
    ) -> InboxItem | bool:
        """Record an accepted callback. False if it was seen within the dedup window (a redelivery).

        With ``claim``, the row is claimed for this process at once when its
        lane is free, and returned; otherwise True is returned and a claimer
        will pick the row up.
        """
        now = time.time()
        ttl = self.dedup_ttl if dedup_ttl is None else dedup_ttl
        owner = self.owner if claim else None
        rows = self._statement(
            "INSERT INTO inbox (conversation, message_id, body, owner, attempts, accepted_at, dedup_key, dedup_until)"
            " SELECT ?1, ?2, ?3, lane_free.ok, lane_free.ok IS NOT NULL, ?5, ?6, ?7 FROM"
            " (SELECT CASE WHEN EXISTS (SELECT 1 FROM inbox WHERE conversation = ?1) THEN NULL ELSE ?4 END AS ok)"
            " AS lane_free WHERE true ON CONFLICT (dedup_key) DO NOTHING RETURNING seq, owner, owner IS NOT NULL AND"
            " EXISTS (SELECT 1 FROM outbox WHERE outbox.conversation = inbox.conversation)",
            (conversation, message_id, body, owner, now, f"m\x1f{bot}\x1f{message_id}", now + ttl),
        )
        if not rows:
            return False  # still in the inbox (inbox_key), or seen within the dedup window (trigger inbox_seen)
        seq, claimed_by, replies_waiting = rows[0]
        if claimed_by is None:
            return True
        return InboxItem(seq, conversation, message_id, body, 1, now, bool(replies_waiting))

    def has_waiting_messages(self) -> bool:
        """Whether any message waits unclaimed (a read: no write lock)."""
        return self._has("SELECT 1 FROM inbox WHERE owner IS NULL LIMIT 1")

    def claim_inbox(self, limit: int) -> list[InboxItem]:
        """Claim up to ``limit`` waiting messages that head their lane, oldest first."""
        if limit <= 0 or not self.has_waiting_messages():
            return []
        with self._write() as con:
            rows = con.execute(
                "UPDATE inbox SET owner = ?1, attempts = attempts + 1 WHERE seq IN ("
                " SELECT seq FROM inbox AS i WHERE owner IS NULL AND NOT EXISTS"
                "  (SELECT 1 FROM inbox AS e WHERE e.conversation = i.conversation AND e.seq < i.seq)"
                " ORDER BY seq LIMIT ?2) "
                f"RETURNING {_INBOX_COLUMNS}",
                (self.owner, limit),
            ).fetchall()
        return sorted((_inbox_item(row) for row in rows), key=lambda item: item.seq)

    def finish_inbox(self, item: InboxItem) -> InboxItem | None:
        """Drop a handled message and claim the next one of its conversation, if one waits (trigger inbox_next)."""
        following = self.finish_many([item])
        return following[0] if following else None

    def finish_many(self, items: Sequence[InboxItem]) -> list[InboxItem]:
        """Drop several handled messages in one transaction; returns the next messages of their conversations
        that this claimed for this process (trigger inbox_next), as :meth:`finish_inbox` does for one.

        One DELETE for all of them rather than one per message: the other processes' callbacks wait for the
        database lock this holds, and each call into SQLite was also a wait for the GIL while holding it.
        """
        if len(items) > FINISH_CHUNK:  # SQLite allows 32,766 parameters per statement
            return [
                row
                for at in range(0, len(items), FINISH_CHUNK)
                for row in self.finish_many(items[at : at + FINISH_CHUNK])
            ]
        seqs = [item.seq for item in items]
        # A conversation's only claimed row is its lane's head: for these, the one the trigger just claimed.
        # (Read in the DELETE's transaction: once it commits, a new message may find its lane empty and be
        # claimed by the request thread, and this query would then hand it on a second time.)
        conversations = sorted({item.conversation for item in items})
        with self._write() as con:
            con.execute(f"DELETE FROM inbox WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
            rows = con.execute(
                f"SELECT {_INBOX_COLUMNS} FROM inbox"
                f" WHERE owner = ? AND conversation IN ({','.join('?' * len(conversations))}) ORDER BY seq",
                (self.owner, *conversations),
            ).fetchall()
        return [_inbox_item(row) for row in rows]

    def dead_letter_message(self, item: InboxItem, error: str) -> InboxItem | None:
        """Give up on a message whose handler kept killing its process; claims the lane's next message."""
        with self._write() as con:
            con.execute(
                "INSERT INTO dead_letters (kind, conversation, message_id, path, body, error_code, error, attempts,"
                " failed_at) VALUES ('message', ?, ?, NULL, ?, 'HANDLER_CRASHED', ?, ?, ?)",
                (
                    item.conversation,
                    item.message_id,
                    item.body.decode(errors="replace"),
                    error,
                    item.attempts,
                    time.time(),
                ),
            )
        return self.finish_inbox(item)

    def release(self, inbox: Sequence[InboxItem] = (), outbox: Sequence[OutboxItem] = ()) -> None:
        """Give claimed rows back (shutdown): another process, or the next start, takes them.

        The messages were never started, so their claim does not count as an
        attempt (attempts count handler runs that a crash cut short).
        """
        with self._write() as con:
            con.executemany(
                "UPDATE inbox SET owner = NULL, attempts = max(attempts - 1, 0) WHERE seq = ? AND owner = ?",
                [(i.seq, self.owner) for i in inbox],
            )
            con.executemany(
                "UPDATE outbox SET owner = NULL WHERE seq = ? AND owner = ?", [(o.seq, self.owner) for o in outbox]
            )

    # ------------------------------------------------------------ outbox

    def add_reply(
        self,
        request: SendRequest,
        *,
        accepted_at: float,
        claim: bool,
        attempts: int = 0,
        not_before: float = 0.0,
        verify: bool = False,
    ) -> OutboxItem | bool:
        """Queue a reply. False if its muid was queued before (a handler re-run after a crash).

        With ``claim``, the reply is claimed for this process at once when its
        lane is free (and the rate limit allows), and returned. ``attempts`` and
        ``not_before`` queue a reply whose first attempt (made inline) failed;
        ``verify`` one that may have been sent already (by an earlier run of
        the handler, or by an attempt in doubt).
        """
        now = time.time()
        claim = claim and not_before <= now
        body = json.dumps(request.body, ensure_ascii=False, separators=(",", ":"))
        meta = _meta_json(request)
        with self._write() as con:
            if request.muid and not self._first_sighting(con, f"r\x1f{request.muid}", now):
                return False
            lane_busy = con.execute("SELECT 1 FROM outbox WHERE conversation = ? LIMIT 1", (request.conversation_id,))
            owner = self.owner if claim and lane_busy.fetchone() is None and self._take_tokens(con, 1, now) else None
            seq = con.execute(
                "INSERT INTO outbox (conversation, message_id, path, body, meta, owner, attempts, not_before,"
                " accepted_at, verify) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                (request.conversation_id, request.message_id, request.path, body, meta, owner, attempts, not_before,
                 accepted_at, verify),
            ).fetchone()[0]  # fmt: skip
        if owner is None:
            return True
        return OutboxItem(seq, request.conversation_id, request.message_id, request, attempts, accepted_at, verify)

    def claim_replies(self, limit: int) -> list[OutboxItem]:
        """Claim up to ``limit`` due replies that head their lane, oldest first, within the rate limit."""
        now = time.time()
        if limit <= 0 or not self._has("SELECT 1 FROM outbox WHERE owner IS NULL AND not_before <= ? LIMIT 1", now):
            return []
        with self._write() as con:
            if self.rate_limit is not None:
                limit = min(limit, int(self._tokens(con, now)))
                if limit <= 0:
                    return []
            rows = con.execute(
                "UPDATE outbox SET owner = ?1 WHERE seq IN ("
                " SELECT seq FROM outbox AS o WHERE owner IS NULL AND not_before <= ?2 AND NOT EXISTS"
                "  (SELECT 1 FROM outbox AS e WHERE e.conversation = o.conversation AND e.seq < o.seq)"
                " ORDER BY seq LIMIT ?3) "
                f"RETURNING {_OUTBOX_COLUMNS}",
                (self.owner, now, limit),
            ).fetchall()
            self._take_tokens(con, len(rows), now)
        return sorted((self._outbox_item(row) for row in rows), key=lambda item: item.seq)

    def finish_reply(self, item: OutboxItem) -> OutboxItem | None:
        """Drop a delivered reply and claim the next due reply of its conversation, if any (and allowed)."""
        with self._write() as con:
            con.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,))
            return self._claim_next_reply(con, item.conversation)

    def retry_reply(self, item: OutboxItem, not_before: float, *, verify: bool = False) -> None:
        """Put a failed reply back, due at ``not_before``; its lane waits for it. ``verify``: the attempt may
        have been carried out (bot.errors.CometChatError.in_doubt), so the next one looks the reply up first."""
        with self._write() as con:
            con.execute(
                "UPDATE outbox SET owner = NULL, attempts = attempts + 1, not_before = ?, verify = max(verify, ?)"
                " WHERE seq = ?",
                (not_before, verify, item.seq),
            )

    def dead_letter_reply(
        self, item: OutboxItem, code: str, error: str, *, in_doubt: bool = False
    ) -> OutboxItem | None:
        """Move a reply that finally failed to the dead letters; claims the lane's next reply.

        ``in_doubt``: the last attempt may have been carried out (an earlier one may have been too, ``item.verify``).
        """
        with self._write() as con:
            self._insert_dead_reply(
                con, item.request, code, error, item.attempts + 1, item.accepted_at, item.verify or in_doubt
            )
            con.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,))
            return self._claim_next_reply(con, item.conversation)

    def dead_letter_request(
        self, request: SendRequest, code: str, error: str, *, accepted_at: float, in_doubt: bool = False
    ) -> None:
        """Keep a reply that failed for good on its first (inline) attempt, which never was in the outbox."""
        with self._write() as con:
            self._insert_dead_reply(con, request, code, error, 1, accepted_at, in_doubt)

    @staticmethod
    def _insert_dead_reply(
        con: sqlite3.Connection,
        request: SendRequest,
        code: str,
        error: str,
        attempts: int,
        accepted_at: float,
        verify: bool,
    ) -> None:
        con.execute(
            "INSERT INTO dead_letters (kind, conversation, message_id, path, body, meta, error_code, error, attempts,"
            " failed_at, accepted_at, verify) VALUES ('reply', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request.conversation_id,
                request.message_id,
                request.path,
                json.dumps(request.body, ensure_ascii=False),
                _meta_json(request),
                code,
                error,
                attempts,
                time.time(),
                accepted_at,
                verify,
            ),
        )

    def hasten_retries(self, later_than: float, to: float) -> int:
        """Make replies waiting for a retry due after ``later_than`` due at ``to`` instead; returns how many.

        What a stopping process does with retries that would come due after
        its drain deadline: one more try now rather than a reply left behind
        in the journal of a host that may not come back.
        """
        with self._write() as con:
            return con.execute(
                "UPDATE outbox SET not_before = ? WHERE owner IS NULL AND not_before > ?", (to, later_than)
            ).rowcount

    def next_due(self) -> float | None:
        """When the earliest waiting reply that heads its lane becomes due (None if none waits).

        Replies queued behind another reply of their conversation do not count:
        they cannot go before it, however due they are.
        """
        sql = (
            "SELECT min(not_before) FROM outbox AS o WHERE owner IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM outbox AS e WHERE e.conversation = o.conversation AND e.seq < o.seq)"
        )
        return self._read(sql)[0][0]

    def _claim_next_reply(self, con: sqlite3.Connection, conversation: str) -> OutboxItem | None:
        now = time.time()
        if not self._take_tokens(con, 1, now, commit=False):
            return None
        row = con.execute(
            "UPDATE outbox SET owner = ?1 WHERE seq = (SELECT min(seq) FROM outbox WHERE conversation = ?2)"
            " AND owner IS NULL AND not_before <= ?3 "
            f"RETURNING {_OUTBOX_COLUMNS}",
            (self.owner, conversation, now),
        ).fetchone()
        if row is None:
            return None
        self._take_tokens(con, 1, now)
        return self._outbox_item(row)

    @staticmethod
    def _outbox_item(row: tuple[Any, ...]) -> OutboxItem:
        seq, conversation, message_id, path, body, meta, attempts, accepted_at, verify = row
        request = SendRequest.restore(
            path, json.loads(body), json.loads(meta) if meta else None, message_id=message_id,
            conversation_id=conversation,
        )  # fmt: skip
        return OutboxItem(seq, conversation, message_id, request, attempts, accepted_at, bool(verify))

    # ------------------------------------------------------------ rate limit

    def _bucket(self, now: float) -> tuple[float, float, float]:
        """The first parameters of _TOKENS, _TAKE_TOKENS and _LEASE_TOKENS: ?1 the burst, ?2 tokens per second,
        ?3 now."""
        limit = self.rate_limit
        assert limit is not None
        return limit.burst, limit.per_second, now

    def _tokens(self, con: sqlite3.Connection, now: float) -> float:
        bucket = self._bucket(now)
        row = con.execute(_TOKENS, bucket).fetchone()
        return bucket[0] if row is None else row[0]

    def _take_tokens(self, con: sqlite3.Connection, n: int, now: float, *, commit: bool = True) -> bool:
        """Whether ``n`` sends fit the shared token bucket now; takes them when ``commit``."""
        if self.rate_limit is None:
            return True
        if not commit:
            return self._tokens(con, now) >= n
        return n == 0 or bool(con.execute(_TAKE_TOKENS, (*self._bucket(now), n)).fetchall())

    def take_token(self) -> bool:
        """Take one send from the shared token bucket, if it holds one now (always True without a rate limit).

        For a reply posted directly rather than through the outbox: it counts
        against ``COMETCHAT_RATE_LIMIT`` as one claimed from the outbox does.
        The process takes up to ``RateLimit.lease`` tokens in one statement
        (written together with other threads' accepts, :meth:`_statement`)
        and spends them on its next direct sends within ``LEASE_SECONDS``
        (the next batch is taken once fewer than a lease's worth are left,
        so a process holds up to two, and written outside the lease's lock);
        what it did not spend by then goes back with its next take. Tokens
        leave the bucket when taken, so sends over any span stay within what
        the bucket allowed over that span and the ``LEASE_SECONDS`` before it.
        A write per reply cost 0.2-0.4 ms of CPU under load
        (benchmarks/RESULTS.md); at 500/min a lease is one token, as before.
        """
        if self.rate_limit is None:
            return True
        size = self.rate_limit.lease
        lease = self._lease
        if lease.pid != current_pid():  # a forked child: the parent's tokens (and lock) are not its own
            lease = self._lease = _Lease(current_pid())
        with lease.lock:
            now = time.monotonic()
            spent = lease.spend(now)
            # The next batch is taken while a lease's worth is still held, so that other threads spend from it
            # meanwhile rather than wait for the write (they all queued behind the lock: 2-3 more context
            # switches per callback with eight request threads, benchmarks/RESULTS.md).
            top_up = not lease.topping_up and (not spent or lease.left() < size)
            if spent and not top_up:
                return True
            if top_up:
                lease.topping_up = True
            unused, lease.unused = lease.unused, 0
        taken = 0
        try:  # a batch for the lease, or (another thread is taking one, and this one is empty) a token alone
            bucket = (*self._bucket(time.time()), size if top_up else 1, unused)
            taken = self._statement(_LEASE_TOKENS, bucket)[0][0]
        finally:
            with lease.lock:
                if top_up:
                    lease.topping_up = False
                mine = 0 if spent else min(1, taken)
                if taken > mine:
                    lease.batches.append(_Batch(now + LEASE_SECONDS, taken - mine))
        return spent or bool(mine)

    def give_back_tokens(self, n: int) -> None:
        """Put back ``n`` tokens that :meth:`take_token` gave for replies that will go through the outbox after
        all, unsent (the replies a message held back when the bucket ran dry or an attempt failed): claiming them
        from the outbox takes tokens again. A write, on that path only."""
        if self.rate_limit is None or n <= 0:
            return
        self._statement(_LEASE_TOKENS, (*self._bucket(time.time()), 0, n))

    def next_token_in(self) -> float:
        """Seconds until the bucket holds a token again (0 without a rate limit)."""
        if self.rate_limit is None:
            return 0.0
        tokens = self._retrying(lambda: self._tokens(self._connection(), time.time()))
        return max(0.0, (1 - tokens) / self.rate_limit.per_second)

    # ------------------------------------------------------------ replies others refer to

    def remember_sent(self, muid: str, message_id: str, conversation: str, body: Any = None) -> None:
        """Record the CometChat id of a delivered reply (and, for interactive messages, its body)."""
        text = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        ttl = max(self.dedup_ttl, self.sent_ttl)
        with self._write() as con:
            con.execute(
                "INSERT OR REPLACE INTO sent (muid, message_id, conversation, body, expires_at) VALUES (?, ?, ?, ?, ?)",
                (muid, str(message_id), conversation, text, time.time() + ttl),
            )

    def sent(self, muid: str) -> SentRecord | None:
        """The CometChat id (and body) of a delivered reply, by its muid; None if unknown or forgotten."""
        rows = self._read("SELECT message_id, conversation, body FROM sent WHERE muid = ?", (muid,))
        if not rows:
            return None
        message_id, conversation, body = rows[0]
        return SentRecord(muid, message_id, conversation, json.loads(body) if body else None)

    # ------------------------------------------------------------ housekeeping

    def _first_sighting(self, con: sqlite3.Connection, key: str, now: float, ttl: float | None = None) -> bool:
        """Record ``key`` in the dedup window; False if it is already there (and not expired)."""
        cursor = con.execute(
            "INSERT INTO seen (key, expires_at) VALUES (?1, ?2) "
            "ON CONFLICT (key) DO UPDATE SET expires_at = ?2 WHERE seen.expires_at < ?3",
            (key, now + (self.dedup_ttl if ttl is None else ttl), now),
        )
        return cursor.rowcount == 1

    def recover(self) -> tuple[int, int]:
        """Release rows claimed by processes that no longer exist (killed, crashed). Returns (inbox, outbox) counts."""
        owners = {
            row[0]
            for row in self._read(
                "SELECT DISTINCT owner FROM inbox WHERE owner IS NOT NULL "
                "UNION SELECT DISTINCT owner FROM outbox WHERE owner IS NOT NULL"
            )
        }
        dead = [owner for owner in owners if owner != self.owner and not owner_alive(owner)]
        if not dead:
            return (0, 0)
        with self._write() as con:
            inbox = outbox = 0
            for owner in dead:
                inbox += con.execute("UPDATE inbox SET owner = NULL WHERE owner = ?", (owner,)).rowcount
                # The dead process may have sent these (a held row may have been in flight): look them up first.
                outbox += con.execute("UPDATE outbox SET owner = NULL, verify = 1 WHERE owner = ?", (owner,)).rowcount
        log.warning("recovered %d messages and %d replies left by stopped processes %s", inbox, outbox, dead)
        return (inbox, outbox)

    def purge_seen(self, batch: int = 10_000) -> int:
        """Forget dedup keys, sent ids and states past their time (in batches, to keep write locks short)."""
        now = time.time()
        with self._write() as con:
            forgotten = con.execute(
                "DELETE FROM seen WHERE key IN (SELECT key FROM seen WHERE expires_at < ? LIMIT ?)", (now, batch)
            ).rowcount
            forgotten += con.execute(
                "DELETE FROM sent WHERE muid IN (SELECT muid FROM sent WHERE expires_at < ? LIMIT ?)", (now, batch)
            ).rowcount
            forgotten += con.execute(
                "DELETE FROM state WHERE key IN (SELECT key FROM state WHERE expires_at <= ? LIMIT ?)", (now, batch)
            ).rowcount
        return forgotten

    # ------------------------------------------------------------ helpers (bot/sharing.py)

    def offer_help(self, until: float, *, now: float | None = None) -> None:
        """Offer (or renew the offer) to handle messages other processes accept, until ``until`` (time.time()).

        Offers that ran out (of processes killed while offering) are dropped on the way.
        """
        now = time.time() if now is None else now
        with self._write() as con:
            con.execute("DELETE FROM helpers WHERE until <= ?", (now,))
            con.execute(
                "INSERT INTO helpers (owner, until) VALUES (?, ?)"
                " ON CONFLICT (owner) DO UPDATE SET until = excluded.until",
                (self.owner, until),
            )

    def withdraw_help(self) -> None:
        self._statement("DELETE FROM helpers WHERE owner = ?", (self.owner,))

    def help_offered(self, now: float) -> bool:
        """Whether another process offers help now."""
        return self._has("SELECT 1 FROM helpers WHERE owner != ? AND until > ? LIMIT 1", self.owner, now)

    def newest_accepted_at(self) -> float | None:
        """When the newest message still in the inbox was accepted (time.time()), if any is."""
        rows = self._read("SELECT accepted_at FROM inbox ORDER BY seq DESC LIMIT 1")
        return rows[0][0] if rows else None

    def depth(self) -> Depth:
        [(inbox, running)] = self._read("SELECT count(*), count(owner) FROM inbox")
        [(outbox, waiting)] = self._read("SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM outbox")
        [(dead,)] = self._read("SELECT count(*) FROM dead_letters")
        return Depth(inbox, running, outbox, waiting, dead)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        con = self._connection()
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        finally:
            con.row_factory = None
        return [dict(row) for row in rows]

    def requeue_dead_letter(self, letter_id: int) -> bool:
        """Put a dead reply back in the outbox (after fixing its cause); True if it existed.

        It keeps the time its callback was accepted, and is looked up in CometChat before it is sent when one
        of its attempts may have been carried out (or when that is not known: a letter from an older journal,
        which kept neither; it is looked up from the time it failed).
        """
        with self._write() as con:
            row = con.execute(
                "DELETE FROM dead_letters WHERE id = ? AND kind = 'reply' RETURNING conversation, message_id, path,"
                " body, meta, coalesce(accepted_at, failed_at), verify OR accepted_at IS NULL",
                (letter_id,),
            ).fetchone()
            if row is None:
                return False
            con.execute(
                "INSERT INTO outbox (conversation, message_id, path, body, meta, accepted_at, verify)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return True

    def _has(self, sql: str, *args: Any) -> bool:
        return bool(self._read(sql, args))

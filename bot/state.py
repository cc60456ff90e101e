"""Conversation state: a small JSON-able dict and a named step per conversation, kept between messages.

A handler sees it as ``msg.state``::

    @bot.on_command("book")
    def start(msg):
        msg.state.step = "ask_city"
        return "Which city?"

    @bot.on_text(r".+", state="ask_city")
    def city(msg):
        msg.state["city"] = msg.text
        msg.state.step = "ask_date"
        return f"{msg.text}, noted. Which day?"

State is per conversation; a router created with ``Router(state_scope="user")``
keeps it per user in group chats. It expires ``STATE_TTL`` seconds after the
last change. Three stores implement :class:`StateStore`: memory (tests),
SQLite (the embedded default: a table in the journal, survives restarts) and
Redis (with ``REDIS_URL``: shared by all processes).

**No lost writes.** The messages of a conversation are handled one after
another (the delivery lanes), so two handlers rarely touch one state at once;
when they do (a form submission, a script using the store), saving is a
compare-and-set on a version number. A handler's changes are recorded as
operations; on a conflict they are applied again to the newer state and
saved again, so concurrent changes to different keys all survive and the
last write to one key wins.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis import Redis

    from .journal import Journal
    from .message import Message

SCOPES = ("conversation", "user")

#: Compare-and-set attempts before a save gives up (each retry follows a concurrent change).
MAX_SAVE_ATTEMPTS = 8


class StateConflict(Exception):
    """The state kept changing under a save (``MAX_SAVE_ATTEMPTS`` times in a row)."""


@dataclass(frozen=True)
class StateRecord:
    data: dict[str, Any]
    step: str | None
    version: int  # 0: not stored


class StateStore(Protocol):
    """Where states live. ``save``/``delete`` are compare-and-set on ``version`` (0 = absent)."""

    def load(self, key: str) -> StateRecord | None: ...

    def save(self, key: str, data: Mapping[str, Any], step: str | None, *, expected: int, ttl: float) -> bool:
        """Store version ``expected + 1`` if the stored version is ``expected``; False on a conflict."""
        ...

    def delete(self, key: str, *, expected: int) -> bool: ...


def state_key(msg: Message, scope: str) -> str:
    """The key of a message's state: its bot and conversation, and the sender for per-user state in groups."""
    if scope not in SCOPES:
        raise ValueError(f"state scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    key = f"{msg.bot_uid}\x1f{msg.conversation_id}"
    if scope == "user" and msg.is_group:
        key += f"\x1f{msg.sender.uid}"
    return key


def update(store: StateStore, key: str, change: Callable[[State], None], *, ttl: float) -> State:
    """Apply ``change`` to the stored state atomically (retried on conflicts); returns the state saved.

    For code outside handlers (scripts, admin commands) that must not lose a concurrent write.
    """
    state = State.load(store, key)
    change(state)
    state.save(ttl=ttl)
    return state


class State(MutableMapping[str, Any]):
    """One conversation's state as a handler sees it: a dict (``msg.state["city"]``) plus a ``step``.

    Values must be JSON-able. Changes are kept in memory and saved once the
    handler is done (:meth:`save`); ``clear()`` forgets everything, step
    included (the end of a dialog).
    """

    def __init__(self, store: StateStore, key: str, record: StateRecord | None = None) -> None:
        self._store, self.key = store, key
        record = record or StateRecord({}, None, 0)
        self._data: dict[str, Any] = dict(record.data)
        self._step = record.step
        self._version = record.version
        self._ops: list[tuple[str, Any, Any]] = []  # what this handler changed, to re-apply after a conflict

    @classmethod
    def load(cls, store: StateStore, key: str) -> State:
        return cls(store, key, store.load(key))

    def __repr__(self) -> str:
        return f"<State step={self._step!r} {self._data!r}>"

    # ------------------------------------------------------------ the step

    @property
    def step(self) -> str | None:
        """The named step of a dialog (``None``: not in one)."""
        return self._step

    @step.setter
    def step(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value or value == "*"):
            raise ValueError("a step is a non-empty name (or None to leave the dialog)")
        self._step = value
        self._ops.append(("step", value, None))

    # ------------------------------------------------------------ the dict

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        _check_json(name, value)
        self._data[name] = value
        self._ops.append(("set", name, json.loads(json.dumps(value))))  # a copy: later mutation is not recorded

    def __delitem__(self, name: str) -> None:
        del self._data[name]
        self._ops.append(("del", name, None))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Forget the data and the step."""
        self._data.clear()
        self._step = None
        self._ops.append(("clear", None, None))

    def as_dict(self) -> dict[str, Any]:
        return {"step": self._step, "data": dict(self._data)}

    # ------------------------------------------------------------ saving

    @property
    def changed(self) -> bool:
        return bool(self._ops)

    def save(self, *, ttl: float) -> None:
        """Store the changes made since loading; on a conflict apply them to the newer state and try again."""
        if not self._ops:
            return
        for _ in range(MAX_SAVE_ATTEMPTS):
            if self._stored_empty():
                if self._version == 0 or self._store.delete(self.key, expected=self._version):
                    self._version = 0
                    self._ops.clear()
                    return
            elif self._store.save(self.key, self._data, self._step, expected=self._version, ttl=ttl):
                self._version += 1
                self._ops.clear()
                return
            self._replay(self._store.load(self.key) or StateRecord({}, None, 0))
        raise StateConflict(f"state {self.key!r} changed {MAX_SAVE_ATTEMPTS} times while being saved")

    def _stored_empty(self) -> bool:
        return not self._data and self._step is None

    def _replay(self, newer: StateRecord) -> None:
        data, step = dict(newer.data), newer.step
        for op, name, value in self._ops:
            if op == "set":
                data[name] = value
            elif op == "del":
                data.pop(name, None)
            elif op == "step":
                step = name
            else:  # clear
                data, step = {}, None
        self._data, self._step, self._version = data, step, newer.version


def _check_json(name: str, value: Any) -> None:
    if not isinstance(name, str):
        raise TypeError("state keys are strings")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"state[{name!r}] must be JSON-able (got {type(value).__name__})") from exc


class StateSession:
    """The states one message may use, loaded on first use and saved together after the handler."""

    def __init__(self, store: StateStore, msg: Message, *, ttl: float) -> None:
        self.store, self.msg, self.ttl = store, msg, ttl
        self._states: dict[str, State] = {}

    def get(self, scope: str = "conversation") -> State:
        key = state_key(self.msg, scope)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = State.load(self.store, key)
        return state

    def save(self) -> None:
        for state in self._states.values():
            state.save(ttl=self.ttl)

    def discard(self) -> None:
        """Forget unsaved changes (a handler that raised): the next ``get`` loads the stored state again."""
        self._states.clear()


# ------------------------------------------------------------------ stores


class MemoryStateStore:
    """States in a dict of this process: for tests and for handlers called directly."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[str, tuple[StateRecord, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def load(self, key: str) -> StateRecord | None:
        with self._lock:
            return self._live(key)

    def save(self, key: str, data: Mapping[str, Any], step: str | None, *, expected: int, ttl: float) -> bool:
        with self._lock:
            current = self._live(key)
            if (current.version if current else 0) != expected:
                return False
            record = StateRecord(json.loads(json.dumps(dict(data))), step, expected + 1)
            self._items[key] = (record, self._clock() + ttl)
            return True

    def delete(self, key: str, *, expected: int) -> bool:
        with self._lock:
            current = self._live(key)
            if (current.version if current else 0) != expected:
                return False
            self._items.pop(key, None)
            return True

    def _live(self, key: str) -> StateRecord | None:
        item = self._items.get(key)
        if item is None or item[1] <= self._clock():
            self._items.pop(key, None)
            return None
        return item[0]


class SqliteStateStore:
    """States in the journal's SQLite file (the embedded default): shared by the host's processes, durable."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal  # its ``state`` table; its housekeeping forgets expired states

    def load(self, key: str) -> StateRecord | None:
        rows = self.journal.read(
            "SELECT data, step, version FROM state WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        if not rows:
            return None
        data, step, version = rows[0]
        return StateRecord(json.loads(data), step, version)

    def save(self, key: str, data: Mapping[str, Any], step: str | None, *, expected: int, ttl: float) -> bool:
        now = time.time()
        text = json.dumps(dict(data), ensure_ascii=False, separators=(",", ":"))
        with self.journal.write() as con:
            if not self._at_version(con, key, expected, now):
                return False
            con.execute(
                "INSERT OR REPLACE INTO state (key, data, step, version, expires_at) VALUES (?, ?, ?, ?, ?)",
                (key, text, step, expected + 1, now + ttl),
            )
        return True

    def delete(self, key: str, *, expected: int) -> bool:
        with self.journal.write() as con:
            if not self._at_version(con, key, expected, time.time()):
                return False
            con.execute("DELETE FROM state WHERE key = ?", (key,))
        return True

    @staticmethod
    def _at_version(con: sqlite3.Connection, key: str, expected: int, now: float) -> bool:
        row = con.execute("SELECT version FROM state WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        return (row[0] if row else 0) == expected


# Compare-and-set in one round trip: KEYS[1] the state; ARGV expected version, new JSON value, ttl (ms).
# The value is {"v": version, "d": data, "s": step}; an empty new value deletes.
_CAS = """
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = cjson.decode(current)['v'] end
if version ~= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


class RedisStateStore:
    """States in Redis (``REDIS_URL``): shared by every web and worker process; expiry by Redis itself."""

    PREFIX = "cometchat-bot:state:"

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cas = redis.register_script(_CAS)

    def load(self, key: str) -> StateRecord | None:
        raw = self.redis.get(self.PREFIX + key)
        if raw is None:
            return None
        value = json.loads(raw)
        return StateRecord(value["d"], value["s"], value["v"])

    def save(self, key: str, data: Mapping[str, Any], step: str | None, *, expected: int, ttl: float) -> bool:
        value = json.dumps({"v": expected + 1, "d": dict(data), "s": step}, ensure_ascii=False)
        return bool(self._cas(keys=[self.PREFIX + key], args=[expected, value, max(1, int(ttl * 1000))]))

    def delete(self, key: str, *, expected: int) -> bool:
        return bool(self._cas(keys=[self.PREFIX + key], args=[expected, "", 1]))

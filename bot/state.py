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
when they do (a script using the store, the loop guard), saving is a
compare-and-set on a version number. A handler's changes (what differs from
what it loaded) are applied again to the newer state on a conflict, so
concurrent changes to different keys all survive and the last write to one
key wins; :func:`update` re-runs a read-modify-write (a counter) instead.
"""

from __future__ import annotations

import json
import random
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
#: Attempts of :func:`update` (it waits a little between them, so contended counters get through).
MAX_UPDATE_ATTEMPTS = 60


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
    """Apply ``change`` to the stored state atomically; returns the state saved.

    On a conflict ``change`` runs again on the newer state (with a short random wait), so a read-modify-write
    such as a counter never loses an update. For code outside handlers (scripts, admin commands, the loop guard).
    """
    for attempt in range(MAX_UPDATE_ATTEMPTS):
        state = State.load(store, key)
        change(state)
        if state.try_save(ttl=ttl):
            return state
        time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
    raise StateConflict(f"state {key!r} changed {MAX_UPDATE_ATTEMPTS} times while being updated")


class State(MutableMapping[str, Any]):
    """One conversation's state as a handler sees it: a dict (``msg.state["city"]``) plus a ``step``.

    Values must be JSON-able. Changes (also to values changed in place, such
    as a list appended to) are saved once the handler is done (:meth:`save`);
    ``clear()`` forgets everything, step included (the end of a dialog).

    Saving writes what changed since loading: the keys set or changed, the
    keys removed, the step. When another save came in between, those changes
    are applied to the newer state, so changes to different keys all survive.
    A cleared state is stored empty (not deleted) until it expires, so its
    version only grows: a state loaded before the clear can never pass for
    the newer one.
    """

    def __init__(self, store: StateStore, key: str, record: StateRecord | None = None) -> None:
        self._store, self.key = store, key
        record = record or StateRecord({}, None, 0)
        self._loaded: dict[str, Any] = _copy(record.data)  # what was loaded, to see what changed
        self._loaded_step = record.step
        self._data: dict[str, Any] = _copy(record.data)
        self._step = record.step
        self._version = record.version
        self._cleared = False  # clear() was called: a newer state is forgotten too when the changes are re-applied

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

    # ------------------------------------------------------------ the dict

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        _check_json(name, value)
        self._data[name] = value

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Forget the data and the step."""
        self._data.clear()
        self._step = None
        self._cleared = True

    def as_dict(self) -> dict[str, Any]:
        return {"step": self._step, "data": _copy(self._data)}

    # ------------------------------------------------------------ saving

    @property
    def changed(self) -> bool:
        return self._cleared or self._step != self._loaded_step or self._data != self._loaded

    def save(self, *, ttl: float) -> None:
        """Store the changes made since loading; on a conflict apply them to the newer state and try again."""
        for _ in range(MAX_SAVE_ATTEMPTS):
            if self.try_save(ttl=ttl):
                return
            self._rebase(self._store.load(self.key) or StateRecord({}, None, 0))
        raise StateConflict(f"state {self.key!r} changed {MAX_SAVE_ATTEMPTS} times while being saved")

    def try_save(self, *, ttl: float) -> bool:
        """One compare-and-set of the changes; False if another save came first (nothing written then)."""
        if not self.changed or (self._version == 0 and not self._data and self._step is None):
            self._cleared = False  # nothing changed, or nothing to store where nothing was stored
            return True
        for name, value in self._data.items():
            _check_json(name, value)  # also values changed in place since they were set
        if not self._store.save(self.key, self._data, self._step, expected=self._version, ttl=ttl):
            return False
        self._version += 1
        self._loaded, self._loaded_step, self._cleared = _copy(self._data), self._step, False
        return True

    def _rebase(self, newer: StateRecord) -> None:
        """Apply this state's changes (since it was loaded) to ``newer``, as if they had been made after it."""
        if self._cleared:  # everything, the newer state included, was forgotten; what was set since stays
            data, step = _copy(self._data), self._step
        else:
            data = _copy(newer.data)
            for name in self._loaded.keys() - self._data.keys():
                data.pop(name, None)
            for name, value in self._data.items():
                if name not in self._loaded or self._loaded[name] != value:
                    data[name] = _copy(value)
            step = self._step if self._step != self._loaded_step else newer.step
        self._loaded, self._loaded_step, self._version = _copy(newer.data), newer.step, newer.version
        self._data, self._step = data, step


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (what is stored never shares objects with what a handler changes)."""
    return json.loads(json.dumps(value))


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

    @property
    def loaded(self) -> bool:
        """Whether the handler used any state (only a state that was loaded can have changed)."""
        return bool(self._states)

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
            record = self._live(key)
            return None if record is None else StateRecord(_copy(record.data), record.step, record.version)

    def save(self, key: str, data: Mapping[str, Any], step: str | None, *, expected: int, ttl: float) -> bool:
        with self._lock:
            current = self._live(key)
            if (current.version if current else 0) != expected:
                return False
            record = StateRecord(_copy(dict(data)), step, expected + 1)
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

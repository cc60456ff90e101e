"""Conversation state: the stores' compare-and-set contract, State, no lost writes, dialogs through the dispatcher.

Every store (memory, SQLite in the journal, Redis against a real redis-server) is checked against the same
contract. Dialogs run through the real callback path (BotTestClient) or the dispatcher; Redis mode runs end to
end with an in-process RQ worker in burst mode.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis

import app as app_module
from bot import Router
from bot.api import SendRequest
from bot.dispatch import Dispatcher
from bot.factory import bot_app
from bot.journal import Journal
from bot.settings import Settings
from bot.state import (
    MAX_SAVE_ATTEMPTS,
    MemoryStateStore,
    RedisStateStore,
    SqliteStateStore,
    State,
    StateConflict,
    StateRecord,
    StateSession,
    StateStore,
    state_key,
    update,
)
from bot.testing import BotTestClient, make_callback, make_message
from bots import booking
from tests.helpers import Clock, wait_for

TTL = 60.0
KEY = "bot\x1fconversation"


# ------------------------------------------------------------------ the stores, side by side


@dataclass
class Kit:
    """A store and a way to make one of its records expire now (without waiting for its ttl)."""

    name: str
    store: StateStore
    expire: Callable[[str], None]


def memory_kit() -> Kit:
    clock = Clock()
    return Kit("memory", MemoryStateStore(clock=clock), lambda key: clock.advance(10 * TTL))


def sqlite_kit(path) -> Kit:
    journal = Journal(path)

    def expire(key: str) -> None:
        with journal.write() as con:
            assert con.execute("UPDATE state SET expires_at = ? WHERE key = ?", (time.time() - 1, key)).rowcount == 1

    return Kit("sqlite", SqliteStateStore(journal), expire)


def redis_kit(url: str) -> Kit:
    redis = Redis.from_url(url)

    def expire(key: str) -> None:
        assert redis.pexpire(RedisStateStore.PREFIX + key, 1)
        assert wait_for(lambda: not redis.exists(RedisStateStore.PREFIX + key))

    return Kit("redis", RedisStateStore(redis), expire)


STORES = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=STORES)
def kit(request, tmp_path) -> Kit:
    if request.param == "memory":
        return memory_kit()
    if request.param == "sqlite":
        return sqlite_kit(tmp_path / "journal.sqlite3")
    return redis_kit(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(kit) -> StateStore:
    return kit.store


# ------------------------------------------------------------------ the store contract


def test_load_of_a_missing_key_is_none(store):
    assert store.load(KEY) is None


def test_save_expecting_version_0_creates_version_1(store):
    data = {"city": "Zürich", "n": 3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}, "x": 1.5}
    assert store.save(KEY, data, "ask_date", expected=0, ttl=TTL) is True
    assert store.load(KEY) == StateRecord(data, "ask_date", 1)
    assert store.save(KEY, {}, None, expected=1, ttl=TTL) is True
    assert store.load(KEY) == StateRecord({}, None, 2)


@pytest.mark.parametrize("stale", [0, 2, 7], ids=["absent", "ahead", "far-ahead"])
def test_a_save_with_a_stale_version_returns_false_and_changes_nothing(store, stale):
    assert store.save(KEY, {"a": 1}, "one", expected=0, ttl=TTL)
    assert store.save(KEY, {"a": 99}, "other", expected=stale, ttl=TTL) is False
    assert store.load(KEY) == StateRecord({"a": 1}, "one", 1)


def test_a_save_to_a_missing_key_must_expect_version_0(store):
    assert store.save(KEY, {"a": 1}, None, expected=1, ttl=TTL) is False
    assert store.load(KEY) is None


def test_delete_is_compare_and_set_too(store):
    assert store.save(KEY, {"a": 1}, "s", expected=0, ttl=TTL)
    assert store.save(KEY, {"a": 2}, "s", expected=1, ttl=TTL)
    for stale in (0, 1, 3):
        assert store.delete(KEY, expected=stale) is False
        assert store.load(KEY) == StateRecord({"a": 2}, "s", 2)
    assert store.delete(KEY, expected=2) is True
    assert store.load(KEY) is None
    assert store.delete(KEY, expected=1) is False  # nothing stored: only version 0 matches
    assert store.delete(KEY, expected=0) is True


def test_keys_are_independent(store):
    assert store.save("k1", {"a": 1}, "one", expected=0, ttl=TTL)
    assert store.save("k2", {"b": 2}, None, expected=0, ttl=TTL)
    assert store.delete("k1", expected=1)
    assert store.load("k1") is None
    assert store.load("k2") == StateRecord({"b": 2}, None, 1)


def test_the_store_keeps_a_copy_of_what_was_saved(store):
    data = {"items": [1]}
    assert store.save(KEY, data, None, expected=0, ttl=TTL)
    data["items"].append(2)
    assert store.load(KEY).data == {"items": [1]}
    state = State.load(store, KEY)
    state["items"].append(3)  # a handler changing a loaded value in place, never saved
    store.load(KEY).data["items"].append(4)
    assert store.load(KEY) == StateRecord({"items": [1]}, None, 1)


def test_an_expired_record_is_gone_and_its_version_with_it(kit):
    store = kit.store
    assert store.save(KEY, {"a": 1}, "s", expected=0, ttl=TTL)
    assert store.save("other", {"b": 1}, None, expected=0, ttl=TTL * 100)
    kit.expire(KEY)
    assert store.load(KEY) is None
    assert store.save(KEY, {"a": 2}, None, expected=1, ttl=TTL) is False  # the expired version no longer counts
    assert store.save(KEY, {"a": 3}, None, expected=0, ttl=TTL) is True
    assert store.load(KEY) == StateRecord({"a": 3}, None, 1)
    assert store.load("other") == StateRecord({"b": 1}, None, 1)  # only that record expired


def test_memory_store_ttl_runs_from_the_last_change_on_its_clock():
    clock = Clock()
    store = MemoryStateStore(clock=clock)
    assert store.save(KEY, {"a": 1}, None, expected=0, ttl=30)
    clock.advance(20)
    assert store.save(KEY, {"a": 2}, None, expected=1, ttl=30)  # a change starts the ttl again
    clock.advance(29.999)
    assert store.load(KEY) == StateRecord({"a": 2}, None, 2)
    clock.advance(0.001)  # exactly 30 s after the last change
    assert store.load(KEY) is None
    assert store.delete(KEY, expected=2) is False


def test_sqlite_store_writes_its_expiry_and_housekeeping_forgets_expired_states(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    store = SqliteStateStore(journal)
    before = time.time()
    assert store.save(KEY, {"a": 1}, None, expected=0, ttl=30)
    assert store.save("other", {"b": 1}, None, expected=0, ttl=3000)
    after = time.time()
    [(expires_at,)] = journal.read("SELECT expires_at FROM state WHERE key = ?", (KEY,))
    assert before + 30 <= expires_at <= after + 30
    with journal.write() as con:
        con.execute("UPDATE state SET expires_at = ? WHERE key = ?", (time.time() - 1, KEY))
    assert store.load(KEY) is None
    assert journal.purge_seen() >= 1
    assert journal.read("SELECT key FROM state") == [("other",)]


@pytest.mark.redis
def test_redis_store_sets_the_ttl_on_the_key(redis_url):
    redis = Redis.from_url(redis_url)
    store = RedisStateStore(redis)
    assert store.save(KEY, {"a": 1}, None, expected=0, ttl=30)
    assert 29_000 < redis.pttl(RedisStateStore.PREFIX + KEY) <= 30_000
    assert store.save(KEY, {"a": 2}, None, expected=1, ttl=300)  # each change sets the ttl again
    assert 299_000 < redis.pttl(RedisStateStore.PREFIX + KEY) <= 300_000
    assert store.save("short", {"a": 1}, None, expected=0, ttl=0.0001)  # below a millisecond: 1 ms, not forever
    assert 0 <= redis.pttl(RedisStateStore.PREFIX + "short") <= 1 or not redis.exists(RedisStateStore.PREFIX + "short")


# ------------------------------------------------------------------ State: a dict and a step


@pytest.fixture
def memory() -> MemoryStateStore:
    return MemoryStateStore()


class Recording:
    """A store that records the calls made to it."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, ...]] = []

    def load(self, key: str) -> StateRecord | None:
        self.calls.append(("load", key))
        return self.inner.load(key)

    def save(self, key: str, data, step, *, expected: int, ttl: float) -> bool:
        self.calls.append(("save", key, expected))
        return self.inner.save(key, data, step, expected=expected, ttl=ttl)

    def delete(self, key: str, *, expected: int) -> bool:
        self.calls.append(("delete", key, expected))
        return self.inner.delete(key, expected=expected)

    @property
    def writes(self) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] != "load"]


def test_state_is_a_dict(memory):
    state = State.load(memory, KEY)
    assert (dict(state), len(state), state.step, state.changed) == ({}, 0, None, False)
    state["city"] = "Paris"
    state.update(day="monday", party=4)
    assert state.setdefault("party", 2) == 4
    assert state.setdefault("notes", []) == []
    assert state.pop("notes") == []
    del state["day"]
    assert dict(state) == {"city": "Paris", "party": 4}
    assert list(state) == ["city", "party"] and "city" in state and "day" not in state
    assert state.get("day", "none") == "none"
    with pytest.raises(KeyError):
        state["day"]
    with pytest.raises(KeyError):
        del state["day"]
    assert state.as_dict() == {"step": None, "data": {"city": "Paris", "party": 4}}
    state.save(ttl=TTL)
    assert memory.load(KEY) == StateRecord({"city": "Paris", "party": 4}, None, 1)


def test_the_step(memory):
    state = State.load(memory, KEY)
    state.step = "ask_city"
    state.save(ttl=TTL)
    again = State.load(memory, KEY)
    assert again.step == "ask_city" and again.as_dict() == {"step": "ask_city", "data": {}}
    again.step = None
    assert again.step is None


@pytest.mark.parametrize("step", ["", "*", 5, b"ask", ["a"], True], ids=repr)
def test_an_invalid_step_is_refused_and_changes_nothing(memory, step):
    state = State.load(memory, KEY)
    state.step = "ask"
    state.save(ttl=TTL)
    state = State.load(memory, KEY)
    with pytest.raises(ValueError, match="step"):
        state.step = step
    assert state.step == "ask" and not state.changed


class Unserialisable:
    pass


@pytest.mark.parametrize(
    "value",
    [Unserialisable(), {1, 2}, b"bytes", object, {"nested": [Unserialisable()]}, time],
    ids=["object", "set", "bytes", "type", "nested", "module"],
)
def test_values_must_be_json(memory, value):
    state = State.load(memory, KEY)
    with pytest.raises(TypeError, match="JSON"):
        state["x"] = value
    assert "x" not in state and not state.changed


@pytest.mark.parametrize("name", [1, None, ("a",)], ids=repr)
def test_names_must_be_strings(memory, name):
    state = State.load(memory, KEY)
    with pytest.raises(TypeError):
        state[name] = 1
    assert not state.changed


def test_values_come_back_as_json_gives_them(memory):
    state = State.load(memory, KEY)
    state["pair"] = (1, 2)
    state["empty"] = None
    state.save(ttl=TTL)
    assert memory.load(KEY).data == {"pair": [1, 2], "empty": None}


def test_clear_forgets_data_and_step_and_empties_the_stored_state(memory):
    state = State.load(memory, KEY)
    state.update(a=1, b=2)
    state.step = "s"
    state.save(ttl=TTL)
    state = State.load(memory, KEY)
    state.clear()
    assert (dict(state), state.step, state.changed) == ({}, None, True)
    state.save(ttl=TTL)
    # Stored empty, not deleted: its version keeps growing (a state loaded before cannot pass for it).
    assert memory.load(KEY) == StateRecord({}, None, 2)


def test_changes_are_saved_once(memory):
    store = Recording(memory)
    state = State.load(store, KEY)
    state["a"] = 1
    state["b"] = 2
    state.step = "s"
    assert store.writes == []  # nothing is written until save()
    state.save(ttl=TTL)
    state.save(ttl=TTL)
    assert store.writes == [("save", KEY, 0)]
    assert not state.changed
    state["a"] = 3
    state.save(ttl=TTL)
    assert store.writes == [("save", KEY, 0), ("save", KEY, 1)]
    assert memory.load(KEY) == StateRecord({"a": 3, "b": 2}, "s", 2)


def test_an_unchanged_state_writes_nothing(memory):
    memory.save(KEY, {"a": 1}, "s", expected=0, ttl=TTL)
    store = Recording(memory)
    state = State.load(store, KEY)
    assert (state["a"], state.get("b"), list(state), state.step) == (1, None, ["a"], "s")
    state.save(ttl=TTL)
    fresh = State.load(store, "never-stored")
    fresh.clear()  # cleared before it was ever stored: there is nothing to delete
    fresh.save(ttl=TTL)
    assert store.writes == []


def test_a_state_emptied_key_by_key_is_stored_empty(memory):
    memory.save(KEY, {"a": 1}, None, expected=0, ttl=TTL)
    state = State.load(memory, KEY)
    del state["a"]
    state.save(ttl=TTL)
    assert memory.load(KEY) == StateRecord({}, None, 2)


# ------------------------------------------------------------------ no lost writes


def stored(store: StateStore, data: dict[str, Any], step: str | None = None) -> None:
    """Store ``data``/``step`` as version 1."""
    assert store.save(KEY, data, step, expected=0, ttl=TTL)


def test_changes_to_different_keys_from_the_same_version_both_survive(store):
    stored(store, {"base": 0}, "s")
    first, second = State.load(store, KEY), State.load(store, KEY)
    first["a"] = 1
    second["b"] = 2
    first.save(ttl=TTL)
    second.save(ttl=TTL)  # a conflict: its change is applied to the newer state
    assert store.load(KEY) == StateRecord({"base": 0, "a": 1, "b": 2}, "s", 3)
    assert dict(second) == {"base": 0, "a": 1, "b": 2}  # the state object now shows what was saved


def test_the_last_save_to_one_key_wins(store):
    stored(store, {"n": 0})
    first, second = State.load(store, KEY), State.load(store, KEY)
    first["n"] = 1
    second["n"] = 2
    second.save(ttl=TTL)
    first.save(ttl=TTL)
    assert store.load(KEY).data == {"n": 1}


def test_a_step_change_and_a_data_change_both_survive(store):
    stored(store, {"city": "Paris"}, "ask_city")
    mover, writer = State.load(store, KEY), State.load(store, KEY)
    mover.step = "ask_date"
    writer["note"] = "window seat"
    del writer["city"]
    mover.save(ttl=TTL)
    writer.save(ttl=TTL)
    assert store.load(KEY) == StateRecord({"note": "window seat"}, "ask_date", 3)


def test_a_clear_saved_after_a_concurrent_change_clears_it_too(store):
    stored(store, {"a": 1}, "s")
    clearer, writer = State.load(store, KEY), State.load(store, KEY)
    writer["b"] = 2
    writer.save(ttl=TTL)
    clearer.clear()
    clearer["c"] = 3  # a new dialog started after the clear
    clearer.save(ttl=TTL)
    record = store.load(KEY)
    assert (record.data, record.step) == ({"c": 3}, None)


def test_a_clear_alone_replayed_after_a_concurrent_change_empties_the_state(store):
    stored(store, {"a": 1}, "s")
    clearer, writer = State.load(store, KEY), State.load(store, KEY)
    writer["b"] = 2
    writer.save(ttl=TTL)
    clearer.clear()
    clearer.save(ttl=TTL)
    record = store.load(KEY)
    assert (record.data, record.step, record.version) == ({}, None, 3)


def test_a_change_saved_after_a_concurrent_clear_survives_alone(store):
    stored(store, {"a": 1}, "s")
    clearer, writer = State.load(store, KEY), State.load(store, KEY)
    clearer.clear()
    clearer.save(ttl=TTL)
    writer["b"] = 2
    writer.save(ttl=TTL)
    record = store.load(KEY)
    assert (record.data, record.step) == ({"b": 2}, None)  # "a" and the step were cleared; "b" came later


def test_a_state_loaded_before_a_clear_cannot_overwrite_a_newer_dialog(store):
    """Versions must not start again at 1 after a delete: an old State must not pass the compare-and-set."""
    stored(store, {"a": 1}, "old")
    stale, clearer = State.load(store, KEY), State.load(store, KEY)
    clearer.clear()
    clearer.save(ttl=TTL)
    newer = State.load(store, KEY)
    newer["b"] = 2
    newer.step = "new"
    newer.save(ttl=TTL)
    stale["c"] = 3
    stale.save(ttl=TTL)  # loaded at version 1 before the clear; version 1 now means another state
    record = store.load(KEY)
    assert (record.data, record.step) == ({"b": 2, "c": 3}, "new")


def test_a_value_changed_in_place_after_setting_it_is_saved_the_same_with_or_without_a_conflict(memory):
    """``msg.state.setdefault("items", []).append(x)``: what is saved must not depend on a concurrent write."""
    outcomes = []
    for concurrent in (False, True):
        key = f"k{concurrent}"
        memory.save(key, {"base": 0}, None, expected=0, ttl=TTL)
        state = State.load(memory, key)
        state.setdefault("items", []).append("x")
        if concurrent:
            other = State.load(memory, key)
            other["other"] = 1
            other.save(ttl=TTL)
        state.save(ttl=TTL)
        outcomes.append(memory.load(key).data["items"])
    assert outcomes[0] == outcomes[1]


class Interfering(MemoryStateStore):
    """A memory store where someone else saves right before each of the next ``times`` saves."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.attempts = 0

    def save(self, key, data, step, *, expected, ttl):
        self.attempts += 1
        if self.times:
            self.times -= 1
            current = self.load(key) or StateRecord({}, None, 0)
            other = {**current.data, f"other{self.attempts}": self.attempts}
            assert super().save(key, other, current.step, expected=current.version, ttl=ttl)
        return super().save(key, data, step, expected=expected, ttl=ttl)


def test_a_save_retries_through_conflicts_keeping_every_concurrent_change():
    store = Interfering(times=MAX_SAVE_ATTEMPTS - 1)
    state = State.load(store, KEY)
    state["mine"] = True
    state.save(ttl=TTL)
    assert store.attempts == MAX_SAVE_ATTEMPTS
    expected = {f"other{n}": n for n in range(1, MAX_SAVE_ATTEMPTS)} | {"mine": True}
    assert store.load(KEY) == StateRecord(expected, None, MAX_SAVE_ATTEMPTS)


def test_state_conflict_after_too_many_conflicts():
    store = Interfering(times=MAX_SAVE_ATTEMPTS)
    state = State.load(store, KEY)
    state["mine"] = True
    with pytest.raises(StateConflict):
        state.save(ttl=TTL)
    assert store.attempts == MAX_SAVE_ATTEMPTS
    assert "mine" not in store.load(KEY).data


class NeverSaves:
    """A store whose state changes between every load and save: each compare-and-set fails."""

    def __init__(self) -> None:
        self.version = 1
        self.writes = 0

    def load(self, key: str) -> StateRecord:
        self.version += 1
        return StateRecord({"n": self.version}, "s", self.version)

    def save(self, key, data, step, *, expected, ttl) -> bool:
        self.writes += 1
        return False

    def delete(self, key, *, expected) -> bool:
        self.writes += 1
        return False


@pytest.mark.parametrize("change", [lambda s: s.__setitem__("a", 1), State.clear], ids=["save", "delete"])
def test_state_conflict_when_every_compare_and_set_fails(change):
    store = NeverSaves()
    state = State.load(store, KEY)
    change(state)
    with pytest.raises(StateConflict, match="changed"):
        state.save(ttl=TTL)
    assert store.writes == MAX_SAVE_ATTEMPTS


def test_update_creates_and_changes_a_state(store):
    saved = update(store, KEY, lambda s: s.update(n=1), ttl=TTL)
    assert isinstance(saved, State) and dict(saved) == {"n": 1}
    update(store, KEY, lambda s: setattr(s, "step", "two"), ttl=TTL)
    assert store.load(KEY) == StateRecord({"n": 1}, "two", 2)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def shared_store(request, tmp_path) -> StateStore:
    if request.param == "sqlite":
        return SqliteStateStore(Journal(tmp_path / "journal.sqlite3"))
    return RedisStateStore(Redis.from_url(request.getfixturevalue("redis_url")))


@dataclass
class Hammered:
    final: int  # the counter at the end
    succeeded: int  # update() calls that returned
    errors: list[BaseException]  # what the others raised


def hammer(store: StateStore, threads: int, increments: int) -> Hammered:
    """``threads`` threads, started together, each calling ``update()`` ``increments`` times to add 1."""
    start = threading.Barrier(threads)
    lock = threading.Lock()
    succeeded: list[int] = []
    errors: list[BaseException] = []

    def increment(state: State) -> None:
        state["n"] = state.get("n", 0) + 1

    def work() -> None:
        start.wait(5)
        for _ in range(increments):
            try:
                update(store, KEY, increment, ttl=TTL)
            except Exception as exc:  # noqa: BLE001 - counted and reported by the tests, not swallowed
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    succeeded.append(1)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert not any(worker.is_alive() for worker in workers)
    record = store.load(KEY)
    return Hammered(record.data.get("n", 0) if record else 0, len(succeeded), errors)


def test_concurrent_updates_never_lose_an_increment_silently(shared_store):
    """Every update() that returned is in the final count; one that gave up raised StateConflict."""
    result = hammer(shared_store, threads=8, increments=25)
    assert all(isinstance(error, StateConflict) for error in result.errors), result.errors
    assert result.final == result.succeeded


def test_concurrent_increments_through_update_are_all_kept(shared_store):
    threads, increments = 8, 25
    result = hammer(shared_store, threads, increments)
    assert (result.final, result.errors) == (threads * increments, [])


# ------------------------------------------------------------------ sessions and keys


def test_state_keys_per_bot_conversation_and_user():
    alice_1to1 = make_message("x", sender="alice")
    assert state_key(alice_1to1, "conversation") == state_key(alice_1to1, "user") == "bot\x1falice_user_bot"
    ana, bob = make_message("x", sender="ana", group="team"), make_message("x", sender="bob", group="team")
    assert state_key(ana, "conversation") == state_key(bob, "conversation") == "bot\x1fgroup_team"
    assert state_key(ana, "user") == "bot\x1fgroup_team\x1fana" != state_key(bob, "user")
    other_bot = make_message("x", sender="ana", group="team", bot="other")
    assert state_key(other_bot, "conversation") != state_key(ana, "conversation")
    with pytest.raises(ValueError, match="scope"):
        state_key(ana, "group")


def test_a_session_loads_each_state_once_and_saves_them_together(memory):
    store = Recording(memory)
    msg = make_message("x", sender="ana", group="team")
    session = StateSession(store, msg, ttl=TTL)
    session.get()["shared"] = 1
    session.get("user")["mine"] = 2
    assert session.get() is session.get("conversation")
    assert [call[0] for call in store.calls] == ["load", "load"]
    session.save()
    assert memory.load("bot\x1fgroup_team").data == {"shared": 1}
    assert memory.load("bot\x1fgroup_team\x1fana").data == {"mine": 2}
    session.get()["shared"] = 3
    session.discard()
    assert session.get()["shared"] == 1  # loaded again: the discarded change is gone
    session.save()
    assert len(store.writes) == 2


@pytest.mark.parametrize("scope", ["", "group", "users"])
def test_a_router_refuses_an_unknown_state_scope(scope):
    with pytest.raises(ValueError, match="state_scope"):
        Router(state_scope=scope)


@pytest.mark.parametrize("steps", ["", [], ("a", ""), [None]], ids=repr)
def test_state_filter_refuses_empty_steps(steps):
    with pytest.raises(ValueError, match="state="):
        Router().on_text("x", state=steps)(lambda msg: None)


# ------------------------------------------------------------------ dialogs through the real callback path


def signup(scope: str = "conversation") -> Router:
    """A two-step dialog: /signup -> name -> age, /cancel at any step, /where at either step."""
    bot = Router("signup", state_scope=scope)

    @bot.on_command("signup")
    def start(msg):
        msg.state.clear()
        msg.state.step = "name"
        return "Your name?"

    @bot.on_command("cancel", state="*")
    def cancel(msg):
        msg.state.clear()
        return "Cancelled."

    @bot.on_text(r"^[^/]", state="name")
    def name(msg):
        msg.state["name"] = msg.text
        msg.state.step = "age"
        return f"Hi {msg.text}, your age?"

    @bot.on_text(r"^\d+$", state="age")
    def age(msg):
        who = msg.state["name"]
        msg.state.clear()
        return f"{who} is {msg.text}."

    @bot.on_text(r"^[^/]", state=("name", "age"))
    def off_script(msg):
        return f"Please answer the question (step {msg.state.step})."

    @bot.fallback
    def idle(msg):
        return "Type /signup."

    return bot


@pytest.fixture
def client() -> Iterator[BotTestClient]:
    with BotTestClient.for_routers(signup()) as client:
        yield client


def stored_state(client: BotTestClient, scope: str = "conversation", **message: Any) -> StateRecord | None:
    """The stored state of a conversation; None when there is none (never stored, or stored empty by a clear)."""
    record = client.state.dispatcher.state.load(state_key(make_message("x", **message), scope))
    return None if record is None or (not record.data and record.step is None) else record


def test_a_two_step_dialog_carries_its_state_between_messages(client):
    assert client.send("Ana").texts == ["Type /signup."]
    assert client.send("/signup").texts == ["Your name?"]
    assert stored_state(client) == StateRecord({}, "name", 1)
    assert client.send("Ana").texts == ["Hi Ana, your age?"]
    assert stored_state(client) == StateRecord({"name": "Ana"}, "age", 2)
    assert client.send("31").texts == ["Ana is 31."]
    assert stored_state(client) is None  # the dialog is over: its state is gone
    assert client.send("31").texts == ["Type /signup."]


def test_star_matches_any_step_and_only_inside_a_dialog(client):
    assert client.send("/cancel").texts == ["Type /signup."]  # not in a dialog: the route does not match
    for steps_in in (["/signup"], ["/signup", "Ana"]):
        for text in steps_in:
            client.send(text)
        assert client.send("/cancel").texts == ["Cancelled."]
        assert stored_state(client) is None


def test_a_route_for_several_steps(client):
    assert client.send("what?").texts == ["Type /signup."]
    client.send("/signup")
    client.send("Ana")
    assert client.send("thirty-one").texts == ["Please answer the question (step age)."]
    assert stored_state(client) == StateRecord({"name": "Ana"}, "age", 2)  # the off-script answer changed nothing


def test_per_user_state_keeps_two_dialogs_in_a_group_apart():
    with BotTestClient.for_routers(signup(scope="user")) as client:
        assert client.send("/signup", group="team", sender="ana").texts == ["Your name?"]
        assert client.send("Bob", group="team", sender="bob").texts == ["Type /signup."]  # bob is in no dialog
        assert client.send("/signup", group="team", sender="bob").texts == ["Your name?"]
        assert client.send("Ana", group="team", sender="ana").texts == ["Hi Ana, your age?"]
        assert client.send("Bob", group="team", sender="bob").texts == ["Hi Bob, your age?"]
        assert client.send("40", group="team", sender="bob").texts == ["Bob is 40."]
        assert client.send("31", group="team", sender="ana").texts == ["Ana is 31."]
        # The same users 1:1 have their own conversations.
        assert client.send("Ana", sender="ana").texts == ["Type /signup."]


def test_per_conversation_state_is_shared_by_the_group(client):
    assert client.send("/signup", group="team", sender="ana").texts == ["Your name?"]
    assert client.send("Bob", group="team", sender="bob").texts == ["Hi Bob, your age?"]
    assert client.send("31", group="team", sender="ana").texts == ["Bob is 31."]
    assert client.send("/signup", sender="ana").texts == ["Your name?"]  # ana's 1:1 chat is another conversation
    assert stored_state(client, group="team") is None


def test_a_raising_handler_leaves_the_stored_state_and_on_error_changes_are_kept():
    bot = Router()
    seen_by_hook: list[dict] = []

    @bot.on_command("set")
    def set_(msg, args):
        msg.state[args[0]] = args[1]
        msg.state.step = "ready"
        return "ok"

    @bot.on_command("boom")
    def boom(msg):
        msg.state["half"] = "made"
        msg.state.step = "broken"
        raise RuntimeError("boom")

    @bot.on_command("show")
    def show(msg):
        return json.dumps(msg.state.as_dict(), sort_keys=True)

    @bot.on_error
    def sorry(msg, error):
        seen_by_hook.append(msg.state.as_dict())
        msg.state["errors"] = msg.state.get("errors", 0) + 1
        return "sorry"

    with BotTestClient.for_routers(bot) as client:
        client.send("/set city Paris")
        assert client.send("/boom").texts == ["sorry"]
        assert seen_by_hook == [{"step": "ready", "data": {"city": "Paris"}}]  # not the half-made change
        assert json.loads(client.send("/show").texts[0]) == {"step": "ready", "data": {"city": "Paris", "errors": 1}}
        assert stored_state(client).version == 2


def test_a_raising_handler_without_a_hook_changes_nothing(memory):
    bot = Router()

    @bot.fallback
    def fails(msg):
        msg.state["a"] = 1
        msg.state.step = "x"
        raise ValueError

    store = Recording(memory)
    outcome = Dispatcher(bot, [].append, state=store).handle(make_message("hi"))
    assert outcome.status == "handler_error"
    assert store.writes == [] and memory.load(state_key(make_message("hi"), "conversation")) is None


def test_state_is_saved_after_the_replies_went_out(memory):
    bot = Router()
    key = state_key(make_message("x"), "conversation")
    seen_at_delivery: list[StateRecord | None] = []

    @bot.fallback
    def move_on(msg):
        msg.state.step = "next"
        msg.reply("interim")
        return "done"

    def deliver(request: SendRequest) -> None:
        seen_at_delivery.append(memory.load(key))

    assert Dispatcher(bot, deliver, state=memory).handle(make_message("x")).status == "replied"
    assert seen_at_delivery == [None, None]
    assert memory.load(key) == StateRecord({}, "next", 1)


def test_a_step_route_loads_no_state_for_messages_its_filter_rejects(memory):
    bot = Router()
    bot.on_command("pay", state="checkout")(lambda msg: "paid")
    store = Recording(memory)
    outcome = Dispatcher(bot, [].append, state=store).handle(make_message("hello"))
    assert outcome.status == "unmatched" and store.calls == []
    assert Dispatcher(bot, [].append, state=store).handle(make_message("/pay")).status == "unmatched"
    assert [call[0] for call in store.calls] == ["load"]  # the command matched: its step was looked up


def test_state_survives_an_app_restart_on_the_same_journal(monkeypatch, tmp_path):
    monkeypatch.setenv("JOURNAL_PATH", str(tmp_path / "restart" / "journal.sqlite3"))
    first = BotTestClient(app_module.create_app())
    assert first.send("/book").texts[0].startswith("Let's book a table.")
    first.close()
    with BotTestClient(app_module.create_app()) as second:  # a new process on the same journal
        intro, form = second.send("lisbon")
        assert intro.text == "Lisbon, good choice. A few details:" and form.type == "form"
        assert stored_state(second, "user") == StateRecord({"city": "Lisbon"}, "details", 2)


def test_state_survives_a_restart_of_an_app_built_for_routers(tmp_path):
    settings = Settings(journal_path=str(tmp_path / "journal.sqlite3"))
    with BotTestClient.for_routers(signup(), settings=settings) as first:
        first.send("/signup")
        first.send("Ana")
    with BotTestClient.for_routers(signup(), settings=settings) as second:
        assert second.send("31").texts == ["Ana is 31."]


# ------------------------------------------------------------------ handlers called directly


def test_make_message_seeds_the_state_for_a_direct_call():
    msg = make_message("lisbon", step="city", state={"note": "window"})
    assert booking.city(msg)[0] == "Lisbon, good choice. A few details:"
    assert (msg.state.step, dict(msg.state)) == ("details", {"note": "window", "city": "Lisbon"})


def test_make_message_without_state_starts_empty():
    msg = make_message("x")
    assert (dict(msg.state), msg.state.step) == ({}, None)
    assert msg.state is msg.state_for("conversation")


def test_make_message_in_a_shared_store_feeds_the_dispatcher(memory):
    sent: list[SendRequest] = []
    msg = make_message("Ana", step="name", store=memory)
    Dispatcher(signup(), sent.append, state=memory).handle(msg)
    assert [r.body["data"]["text"] for r in sent] == ["Hi Ana, your age?"]
    assert memory.load(state_key(msg, "conversation")) == StateRecord({"name": "Ana"}, "age", 2)


def test_msg_state_outside_a_handler_without_a_session_is_an_error():
    msg = make_message("x").with_(_states=None)
    with pytest.raises(RuntimeError, match="no state bound"):
        msg.state  # noqa: B018


# ------------------------------------------------------------------ Redis mode, end to end


@pytest.mark.redis
def test_redis_mode_carries_a_dialogs_state_from_one_message_to_the_next(redis_url, capsys):
    app = app_module.create_app({"REDIS_URL": redis_url, "STATE_TTL": "120"})
    parts = bot_app(app)
    assert isinstance(parts.dispatcher.state, RedisStateStore)
    http = app.test_client()

    def say(*texts: str) -> list[str | None]:
        """Post messages of one conversation, run an RQ worker in this process until the queue is empty (one
        run for several messages: RQ's burst teardown may take a second), and return the texts it sent."""
        before = parts.sender.total
        for text in texts:
            response = http.post("/cometchat/callback", json=make_callback(text, sender="ana"))
            assert response.status_code == 200 and response.get_json()["status"] == "accepted"
        parts.delivery.work(burst=True)
        assert parts.delivery.wait_idle(5)
        return [r.body["data"].get("text") for r in list(parts.sender.sent)[before:]]

    assert say("/book", "lisbon") == [
        "Let's book a table. In which city? (/cancel stops at any time)",
        "Lisbon, good choice. A few details:",
        None,  # the form
    ]
    redis = Redis.from_url(redis_url)
    key = RedisStateStore.PREFIX + "bot\x1fana_user_bot"
    assert json.loads(redis.get(key)) == {"v": 2, "d": {"city": "Lisbon"}, "s": "details"}
    assert 110_000 < redis.pttl(key) <= 120_000  # STATE_TTL
    assert say("still there?", "/cancel") == [
        "Please fill in the form above (or /cancel).",
        "Booking cancelled. Type /book to start again.",
    ]
    assert json.loads(redis.get(key)) == {"v": 3, "d": {}, "s": None}  # cleared: kept empty until it expires

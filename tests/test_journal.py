"""The journal's rules, without threads: dedup, lanes, retries, dead letters, recovery, rate limit."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

from bot import journal as journal_module
from bot.api import SendRequest
from bot.errors import ConfigError
from bot.journal import InboxItem, Journal, OutboxItem, RateLimit, owner_alive, process_owner
from tests.helpers import Clock, dead_owner, wait_for


@pytest.fixture
def journal(tmp_path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def other_process(journal: Journal, owner: str) -> Journal:
    """The same journal file as another process sees it (its own owner id)."""
    other = Journal(journal.path)
    other.owner = owner
    return other


def accept(journal: Journal, message_id: str, conversation: str = "c1", *, claim: bool = True, bot: str = "bot"):
    return journal.accept(bot, conversation, message_id, json.dumps({"id": message_id}).encode(), claim=claim)


def reply(message_id: str, conversation: str = "c1", seq: int = 0) -> SendRequest:
    body = {"receiver": "alice", "receiverType": "user", "category": "message", "type": "text"}
    body |= {"data": {"text": f"re {message_id}"}, "muid": f"{message_id}-{seq}"}
    return SendRequest("/bots/bot/messages", body, message_id, conversation)


# ------------------------------------------------------------------ inbox


def test_accept_claims_a_message_whose_lane_is_free(journal):
    item = accept(journal, "1")
    assert isinstance(item, InboxItem)
    assert (item.message_id, item.conversation, item.attempts) == ("1", "c1", 1)
    assert journal.depth().inbox_running == 1


@pytest.fixture
def traced(monkeypatch) -> list[tuple[str, str]]:
    """(thread name, SQL) of every statement the journal's connections run, as SQLite traces them."""
    statements: list[tuple[str, str]] = []
    connect = sqlite3.connect

    def tracing_connect(*args, **kwargs):
        con = connect(*args, **kwargs)
        con.set_trace_callback(lambda sql: statements.append((threading.current_thread().name, sql)))
        return con

    monkeypatch.setattr(journal_module.sqlite3, "connect", tracing_connect)
    return statements


def accept_at_once(journal: Journal, calls: list[tuple[str, str]]) -> list:
    """accept() from one thread per (message id, conversation), all queued while the write lock is held; the
    results in the order of ``calls``."""
    results: list = [None] * len(calls)

    def run(n: int, message_id: str, conversation: str) -> None:
        results[n] = accept(journal, message_id, conversation)

    threads = [threading.Thread(target=run, args=(n, *call), name=f"request-{n}") for n, call in enumerate(calls)]
    with journal._write_lock:  # as another thread's write would
        for queued, thread in enumerate(threads, 1):
            thread.start()  # one at a time: they queue in the order of ``calls``
            assert wait_for(lambda queued=queued: len(journal._waiting) == queued, 5)
    for thread in threads:
        thread.join(5)
    return results


def test_accepts_waiting_for_the_write_lock_are_written_in_one_transaction(journal, traced):
    calls = [("1", "c1"), ("2", "c1"), ("3", "c2"), ("1", "c1")]  # a second message of c1, another lane, a copy
    results = accept_at_once(journal, calls)

    assert isinstance(results[0], InboxItem) and results[0].message_id == "1"  # the lane was free: claimed
    assert results[1] is True  # queued behind message 1
    assert isinstance(results[2], InboxItem) and results[2].conversation == "c2"
    assert results[3] is False  # the copy: a duplicate, also when in the same transaction as the original
    # (SQLite's trace reports a statement with RETURNING more than once: its INSERTs are not counted here.)
    writes = [(thread, sql.split(" ")[0]) for thread, sql in traced if sql.startswith(("BEGIN", "COMMIT", "INSERT"))]
    assert [sql for _, sql in writes if sql != "INSERT"] == ["BEGIN", "COMMIT"]
    assert writes[0][1] == "BEGIN" and writes[-1][1] == "COMMIT"  # every INSERT inside that one transaction
    assert len({thread for thread, _ in writes}) == 1  # written by one thread, for all four
    assert journal.finish_inbox(results[0]).message_id == "2"  # and the lane goes on as usual


def test_a_failure_in_a_shared_transaction_fails_every_statement_in_it(journal):
    errors: list[BaseException] = []

    def failing() -> None:
        try:
            journal._statement("INSERT INTO no_such_table VALUES (1)", ())
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    def accepting() -> None:
        try:
            accept(journal, "1")
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=failing), threading.Thread(target=accepting)]
    with journal._write_lock:
        for n, thread in enumerate(threads, 1):
            thread.start()
            assert wait_for(lambda n=n: len(journal._waiting) == n, 5)
    for thread in threads:
        thread.join(5)
    assert len(errors) == 2 and errors[0] is not errors[1]  # each thread raises its own
    assert all("no_such_table" in str(exc) for exc in errors)
    assert journal.depth().inbox == 0  # rolled back: the accepted callback is not recorded (and was not answered)
    assert isinstance(accept(journal, "1"), InboxItem)  # the next try writes it


def test_a_forked_child_does_not_write_statements_its_parent_queued(journal):
    parent_statement = journal_module._Statement("INSERT INTO helpers (owner, until) VALUES ('parent', 1)", ())
    journal._waiting.append(parent_statement)  # a parent's thread was about to write it when the process forked
    journal._pid = -1  # what the child sees
    journal._local = threading.local()
    assert isinstance(accept(journal, "1"), InboxItem)
    assert journal.read("SELECT owner FROM helpers") == [] and not parent_statement.done


def test_redelivered_message_is_a_duplicate_per_bot(journal):
    assert isinstance(accept(journal, "1"), InboxItem)
    assert accept(journal, "1") is False
    assert accept(journal, "1", conversation="other") is False  # same id, same bot: still the same message
    assert isinstance(accept(journal, "1", bot="another-bot", conversation="c9"), InboxItem)
    assert journal.depth().inbox == 2


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """What bot.journal sees of the time (its ``time`` module), moved by the test rather than by waiting."""
    clock = Clock()
    monkeypatch.setattr(journal_module, "time", SimpleNamespace(time=clock, monotonic=clock, sleep=clock.advance))
    return clock


def test_message_id_is_forgotten_after_the_dedup_window(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", dedup_ttl=60)
    first = accept(journal, "1")
    journal.finish_inbox(first)
    clock.advance(59)
    assert accept(journal, "1") is False  # handled, and remembered
    clock.advance(2)
    assert accept(journal, "1", conversation="c2") is not False


def test_a_message_still_waiting_is_a_duplicate_however_old(tmp_path, clock):
    """The window counts from acceptance, but a redelivery of a message not yet handled is never taken again."""
    journal = Journal(tmp_path / "j.sqlite3", dedup_ttl=60)
    assert accept(journal, "1") is not False
    clock.advance(61)
    assert accept(journal, "1", conversation="c2") is False
    assert journal.depth().inbox == 1


def test_a_second_message_waits_for_the_first_of_its_conversation(journal):
    first = accept(journal, "1")
    assert accept(journal, "2") is True  # accepted, but not claimable yet
    assert accept(journal, "3", conversation="c2") is not True  # other conversations are not held up
    assert journal.claim_inbox(10) == []
    following = journal.finish_inbox(first)
    assert following is not None and following.message_id == "2"
    assert journal.finish_inbox(following) is None


@pytest.mark.parametrize("claimed_by", ["accept", "claim_inbox", "finish_inbox"])
def test_a_claim_says_whether_replies_of_the_conversation_wait_in_the_outbox(journal, claimed_by):
    """What lets a handler post its replies at once: none of its conversation may be waiting for a retry."""

    def claim(message_id: str, conversation: str) -> InboxItem:
        if claimed_by == "accept":
            return accept(journal, message_id, conversation)
        if claimed_by == "claim_inbox":
            accept(journal, message_id, conversation, claim=False)
            return journal.claim_inbox(1)[0]
        first = accept(journal, f"{message_id}-before", conversation)
        accept(journal, message_id, conversation)  # waits behind the first
        return journal.finish_inbox(first)

    journal.add_reply(reply("0", "waiting"), accepted_at=time.time(), claim=False, not_before=time.time() + 60)
    behind = claim("1", "waiting")
    free = claim("2", "free")
    assert (behind.message_id, behind.replies_waiting) == ("1", True)
    assert (free.message_id, free.replies_waiting) == ("2", False)


def test_claim_takes_lane_heads_oldest_first(journal):
    for message_id, conversation in [("1", "a"), ("2", "a"), ("3", "b"), ("4", "c"), ("5", "b")]:
        accept(journal, message_id, conversation, claim=False)
    claimed = journal.claim_inbox(10)
    assert [item.message_id for item in claimed] == ["1", "3", "4"]
    assert journal.claim_inbox(10) == []  # the rest wait behind running messages
    assert [item.message_id for item in journal.claim_inbox(1)] == []


def test_claim_respects_the_limit(journal):
    for i in range(5):
        accept(journal, str(i), f"c{i}", claim=False)
    assert len(journal.claim_inbox(2)) == 2
    assert len(journal.claim_inbox(10)) == 3


def test_lanes_hold_across_processes(journal):
    """A message accepted by one process waits while another process handles its conversation's earlier one."""
    other = other_process(journal, owner="host:1:1")
    running_elsewhere = accept(other, "1")
    assert isinstance(running_elsewhere, InboxItem)
    assert accept(journal, "2") is True
    assert journal.claim_inbox(10) == []
    handed_on = other.finish_inbox(running_elsewhere)  # the other process finishes and takes the next one
    assert handed_on is not None and handed_on.message_id == "2"


def test_handler_crash_dead_letter(journal):
    item = accept(journal, "1")
    accept(journal, "2")
    following = journal.dead_letter_message(item, "claimed 4 times without finishing")
    assert following is not None and following.message_id == "2"
    [letter] = journal.dead_letters()
    assert (letter["kind"], letter["message_id"], letter["error_code"]) == ("message", "1", "HANDLER_CRASHED")


# ------------------------------------------------------------------ outbox


def test_reply_is_claimed_when_its_lane_is_free_and_waits_otherwise(journal):
    first = journal.add_reply(reply("1", seq=0), accepted_at=time.time(), claim=True)
    assert isinstance(first, OutboxItem)
    assert first.request.body["muid"] == "1-0"
    assert journal.add_reply(reply("1", seq=1), accepted_at=time.time(), claim=True) is True
    assert journal.claim_replies(10) == []
    following = journal.finish_reply(first)
    assert following is not None and following.request.muid == "1-1"


def test_a_reply_is_queued_once_per_muid(journal):
    assert journal.add_reply(reply("1"), accepted_at=0, claim=False) is True
    assert journal.add_reply(reply("1"), accepted_at=0, claim=False) is False
    assert journal.depth().outbox == 1


def test_retry_holds_the_lane_until_due(journal):
    first = journal.add_reply(reply("1", seq=0), accepted_at=0, claim=True)
    journal.add_reply(reply("1", seq=1), accepted_at=0, claim=False)
    journal.add_reply(reply("9", conversation="c2"), accepted_at=0, claim=False)
    journal.retry_reply(first, time.time() + 60)
    claimed = journal.claim_replies(10)
    assert [item.request.muid for item in claimed] == ["9-0"]  # c1 waits behind its failed reply; c2 goes on
    assert journal.next_due() == pytest.approx(time.time() + 60, abs=5)
    journal.retry_reply(first, time.time() - 1)  # now due
    [again] = journal.claim_replies(10)
    assert (again.request.muid, again.attempts) == ("1-0", 2)


def test_a_retry_after_an_attempt_in_doubt_is_looked_up_first_and_stays_so(journal):
    item = journal.add_reply(reply("1"), accepted_at=0, claim=True)
    journal.retry_reply(item, time.time() - 1, verify=True)  # timed out after it was sent
    [again] = journal.claim_replies(5)
    assert again.verify
    journal.retry_reply(again, time.time() - 1, verify=False)  # then a 429: the earlier attempt is still in doubt
    [third] = journal.claim_replies(5)
    assert (third.attempts, third.verify) == (2, True)


def test_dead_letter_reply_keeps_the_request_and_hands_on(journal):
    first = journal.add_reply(reply("1", seq=0), accepted_at=0, claim=True)
    journal.add_reply(reply("1", seq=1), accepted_at=0, claim=False)
    following = journal.dead_letter_reply(first, "ERR_UID_NOT_FOUND", "NotFound: no such user")
    assert following is not None and following.request.muid == "1-1"
    [letter] = journal.dead_letters()
    assert (letter["kind"], letter["error_code"], letter["attempts"]) == ("reply", "ERR_UID_NOT_FOUND", 1)
    assert json.loads(letter["body"])["muid"] == "1-0"
    assert journal.depth().dead_letters == 1


def test_requeue_dead_letter(journal):
    first = journal.add_reply(reply("1"), accepted_at=100.0, claim=True)
    journal.dead_letter_reply(first, "ERR_NOT_A_MEMBER", "Forbidden")
    [letter] = journal.dead_letters()
    assert journal.requeue_dead_letter(letter["id"]) is True
    assert journal.requeue_dead_letter(letter["id"]) is False
    [item] = journal.claim_replies(5)
    assert item.request.muid == "1-0"
    assert (item.accepted_at, item.verify) == (100.0, False)  # its callback's time; a 403 was not carried out
    assert journal.dead_letters() == []


@pytest.mark.parametrize(
    ("earlier_in_doubt", "last_in_doubt", "verify"),
    [(False, False, False), (True, False, True), (False, True, True)],
    ids=["never in doubt", "an earlier attempt in doubt", "the last attempt in doubt"],
)
def test_a_requeued_dead_letter_is_looked_up_if_an_attempt_may_have_been_carried_out(
    journal, earlier_in_doubt, last_in_doubt, verify
):
    journal.add_reply(reply("1"), accepted_at=100.0, claim=False, verify=earlier_in_doubt)
    [item] = journal.claim_replies(5)
    journal.dead_letter_reply(item, "ERR_TRANSPORT", "no answer within 10 s", in_doubt=last_in_doubt)
    [letter] = journal.dead_letters()
    assert (letter["accepted_at"], letter["verify"]) == (100.0, verify)
    journal.requeue_dead_letter(letter["id"])
    [again] = journal.claim_replies(5)
    assert (again.accepted_at, again.verify) == (100.0, verify)


@pytest.mark.parametrize("in_doubt", [False, True])
def test_a_reply_dead_on_its_inline_attempt_keeps_its_callback_time_and_doubt(journal, in_doubt):
    journal.dead_letter_request(reply("1"), "ERR_TRANSPORT", "reset", accepted_at=100.0, in_doubt=in_doubt)
    [letter] = journal.dead_letters()
    assert (letter["attempts"], letter["accepted_at"], letter["verify"]) == (1, 100.0, in_doubt)


# ------------------------------------------------------------------ recovery


def test_recover_releases_rows_of_dead_processes_only(journal):
    crashed = other_process(journal, dead_owner())
    accept(crashed, "1", "c1")
    crashed.add_reply(reply("0", conversation="c3"), accepted_at=0, claim=True)
    accept(journal, "2", "c2")  # ours, alive
    assert journal.recover() == (1, 1)
    assert [item.message_id for item in journal.claim_inbox(10)] == ["1"]
    assert [item.request.muid for item in journal.claim_replies(10)] == ["0-0"]


def test_replies_a_dead_process_held_are_looked_up_before_they_are_sent_again(journal):
    crashed = other_process(journal, dead_owner())
    crashed.add_reply(reply("0", conversation="c3"), accepted_at=0, claim=True)  # held: perhaps in flight
    crashed.add_reply(reply("5", conversation="c4"), accepted_at=0, claim=False)  # waiting: nobody sent it
    assert journal.recover() == (0, 1)
    claimed = {item.request.muid: item.verify for item in journal.claim_replies(10)}
    assert claimed == {"0-0": True, "5-0": False}


def test_a_reply_queued_for_verification_keeps_the_mark(journal):
    item = journal.add_reply(reply("1"), accepted_at=0, claim=True, verify=True)
    assert isinstance(item, OutboxItem) and item.verify
    journal.add_reply(reply("1", seq=1), accepted_at=0, claim=False)
    following = journal.finish_reply(item)
    assert following is not None and (following.request.muid, following.verify) == ("1-1", False)


def test_owner_alive():
    assert owner_alive(process_owner())
    host = process_owner().split(":")[0]
    assert not owner_alive(f"{host}:999999999:1")
    pid_reused = process_owner().rsplit(":", 1)[0] + ":123"  # our pid, another start time
    assert not owner_alive(pid_reused)


def test_release_gives_claimed_rows_back(journal):
    item = accept(journal, "1")
    sent = journal.add_reply(reply("1"), accepted_at=0, claim=True)
    journal.release([item], [sent])
    assert journal.depth().inbox_running == 0
    [again] = journal.claim_inbox(5)
    assert (again.message_id, again.attempts) == ("1", 1)  # never started: the release is not a failed attempt
    assert len(journal.claim_replies(5)) == 1


def test_purge_forgets_expired_keys_only(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3", dedup_ttl=0.0)
    journal.finish_inbox(accept(journal, "1"))  # a key is in ``seen`` once its message left the inbox
    assert journal.purge_seen() == 1
    long = Journal(tmp_path / "k.sqlite3", dedup_ttl=3600)
    long.finish_inbox(accept(long, "1"))
    assert long.purge_seen() == 0


def test_journal_survives_reopening(tmp_path):
    path = tmp_path / "j.sqlite3"
    first = Journal(path)
    accept(first, "1", claim=False)
    first.close()
    again = Journal(path)
    assert [item.message_id for item in again.claim_inbox(5)] == ["1"]
    assert accept(again, "1") is False


# ------------------------------------------------------------------ rate limit


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [("500/min", 500, 60), ("20/s", 20, 1), ("1000 / hour", 1000, 3600), ("5/MINUTE", 5, 60)],
)
def test_rate_limit_parse(text, count, seconds):
    assert RateLimit.parse(text) == RateLimit(count, seconds)


@pytest.mark.parametrize("text", ["500", "a/min", "10/fortnight", "0/s", "-1/s"])
def test_rate_limit_parse_rejects(text):
    with pytest.raises(ConfigError, match="COMETCHAT_RATE_LIMIT"):
        RateLimit.parse(text)


def test_rate_limit_paces_claims(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(2, 1))  # 2/s, burst 2
    for i in range(5):
        journal.add_reply(reply(str(i), conversation=f"c{i}"), accepted_at=0, claim=False)
    assert len(journal.claim_replies(10)) == 2
    assert journal.claim_replies(10) == []
    assert 0 < journal.next_token_in() <= 0.5
    # A fresh reply is not claimed at once either while the bucket is empty.
    assert journal.add_reply(reply("x", conversation="cx"), accepted_at=0, claim=True) is True


def test_tokens_taken_for_direct_sends_and_claims_come_from_one_bucket(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(2, 1))  # 2/s, burst 2
    assert [journal.take_token() for _ in range(3)] == [True, True, False]
    journal.add_reply(reply("queued", conversation="c1"), accepted_at=0, claim=False)
    assert journal.claim_replies(10) == []  # the direct sends used what the bucket held
    assert 0 < journal.next_token_in() <= 0.5


def test_without_a_rate_limit_a_token_is_always_there(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    assert all(journal.take_token() for _ in range(100))


def test_a_token_taken_with_an_earlier_time_does_not_refill_the_bucket_twice(tmp_path, clock):
    # Statements written together, or after waiting for another process's lock, are written after later ones.
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(2, 1))  # 2/s, burst 2
    assert [journal.take_token() for _ in range(3)] == [True, True, False]
    clock.advance(1)
    assert journal.take_token()  # refilled to 2: one left
    clock.advance(-0.5)  # a thread that read the time half a second earlier
    assert journal.take_token()  # the last one
    clock.advance(0.5)  # the time of the last write again: nothing refilled since
    assert not journal.take_token()
    journal.add_reply(reply("queued"), accepted_at=0, claim=False)
    assert journal.claim_replies(1) == []
    clock.advance(0.5)
    assert len(journal.claim_replies(1)) == 1


def bucket_tokens(journal: Journal) -> float:
    [(tokens,)] = journal.read("SELECT tokens FROM rate_bucket")
    return tokens


@pytest.mark.parametrize(
    ("limit", "lease"),
    [(RateLimit(500, 60), 1), (RateLimit(2, 1), 1), (RateLimit(6000, 60), 10), (RateLimit(600_000, 60), 32)],
)
def test_a_lease_is_a_tenth_of_a_second_of_the_rate_at_most_32(limit, lease):
    assert limit.lease == lease


def test_direct_sends_take_their_tokens_a_lease_at_a_time(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(6000, 60))  # 100/s: burst 100, leases of 10
    assert journal.take_token()
    assert bucket_tokens(journal) == 90  # ten taken in one write
    assert journal.take_token()  # 9 held, fewer than a lease: the next ten, before these run out
    assert bucket_tokens(journal) == 80
    assert all(journal.take_token() for _ in range(8))  # 18 held: 10 left
    assert bucket_tokens(journal) == 80  # spent from the lease: no write
    assert journal.take_token()
    assert bucket_tokens(journal) == 70


def test_threads_spend_from_the_lease_while_the_next_batch_is_taken(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(6000, 60))  # leases of 10
    assert all(journal.take_token() for _ in range(10))  # 10 left (of two batches): the next take takes a third
    spent = []
    with journal._write_lock:  # ... and waits to write it
        topping_up = threading.Thread(target=lambda: spent.append(journal.take_token()), daemon=True)
        topping_up.start()
        assert wait_for(lambda: journal._waiting, 5)
        others = [threading.Thread(target=lambda: spent.append(journal.take_token()), daemon=True) for _ in range(3)]
        for thread in others:
            thread.start()
        for thread in others:
            thread.join(5)
        assert spent == [True] * 3  # spent from the batch still held, not waiting for the write
    topping_up.join(5)
    assert spent == [True] * 4
    assert bucket_tokens(journal) == 70


def test_a_lease_takes_what_the_bucket_holds_and_gives_back_what_it_did_not_spend(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(6000, 60))  # 100/s: burst 100, leases of 10
    assert sum(journal.take_token() for _ in range(101)) == 100
    clock.advance(0.05)  # 5 tokens again
    assert journal.take_token()  # a lease of the 5 there are: 4 left in it
    assert bucket_tokens(journal) == pytest.approx(0, abs=1e-6)
    clock.advance(0.2)  # the lease ran out unspent; the bucket gained 20
    assert journal.take_token()
    assert bucket_tokens(journal) == pytest.approx(20 + 4 - 10, abs=1e-6)


def test_leases_of_several_processes_never_send_more_than_the_bucket_allows(tmp_path, clock):
    path = tmp_path / "j.sqlite3"
    journals = [Journal(path, rate_limit=RateLimit(6000, 60)) for _ in range(3)]  # one per process: burst 100
    sent = sum(journal.take_token() for _ in range(60) for journal in journals)
    assert sent == 100
    clock.advance(1)  # a second: the bucket is full again, and the leases have run out
    assert sum(journal.take_token() for _ in range(60) for journal in journals) == 100


def test_threads_spending_one_lease_never_send_more_than_the_bucket_allows(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(6000, 60))  # burst 100, leases of 10
    counts = [0] * 8

    def send(i: int) -> None:
        counts[i] = sum(journal.take_token() for _ in range(50))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(counts) == 100


def test_tokens_given_back_are_claimed_from_the_outbox(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(2, 1))  # 2/s, burst 2
    assert journal.take_token() and journal.take_token()
    for i in range(3):
        journal.add_reply(reply(str(i), conversation=f"c{i}"), accepted_at=0, claim=False)
    assert journal.claim_replies(10) == []
    journal.give_back_tokens(2)  # their replies went to the outbox unsent
    assert len(journal.claim_replies(10)) == 2
    journal.give_back_tokens(5)
    assert bucket_tokens(journal) == 2  # never more than the burst


def test_a_forked_child_does_not_spend_its_parents_lease(tmp_path, clock):
    journal = Journal(tmp_path / "j.sqlite3", rate_limit=RateLimit(6000, 60))  # leases of 10
    assert journal.take_token()  # the parent holds 9
    journal._lease.pid = -1  # the lease is another process's (what a forked child sees)
    assert journal.take_token()
    assert bucket_tokens(journal) == 80  # the child took a lease of its own


def test_synchronous_setting_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="JOURNAL_SYNC"):
        Journal(tmp_path / "j.sqlite3", synchronous="sometimes")


#: The tables as the first released version wrote them (before request meta and the dedup columns).
FIRST_SCHEMA = """
CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, message_id TEXT NOT NULL,
    body BLOB NOT NULL, owner TEXT, attempts INTEGER NOT NULL DEFAULT 0, accepted_at REAL NOT NULL);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, message_id TEXT NOT NULL,
    path TEXT NOT NULL, body TEXT NOT NULL, owner TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, accepted_at REAL NOT NULL);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, conversation TEXT NOT NULL,
    message_id TEXT NOT NULL, path TEXT, body TEXT NOT NULL, error_code TEXT NOT NULL, error TEXT NOT NULL,
    attempts INTEGER NOT NULL, failed_at REAL NOT NULL);
INSERT INTO inbox (conversation, message_id, body, owner, attempts, accepted_at)
    VALUES ('c1', 'old', x'7b7d', NULL, 0, 1);
"""


def test_a_journal_of_the_first_version_is_brought_up_to_date(tmp_path):
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(FIRST_SCHEMA)
    con.close()
    journal = Journal(path)
    [waiting] = journal.claim_inbox(10)  # what the old version accepted is still there
    assert waiting.message_id == "old"
    assert accept(journal, "new") is True  # queued behind it: same conversation
    assert accept(journal, "new") is False  # and deduplicated
    assert journal.finish_inbox(waiting).message_id == "new"  # the lane goes on
    journal.add_reply(reply("new"), accepted_at=time.time(), claim=False)
    assert journal.claim_replies(1)[0].request.body["muid"] == "new-0"


def test_finish_many_drops_messages_and_claims_their_lanes_next_ones(journal):
    first_a, first_b, only_c = accept(journal, "1", "a"), accept(journal, "2", "b"), accept(journal, "3", "c")
    accept(journal, "4", "a")
    accept(journal, "5", "b")
    following = journal.finish_many([first_a, first_b, only_c])
    assert [(item.message_id, item.conversation, item.attempts) for item in following] == [("4", "a", 1), ("5", "b", 1)]
    assert journal.depth().inbox == journal.depth().inbox_running == 2
    assert journal.finish_many(following) == []
    assert journal.depth().inbox == 0


def test_finish_many_takes_a_long_batch_in_chunks(journal, monkeypatch):
    monkeypatch.setattr(journal_module, "FINISH_CHUNK", 2)
    firsts = [accept(journal, f"first-{n}", f"c{n}") for n in range(5)]
    for n in (0, 3, 4):
        accept(journal, f"next-{n}", f"c{n}")
    following = journal.finish_many(firsts)
    assert sorted(item.message_id for item in following) == ["next-0", "next-3", "next-4"]
    assert journal.depth().inbox == journal.depth().inbox_running == 3


def page_size(path) -> int:
    with sqlite3.connect(path) as con:
        return con.execute("PRAGMA page_size").fetchone()[0]


def test_a_new_journal_uses_small_pages(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    accept(journal, "m1")
    assert page_size(tmp_path / "j.sqlite3") == journal_module.PAGE_SIZE == 2048
    with sqlite3.connect(tmp_path / "j.sqlite3") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_journal_with_other_pages_keeps_them_and_works(tmp_path):
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path) as con:  # an older journal: 4 KB pages, WAL mode, already has a table
        con.execute("PRAGMA page_size=4096")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE unrelated (x)")
    journal = Journal(path)
    item = accept(journal, "m1")
    assert isinstance(item, InboxItem) and accept(journal, "m1") is False
    assert page_size(path) == 4096


def test_a_journal_of_the_version_that_wrote_seen_on_accepting_keeps_deduplicating(tmp_path):
    """Until this version a trigger wrote each message's key to ``seen`` as it was accepted; it is replaced."""
    path = tmp_path / "j.sqlite3"
    accept(Journal(path), "old", claim=False)
    with sqlite3.connect(path) as con:  # as the earlier version left it: its trigger, the key already in seen
        con.execute("DROP TRIGGER inbox_seen")
        con.execute(
            "CREATE TRIGGER inbox_dedup BEFORE INSERT ON inbox WHEN NEW.dedup_key IS NOT NULL BEGIN"
            " SELECT RAISE(IGNORE) WHERE EXISTS (SELECT 1 FROM seen WHERE key = NEW.dedup_key"
            " AND expires_at >= NEW.accepted_at);"
            " INSERT INTO seen (key, expires_at) VALUES (NEW.dedup_key, NEW.dedup_until)"
            " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at; END"
        )
        con.execute("INSERT INTO seen (key, expires_at) VALUES ('m\x1fbot\x1fold', 9e9)")
    journal = Journal(path)
    with sqlite3.connect(path) as con:
        triggers = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "inbox_dedup" not in triggers and {"inbox_seen", "inbox_remember"} <= triggers
    assert accept(journal, "old") is False  # waiting in the inbox
    [waiting] = journal.claim_inbox(5)
    journal.finish_inbox(waiting)
    assert accept(journal, "old") is False  # handled
    assert isinstance(accept(journal, "new"), InboxItem)
    assert accept(journal, "new") is False


def test_a_journal_that_holds_a_message_twice_opens_and_handles_both(tmp_path):
    """An earlier version accepted a redelivery again once the first copy had waited past the dedup window; the
    unique index on the key that came since could not be made over such rows, and the journal would not open."""
    path = tmp_path / "j.sqlite3"
    accept(Journal(path), "twice", claim=False)
    with sqlite3.connect(path) as con:  # as the earlier version could leave it: no index, the message twice
        con.execute("DROP INDEX inbox_key")
        con.execute(
            "INSERT INTO inbox (conversation, message_id, body, attempts, accepted_at, dedup_key, dedup_until)"
            " SELECT conversation, message_id, body, 0, accepted_at + 1, dedup_key, dedup_until FROM inbox"
        )
    journal = Journal(path)
    with sqlite3.connect(path) as con:
        keys = [row[0] for row in con.execute("SELECT dedup_key FROM inbox ORDER BY seq")]
        assert con.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'inbox_key'").fetchone()
    assert keys == ["m\x1fbot\x1ftwice", None]  # the first copy keeps the key
    assert accept(journal, "twice") is False  # deduplicated against the first copy
    [first] = journal.claim_inbox(5)  # one lane: the second copy waits for the first
    second = journal.finish_inbox(first) or journal.claim_inbox(5)[0]
    assert (first.message_id, second.message_id) == ("twice", "twice") and second.seq > first.seq
    assert accept(journal, "twice") is False  # the first copy's key is in ``seen`` now


def test_a_journal_whose_outbox_has_no_verify_column_gets_it(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path).add_reply(reply("old"), accepted_at=0, claim=False)
    with sqlite3.connect(path) as con:  # as the earlier version left it
        con.execute("ALTER TABLE outbox DROP COLUMN verify")
    journal = Journal(path)
    [waiting] = journal.claim_replies(5)
    assert (waiting.request.muid, waiting.verify) == ("old-0", False)
    assert journal.add_reply(reply("new", conversation="c2"), accepted_at=0, claim=True, verify=True).verify


def test_an_older_journals_rate_bucket_gets_the_leases_column(tmp_path, clock):
    path = tmp_path / "j.sqlite3"
    assert Journal(path, rate_limit=RateLimit(6000, 60)).take_token()
    with sqlite3.connect(path) as con:  # as the earlier version left it
        con.execute("ALTER TABLE rate_bucket DROP COLUMN taken")
    journal = Journal(path, rate_limit=RateLimit(6000, 60))
    assert journal.take_token()
    assert bucket_tokens(journal) == 80


def test_a_dead_letter_of_an_older_journal_is_looked_up_from_its_failure_when_requeued(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path).dead_letter_request(reply("old"), "ERR_TRANSPORT", "reset", accepted_at=0)
    with sqlite3.connect(path) as con:  # as the earlier version left it: it kept neither
        con.execute("ALTER TABLE dead_letters DROP COLUMN accepted_at")
        con.execute("ALTER TABLE dead_letters DROP COLUMN verify")
        [(failed_at,)] = con.execute("SELECT failed_at FROM dead_letters")
    journal = Journal(path)
    [letter] = journal.dead_letters()
    assert (letter["accepted_at"], letter["verify"]) == (None, 0)
    assert journal.requeue_dead_letter(letter["id"])
    [again] = journal.claim_replies(5)
    assert (again.request.muid, again.accepted_at, again.verify) == ("old-0", failed_at, True)  # not known: looked up


def test_the_wal_starts_over_while_writes_go_on(tmp_path, monkeypatch):
    # A PASSIVE checkpoint never catches up with a writer that does not pause, and the WAL only starts over after
    # one did: it grew with every message (150 MB in 8 s of the benchmark). Journal.checkpoint restarts it.
    monkeypatch.setattr(journal_module, "WAL_RESTART_PAGES", 512)
    journal = Journal(tmp_path / "j.sqlite3")
    written, stop = [0], threading.Event()
    progress = threading.Condition()

    def write() -> None:
        while not stop.is_set():
            journal.finish_inbox(accept(journal, f"m{written[0]}", f"c{written[0]}"))
            with progress:
                written[0] += 1
                progress.notify_all()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    lengths = []
    try:
        for _ in range(10):  # paced by the writer's progress (40 messages are more than 512 pages), not by time
            with progress:
                target = written[0] + 40
                assert progress.wait_for(lambda target=target: written[0] >= target, timeout=10)
            lengths.append(journal.checkpoint())
    finally:
        stop.set()
        writer.join(10)
    assert max(lengths) > 512  # it did grow past the limit between checkpoints...
    assert any(later < earlier for earlier, later in itertools.pairwise(lengths)), lengths  # ...and started over

"""Callback bodies -> typed messages: every CometChat sample is accepted, every invalid one rejected by name."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from marshmallow import ValidationError

from bot.errors import CallbackError, InvalidCallback
from bot.message import Message
from bot.schemas import ENVELOPE, MESSAGE, _fast_envelope, _fast_message, parse_callback
from tests.conftest import BOT_UID, INVALID_PAYLOADS, PAYLOADS


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_every_sample_parses_into_a_message(path):
    body = json.loads(path.read_text())
    callback = parse_callback(body, bot_uid=BOT_UID)
    msg = callback.message
    assert isinstance(msg, Message)
    raw = body["data"].get("message", body["data"])  # webhook v2 nests the message one level deeper
    assert msg.id == str(raw["id"]) and msg.category == raw["category"] and msg.type == raw["type"]
    assert msg.sender.uid == (raw["sender"] if isinstance(raw["sender"], str) else raw["sender"]["uid"]).lower()
    assert msg.is_group == (raw["receiverType"] == "group")
    assert msg.conversation_id
    assert isinstance(msg.sent_at, datetime | None)
    assert all(isinstance(a.size, int | None) for a in msg.attachments)
    assert msg.raw == raw


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("text_user", {"text": "I need help with my account", "is_group": False, "receiver": "helpdesk-bot"}),
        ("text_group", {"is_group": True, "receiver_type": "group"}),
        ("image", {"type": "image"}),
        ("custom_location", {"category": "custom", "type": "location"}),
        ("edited_action", {"category": "action"}),
        ("webhook_v2_message_sent", {"id": "9047", "category": "message"}),
        ("minimal_no_optional_fields", {"attachments": (), "parent_id": None}),
    ],
)
def test_sample_fields(sample, expected, payload):
    msg = parse_callback(payload(sample), bot_uid=BOT_UID).message
    for name, value in expected.items():
        got = getattr(msg, name)
        assert (tuple(got) if isinstance(value, tuple) else got) == value, name


def test_sender_entity_and_sent_at(payload):
    msg = parse_callback(payload("text_user"), bot_uid=BOT_UID).message
    assert (msg.sender.uid, msg.sender.name, msg.sender.role) == ("alice", "Alice", "default")
    assert msg.sent_at.timestamp() == 1763000123


def test_file_size_given_as_a_string_becomes_an_int(payload):
    [attachment] = parse_callback(payload("file_size_as_string"), bot_uid=BOT_UID).message.attachments
    assert isinstance(attachment.size, int) and attachment.size > 0


def test_thread_reply_keeps_its_parent(payload):
    body = payload("thread_reply")
    msg = parse_callback(body, bot_uid=BOT_UID).message
    assert msg.parent_id == str(body["data"]["parentId"])


def test_mentions_are_normalised_in_text_but_kept_in_raw_text(payload):
    body = payload("text_group_mention")
    msg = parse_callback(body, bot_uid=BOT_UID).message
    assert msg.raw_text == body["data"]["data"]["text"]
    assert "<@uid:" in msg.raw_text and "<@uid:" not in msg.text
    assert msg.mentions


def test_custom_data_is_passed_through(payload):
    body = payload("custom_location")
    msg = parse_callback(body, bot_uid=BOT_UID).message
    assert msg.custom_data == body["data"]["data"]["customData"]


# not_json.json is rejected before the schema, by the blueprint (tests/test_blueprint.py).
@pytest.mark.parametrize("path", [p for p in INVALID_PAYLOADS if p.stem != "not_json"], ids=lambda p: p.stem)
def test_every_invalid_sample_is_rejected(path):
    with pytest.raises(CallbackError) as caught:
        parse_callback(json.loads(path.read_text()), bot_uid=BOT_UID)
    assert caught.value.status == 400 and caught.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.pop("id"), "id"),
        (lambda m: m.update(receiverType="channel"), "receiverType"),
        (lambda m: m.update(sender=42), "sender"),
        (lambda m: m["data"].update(text=["not", "text"]), "text"),
        (lambda m: m.update(sentAt="yesterday"), "sentAt"),
    ],
    ids=["no-id", "receiver-type", "sender-type", "text-type", "sent-at"],
)
def test_schema_errors_name_the_field(change, field, payload):
    body = payload("text_user")
    change(body["data"])
    with pytest.raises(InvalidCallback) as caught:
        parse_callback(body, bot_uid=BOT_UID)
    assert field in json.dumps(caught.value.to_json())


@pytest.mark.parametrize("trigger", ["before_message", "after_something_new"])
def test_unknown_triggers_parse_without_a_message(trigger, payload):
    body = payload("text_user")
    body["trigger"] = trigger
    assert parse_callback(body, bot_uid=BOT_UID).message is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "alice_user_helpdesk-bot"),
        ({"receiverType": "group", "receiver": "ops"}, "group_ops"),
        ({"sender": "zoe"}, "helpdesk-bot_user_zoe"),
    ],
)
def test_a_missing_conversation_id_is_derived(change, expected, payload):
    """Without it every such message would share one lane (one conversation) and be handled one at a time."""
    body = payload("text_user")
    del body["data"]["conversationId"]
    body["data"].update(change)
    assert parse_callback(body, bot_uid=BOT_UID).message.conversation_id == expected


# ------------------------------------------------------------------ the fast path agrees with the schemas

#: Odd values tried in place of every field (and every field of ``data``), besides leaving it out.
ODD_VALUES = [None, 0, 7, -3, 1.5, True, "", "  ", " Alice ", "USER", "Group", "123", [], {}, {"uid": "x"}, 1e12]


def variations(raw: dict):
    """The message, and the message with each field (and each field of its data) left out or made odd."""
    yield raw
    for key in raw:
        yield {k: v for k, v in raw.items() if k != key}
        for odd in ODD_VALUES:
            yield {**raw, key: odd}
    data = raw.get("data")
    if isinstance(data, dict):
        for key in [*data, "attachments", "customData", "custom_data", "mentions"]:
            yield {**raw, "data": {k: v for k, v in data.items() if k != key}}
            for odd in ODD_VALUES:
                yield {**raw, "data": {**data, key: odd}}


def schema_load(schema, raw):
    try:
        return schema.load(raw)
    except ValidationError:
        return "invalid"


@pytest.mark.parametrize("path", PAYLOADS + INVALID_PAYLOADS, ids=lambda p: p.stem)
def test_the_fast_path_loads_exactly_what_the_schemas_load_or_leaves_it_to_them(path):
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # not JSON: never reaches the schemas
    if not isinstance(body, dict):
        return
    fast_taken = 0
    for envelope in variations(body):
        fast = _fast_envelope(envelope)
        assert fast is None or fast == ENVELOPE.load(envelope)
    message = body.get("data", {})
    message = message.get("message", message) if isinstance(message, dict) else message
    if not isinstance(message, dict):
        return
    for raw in variations(message):
        fast = _fast_message(raw)
        if fast is not None:
            fast_taken += 1
            assert fast == schema_load(MESSAGE, raw), raw
    if path.stem in {"text_user", "text_group", "slash_command", "unicode_and_html"}:
        assert fast_taken > 10  # the plain text samples do take the fast path


@pytest.mark.parametrize("sent_at", [1763000123, "1763000123", None])
def test_a_plain_text_message_takes_the_fast_path_whatever_the_spelling_of_its_time(sent_at, payload):
    """The benchmark harness sends ``sentAt`` as a digit string: through the schemas its callbacks cost 17 % more
    instructions in the app (parsing ~80 us instead of ~30 us)."""
    raw = payload("text_user")["data"]
    raw["sentAt"] = sent_at
    fast = _fast_message(raw)
    assert fast is not None
    assert fast == MESSAGE.load(raw)

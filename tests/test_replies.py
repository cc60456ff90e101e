"""Reply objects -> CometChat request bodies: targets, muids, splitting under the 10 KB data limit."""

from __future__ import annotations

import json
import uuid

import pytest

from bot.replies import (
    _MUID_NAMESPACE,
    MAX_DATA_BYTES,
    Audio,
    Custom,
    File,
    Image,
    Text,
    Video,
    build_requests,
    coerce,
    muid,
    split_text,
)
from bot.testing import make_message


def data_size(body: dict) -> int:
    return len(json.dumps(body["data"], ensure_ascii=False, separators=(",", ":")).encode())


@pytest.mark.parametrize(
    ("reply", "type_", "data"),
    [
        (Text("hi"), "text", {"text": "hi", "metadata": {"@bot": "bot"}}),
        (Image(url="https://x/c.png"), "image", None),
        (File(url="https://x/r.pdf", name="r.pdf"), "file", None),
        (Audio(url="https://x/a.mp3"), "audio", None),
        (Video(url="https://x/v.mp4"), "video", None),
        (
            Custom("location", {"lat": 1.5, "lon": 2}),
            "location",
            {"customData": {"lat": 1.5, "lon": 2}, "metadata": {"@bot": "bot"}},
        ),
    ],
)
def test_bodies_for_a_one_to_one_message_go_to_the_sender(reply, type_, data):
    [request] = build_requests(make_message("q", sender="alice", bot="bot"), [reply], bot_uid="bot")
    body = request.body
    assert request.path == "/bots/bot/messages"
    assert (body["receiver"], body["receiverType"], body["type"]) == ("alice", "user", type_)
    assert body["category"] == ("custom" if isinstance(reply, Custom) else "message")
    if data is not None:
        assert body["data"] == data
    if type_ in {"image", "file", "audio", "video"}:
        [attachment] = body["data"]["attachments"]
        assert attachment["url"] == reply.url


def test_group_messages_are_answered_to_the_group():
    [request] = build_requests(make_message("q", sender="alice", group="ops"), [Text("hi")], bot_uid="bot")
    assert (request.body["receiver"], request.body["receiverType"]) == ("ops", "group")


def test_muids_are_stable_per_message_and_position():
    msg = make_message("q", id="77")
    first = [r.body["muid"] for r in build_requests(msg, [Text("a"), Text("b")], bot_uid="bot")]
    again = [r.body["muid"] for r in build_requests(msg, [Text("a"), Text("b")], bot_uid="bot")]
    other = [r.body["muid"] for r in build_requests(make_message("q", id="78"), [Text("a")], bot_uid="bot")]
    assert first == again and first[0] != first[1] and other[0] not in first
    later = build_requests(msg, [Text("c")], bot_uid="bot", first_seq=1)  # msg.reply() numbering continues
    assert later[0].body["muid"] == first[1]


@pytest.mark.parametrize(
    ("result", "texts"),
    [
        (None, []),
        ("hi", ["hi"]),
        (Text("a"), ["a"]),
        (["a", Text("b"), None], ["a", "b"]),
        ((x for x in "ab"), ["a", "b"]),
    ],
    ids=["none", "str", "reply", "list", "generator"],
)
def test_coerce_what_handlers_return(result, texts):
    assert [r.text for r in coerce(result)] == texts


@pytest.mark.parametrize("bad", [42, {"text": "x"}, b"bytes", [object()]], ids=["int", "dict", "bytes", "object"])
def test_coerce_rejects_anything_else(bad):
    with pytest.raises(TypeError):
        coerce(bad)


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_text_is_never_sent(text):
    assert build_requests(make_message("q"), coerce(text), bot_uid="bot") == []


@pytest.mark.parametrize(
    "unit", ["word ", "é", "日本語 ", "🙂", "x"], ids=["ascii", "accent", "cjk", "emoji", "one-word"]
)
def test_long_text_is_split_under_the_data_limit(unit):
    text = unit * (3 * MAX_DATA_BYTES // len(unit.encode()))
    requests = build_requests(make_message("q"), [Text(text)], bot_uid="bot")
    assert len(requests) >= 3
    assert all(data_size(r.body) <= MAX_DATA_BYTES for r in requests)
    pieces = [r.body["data"]["text"] for r in requests]
    assert all(p.strip() for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added
    assert len({r.body["muid"] for r in requests}) == len(requests)


def test_split_prefers_paragraph_breaks():
    paragraph = ("lorem ipsum " * 300).strip()
    pieces = split_text(f"{paragraph}\n\n{paragraph}\n\n{paragraph}", 8000)
    assert pieces == [f"{paragraph}\n\n{paragraph}", paragraph]  # as much as fits, cut at a paragraph break


def test_media_needs_a_url_and_custom_needs_data():
    with pytest.raises(ValueError):
        Image(url="")
    with pytest.raises(ValueError, match="ERR_EMPTY_CUSTOM_DATA"):
        Custom("poll", {})
    with pytest.raises(ValueError, match="10 KB"):
        build_requests(make_message("q"), [Custom("blob", {"x": "y" * MAX_DATA_BYTES})], bot_uid="bot")


def test_metadata_and_tags_travel_with_the_reply():
    [request] = build_requests(make_message("q"), [Text("hi", metadata={"k": 1}, tags=["faq"])], bot_uid="bot")
    # The bot's own marker joins the reply's metadata (other bots' loop guards read it).
    assert request.body["data"] == {"text": "hi", "metadata": {"k": 1, "@bot": "bot"}}
    assert request.body["tags"] == ["faq"]


@pytest.mark.parametrize(("bot", "message_id", "seq"), [("bot", "1", 0), ("helpdesk-bot", "9031", 3), ("b", "é✓", 12)])
def test_muids_are_uuid5_of_bot_message_and_position(bot, message_id, seq):
    # Computed by hand for speed: it must stay exactly the uuid5 earlier versions sent (retries compare them).
    assert muid(bot, message_id, seq) == str(uuid.uuid5(_MUID_NAMESPACE, f"{bot}\x1f{message_id}\x1f{seq}"))

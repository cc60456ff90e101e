"""The CometChat emulator of local mode: the REST API it answers as CometChat would, and when it relays a message."""

from __future__ import annotations

import pytest

from bot.emulator import ApiError, Emulator


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(bot_uid="bot")


def send(emulator: Emulator, body: dict, path: str = "/bots/bot/messages", **headers: str):
    return emulator.handle("POST", path, body, headers)


def text(receiver: str = "alice", receiver_type: str = "user", words: str = "hi", **extra) -> dict:
    return {"receiver": receiver, "receiverType": receiver_type, "category": "message", "type": "text",
            "data": {"text": words}, **extra}  # fmt: skip


# ------------------------------------------------------------------ the REST API the bot calls


def test_a_bot_message_is_stored_and_answered_like_cometchat(emulator):
    status, answer = send(emulator, text(muid="m-1", tags=["faq"]))
    assert status == 200
    message = answer["data"]
    assert message["id"].isdigit() and message["sender"] == "bot"
    assert (message["receiver"], message["receiverType"], message["conversationId"]) == (
        "alice",
        "user",
        "alice_user_bot",
    )
    assert message["data"]["text"] == "hi" and message["muid"] == "m-1" and message["tags"] == ["faq"]
    assert message["data"]["entities"]["sender"]["entity"]["uid"] == "bot"
    assert message["data"]["entities"]["receiver"] == {"entityType": "user", "entity": emulator.users["alice"]}
    assert int(send(emulator, text())[1]["data"]["id"]) == int(message["id"]) + 1  # ids count up, as strings


def test_ids_are_new_after_a_restart():
    """A new emulator (make run started again) must not reuse ids the journal remembers as already handled."""
    first = send(Emulator(), text())[1]["data"]["id"]
    later = send(Emulator(), text())[1]["data"]["id"]
    assert int(later) > int(first)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (text(words=""), 400, "ERR_EMPTY_MESSAGE_TEXT"),
        (text(words="   "), 400, "ERR_EMPTY_MESSAGE_TEXT"),
        (text(words="x" * 11_000), 400, "ERR_INVALID_MESSAGE_DATA"),  # data over 10 KB
        (text(receiver=""), 400, "ERR_EMPTY_RECEIVER"),
        (text(receiver_type="USERS"), 400, "ERR_INVALID_RECEIVER_TYPE"),
        ({**text(), "category": "poll"}, 400, "ERR_INVALID_MESSAGE_CATEGORY"),
        ({**text(), "type": "sticker"}, 400, "ERR_INVALID_MESSAGE_TYPE"),
        ({**text(), "type": "image", "data": {"url": "https://x/a.png"}}, 400, "ERR_INVALID_MEDIA_MESSAGE"),
        ({**text(), "category": "custom", "type": "poll", "data": {"customData": {}}}, 400, "ERR_EMPTY_CUSTOM_DATA"),
        ({**text(), "category": "interactive", "type": "form", "data": {}}, 400, "ERR_INVALID_MESSAGE_DATA"),
        ({**text(), "data": {"text": "hi", "metadata": "x"}}, 400, "ERR_INVALID_METADATA"),
        ({**text(), "tags": ["t"] * 26}, 400, "ERR_BAD_REQUEST"),
        ("not an object", 400, "ERR_BAD_REQUEST"),
    ],
)
def test_what_cometchat_refuses_is_refused_with_its_code(emulator, body, status, code):
    got_status, answer = send(emulator, body)
    assert (got_status, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"]
    assert emulator.messages == {}


def test_messages_are_listed_by_conversation_and_time_oldest_first(emulator):
    first = send(emulator, text(words="one", muid="m-1"))[1]["data"]
    group = send(emulator, text("team", "group", words="to the group"))[1]["data"]
    third = send(emulator, text(words="three", muid="m-3"))[1]["data"]
    for message, sent_at in ((first, 1_000), (group, 2_000), (third, 3_000)):
        emulator.messages[message["id"]]["sentAt"] = sent_at

    status, answer = emulator.handle("GET", "/messages?conversationId=alice_user_bot&fromTimestamp=1000&affix=append")
    assert status == 200
    assert [(m["id"], m["muid"], m["data"]["text"]) for m in answer["data"]] == [
        (first["id"], "m-1", "one"),
        (third["id"], "m-3", "three"),
    ]
    later = emulator.handle("GET", "/messages?conversationId=alice_user_bot&fromTimestamp=2500")[1]["data"]
    assert [m["id"] for m in later] == [third["id"]]
    assert [m["data"]["text"] for m in emulator.handle("GET", "/messages?limit=1")[1]["data"]] == ["one"]
    bad = emulator.handle("GET", "/messages?limit=1001")
    assert (bad[0], bad[1]["error"]["code"]) == (400, "ERR_BAD_REQUEST")


def test_a_threads_replies_are_listed(emulator):
    parent = send(emulator, text())[1]["data"]
    reply = send(emulator, text(words="in thread", muid="t-1"), f"/messages/{parent['id']}/thread", onBehalfOf="bot")
    send(emulator, text(words="not in it"))
    status, answer = emulator.handle("GET", f"/messages/{parent['id']}/thread?fromTimestamp=0&affix=append")
    assert status == 200
    assert [(m["id"], m["muid"]) for m in answer["data"]] == [(reply[1]["data"]["id"], "t-1")]


def test_the_bot_must_be_a_member_of_the_group(emulator):
    emulator.set_member("team", "bot", False)
    status, answer = send(emulator, text("team", "group"))
    assert (status, answer["error"]["code"]) == (403, "ERR_NOT_A_MEMBER")
    emulator.set_member("team", "bot", True)
    assert send(emulator, text("team", "group"))[1]["data"]["conversationId"] == "group_team"


def test_threads_edits_deletes_reactions_and_marks(emulator):
    parent = send(emulator, text())[1]["data"]
    status, answer = send(emulator, text(words="in thread"), f"/messages/{parent['id']}/thread", onBehalfOf="bot")
    assert status == 200 and answer["data"]["parentId"] == parent["id"]
    assert emulator.messages[parent["id"]]["replyCount"] == 1
    nested = send(emulator, text(), f"/messages/{answer['data']['id']}/thread", onBehalfOf="bot")
    assert nested[1]["error"]["code"] == "ERR_MESSAGE_THREAD_NESTING"
    assert send(emulator, text(), f"/messages/{parent['id']}/thread")[1]["error"]["code"] == "ERR_EMPTY_ON_BEHALF_OF"

    edited = emulator.handle("PUT", f"/messages/{parent['id']}", {"data": {"text": "new"}}, {"onBehalfOf": "bot"})
    assert edited[0] == 200 and edited[1]["data"]["data"]["text"] == "new" and edited[1]["data"]["editedAt"]
    by_other = emulator.handle("PUT", f"/messages/{parent['id']}", {"data": {"text": "x"}}, {"onBehalfOf": "alice"})
    assert by_other[0] == 403 and by_other[1]["error"]["code"] == "ERR_MESSAGE_NOT_A_SENDER"

    assert emulator.handle("POST", f"/messages/{parent['id']}/reactions/%F0%9F%91%8D", None, {"onBehalfOf": "bot"})[0]
    assert emulator.messages[parent["id"]]["reactions"] == {"👍": ["bot"]}
    assert emulator.handle("DELETE", f"/messages/{parent['id']}", {"permanent": False}, {"onBehalfOf": "bot"})[0] == 200
    assert emulator.messages[parent["id"]]["deletedAt"]
    assert emulator.handle("GET", "/messages/999/thread")[1]["error"]["code"] == "ERR_MESSAGE_ID_NOT_FOUND"
    assert emulator.handle("GET", "/messages/999/reactions")[1]["error"]["code"] == "ERR_API_NOT_FOUND"
    assert emulator.handle("PUT", "/messages/999", {"data": {}}, {"onBehalfOf": "bot"})[0] == 404

    assert emulator.handle("POST", "/users/alice/conversation/read", None, {"onBehalfOf": "bot"})[0] == 200
    assert "alice_user_bot" in emulator.reads


def test_interactive_messages_can_be_marked_interacted_per_user(emulator):
    form = {**text(), "category": "interactive", "type": "form", "data": {"interactiveData": {"title": "t"}}}
    message = send(emulator, form)[1]["data"]
    path = f"/messages/{message['id']}/interacted"
    assert emulator.handle("PATCH", path, {"interactions": ["submit"]}, {"onBehalfOf": "alice"})[0] == 200
    assert emulator.messages[message["id"]]["interactions"] == {"alice": ["submit"]}
    plain = send(emulator, text())[1]["data"]
    refused = emulator.handle(
        "PATCH", f"/messages/{plain['id']}/interacted", {"interactions": ["x"]}, {"onBehalfOf": "alice"}
    )
    assert refused[0] == 400


# ------------------------------------------------------------------ the relay to the bot


@pytest.fixture
def relayed(emulator) -> list[dict]:
    callbacks: list[dict] = []

    def relay(callback: dict) -> int:
        callbacks.append(callback)
        return 200

    emulator.relay = relay
    return callbacks


def test_a_message_to_the_bot_is_relayed_as_a_bot_callback(emulator, relayed):
    message, status = emulator.send_as_user("alice", "bot", "user", data={"text": "hello <@uid:bob>"})
    assert status == 200
    [callback] = relayed
    assert callback["trigger"] == "after_message" and callback["bot"] == "bot" and callback["chatAPIVersion"] == "3.0"
    data = callback["data"]
    assert data["id"] == message["id"] and data["sender"] == "alice" and data["receiver"] == "bot"
    assert data["conversationId"] == "alice_user_bot"
    assert data["data"]["mentions"]["bob"]["name"] == "Bob"  # mention tokens come with data.mentions


@pytest.mark.parametrize(
    ("setting", "text_", "relays"),
    [
        ("allMessages", "lunch?", True),
        ("mentionedMessages", "lunch?", False),
        ("mentionedMessages", "<@uid:bot> lunch?", True),
        ("slashedMessages", "lunch?", False),
        ("slashedMessages", "/weather Paris", True),
        ("none", "<@uid:bot> /weather", False),
    ],
)
def test_group_messages_are_relayed_as_the_group_setting_says(emulator, relayed, setting, text_, relays):
    emulator.set_group_chat_setting(setting)
    _, status = emulator.send_as_user("alice", "team", "group", data={"text": text_})
    assert (status is not None) is relays and bool(relayed) is relays


def test_nothing_is_relayed_from_groups_without_the_bot_or_between_users(emulator, relayed):
    emulator.set_member("team", "bot", False)
    assert emulator.send_as_user("alice", "team", "group", data={"text": "hi"})[1] is None
    assert emulator.send_as_user("alice", "bob", "user", data={"text": "hi"})[1] is None
    assert relayed == []
    with pytest.raises(ApiError):
        emulator.send_as_user("bot", "alice", "user", data={"text": "as the bot"})


def test_changes_report_new_and_changed_messages_after_a_version(emulator):
    start = emulator.version
    first = send(emulator, text())[1]["data"]
    version, changed = emulator.changes(start)
    assert [m["id"] for m in changed] == [first["id"]] and version > start
    assert emulator.changes(version) == (version, [])  # nothing new: no wait when timeout is 0
    emulator.handle("POST", f"/messages/{first['id']}/reactions/ok", None, {"onBehalfOf": "alice"})
    later, changed = emulator.changes(version)
    assert [m["id"] for m in changed] == [first["id"]] and changed[0]["reactions"] == {"ok": ["alice"]}
    assert later > version

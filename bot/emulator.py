"""An in-process emulator of the parts of CometChat a bot uses: local mode without an account.

It plays both sides of CometChat for the playground (``bot/playground.py``):

* **the REST API the bot calls** (:meth:`Emulator.handle`): Send Bot Message,
  thread replies, edits, deletes, reactions, read and interaction marks,
  users and the bot. It checks what CometChat checks and answers its errors
  (``ERR_EMPTY_MESSAGE_TEXT``, the 10 KB ``data`` limit, nested threads,
  editing another user's message, a bot that is not a group member, ...), so
  a mistake shows up locally as it would in production;
* **the relay to the bot** (:meth:`Emulator.send_as_user`): a message a
  playground user sends is stored like CometChat stores it (id, conversation
  id, entities, mentions) and, when CometChat would relay it to the bot (1:1
  to the bot; in a group as the bot's ``groupChatSetting`` says), posted as a
  bot callback through the app's real callback endpoint.

Users and groups a callback or reply names are created on first sight, so
callbacks posted by hand (curl) work too. Everything lives in memory of one
process: run the playground with ``make run`` (``flask run``, one process).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

from .message import MENTION_TOKEN, conversation_id

#: CometChat's limits (PLATFORM.md 4.2, 4.6).
MAX_DATA_BYTES = 10 * 1024
MAX_MESSAGE_CHARS = 65_536
MAX_TAGS, MAX_TAG_LENGTH = 25, 100
CATEGORY_TYPES = {
    "message": {"text", "image", "video", "audio", "file"},
    "interactive": {"form", "card", "scheduler", "customInteractive"},
}
GROUP_CHAT_SETTINGS = ("allMessages", "mentionedMessages", "slashedMessages", "none")

Answer = tuple[int, dict[str, Any]]
#: Posts a bot callback to the app; returns the HTTP status it answered.
Relay = Callable[[dict[str, Any]], int]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def answer(self) -> Answer:
        return self.status, {"error": {"code": self.code, "message": self.message}}


class Emulator:
    def __init__(
        self,
        *,
        bot_uid: str = "bot",
        bot_name: str = "Bot",
        app_id: str = "local",
        region: str = "eu",
        group_chat_setting: str = "allMessages",
    ) -> None:
        self.bot_uid, self.app_id, self.region = bot_uid, app_id, region
        self.group_chat_setting = group_chat_setting
        self.relay: Relay | None = None  # set by the playground: how a callback reaches the app
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Ids count up from the start time in microseconds: after a restart of `make run` they are new to the
        # journal, whose dedup window would take a repeated "1" for a redelivered message.
        self._ids = itertools.count(time.time_ns() // 1000)
        self.version = 0  # bumped by every change; messages carry the version of their last change
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, float] = {}  # conversation id -> when the bot marked it read
        self.user(bot_uid, bot_name, role="bot")
        for uid in ("alice", "bob", "carol"):
            self.user(uid)
        self.group("team", "Team", members=[bot_uid, "alice", "bob", "carol"])

    # ------------------------------------------------------------ users and groups

    def user(self, uid: str, name: str = "", *, role: str = "default") -> dict[str, Any]:
        """The user ``uid``, created on first sight (CometChat lowercases uids)."""
        uid = uid.strip().lower()
        if not uid:
            raise ApiError(400, "ERR_EMPTY_UID", "a uid is required")
        with self._lock:
            user = self.users.get(uid)
            if user is None:
                user = self.users[uid] = {"uid": uid, "name": name or uid.title(), "role": role, "status": "online"}
                self._bump()
            elif name and user["name"] != name:
                user["name"] = name
                self._bump()
            return user

    def group(self, guid: str, name: str = "", *, members: list[str] | None = None) -> dict[str, Any]:
        """The group ``guid``, created on first sight with the bot as a member."""
        guid = guid.strip().lower()
        if not guid:
            raise ApiError(400, "ERR_EMPTY_GUID", "a guid is required")
        with self._lock:
            group = self.groups.get(guid)
            if group is None:
                group = self.groups[guid] = {"guid": guid, "name": name or guid.title(), "members": set()}
                group["members"].update(members if members is not None else [self.bot_uid])
                self._bump()
            return group

    def set_member(self, guid: str, uid: str, member: bool) -> None:
        with self._lock:
            members = self.group(guid)["members"]
            (members.add if member else members.discard)(uid.lower())
            self._bump()

    def set_group_chat_setting(self, setting: str) -> None:
        if setting not in GROUP_CHAT_SETTINGS:
            raise ApiError(400, "ERR_BAD_REQUEST", f"groupChatSetting must be one of {', '.join(GROUP_CHAT_SETTINGS)}")
        with self._lock:
            self.group_chat_setting = setting
            self._bump()

    # ------------------------------------------------------------ the REST API the bot calls

    def handle(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Answer:
        """Answer one REST call (``path`` relative to ``/v3``) as CometChat would: (status, JSON body)."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        path, _, query = path.partition("?")
        if method.upper() == "GET":
            body = dict(parse_qsl(query))  # what a GET action reads instead of a body: its query's parameters
        for verb, pattern, action in self._routes:
            m = pattern.fullmatch(path)
            if m and verb == method.upper():
                args = {k: unquote(v) for k, v in m.groupdict().items()}
                try:
                    with self._lock:
                        return 200, {"data": action(self, body, headers.get("onbehalfof", ""), **args)}
                except ApiError as error:
                    return error.answer()
        return ApiError(404, "ERR_API_NOT_FOUND", f"{method} {path} is not an API of this emulator").answer()

    def _send_bot_message(self, body: Any, on_behalf_of: str, uid: str) -> dict[str, Any]:
        # Any uid a callback named is taken for a bot (callbacks posted by hand name their own bot).
        return self._create(self.user(uid, role="bot")["uid"], body)

    def _send_thread(self, body: Any, on_behalf_of: str, id: str) -> dict[str, Any]:
        if not on_behalf_of:
            raise ApiError(400, "ERR_EMPTY_ON_BEHALF_OF", "the onBehalfOf header is required")
        parent = self._message(id)
        if parent.get("parentId"):
            raise ApiError(400, "ERR_MESSAGE_THREAD_NESTING", "threads cannot be nested")
        message = self._create(on_behalf_of.lower(), body, parent_id=id)
        parent["replyCount"] = parent.get("replyCount", 0) + 1
        self._touch(parent)
        return message

    def _edit(self, body: Any, on_behalf_of: str, id: str) -> dict[str, Any]:
        message = self._own_message(id, on_behalf_of)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ApiError(400, "ERR_INVALID_MESSAGE_DATA", "data must be an object")
        if message["category"] == "action":
            raise ApiError(400, "ERR_BAD_REQUEST", "action messages cannot be edited")
        if "text" in data and (not isinstance(data["text"], str) or not data["text"].strip()):
            raise ApiError(400, "ERR_EMPTY_MESSAGE_TEXT", "the text of a message cannot be empty")
        message["data"].update({k: v for k, v in data.items() if k in ("text", "metadata")})
        if isinstance(body.get("tags"), list):
            message["tags"] = body["tags"]
        message["editedAt"], message["editedBy"] = int(time.time()), message["sender"]
        self._touch(message)
        return self._public(message)

    def _delete(self, body: Any, on_behalf_of: str, id: str) -> dict[str, Any]:
        message = self._own_message(id, on_behalf_of) if on_behalf_of else self._message(id)
        message["deletedAt"], message["deletedBy"] = int(time.time()), on_behalf_of or "app"
        self._touch(message)
        return self._public(message)

    def _react(self, body: Any, on_behalf_of: str, id: str, reaction: str) -> dict[str, Any]:
        message = self._message(id)
        uid = self._acting_user(on_behalf_of)
        reactions = message.setdefault("reactions", {})
        if uid not in reactions.setdefault(reaction, []):
            reactions[reaction].append(uid)
        self._touch(message)
        return {"success": True}

    def _unreact(self, body: Any, on_behalf_of: str, id: str, reaction: str) -> dict[str, Any]:
        message = self._message(id)
        uids = message.get("reactions", {}).get(reaction, [])
        if on_behalf_of.lower() in uids:
            uids.remove(on_behalf_of.lower())
        self._touch(message)
        return {"success": True}

    def _mark_read(self, body: Any, on_behalf_of: str, kind: str, id: str) -> dict[str, Any]:
        uid = self._acting_user(on_behalf_of)
        other = id.lower()
        conversation = conversation_id(uid, other, "group" if kind == "groups" else "user")
        self.reads[conversation] = time.time()
        self._bump()
        return {"success": True, "message": f"the conversation {conversation} has been marked read for {uid}"}

    def _mark_interacted(self, body: Any, on_behalf_of: str, id: str) -> dict[str, Any]:
        uid = self._acting_user(on_behalf_of)
        message = self._message(id)
        if message["category"] != "interactive":
            raise ApiError(400, "ERR_BAD_REQUEST", "only interactive messages can be marked interacted")
        ids = body.get("interactions") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "ERR_BAD_REQUEST", "interactions must be a list of element ids")
        done = message.setdefault("interactions", {}).setdefault(uid, [])
        done.extend(i for i in ids if i not in done)
        self._touch(message)
        return {"success": True, "message": f"The message id {id} has been marked as interacted for the user {uid}."}

    def _list_messages(self, query: Mapping[str, str], on_behalf_of: str) -> list[dict[str, Any]]:
        """List Messages: ``conversationId``, ``fromTimestamp`` (``affix=append``: oldest first), ``limit``."""
        conversation = query.get("conversationId")
        return self._listed((m for m in self.messages.values() if conversation in (None, m["conversationId"])), query)

    def _list_thread(self, query: Mapping[str, str], on_behalf_of: str, id: str) -> list[dict[str, Any]]:
        """List Threaded Messages of ``id``, with the same filters."""
        self._message(id)
        return self._listed((m for m in self.messages.values() if m.get("parentId") == str(id)), query)

    def _listed(self, messages: Iterable[dict[str, Any]], query: Mapping[str, str]) -> list[dict[str, Any]]:
        try:
            since, limit = int(query.get("fromTimestamp", 0)), int(query.get("limit", 100))
        except ValueError:
            raise ApiError(400, "ERR_BAD_REQUEST", "fromTimestamp and limit must be integers") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, "ERR_BAD_REQUEST", "limit must be between 1 and 1000")
        chosen = sorted((m for m in messages if m["sentAt"] >= since), key=lambda m: int(m["id"]))
        return [self._public(m, ui=False) for m in chosen[:limit]]

    def _get_user(self, body: Any, on_behalf_of: str, uid: str) -> dict[str, Any]:
        user = self.users.get(uid.lower())
        if user is None:
            raise ApiError(404, "ERR_UID_NOT_FOUND", f"the user with uid {uid} does not exist")
        return dict(user)

    def _get_bot(self, body: Any, on_behalf_of: str, uid: str) -> dict[str, Any]:
        if uid.lower() != self.bot_uid:
            raise ApiError(404, "ERR_BOT_NOT_FOUND", f"a bot is not associated with the UID {uid}")
        return {"uid": self.bot_uid, "webhookURL": "(the app itself)", "groupChatSetting": self.group_chat_setting,
                "enabled": True}  # fmt: skip

    _routes: ClassVar[list[tuple[str, re.Pattern[str], Callable[..., Any]]]] = [
        ("POST", re.compile(r"/bots/(?P<uid>[^/]+)/messages"), _send_bot_message),
        ("POST", re.compile(r"/messages/(?P<id>[^/]+)/thread"), _send_thread),
        ("PUT", re.compile(r"/messages/(?P<id>[^/]+)"), _edit),
        ("DELETE", re.compile(r"/messages/(?P<id>[^/]+)"), _delete),
        ("POST", re.compile(r"/messages/(?P<id>[^/]+)/reactions/(?P<reaction>[^/]+)"), _react),
        ("DELETE", re.compile(r"/messages/(?P<id>[^/]+)/reactions/(?P<reaction>[^/]+)"), _unreact),
        ("POST", re.compile(r"/(?P<kind>users|groups)/(?P<id>[^/]+)/conversation/read"), _mark_read),
        ("PATCH", re.compile(r"/messages/(?P<id>[^/]+)/interacted"), _mark_interacted),
        ("GET", re.compile(r"/messages"), _list_messages),
        ("GET", re.compile(r"/messages/(?P<id>[^/]+)/thread"), _list_thread),
        ("GET", re.compile(r"/users/(?P<uid>[^/]+)"), _get_user),
        ("GET", re.compile(r"/bots/(?P<uid>[^/]+)"), _get_bot),
    ]

    # ------------------------------------------------------------ the users' side (the playground)

    def send_as_user(
        self,
        sender: str,
        receiver: str,
        receiver_type: str,
        *,
        category: str = "message",
        type: str = "text",
        data: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
    ) -> tuple[dict[str, Any], int | None]:
        """A user sends a message: stored, then relayed to the bot when CometChat would relay it.

        Returns the message and the status the bot's callback answered (None: not relayed).
        """
        with self._lock:
            sender = self.user(sender)["uid"]
            if sender == self.bot_uid:
                raise ApiError(400, "ERR_BAD_REQUEST", "the playground cannot send as the bot")
            body = {"receiver": receiver, "receiverType": receiver_type, "category": category, "type": type,
                    "data": dict(data or {})}  # fmt: skip
            if receiver_type == "group":
                self.group(receiver)["members"].add(sender)  # opening a group in the playground joins it
            if parent_id:
                parent = self._message(parent_id)
                if parent.get("parentId"):
                    raise ApiError(400, "ERR_MESSAGE_THREAD_NESTING", "threads cannot be nested")
                parent["replyCount"] = parent.get("replyCount", 0) + 1
                self._touch(parent)
            message = self._create(sender, body, parent_id=parent_id)
            callback = self.callback(message) if self._relays(message) else None
        if callback is None or self.relay is None:
            return message, None
        return message, self.relay(callback)  # outside the lock: the bot answers through handle()

    def callback(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The bot callback CometChat posts for ``message`` (PLATFORM.md 2.1)."""
        return {
            "trigger": "after_message",
            "data": self._public(message, ui=False),
            "appId": self.app_id,
            "origin": {"platform": "web", "language": "javascript", "resource": "playground"},
            "chatAPIVersion": "3.0",
            "region": self.region,
            "bot": self.bot_uid,
        }

    def _relays(self, message: Mapping[str, Any]) -> bool:
        """Whether CometChat relays ``message`` to the bot (PLATFORM.md 1.4)."""
        if message["receiverType"] == "user":
            return message["receiver"] == self.bot_uid
        if self.bot_uid not in self.groups[message["receiver"]]["members"]:
            return False
        setting = self.group_chat_setting
        text = message["data"].get("text") or ""
        if setting == "mentionedMessages":
            return self.bot_uid in message["data"].get("mentions", {})
        if setting == "slashedMessages":
            return text.lstrip().startswith("/")
        return setting == "allMessages"

    # ------------------------------------------------------------ watching (the playground polls)

    def changes(self, since: int, *, timeout: float = 0.0) -> tuple[int, list[dict[str, Any]]]:
        """(version, messages changed after version ``since``); waits up to ``timeout`` s for a change."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.version <= since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            changed = [self._public(m) for m in self.messages.values() if m["_version"] > since]
            return self.version, sorted(changed, key=lambda m: int(m["id"]))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "bot": dict(self.users[self.bot_uid]),
                "users": [dict(u) for uid, u in self.users.items() if uid != self.bot_uid],
                "groups": [
                    {
                        "guid": g["guid"],
                        "name": g["name"],
                        "members": sorted(g["members"]),
                        "botIsMember": self.bot_uid in g["members"],
                    }
                    for g in self.groups.values()
                ],
                "groupChatSetting": self.group_chat_setting,
                "version": self.version,
            }

    # ------------------------------------------------------------ messages

    def _create(self, sender: str, body: Any, *, parent_id: str | None = None) -> dict[str, Any]:
        receiver, receiver_type, category, type_, data = _check_body(body)
        if receiver_type == "group":
            # A group first named here (a callback posted by hand) is created with the sender in it.
            group = self.group(receiver, members=[self.bot_uid, sender])
            receiver = group["guid"]
            if sender not in group["members"]:
                raise ApiError(403, "ERR_NOT_A_MEMBER", f"{sender} is not a member of the group {receiver}")
            conversation = f"group_{receiver}"
            receiver_entity = {"entityType": "group", "entity": {"guid": receiver, "name": group["name"]}}
        else:
            user = self.user(receiver)
            receiver = user["uid"]
            conversation = conversation_id(sender, receiver, "user")
            receiver_entity = {"entityType": "user", "entity": dict(user)}
        data = json.loads(json.dumps(data))  # a copy of what was sent, as a server would keep it
        text = data.get("text")
        if isinstance(text, str):
            mentioned = {uid.lower() for uid in MENTION_TOKEN.findall(text)} & self.users.keys()
            if mentioned:  # CometChat fills data.mentions for users that exist (at most 10 per message)
                data["mentions"] = {uid: dict(self.users[uid]) for uid in sorted(mentioned)[:10]}
        data["entities"] = {"sender": {"entityType": "user", "entity": dict(self.users[sender])},
                            "receiver": receiver_entity}  # fmt: skip
        now = int(time.time())
        message: dict[str, Any] = {
            "id": str(next(self._ids)),
            "conversationId": conversation,
            "sender": sender,
            "receiverType": receiver_type,
            "receiver": receiver,
            "category": category,
            "type": type_,
            "data": data,
            "sentAt": now,
            "updatedAt": now,
        }
        if isinstance(body.get("muid"), str):
            message["muid"] = body["muid"]
        if isinstance(body.get("tags"), list):
            message["tags"] = body["tags"]
        if parent_id:
            message["parentId"] = str(parent_id)
        self.messages[message["id"]] = message
        self._touch(message)
        return self._public(message)

    def _message(self, id: str) -> dict[str, Any]:
        message = self.messages.get(str(id))
        if message is None:
            raise ApiError(404, "ERR_MESSAGE_ID_NOT_FOUND", f"the message with id {id} does not exist")
        return message

    def _own_message(self, id: str, on_behalf_of: str) -> dict[str, Any]:
        message = self._message(id)
        if message["sender"] != self._acting_user(on_behalf_of):
            raise ApiError(403, "ERR_MESSAGE_NOT_A_SENDER", "only the sender of a message can change it")
        return message

    def _acting_user(self, on_behalf_of: str) -> str:
        if not on_behalf_of:
            raise ApiError(400, "ERR_EMPTY_ON_BEHALF_OF", "the onBehalfOf header is required")
        return self.user(on_behalf_of)["uid"]

    def _touch(self, message: dict[str, Any]) -> None:
        message["updatedAt"] = int(time.time())
        self._bump()
        message["_version"] = self.version

    def _bump(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    @staticmethod
    def _public(message: Mapping[str, Any], *, ui: bool = True) -> dict[str, Any]:
        """A message as the API shows it (``ui``: with the playground's extras: reactions, interactions)."""
        hidden = {"_version"} if ui else {"_version", "reactions", "interactions", "replyCount"}
        return json.loads(json.dumps({k: v for k, v in message.items() if k not in hidden}))


def _check_body(body: Any) -> tuple[str, str, str, str, dict[str, Any]]:
    """What CometChat checks of a Send Message body (PLATFORM.md 4.2, 4.4, 4.6)."""
    if not isinstance(body, dict):
        raise ApiError(400, "ERR_BAD_REQUEST", "the body must be a JSON object")
    if len(json.dumps(body, ensure_ascii=False)) > MAX_MESSAGE_CHARS:
        raise ApiError(400, "ERR_BAD_REQUEST", f"the message is longer than {MAX_MESSAGE_CHARS} characters")
    receiver, receiver_type = body.get("receiver"), body.get("receiverType")
    if not isinstance(receiver, str) or not receiver.strip():
        raise ApiError(400, "ERR_EMPTY_RECEIVER", "receiver is required")
    if receiver_type not in ("user", "group"):
        raise ApiError(400, "ERR_INVALID_RECEIVER_TYPE", "receiverType must be user or group")
    category, type_ = body.get("category"), body.get("type")
    if not category:
        raise ApiError(400, "ERR_EMPTY_MESSAGE_CATEGORY", "category is required")
    if category not in ("message", "custom", "interactive"):
        raise ApiError(400, "ERR_INVALID_MESSAGE_CATEGORY", f"unknown category {category!r}")
    if not isinstance(type_, str) or not type_:
        raise ApiError(400, "ERR_EMPTY_MESSAGE_TYPE", "type is required")
    if category in CATEGORY_TYPES and type_ not in CATEGORY_TYPES[category]:
        raise ApiError(400, "ERR_INVALID_MESSAGE_TYPE", f"type {type_!r} is not one of category {category}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise ApiError(400, "ERR_INVALID_MESSAGE_DATA", "data must be an object")
    if len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_DATA_BYTES:
        raise ApiError(400, "ERR_INVALID_MESSAGE_DATA", "data is larger than 10 KB")
    if "metadata" in data and not isinstance(data["metadata"], dict):
        raise ApiError(400, "ERR_INVALID_METADATA", "metadata must be a JSON object")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS or any(len(str(t)) > MAX_TAG_LENGTH for t in tags):
        raise ApiError(400, "ERR_BAD_REQUEST", f"at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters")
    if category == "message" and type_ == "text":
        if not isinstance(data.get("text"), str) or not data["text"].strip():
            raise ApiError(400, "ERR_EMPTY_MESSAGE_TEXT", "the text of a message cannot be empty")
    elif category == "message":
        attachments = data.get("attachments")
        if (
            not isinstance(attachments, list)
            or not attachments
            or not all(isinstance(a, dict) and isinstance(a.get("url"), str) and a["url"] for a in attachments)
        ):
            raise ApiError(400, "ERR_INVALID_MEDIA_MESSAGE", "a media message needs attachments with a url")
    elif category == "custom":
        if not isinstance(data.get("customData"), dict) or not data["customData"]:
            raise ApiError(400, "ERR_EMPTY_CUSTOM_DATA", "customData cannot be empty")
    elif not isinstance(data.get("interactiveData"), dict):
        raise ApiError(400, "ERR_INVALID_MESSAGE_DATA", "an interactive message needs interactiveData")
    return receiver.strip().lower(), receiver_type, category, type_, data

"""CometChat's REST API as values: one :class:`SendRequest` per call.

Every call the framework makes (a reply, a thread reply, an edit, a
reaction, marking a form interacted, registering the bot) is built here as a
small immutable value, without I/O. The client performs it, the journal (or
Redis) keeps it while it waits, and the pipeline orders it behind the other
requests of its conversation. Paths and headers follow PLATFORM.md sections
1.2, 4 and 6; all paths are relative to ``https://{appId}.api-{region}.cometchat.io/v3``.

The ``message`` a call acts on is CometChat's id of it, or :data:`REF` with
``ref=<muid>`` for an earlier reply whose id is not known yet: the path
holds ``{ref}``, replaced by the CometChat id of that reply when the request is sent
(e.g. editing a "working on it..." message once the answer is ready).
Replies that others may refer to are sent with ``remember`` set, so that
their id is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlencode

from .message import Target, conversation_id

#: The placeholder in a path for the CometChat id of the reply named by ``SendRequest.ref``.
REF = "{ref}"


@dataclass(frozen=True)
class SendRequest:
    """One request to CometChat's REST API: ``{method} {base}{path}`` with ``body`` and ``headers``."""

    path: str
    body: Any = None  # the JSON body, or None for none
    message_id: str = ""  # the incoming message this request answers (logs, dead letters)
    conversation_id: str = ""  # its conversation: requests of one conversation are sent in order
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. onBehalfOf
    ref: str = ""  # muid of an earlier reply whose CometChat id replaces {ref} in the path
    remember: bool = False  # record the created message's id under this request's muid
    interim: bool = False  # sent with msg.reply() while the handler goes on running (not returned by it)

    @property
    def muid(self) -> str:
        return self.body.get("muid", "") if isinstance(self.body, dict) else ""

    @property
    def is_message(self) -> bool:
        """True for requests that create a chat message (a reply, a thread reply)."""
        return self.method == "POST" and (self.path.endswith("/messages") or self.path.endswith("/thread"))

    def resolve(self, message_id: str) -> SendRequest:
        """This request with ``{ref}`` replaced by the CometChat id of the reply it refers to."""
        return replace(self, path=self.path.replace(REF, quote(str(message_id), safe="")), ref="")

    def describe(self) -> str:
        """A short line for logs and the CLI (no secrets: requests never carry the API key)."""
        return f"{self.method} {self.path}"

    # ------------------------------------------------------------ storage (journal, Redis, dead letters)

    def meta(self) -> dict[str, Any]:
        """Everything but path and body, as JSON-able values; empty for a plain reply."""
        meta: dict[str, Any] = {}
        if self.method != "POST":
            meta["method"] = self.method
        if self.headers:
            meta["headers"] = dict(self.headers)
        if self.ref:
            meta["ref"] = self.ref
        if self.remember:
            meta["remember"] = True
        return meta

    @classmethod
    def restore(
        cls, path: str, body: Any, meta: Mapping[str, Any] | None, *, message_id: str = "", conversation_id: str = ""
    ) -> SendRequest:
        meta = meta or {}
        return cls(
            path,
            body,
            message_id,
            conversation_id,
            method=meta.get("method", "POST"),
            headers=dict(meta.get("headers") or {}),
            ref=meta.get("ref", ""),
            remember=bool(meta.get("remember", False)),
        )

    def to_json(self) -> str:
        return json.dumps(
            {"path": self.path, "body": self.body, "meta": self.meta(), "message_id": self.message_id,
             "conversation_id": self.conversation_id},
            ensure_ascii=False, separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str | bytes) -> SendRequest:
        d = json.loads(text)
        return cls.restore(
            d["path"], d["body"], d.get("meta"), message_id=d.get("message_id", ""),
            conversation_id=d.get("conversation_id", ""),
        )  # fmt: skip


def _seg(value: str) -> str:
    """A path segment: uids, ids and emoji are quoted so that they cannot change the path."""
    return quote(str(value), safe="")


def _msg(message: str) -> str:
    """A message id in a path, or the ``{ref}`` placeholder (replaced when sent)."""
    return REF if message == REF else _seg(message)


def _on_behalf_of(uid: str) -> dict[str, str]:
    return {"onBehalfOf": uid}


# ------------------------------------------------------------------ messages (PLATFORM.md 4, 6)


def bot_message(bot_uid: str, body: Mapping[str, Any], **context: Any) -> SendRequest:
    """Send Bot Message: ``POST /bots/{uid}/messages``; the bot is the sender, no ``onBehalfOf``."""
    return SendRequest(f"/bots/{_seg(bot_uid)}/messages", dict(body), **context)


def thread_message(bot_uid: str, parent_id: str, body: Mapping[str, Any], **context: Any) -> SendRequest:
    """A reply in the thread of ``parent_id``: ``POST /messages/{parentId}/thread`` on behalf of the bot.

    The Send Bot Message schema has no ``parentId`` (PLATFORM.md 4.2, "Things a framework must handle" 15).
    """
    return SendRequest(f"/messages/{_seg(parent_id)}/thread", dict(body), headers=_on_behalf_of(bot_uid), **context)


def edit_message(
    bot_uid: str,
    message: str = REF,
    *,
    text: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Iterable[str] | None = None,
    **context: Any,
) -> SendRequest:
    """Edit one of the bot's messages: ``PUT /messages/{id}`` (only the sender may edit)."""
    data: dict[str, Any] = {}
    if text is not None:
        data["text"] = text
    if metadata is not None:
        data["metadata"] = dict(metadata)
    body: dict[str, Any] = {"data": data}
    if tags is not None:
        body["tags"] = list(tags)
    return SendRequest(f"/messages/{_msg(message)}", body, method="PUT", headers=_on_behalf_of(bot_uid), **context)


def delete_message(bot_uid: str, message: str = REF, *, permanent: bool = False, **context: Any) -> SendRequest:
    """Delete one of the bot's messages: ``DELETE /messages/{id}`` (soft delete unless ``permanent``)."""
    return SendRequest(
        f"/messages/{_msg(message)}", {"permanent": permanent}, method="DELETE", headers=_on_behalf_of(bot_uid),
        **context,
    )  # fmt: skip


def add_reaction(bot_uid: str, message: str, reaction: str, **context: Any) -> SendRequest:
    """React to a message as the bot: ``POST /messages/{id}/reactions/{reaction}``."""
    path = f"/messages/{_msg(message)}/reactions/{_seg(reaction)}"
    return SendRequest(path, None, headers=_on_behalf_of(bot_uid), **context)


def remove_reaction(bot_uid: str, message: str, reaction: str, **context: Any) -> SendRequest:
    path = f"/messages/{_msg(message)}/reactions/{_seg(reaction)}"
    return SendRequest(path, None, method="DELETE", headers=_on_behalf_of(bot_uid), **context)


def mark_read(bot_uid: str, target: Target, **context: Any) -> SendRequest:
    """Mark the conversation read for the bot: ``POST /users/{uid}/conversation/read`` (or ``/groups/{guid}``)."""
    kind = "groups" if target.receiver_type == "group" else "users"
    return SendRequest(
        f"/{kind}/{_seg(target.receiver)}/conversation/read", None, headers=_on_behalf_of(bot_uid), **context
    )


def mark_interacted(user_uid: str, message: str, element_ids: Iterable[str], **context: Any) -> SendRequest:
    """Mark elements of an interactive message interacted for a user: ``PATCH /messages/{id}/interacted``."""
    return SendRequest(
        f"/messages/{_msg(message)}/interacted",
        {"interactions": list(element_ids)},
        method="PATCH",
        headers=_on_behalf_of(user_uid),
        **context,
    )


#: A lookup of replies already delivered starts this long before the callback was accepted: CometChat's
#: ``sentAt`` is its own clock, not this host's.
LOOKUP_SLACK = 60  # seconds
LOOKUP_LIMIT = 1000  # messages per lookup: the list APIs' maximum (PLATFORM.md 6)


def find_reply(bot_uid: str, request: SendRequest, since: float) -> SendRequest | None:
    """The call listing the messages that ``request`` (a reply) may already have created since ``since``.

    A reply whose process was killed while it was in flight may or may not
    have reached CometChat; the pipeline looks for its muid in this list
    before sending it again. ``GET /messages`` filtered by the conversation
    (a thread reply: ``GET /messages/{parentId}/thread``), oldest first from
    ``fromTimestamp`` (``affix=append``): CometChat's List Messages and List
    Threaded Messages. None for a request that creates no message or has no
    muid: nothing to look for.
    """
    if not (request.is_message and request.muid):
        return None
    query = {"fromTimestamp": str(max(0, int(since) - LOOKUP_SLACK)), "affix": "append", "limit": str(LOOKUP_LIMIT)}
    context = {"message_id": request.message_id, "conversation_id": request.conversation_id}
    if request.path.endswith("/thread"):
        return SendRequest(f"{request.path}?{urlencode(query)}", None, method="GET", headers=request.headers, **context)
    body = request.body
    conversation = conversation_id(bot_uid, str(body.get("receiver", "")), str(body.get("receiverType", "")))
    return SendRequest(f"/messages?{urlencode({'conversationId': conversation, **query})}", None, method="GET",
                       **context)  # fmt: skip


# ------------------------------------------------------------------ bots (PLATFORM.md 1.2, 1.3)

GROUP_CHAT_SETTINGS = ("allMessages", "mentionedMessages", "slashedMessages", "none")


def bot_settings(
    *,
    webhook_url: str | None = None,
    group_chat_setting: str | None = None,
    username: str | None = None,
    password: str | None = None,
    enabled: bool | None = None,
) -> dict[str, Any]:
    """The body fields of Create/Update Bot; Basic auth is switched on when credentials are given."""
    if group_chat_setting is not None and group_chat_setting not in GROUP_CHAT_SETTINGS:
        raise ValueError(f"groupChatSetting must be one of {', '.join(GROUP_CHAT_SETTINGS)}")
    body: dict[str, Any] = {}
    if webhook_url is not None:
        body["webhookURL"] = webhook_url
    if group_chat_setting is not None:
        body["groupChatSetting"] = group_chat_setting
    if username is not None and password is not None:
        body |= {"useBasicAuth": bool(username and password), "username": username, "password": password}
    if enabled is not None:
        body["enabled"] = enabled
    return body


def create_bot(uid: str, **settings: Any) -> SendRequest:
    """``POST /bots``. CometChat's defaults are ``enabled: false`` and ``groupChatSetting: none``: pass both."""
    return SendRequest("/bots", {"uid": uid, **bot_settings(**settings)})


def update_bot(uid: str, **settings: Any) -> SendRequest:
    return SendRequest(f"/bots/{_seg(uid)}", bot_settings(**settings), method="PUT")


def get_bot(uid: str) -> SendRequest:
    return SendRequest(f"/bots/{_seg(uid)}", None, method="GET")


def delete_bot(uid: str) -> SendRequest:
    return SendRequest(f"/bots/{_seg(uid)}", None, method="DELETE")


def get_user(uid: str) -> SendRequest:
    return SendRequest(f"/users/{_seg(uid)}", None, method="GET")

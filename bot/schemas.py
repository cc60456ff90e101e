"""Validation of CometChat's callbacks (marshmallow) and the :class:`Message` built from them.

Two shapes carry a message (PLATFORM.md 7.2):

* the bot callback / legacy ``after_message``: the message is ``body.data``;
* webhooks v2 ``message_sent``: the message is ``body.data.message``.

Other triggers are accepted and ignored. Validation is strict about what the
framework reads (ids, sender, receiver, text, attachments) and lenient about
the rest: unknown keys pass, optional fields may be missing (PLATFORM.md,
"Things a framework must handle" 6-8). The schema objects are built once at
import; loading one callback does not build anything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from .errors import InvalidCallback
from .message import MENTION_TOKEN, Attachment, Message, Submission, User, conversation_id, normalise_mentions

#: What the UI kit sends to an apiAction URL (PLATFORM.md 5.4); also the trigger of journaled submissions.
INTERACTION_TRIGGER = "ui_message_interacted"
#: Where kits other than the v4 web kit put form values: the action's ``dataKey`` (PLATFORM.md 5.3).
DATA_KEYS = ("CometChatData", "cometchatData")

MESSAGE_TRIGGERS = {
    "after_message": ("data",),  # bot callback and legacy webhook
    "message_sent": ("data", "message"),  # webhooks v2
}


# ------------------------------------------------------------------ fields


class Id(fields.Field):
    """An id CometChat sends as a numeric string (sometimes as a number): always a ``str`` here."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid id: expected a string or an integer."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        text = str(value).strip()
        if not text:
            raise ValidationError("Must not be empty.")
        return text


class Uid(fields.Field):
    """A user uid or group guid: a non-empty string (or an entity object carrying ``uid``/``guid``)."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid uid: expected a non-empty string."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if isinstance(value, Mapping):
            value = value.get("uid") or value.get("guid")
        if not isinstance(value, str) or not value.strip():
            raise self.make_error("invalid")
        return value.strip()


class Lowercase(fields.String):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return super()._deserialize(value, attr, data, **kwargs).strip().lower()


class Size(fields.Field):
    """Attachment size in bytes: an int in server objects, a string in the send schema (PLATFORM.md 2.5)."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid size: expected whole bytes."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool):
            raise self.make_error("invalid")
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise self.make_error("invalid") from None
        if size < 0:
            raise self.make_error("invalid")
        return size


class JSONObject(fields.Field):
    """A JSON object, taken as it is (its keys are strings by JSON's rules: nothing to check per key)."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid object."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        return value


class Timestamp(fields.Field):
    """Unix seconds (milliseconds in a few events, PLATFORM.md 7.2) -> aware UTC datetime."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid timestamp: expected Unix seconds."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool):
            raise self.make_error("invalid")
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise self.make_error("invalid") from None
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise self.make_error("invalid") from None


# ------------------------------------------------------------------ schemas


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # appId, origin, region, ...: not used

    trigger = fields.String(required=True, validate=validate.Length(min=1))
    data = fields.Raw(required=True, allow_none=False)
    bot = Lowercase(load_default="")


class AttachmentSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    url = fields.String(required=True)
    name = fields.String(load_default="")
    mimeType = fields.String(load_default="")
    extension = fields.String(load_default="")
    size = Size(load_default=None)


class EntitySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    uid = fields.String(load_default="")
    name = fields.String(load_default="")
    avatar = fields.String(load_default="", allow_none=True)
    role = fields.String(load_default="", allow_none=True)


class MessageDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    text = fields.String(allow_none=True)
    attachments = fields.List(fields.Nested(AttachmentSchema), allow_none=True)
    customData = fields.Raw(allow_none=True)
    custom_data = fields.Raw(allow_none=True)
    metadata = JSONObject(allow_none=True)
    mentions = fields.Dict(keys=fields.String(), values=fields.Nested(EntitySchema), allow_none=True)
    entities = JSONObject(allow_none=True)
    action = fields.String(allow_none=True)


class MessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Id(required=True)
    conversationId = fields.String(load_default="")
    sender = Uid(required=True)
    receiverType = Lowercase(required=True, validate=validate.OneOf(["user", "group"]))
    receiver = Uid(required=True)
    category = Lowercase(required=True, validate=validate.Length(min=1))
    type = fields.String(required=True, validate=validate.Length(min=1))
    data = fields.Nested(MessageDataSchema, load_default=dict)
    sentAt = Timestamp(load_default=None)
    parentId = Id(load_default=None, allow_none=True)


class InteractionDataSchema(Schema):
    """``data`` of a submission from the UI kit (PLATFORM.md 5.4); the token says the rest."""

    class Meta:
        unknown = EXCLUDE

    interactedBy = fields.String(load_default="")
    interactedElementId = fields.String(load_default="")
    messageId = Id(load_default="")
    messageType = fields.String(load_default="")
    interactionTimezoneCode = fields.String(load_default="", allow_none=True)
    formData = JSONObject(load_default=None, allow_none=True)
    schedulerData = JSONObject(load_default=None, allow_none=True)


ENVELOPE = EnvelopeSchema()
MESSAGE = MessageSchema()
INTERACTION_DATA = InteractionDataSchema()


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Callback:
    """One validated callback: its trigger, the bot it is for and its message (None if it carries none)."""

    trigger: str
    bot: str
    message: Message | None


def parse_callback(body: Any, *, bot_uid: str = "") -> Callback:
    """Validate a decoded callback body and build its :class:`Message`.

    ``bot_uid`` is the configured bot; without one, the callback's own ``bot``
    field names it. Raises :class:`InvalidCallback` naming every bad field.
    """
    if not isinstance(body, dict):
        raise InvalidCallback(f"the callback must be a JSON object, not {_json_type(body)}")
    envelope = _fast_envelope(body)
    if envelope is None:
        try:
            envelope = ENVELOPE.load(body)
        except ValidationError as exc:
            raise _invalid(exc.messages, prefix="") from None
    trigger = envelope["trigger"]
    bot = bot_uid or envelope["bot"]  # the bot this app is
    addressed = envelope["bot"] or bot  # the bot the callback says it is for (webhooks v2 name none)
    path = MESSAGE_TRIGGERS.get(trigger)
    if path is None:
        return Callback(trigger=trigger, bot=addressed, message=None)
    raw = body
    for i, key in enumerate(path):
        raw = raw.get(key) if isinstance(raw, dict) else None
        if not isinstance(raw, dict):
            where = ".".join(path[: i + 1])
            raise InvalidCallback(
                f"{where} must be the message object", fields={where: [f"Expected an object, got {_json_type(raw)}."]}
            )
    loaded = _fast_message(raw)
    if loaded is None:
        try:
            loaded = MESSAGE.load(raw)
        except ValidationError as exc:
            raise _invalid(exc.messages, prefix=".".join(path) + ".") from None
    return Callback(trigger=trigger, bot=addressed, message=_build_message(loaded, raw, bot=bot, trigger=trigger))


# ------------------------------------------------------------------ the fast path
#
# Every callback is validated before it is answered, so validation is on the request path of every message,
# and marshmallow spends most of its time on fields a plain text message fills in the plain way. The two
# functions below recognise exactly that plain case and load it as the schemas would; anything else (a
# missing or odd field, attachments, mentions, a timestamp as a string, ...) returns None and goes through the
# schemas, which also word every error. tests/test_schemas.py checks that both agree on every sample and on
# variations of them.


def _fast_envelope(body: dict) -> dict | None:
    trigger, bot = body.get("trigger"), body.get("bot", "")
    if type(trigger) is not str or not trigger or body.get("data") is None or type(bot) is not str:
        return None
    return {"trigger": trigger, "data": body["data"], "bot": bot.strip().lower()}


def _fast_message(raw: dict) -> dict | None:
    message_id, sender, receiver = raw.get("id"), raw.get("sender"), raw.get("receiver")
    receiver_type, category, type_ = raw.get("receiverType"), raw.get("category"), raw.get("type")
    conversation, data, sent_at = raw.get("conversationId", ""), raw.get("data", {}), raw.get("sentAt")
    if type(sent_at) is str and sent_at.isascii() and sent_at.isdigit():
        sent_at = int(sent_at)  # a number sent as a string (PLATFORM.md, "Type mismatches"), read as the schema does
    if (
        type(message_id) is not str
        or type(sender) is not str
        or type(receiver) is not str
        or type(receiver_type) is not str
        or type(category) is not str
        or type(type_) is not str
        or not type_
        or type(conversation) is not str
        or type(data) is not dict
        or raw.get("parentId") is not None
        or not (sent_at is None or type(sent_at) is int)
    ):
        return None
    message_id, sender, receiver = message_id.strip(), sender.strip(), receiver.strip()
    receiver_type, category = receiver_type.strip().lower(), category.strip().lower()
    if not message_id or not sender or not receiver or receiver_type not in ("user", "group") or not category:
        return None
    loaded_data = _fast_data(data)
    if loaded_data is None:
        return None
    if sent_at is not None:
        if not 0 <= sent_at <= 1e11:  # seconds, as callbacks send them (milliseconds: the schema converts)
            return None
        sent_at = datetime.fromtimestamp(sent_at, tz=UTC)
    return {
        "id": message_id, "conversationId": conversation, "sender": sender, "receiverType": receiver_type,
        "receiver": receiver, "category": category, "type": type_, "data": loaded_data, "sentAt": sent_at,
        "parentId": None,
    }  # fmt: skip


_FAST_DATA_KEYS = ("text", "metadata", "entities", "action")
#: Keys of ``data`` the schema reads (unknown ones, such as ``resource``, are left out as the schema does).
_DATA_FIELDS = frozenset(MessageDataSchema._declared_fields)


def _fast_data(data: dict) -> dict | None:
    loaded: dict[str, Any] = {}
    for key in _DATA_FIELDS.intersection(data):
        value = data[key]
        if key not in _FAST_DATA_KEYS:
            return None  # attachments, custom data, mentions: the schema loads those
        if value is None:
            loaded[key] = None
        elif key in ("text", "action"):
            if type(value) is not str:
                return None
            loaded[key] = value
        elif type(value) is dict:
            loaded[key] = value
        else:
            return None
    return loaded


@dataclass(frozen=True)
class Interaction:
    """A submission as the UI kit sent it, validated, before its token is checked (bot/interactions.py)."""

    token: str
    user: str  # who clicked, as the client claims ("" when the kit does not say)
    element_id: str
    message_id: str
    message_type: str
    values: dict[str, Any]
    timezone: str = ""


def parse_interaction(body: Any) -> Interaction:
    """Validate what a UI kit posted to an apiAction URL: the token in ``payload`` (or at the top level) and the
    values under ``data.formData`` / ``data.schedulerData`` (v4 web kit) or the action's ``dataKey``."""
    if not isinstance(body, dict):
        raise InvalidCallback(f"the submission must be a JSON object, not {_json_type(body)}")
    payload = body.get("payload")
    token = payload.get("token") if isinstance(payload, dict) else None
    token = token or body.get("token")
    if not isinstance(token, str) or not token:
        raise InvalidCallback("the submission carries no token", fields={"payload.token": ["Missing."]})
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise InvalidCallback(
            "data must be an object", fields={"data": [f"Expected an object, got {_json_type(data)}."]}
        )
    try:
        loaded = INTERACTION_DATA.load(data)
    except ValidationError as exc:
        raise _invalid(exc.messages, prefix="data.") from None
    values = loaded["formData"] if loaded["formData"] is not None else loaded["schedulerData"]
    if values is None:
        values = next((body[key] for key in DATA_KEYS if isinstance(body.get(key), dict)), {})
    user = loaded["interactedBy"] or body.get("interactedBy") or ""
    if not isinstance(user, str):
        raise InvalidCallback("interactedBy must be a uid", fields={"interactedBy": ["Not a valid string."]})
    return Interaction(
        token=token,
        user=user.strip(),
        element_id=loaded["interactedElementId"],
        message_id=loaded["messageId"],
        message_type=loaded["messageType"],
        values=dict(values),
        timezone=loaded["interactionTimezoneCode"] or "",
    )


def parse_stored(body: bytes, *, bot_uid: str = "") -> Message | None:
    """The message of a journaled (or enqueued) body: a callback as received, or a verified submission."""
    event = json.loads(body)
    if isinstance(event, dict) and event.get("trigger") == INTERACTION_TRIGGER and "claims" in event:
        return submission_message(event, bot_uid=bot_uid)
    return parse_callback(event, bot_uid=bot_uid).message


def submission_message(event: Mapping[str, Any], *, bot_uid: str = "") -> Message:
    """The :class:`Message` of a verified submission (``bot.interactions.verify``): category ``interaction``,
    from the user who submitted, answered where the form was sent."""
    c = event["claims"]
    return Message(
        id=f"{c['m']}:{c['e']}:{event['user']}",
        category="interaction",
        type=event["message_type"] or "form",
        sender=User(uid=event["user"]),
        receiver=c["r"],
        receiver_type=c["t"],
        conversation_id=c["c"],
        parent_id=c["p"] or None,
        sent_at=datetime.fromtimestamp(event["received_at"], tz=UTC),
        bot_uid=bot_uid or c["b"],
        trigger=INTERACTION_TRIGGER,
        raw=event,
        submission=Submission(
            interaction_id=c["i"],
            element_id=c["e"],
            values=event["values"],
            message_id=event["message_id"],
            muid=c["m"],
            original=event["original"],
            timezone=event["timezone"],
        ),
    )


def _build_message(m: dict, raw: dict, *, bot: str, trigger: str) -> Message:
    data = m["data"]
    entities = data.get("entities") or {}
    sender_entity = _entity(entities.get("sender"))
    sender = User(
        uid=m["sender"],
        name=sender_entity.get("name") or "",
        avatar=sender_entity.get("avatar") or "",
        role=sender_entity.get("role") or "",
    )
    mentioned = {
        uid: User(uid=e.get("uid") or uid, name=e.get("name") or "", role=e.get("role") or "")
        for uid, e in (data.get("mentions") or {}).items()
    }
    raw_text = data.get("text") or ""
    for uid in MENTION_TOKEN.findall(raw_text):  # tokens without a mentions entry still count
        mentioned.setdefault(uid, User(uid=uid))
    custom = data.get("customData")
    if custom is None:
        custom = data.get("custom_data")  # spelling in CometChat's prose (PLATFORM.md 2.6)
    return Message(
        id=m["id"],
        category=m["category"],
        type=m["type"],
        sender=sender,
        receiver=m["receiver"],
        receiver_type=m["receiverType"],
        conversation_id=m["conversationId"] or conversation_id(m["sender"], m["receiver"], m["receiverType"]),
        text=normalise_mentions(raw_text, bot, mentioned) if raw_text else "",
        raw_text=raw_text,
        attachments=tuple(
            Attachment(url=a["url"], name=a["name"], mime_type=a["mimeType"], extension=a["extension"], size=a["size"])
            for a in data.get("attachments") or ()
        ),
        custom_data=custom,
        metadata=data.get("metadata") or {},
        mentions=tuple(mentioned.values()),
        action=data.get("action") or "",
        parent_id=m["parentId"],
        sent_at=m["sentAt"],
        bot_uid=bot,
        trigger=trigger,
        raw=raw,
    )


def _entity(wrapper: Any) -> dict:
    if isinstance(wrapper, dict) and isinstance(wrapper.get("entity"), dict):
        return wrapper["entity"]
    return {}


def _invalid(messages: Any, *, prefix: str) -> InvalidCallback:
    flat = dict(_flatten(messages, prefix.rstrip(".")))
    names = ", ".join(sorted(flat))
    return InvalidCallback(f"invalid callback: {names}", fields=flat)


def _flatten(messages: Any, path: str):
    if isinstance(messages, dict):
        for key, value in messages.items():
            yield from _flatten(value, f"{path}.{key}" if path else str(key))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        yield path or "_schema", messages
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            yield from _flatten(value, f"{path}.{i}")
    else:
        yield path or "_schema", [str(messages)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")

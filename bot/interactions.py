"""Submissions of the bot's forms, cards and schedulers: signed tokens out, verified submissions in.

CometChat does not relay a click on an interactive message to the bot: the
user's UI kit calls the button's ``apiAction`` URL itself (PLATFORM.md 2.7,
5.4, "Things a framework must handle" 16). So every button the bot sends
points at this app's interaction endpoint (``INTERACTIONS_PATH``) and carries,
in its ``payload``, an opaque token signed with the app's secret (never an
API key: every client that receives the message can read it). The token
binds the click to what the bot sent: which form or card (its interaction
id) and element, which reply (its muid), which conversation, and in a 1:1
chat which user.

:func:`verify` checks a submission against its token and returns the event
the pipeline journals; nothing in the request is trusted beyond what the
token signs: the message id must be the one CometChat gave the bot's reply
(when known), the user must be the one the form was sent to (1:1), and a
token is good for one submission per user (a replay is refused). The values
themselves are the user's input: validate them in the handler.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import CallbackError, ConfigError, InvalidCallback
from .message import Message
from .schemas import INTERACTION_TRIGGER, Interaction
from .settings import Settings

SALT = "cometchat-bot.interaction"


class InvalidToken(CallbackError):
    status = 403
    code = "invalid_token"


class ExpiredToken(CallbackError):
    status = 410
    code = "token_expired"


class WrongSubmitter(CallbackError):
    status = 403
    code = "wrong_submitter"


class Replayed(CallbackError):
    status = 409
    code = "already_submitted"


@dataclass(frozen=True)
class Claims:
    """What a token signs: the element of one interactive reply of the bot, and who may use it."""

    bot: str
    interaction_id: str
    element_id: str
    muid: str  # the interactive message's muid
    conversation: str
    receiver: str  # where answers to the submission go
    receiver_type: str
    user: str  # in a 1:1 chat the only user who may submit; "" in groups
    parent_id: str = ""  # the thread the form was posted in

    def to_token(self) -> dict[str, str]:
        return {
            "b": self.bot, "i": self.interaction_id, "e": self.element_id, "m": self.muid, "c": self.conversation,
            "r": self.receiver, "t": self.receiver_type, "u": self.user, "p": self.parent_id,
        }  # fmt: skip

    @classmethod
    def from_token(cls, data: Any) -> Claims:
        try:
            return cls(
                data["b"], data["i"], data["e"], data["m"], data["c"], data["r"], data["t"], data["u"], data["p"]
            )
        except (KeyError, TypeError):
            raise InvalidToken("the interaction token is not one of this bot's") from None


class Tokens:
    """Signs and checks interaction tokens (itsdangerous: HMAC-SHA256 over a timestamped, compact payload)."""

    def __init__(self, secret: str | bytes, *, max_age: float) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})

    def mint(self, claims: Claims) -> str:
        return self._serializer.dumps(claims.to_token())

    def verify(self, token: str) -> Claims:
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            raise ExpiredToken("this form or button has expired; ask the bot for a new one") from None
        except BadSignature:
            raise InvalidToken("the interaction token is forged or damaged") from None
        return Claims.from_token(data)


def secret_for(settings: Settings) -> bytes:
    """The key interaction tokens are signed with.

    ``SECRET_KEY`` when set; otherwise one derived from the REST API key (secret, and the same in every
    process of the app), so that a deployed bot needs no extra setting; in local mode a random key kept
    next to the journal (every local process reads the same file).
    """
    if settings.secret_key:
        return settings.secret_key.encode()
    if settings.api_key:
        return hmac.new(settings.api_key.encode(), b"cometchat-bot interaction tokens", hashlib.sha256).digest()
    return _local_secret(Path(settings.journal_path).with_name("secret_key"))


def _local_secret(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        key = secrets.token_hex(32).encode()
        f.write(key)
    return key


@dataclass(frozen=True)
class ActionMaker:
    """Makes the ``apiAction`` of a button that reports back to this app (the dispatcher's ``api_action``)."""

    tokens: Tokens
    url: str  # the interaction endpoint as the users' clients reach it; "" when it is not known

    def __call__(
        self, interaction_id: str, element_id: str, msg: Message, muid: str, thread: str | None = None
    ) -> dict[str, Any]:
        """The ``apiAction`` of one button of a reply to ``msg`` (``thread``: the thread that reply goes to)."""
        if not self.url:
            raise ConfigError(
                "set PUBLIC_URL (the https address where CometChat's clients reach this app) to send forms and cards"
            )
        target = msg.reply_target
        claims = Claims(
            bot=msg.bot_uid,
            interaction_id=interaction_id,
            element_id=element_id,
            muid=muid,
            conversation=msg.conversation_id,
            receiver=target.receiver,
            receiver_type=target.receiver_type,
            user="" if msg.is_group else msg.sender.uid,
            parent_id=thread or "",
        )
        return {
            "actionType": "apiAction",
            "url": self.url,
            "method": "POST",
            "payload": {"token": self.tokens.mint(claims)},
            "headers": {"Content-Type": "application/json"},
            "dataKey": "CometChatData",
        }


def endpoint_url(settings: Settings) -> str:
    """Where buttons point: ``PUBLIC_URL`` + ``INTERACTIONS_PATH``; in local mode the bare path (the
    playground is served by the app itself); "" for a deployed bot without ``PUBLIC_URL``."""
    if settings.public_url:
        return settings.public_url.rstrip("/") + settings.interactions_path
    return "" if settings.is_live else settings.interactions_path


def verify(
    interaction: Interaction,
    tokens: Tokens,
    *,
    bot_uid: str,
    sent: Callable[[str], Any],
    now: float,
) -> dict[str, Any]:
    """Check a submission against its token; returns the event to journal (see :func:`bot.schemas.parse_stored`).

    ``sent(muid)`` looks up the interactive message as delivered (its CometChat id and body), or None.
    Raises :class:`InvalidToken`, :class:`ExpiredToken` or :class:`WrongSubmitter`.
    """
    claims = tokens.verify(interaction.token)
    if bot_uid and claims.bot != bot_uid:
        raise InvalidToken("the interaction token belongs to another bot")
    # CometChat lowercases uids; a kit that does not say who clicked: in a 1:1 chat only one user could.
    user = (interaction.user or claims.user).lower()
    if not user:
        raise InvalidCallback("the request does not say who submitted", fields={"data.interactedBy": ["Missing."]})
    if claims.user and user != claims.user.lower():
        raise WrongSubmitter(f"this form was sent to {claims.user!r}, not to {user!r}")
    if interaction.element_id and interaction.element_id != claims.element_id:
        raise InvalidToken(
            f"the token is for element {claims.element_id!r}, the request says {interaction.element_id!r}"
        )
    record = sent(claims.muid)
    if record is not None and interaction.message_id and str(record.message_id) != interaction.message_id:
        raise InvalidToken(f"the token is for message {record.message_id}, not {interaction.message_id}")
    return {
        "trigger": INTERACTION_TRIGGER,
        "claims": claims.to_token(),
        "user": user,
        "element_id": claims.element_id,
        "values": interaction.values,
        "message_id": interaction.message_id or (str(record.message_id) if record is not None else ""),
        "message_type": interaction.message_type,
        "timezone": interaction.timezone,
        "original": record.body if record is not None else None,
        "received_at": now,
    }

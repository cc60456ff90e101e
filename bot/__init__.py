"""A Flask microframework for CometChat bots.

.. code-block:: python

    from bot import Router, Image

    bot = Router()

    @bot.on_text(r"^weather (?P<city>.+)")
    def weather(msg, city):
        return f"Sunny in {city}"
"""

from .errors import (
    AuthenticationError,
    BadRequest,
    CallbackError,
    CometChatError,
    ConfigError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from .message import Attachment, Command, Message, Target, User
from .replies import Audio, Custom, File, Image, Reply, Text, Video
from .routing import Router
from .settings import Settings

__all__ = [
    "Attachment",
    "Audio",
    "AuthenticationError",
    "BadRequest",
    "CallbackError",
    "CometChatError",
    "Command",
    "ConfigError",
    "Custom",
    "File",
    "Forbidden",
    "Image",
    "Message",
    "NotFound",
    "RateLimited",
    "Reply",
    "Router",
    "ServerError",
    "Settings",
    "Target",
    "Text",
    "TransportError",
    "User",
    "Video",
]

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
from .interactive import (
    Button,
    Card,
    Checkbox,
    CustomInteractive,
    Dropdown,
    Form,
    Label,
    Scheduler,
    SingleSelect,
    SubmitButton,
    TextInput,
    UrlButton,
)
from .message import Attachment, Command, Message, ReplyRef, Submission, Target, User
from .replies import Audio, Custom, File, Image, Reply, Text, Video
from .routing import Router
from .settings import Settings
from .state import State

__all__ = [
    "Attachment",
    "Audio",
    "AuthenticationError",
    "BadRequest",
    "Button",
    "CallbackError",
    "Card",
    "Checkbox",
    "CometChatError",
    "Command",
    "ConfigError",
    "Custom",
    "CustomInteractive",
    "Dropdown",
    "File",
    "Forbidden",
    "Form",
    "Image",
    "Label",
    "Message",
    "NotFound",
    "RateLimited",
    "Reply",
    "ReplyRef",
    "Router",
    "Scheduler",
    "ServerError",
    "Settings",
    "SingleSelect",
    "State",
    "Submission",
    "SubmitButton",
    "Target",
    "Text",
    "TextInput",
    "TransportError",
    "UrlButton",
    "User",
    "Video",
]

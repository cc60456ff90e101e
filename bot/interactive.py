"""Interactive replies: forms, cards, schedulers and custom interactive messages (category ``interactive``).

A handler returns them like any other reply::

    return Form("booking", title="Book a table", fields=[
        TextInput("name", "Name", placeholder="Your name"),
        Dropdown("time", "Time", ["19:00", "20:00"], default="19:00"),
    ])

CometChat never tells a bot that a user submitted a form (PLATFORM.md 5.4): the user's client calls the
``apiAction`` of the clicked button. So every button that must report back gets its action from
``ReplyContext.api_action(interaction_id, element_id)``, a URL on the framework's own server with a signed
token; the interaction id (``Form("booking", ...)``) routes the submission to ``@bot.on_submit("booking")``.

Everything CometChat would reject, or that would make a submission unroutable, is checked here, at
construction where possible and in :meth:`data` otherwise (actions and the 10 KB ``data`` limit need the
context), so a bad form fails in the handler that built it and not as a dead letter.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias
from urllib.parse import urlsplit

from .replies import MAX_DATA_BYTES, Reply, ReplyContext, _json_size

__all__ = [
    "GOAL_TYPES",
    "MAX_INTERACTION_ID_LENGTH",
    "Button",
    "Card",
    "Checkbox",
    "CustomInteractive",
    "Dropdown",
    "Element",
    "Form",
    "InteractionGoal",
    "Label",
    "Scheduler",
    "SingleSelect",
    "SubmitButton",
    "TextInput",
    "UrlButton",
    "interaction_goal",
]

#: Interaction goal types (PLATFORM.md 5.2): the REST schema lists anyOf, allOf, oneOf, none; the SDKs and the
#: scheduler example use anyAction.
GOAL_TYPES = frozenset({"anyOf", "allOf", "oneOf", "none", "anyAction"})
_GOALS_WITH_ELEMENTS = frozenset({"anyOf", "allOf", "oneOf"})

#: Interaction ids travel inside signed tokens and name ``@bot.on_submit`` handlers.
MAX_INTERACTION_ID_LENGTH = 64
_INTERACTION_ID = re.compile(r"[A-Za-z0-9_.:-]+")

#: ``options`` as given: ``[("de", "Germany")]``, ``{"de": "Germany"}``, ``["Germany"]`` or
#: ``[{"value": "de", "label": "Germany"}]``.
OptionsInput: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str] | str | Mapping[str, str]]


# ------------------------------------------------------------------ interaction goal


@dataclass(frozen=True)
class InteractionGoal:
    """When CometChat considers the message done (PLATFORM.md 5.2): ``anyOf|allOf|oneOf`` need element ids,
    ``none`` (never) and ``anyAction`` (any interaction) take none."""

    type: str
    element_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.type not in GOAL_TYPES:
            raise ValueError(f"interaction goal type must be one of {sorted(GOAL_TYPES)}, got {self.type!r}")
        if isinstance(self.element_ids, str):
            raise ValueError("interaction goal element ids must be a list of ids, not a str")
        ids = tuple(self.element_ids)
        for element_id in ids:
            _check_element_id(element_id)
        if len(set(ids)) != len(ids):
            raise ValueError(f"interaction goal lists an element id twice: {list(ids)}")
        if self.type in _GOALS_WITH_ELEMENTS and not ids:
            raise ValueError(f"interaction goal {self.type!r} needs at least one element id")
        if self.type not in _GOALS_WITH_ELEMENTS and ids:
            raise ValueError(f"interaction goal {self.type!r} takes no element ids")
        object.__setattr__(self, "element_ids", ids)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "elementIds": list(self.element_ids)}


def interaction_goal(type: str, element_ids: Iterable[str] = ()) -> InteractionGoal:
    """``interaction_goal("allOf", ["approve", "sign"])``: a validated :class:`InteractionGoal`."""
    if isinstance(element_ids, str):
        raise ValueError("interaction goal element ids must be a list of ids, not a str")
    return InteractionGoal(type, tuple(element_ids))


# ------------------------------------------------------------------ elements (PLATFORM.md 5.2)


class Element(ABC):
    """A form field or button; ``id`` is its ``elementId`` (what ``msg.submission.element_id`` names)."""

    id: str
    #: True for buttons whose action is an ``apiAction`` back to the bot.
    reports_back: ClassVar[bool] = False

    @abstractmethod
    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        """The element's CometChat JSON inside the message named ``interaction_id``."""


@dataclass(frozen=True)
class TextInput(Element):
    """A text field; ``max_lines`` > 1 makes it a text area."""

    id: str
    label: str
    placeholder: str = ""
    optional: bool = False
    max_lines: int = 1
    default: str = ""

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.label, f"text input {self.id!r} label")
        _check_str(self.placeholder, f"text input {self.id!r} placeholder")
        _check_str(self.default, f"text input {self.id!r} default")
        if not isinstance(self.max_lines, int) or isinstance(self.max_lines, bool) or self.max_lines < 1:
            raise ValueError(f"text input {self.id!r}: max_lines must be an int >= 1, got {self.max_lines!r}")

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        element = {
            "elementType": "textInput",
            "elementId": self.id,
            "label": self.label,
            "optional": bool(self.optional),
            "maxLines": self.max_lines,
        }
        if self.default:
            element["defaultValue"] = self.default
        if self.placeholder:
            element["placeholder"] = {"text": self.placeholder}
        return element


@dataclass(frozen=True)
class _Choice(Element):
    """A field with options; ``options`` is normalised to a tuple of ``(value, label)``."""

    id: str
    label: str
    options: OptionsInput
    default: str | None = None
    optional: bool = False

    element_type: ClassVar[str]

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.label, f"{self.element_type} {self.id!r} label")
        object.__setattr__(self, "options", _normalise_options(self.options, f"{self.element_type} {self.id!r}"))
        self._check_default([value for value, _ in self.options])

    def _check_default(self, values: list[str]) -> None:
        if self.default is not None and self.default not in values:
            raise ValueError(
                f"{self.element_type} {self.id!r}: default {self.default!r} is not one of its option values"
            )

    def _default_json(self) -> Any:
        return self.default

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        element: dict[str, Any] = {
            "elementType": self.element_type,
            "elementId": self.id,
            "label": self.label,
            "optional": bool(self.optional),
            "options": [{"value": value, "label": label} for value, label in self.options],
        }
        default = self._default_json()
        if default:
            element["defaultValue"] = default
        return element


class Dropdown(_Choice):
    """Pick one option from a drop-down list."""

    element_type: ClassVar[str] = "dropdown"


class SingleSelect(_Choice):
    """Pick one option from buttons shown side by side."""

    element_type: ClassVar[str] = "singleSelect"


@dataclass(frozen=True)
class Checkbox(_Choice):
    """Pick any number of options; ``default`` is a subset of the option values."""

    default: Sequence[str] = ()

    element_type: ClassVar[str] = "checkbox"

    def _check_default(self, values: list[str]) -> None:
        if isinstance(self.default, str) or not isinstance(self.default, Iterable):
            raise ValueError(f"checkbox {self.id!r}: default must be a list of option values, got {self.default!r}")
        default = tuple(self.default)
        unknown = [value for value in default if value not in values]
        if unknown:
            raise ValueError(f"checkbox {self.id!r}: defaults {unknown} are not among its option values")
        object.__setattr__(self, "default", default)

    def _default_json(self) -> Any:
        return list(self.default)


@dataclass(frozen=True)
class Label(Element):
    """Fixed text in a form. Its JSON key is ``text`` (the UI kits' ``LabelElement``; PLATFORM.md 5.2 lists it)."""

    id: str
    text: str

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.text, f"label {self.id!r} text")

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        return {"elementType": "label", "elementId": self.id, "text": self.text}


@dataclass(frozen=True)
class Button(Element):
    """A button that reports back to the bot (an ``apiAction`` to the framework): a card action, or a second
    button of a form. The click reaches ``@bot.on_submit(<interaction id>)`` with ``element_id == id``."""

    id: str
    text: str
    disable_after_interacted: bool = False

    reports_back: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.text, f"button {self.id!r} text")

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        return _button(self.id, self.text, self.disable_after_interacted, _api_action(ctx, interaction_id, self.id))


@dataclass(frozen=True)
class UrlButton(Element):
    """A button that opens ``url`` (``urlNavigation``, PLATFORM.md 5.3); the bot hears nothing of it."""

    id: str
    text: str
    url: str
    disable_after_interacted: bool = False

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.text, f"button {self.id!r} text")
        _check_url(self.url, f"button {self.id!r} url")

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        action = {"actionType": "urlNavigation", "url": self.url}
        return _button(self.id, self.text, self.disable_after_interacted, action)


@dataclass(frozen=True)
class SubmitButton(Element):
    """A form's submit button (``submitElement``); ``Form(..., submit="Book")`` is short for
    ``submit=SubmitButton("Book")``."""

    text: str = "Submit"
    disable_after_interacted: bool = True
    id: str = "submit"

    reports_back: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_element_id(self.id)
        _check_text(self.text, "submit button text")

    def to_json(self, interaction_id: str, ctx: ReplyContext) -> dict[str, Any]:
        return _button(self.id, self.text, self.disable_after_interacted, _api_action(ctx, interaction_id, self.id))


_FORM_FIELDS = (TextInput, Dropdown, Checkbox, SingleSelect, Label, Button, UrlButton)
_CARD_ACTIONS = (Button, UrlButton)


# ------------------------------------------------------------------ messages


class _Interactive(Reply):
    """What all interactive replies share: the interaction id, the goal, the envelope and the size check."""

    category: ClassVar[str] = "interactive"
    id: str
    interaction_goal: InteractionGoal | Mapping[str, Any] | None
    allow_sender_interaction: bool

    def _check_common(self) -> None:
        _check_interaction_id(self.id)
        self._check_tags()
        if not isinstance(self.allow_sender_interaction, bool):
            raise ValueError("allow_sender_interaction must be a bool")

    def _check_goal(self, element_ids: Iterable[str] | None) -> None:
        """Normalises the goal and checks its ids against ``element_ids`` (None: unknown, as in raw data)."""
        goal = _coerce_goal(self.interaction_goal)
        object.__setattr__(self, "interaction_goal", goal)
        if goal is not None and element_ids is not None:
            known = set(element_ids)
            missing = [element_id for element_id in goal.element_ids if element_id not in known]
            if missing:
                raise ValueError(f"{self.type} {self.id!r}: interaction goal names unknown element ids {missing}")

    @abstractmethod
    def _default_goal(self) -> InteractionGoal: ...

    def _envelope(self, interactive_data: dict[str, Any]) -> dict[str, Any]:
        goal = self.interaction_goal if isinstance(self.interaction_goal, InteractionGoal) else self._default_goal()
        data = {
            "interactiveData": interactive_data,
            "interactionGoal": goal.to_json(),
            "allowSenderInteraction": self.allow_sender_interaction,
        }
        # Reply.body() adds the metadata to data; CometChat counts it towards the 10 KB (PLATFORM.md 4.6).
        self._check_size({**data, "metadata": dict(self.metadata)} if self.metadata else data)
        return data

    def body(self, ctx: ReplyContext) -> dict[str, Any]:
        """Reply.body(), checked again once everything it adds to ``data`` (metadata, markers) is in."""
        body = super().body(ctx)
        self._check_size(body["data"])
        return body

    def _check_size(self, data: Mapping[str, Any]) -> None:
        size = _json_size(data)
        if size > MAX_DATA_BYTES:
            raise ValueError(
                f"{self.type} {self.id!r} is {size} bytes, larger than CometChat's 10 KB data limit "
                f"({MAX_DATA_BYTES} bytes with our margin)"
            )


@dataclass(frozen=True)
class Form(_Interactive):
    """A form: ``Form("booking", "Book a table", [TextInput("name", "Name"), ...], submit="Book")``.

    The submit button reports back to the bot; the default goal is reached when it is clicked.
    """

    id: str
    title: str
    fields: Sequence[Element]
    submit: str | SubmitButton = "Submit"
    goal_completion_text: str | None = None
    interaction_goal: InteractionGoal | Mapping[str, Any] | None = None
    allow_sender_interaction: bool = False
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    type: ClassVar[str] = "form"

    def __post_init__(self) -> None:
        self._check_common()
        _check_str(self.title, "form title")
        if self.goal_completion_text is not None:
            _check_str(self.goal_completion_text, "form goal_completion_text")
        fields = _elements(self.fields, _FORM_FIELDS, f"form {self.id!r} field")
        if not fields:
            raise ValueError(f"form {self.id!r} needs at least one field")
        submit = SubmitButton(self.submit) if isinstance(self.submit, str) else self.submit
        if not isinstance(submit, SubmitButton):
            raise TypeError(f"form {self.id!r}: submit must be a str or a SubmitButton, got {type(submit).__name__}")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "submit", submit)
        self._check_goal(_unique_ids([*fields, submit], f"form {self.id!r}"))

    def _default_goal(self) -> InteractionGoal:
        return InteractionGoal("anyOf", (self.submit.id,))

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        interactive: dict[str, Any] = {
            "title": self.title,
            "formFields": [element.to_json(self.id, ctx) for element in self.fields],
            "submitElement": self.submit.to_json(self.id, ctx),
        }
        if self.goal_completion_text is not None:
            interactive["goalCompletionText"] = self.goal_completion_text
        return self._envelope(interactive)


@dataclass(frozen=True)
class Card(_Interactive):
    """A card: text, an optional image and buttons (``cardActions``, PLATFORM.md 5.2).

    The default goal is reached when any of its :class:`Button` is clicked (``none`` with only URL buttons).
    """

    id: str
    text: str
    image_url: str | None = None
    buttons: Sequence[Button | UrlButton] = ()
    interaction_goal: InteractionGoal | Mapping[str, Any] | None = None
    allow_sender_interaction: bool = False
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    type: ClassVar[str] = "card"

    def __post_init__(self) -> None:
        self._check_common()
        _check_text(self.text, f"card {self.id!r} text")
        if self.image_url is not None:
            _check_url(self.image_url, f"card {self.id!r} image_url")
        buttons = _elements(self.buttons, _CARD_ACTIONS, f"card {self.id!r} button")
        object.__setattr__(self, "buttons", buttons)
        self._check_goal(_unique_ids(buttons, f"card {self.id!r}"))

    def _default_goal(self) -> InteractionGoal:
        ids = tuple(button.id for button in self.buttons if button.reports_back)
        return InteractionGoal("anyOf", ids) if ids else InteractionGoal("none")

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        interactive: dict[str, Any] = {
            "text": self.text,
            "cardActions": [button.to_json(self.id, ctx) for button in self.buttons],
        }
        if self.image_url is not None:
            interactive["imageUrl"] = self.image_url
        return self._envelope(interactive)


@dataclass(frozen=True)
class _RawInteractive(_Interactive):
    """An interactive reply given as CometChat's own ``interactiveData`` (kept as a copy of what was given)."""

    id: str
    interactive_data: Mapping[str, Any]
    interaction_goal: InteractionGoal | Mapping[str, Any] | None = None
    allow_sender_interaction: bool = False
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    in_thread: bool | None = None

    def _check_raw(self) -> None:
        self._check_common()
        if not isinstance(self.interactive_data, Mapping):
            raise TypeError(f"{self.type} {self.id!r}: interactive_data must be a mapping")
        object.__setattr__(self, "interactive_data", copy.deepcopy(dict(self.interactive_data)))


@dataclass(frozen=True)
class Scheduler(_RawInteractive):
    """A scheduler (PLATFORM.md 5.2): ``interactive_data`` as CometChat defines it (title, duration,
    availability, ...). A missing ``scheduleElement``, or one whose action is missing or an ``apiAction``
    without url, gets an action back to the bot."""

    type: ClassVar[str] = "scheduler"

    def __post_init__(self) -> None:
        self._check_raw()
        element = self.interactive_data.get("scheduleElement")
        if element is not None and not isinstance(element, Mapping):
            raise ValueError(f"scheduler {self.id!r}: scheduleElement must be an object")
        if element is not None and "elementId" in element:
            _check_element_id(element["elementId"])
        if element is not None and element.get("action") is not None and not isinstance(element["action"], Mapping):
            raise ValueError(f"scheduler {self.id!r}: scheduleElement action must be an object")
        self._check_goal([self._element_id()])

    def _element_id(self) -> str:
        return (self.interactive_data.get("scheduleElement") or {}).get("elementId") or "schedule"

    def _default_goal(self) -> InteractionGoal:
        return InteractionGoal("anyOf", (self._element_id(),))

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        interactive = copy.deepcopy(dict(self.interactive_data))
        element_id = self._element_id()
        element = dict(interactive.get("scheduleElement") or {})
        action = element.get("action")
        if not action or (action.get("actionType") == "apiAction" and not action.get("url")):
            element["action"] = _api_action(ctx, self.id, element_id)
        for key, value in (
            ("elementType", "button"),
            ("elementId", element_id),
            ("buttonText", "Schedule"),
            ("disableAfterInteracted", True),
        ):
            element.setdefault(key, value)
        interactive["scheduleElement"] = element
        return self._envelope(interactive)


@dataclass(frozen=True)
class CustomInteractive(_RawInteractive):
    """A ``customInteractive`` message: free JSON for an app's own UI, passed through as given.

    Its element ids are unknown here, so a goal's ids are not checked; the default goal is ``none``.
    """

    type: ClassVar[str] = "customInteractive"

    def __post_init__(self) -> None:
        self._check_raw()
        if not self.interactive_data:
            raise ValueError(f"customInteractive {self.id!r}: interactive_data is empty")
        self._check_goal(None)

    def _default_goal(self) -> InteractionGoal:
        return InteractionGoal("none")

    def data(self, ctx: ReplyContext) -> dict[str, Any]:
        return self._envelope(copy.deepcopy(dict(self.interactive_data)))


# ------------------------------------------------------------------ helpers


def _button(element_id: str, text: str, disable_after_interacted: bool, action: dict[str, Any]) -> dict[str, Any]:
    return {
        "elementType": "button",
        "elementId": element_id,
        "buttonText": text,
        "disableAfterInteracted": bool(disable_after_interacted),
        "action": action,
    }


def _api_action(ctx: ReplyContext, interaction_id: str, element_id: str) -> dict[str, Any]:
    if ctx.api_action is None:
        raise ValueError(
            f"interactive message {interaction_id!r} has a button ({element_id!r}) that reports back to the bot, "
            "but no api_action was given to build its action (pass api_action= to build_requests)"
        )
    return dict(ctx.api_action(interaction_id, element_id))


def _check_interaction_id(value: Any) -> None:
    if not isinstance(value, str) or len(value) > MAX_INTERACTION_ID_LENGTH or not _INTERACTION_ID.fullmatch(value):
        raise ValueError(
            f"interaction id must be 1-{MAX_INTERACTION_ID_LENGTH} characters of A-Z a-z 0-9 _ . : -, got {value!r}"
        )


def _check_element_id(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"element id must be a non-empty string, got {value!r}")


def _check_str(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")


def _check_text(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


def _check_url(value: Any, what: str) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {value!r}")


def _elements(elements: Any, allowed: tuple[type, ...], what: str) -> tuple[Any, ...]:
    if isinstance(elements, (str, Mapping)) or not isinstance(elements, Iterable):
        raise TypeError(f"{what}s must be a list of elements")
    elements = tuple(elements)
    for element in elements:
        if not isinstance(element, allowed):
            names = ", ".join(cls.__name__ for cls in allowed)
            raise TypeError(f"{what} must be one of {names}, got {type(element).__name__}")
    return elements


def _unique_ids(elements: Iterable[Element], what: str) -> list[str]:
    ids = [element.id for element in elements]
    duplicates = sorted({element_id for element_id in ids if ids.count(element_id) > 1})
    if duplicates:
        raise ValueError(f"{what}: element ids must be unique, repeated: {duplicates}")
    return ids


def _coerce_goal(goal: Any) -> InteractionGoal | None:
    if goal is None or isinstance(goal, InteractionGoal):
        return goal
    if isinstance(goal, Mapping):
        return InteractionGoal(goal.get("type", ""), goal.get("elementIds", ()))
    raise TypeError(f"interaction_goal must be an InteractionGoal (see interaction_goal()), got {type(goal).__name__}")


def _normalise_options(options: Any, what: str) -> tuple[tuple[str, str], ...]:
    """``[("de", "Germany")]``, ``{"de": "Germany"}``, ``["Germany"]`` or ``[{"value", "label"}]`` ->
    ``(("de", "Germany"), ...)``; values unique, values and labels non-empty strings."""
    if isinstance(options, Mapping):
        items: list[Any] = list(options.items())
    elif isinstance(options, (str, bytes)) or not isinstance(options, Iterable):
        raise ValueError(f"{what}: options must be a list or a dict, got {type(options).__name__}")
    else:
        items = list(options)
    if not items:
        raise ValueError(f"{what} needs at least one option")
    normalised: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            value, label = item, item
        elif isinstance(item, Mapping):
            value, label = item.get("value"), item.get("label")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            value, label = item
        else:
            raise ValueError(f"{what}: an option must be a str, a (value, label) pair or a dict, got {item!r}")
        if not isinstance(value, str) or not value or not isinstance(label, str) or not label.strip():
            raise ValueError(f"{what}: every option needs a non-empty string value and label, got {item!r}")
        normalised.append((value, label))
    values = [value for value, _ in normalised]
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"{what}: option values must be unique, repeated: {duplicates}")
    return tuple(normalised)

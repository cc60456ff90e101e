"""Routers: ordered lists of (filter, handler) entries.

Registration order is match order and the first match wins. A router can
include other routers (each module in ``bots/`` is one, included into the
app's root router): a router tries its own routes, then those of the routers
it includes, in order. Fallbacks (``@bot.fallback``) are tried only after no
route anywhere matched. Action messages (edits, deletes, group events) are
offered only to filters that ask for them.

Every decorator is sugar over :meth:`Router.add_route` and returns the
function unchanged, so handlers stay plain functions that tests can call.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .filters import (
    ActionFilter,
    AnyText,
    Captures,
    CommandFilter,
    Filter,
    PredicateFilter,
    TextFilter,
    TypeFilter,
)
from .message import Message

Handler = Callable[..., Any]
ErrorHandler = Callable[[Message, Exception], Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Route:
    filter: Filter
    handler: Handler
    #: Capture names the handler takes as keyword arguments; None = all (it has ``**kwargs``).
    kwarg_names: frozenset[str] | None

    @classmethod
    def for_handler(cls, filter: Filter, handler: Handler) -> Route:
        return cls(filter, handler, _keyword_parameters(handler))

    @property
    def name(self) -> str:
        return f"{getattr(self.handler, '__module__', '?')}.{getattr(self.handler, '__qualname__', repr(self.handler))}"

    def call(self, msg: Message, captures: Captures) -> Any:
        if self.kwarg_names is None:
            kwargs = captures
        else:
            kwargs = {k: v for k, v in captures.items() if k in self.kwarg_names}
        return self.handler(msg, **kwargs)


@dataclass(frozen=True)
class Resolution:
    """The route that takes a message, what its filter captured, and the routers it sits in (innermost last)."""

    route: Route
    captures: Captures
    routers: tuple[Router, ...]

    def error_handlers(self) -> Iterator[ErrorHandler]:
        """The ``on_error`` hooks that apply, nearest router first."""
        for router in reversed(self.routers):
            yield from router.error_handlers


class Router:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.routes: list[Route] = []
        self.fallbacks: list[Route] = []
        self.error_handlers: list[ErrorHandler] = []
        self.children: list[Router] = []

    def __repr__(self) -> str:
        return f"<Router {self.name or hex(id(self))}: {len(self.routes)} routes, {len(self.children)} included>"

    # ------------------------------------------------------------ explicit API

    def add_route(self, filter: Filter, handler: Handler) -> None:
        """Register ``handler`` for messages that ``filter`` matches (after the routes already here)."""
        self.routes.append(Route.for_handler(filter, handler))

    def add_fallback(self, handler: Handler) -> None:
        """Register a handler for text messages no route matched."""
        self.fallbacks.append(Route.for_handler(AnyText(), handler))

    def add_error_handler(self, handler: ErrorHandler) -> None:
        """Register ``handler(msg, error)``, called when a handler of this router (or an included one) raises."""
        self.error_handlers.append(handler)

    def include_router(self, router: Router) -> None:
        """Try ``router``'s routes after this router's own (like Flask's ``register_blueprint``)."""
        if router is self or self in router._walk():
            raise ValueError("a router cannot include itself")
        self.children.append(router)

    # ------------------------------------------------------------ decorators

    def on_text(self, pattern: str | re.Pattern[str], *, ignore_case: bool = True) -> Callable[[F], F]:
        """Text messages whose text contains a match of ``pattern`` (a regex, case-insensitive by default)."""
        return self._decorator(TextFilter(pattern, ignore_case=ignore_case))

    def on_command(self, *names: str) -> Callable[[F], F]:
        """Slash commands, e.g. ``on_command("weather", "w")`` for ``/weather Paris``; args in ``msg.command``."""
        return self._decorator(CommandFilter(*names))

    def on_type(self, *types: str, category: str = "message") -> Callable[[F], F]:
        """Messages of these types: ``on_type("image")``, ``on_type("audio", "video")``."""
        return self._decorator(TypeFilter(types, category=category))

    def on_custom(self, *types: str) -> Callable[[F], F]:
        """Custom messages of these types (``category == "custom"``); the payload is ``msg.custom_data``."""
        return self._decorator(TypeFilter(types, category="custom"))

    def on_action(self, *actions: str) -> Callable[[F], F]:
        """Action messages (``edited``, ``deleted``, ``joined``, ...), ignored unless a handler asks for them."""
        return self._decorator(ActionFilter(*actions))

    def on_message(self, predicate: Callable[[Message], Any] | None = None, *, actions: bool = False):
        """Messages for which ``predicate(msg)`` is true (every message when omitted)."""
        return self._decorator(PredicateFilter(predicate or (lambda msg: True), actions=actions))

    def fallback(self, handler: F) -> F:
        """Decorator: the handler for text messages that no route matched."""
        self.add_fallback(handler)
        return handler

    def on_error(self, handler: F) -> F:
        """Decorator: ``handler(msg, error)`` runs when a handler raises; what it returns is sent."""
        self.add_error_handler(handler)
        return handler

    def _decorator(self, filter: Filter) -> Callable[[F], F]:
        def register(handler: F) -> F:
            self.add_route(filter, handler)
            return handler

        return register

    # ------------------------------------------------------------ matching

    def resolve(self, msg: Message) -> Resolution | None:
        """The first route that takes ``msg``; fallbacks only when no route anywhere does."""
        return self._first(msg, "routes", ()) or self._first(msg, "fallbacks", ())

    def _first(self, msg: Message, table: str, parents: tuple[Router, ...]) -> Resolution | None:
        chain = (*parents, self)
        for route in getattr(self, table):
            if msg.is_action and not route.filter.accepts_actions:
                continue
            captures = route.filter(msg)
            if captures is not None:
                return Resolution(route, captures, chain)
        for child in self.children:
            found = child._first(msg, table, chain)
            if found is not None:
                return found
        return None

    def iter_routes(self) -> Iterator[tuple[Router, Route, bool]]:
        """Every (router, route, is_fallback) in match order: what ``flask bot routes`` lists."""
        for router in self._walk():
            for route in router.routes:
                yield router, route, False
        for router in self._walk():
            for route in router.fallbacks:
                yield router, route, True

    def _walk(self) -> Iterator[Router]:
        yield self
        for child in self.children:
            yield from child._walk()


def _keyword_parameters(handler: Handler) -> frozenset[str] | None:
    """Names after the message parameter that a capture can fill; None if the handler takes ``**kwargs``."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: give them the message only
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name
        for p in params[1:]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )

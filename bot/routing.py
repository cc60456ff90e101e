"""Routers: ordered lists of (filter, handler) entries, with hooks, nested like Flask blueprints.

Registration order is match order and the first match wins. A router can
include other routers (each module in ``bots/`` is one, included into the
package's router): a router tries its own routes, then those of the routers
it includes, in order. Fallbacks (``@bot.fallback``) are tried only after no
route anywhere matched. Action messages (edits, deletes, group events) are
offered only to filters that ask for them.

A router may carry filters of its own (``Router(filters=[...])``, or
``include_router(child, *filters)``): its routes are tried only for messages
those filters accept, like a URL prefix of a Flask blueprint. Its
``group_policy`` says which group messages it answers at all (every one,
only mentions of the bot, only commands; inherited by included routers).
``before`` hooks run before the handler of a matching route, outermost
router first, and may drop or replace the message or answer instead;
``after`` hooks see (and may change) the replies; ``on_error`` hooks answer
when a handler raises, nearest router first.

Every decorator is sugar over an explicit method (:meth:`Router.add_route`,
:meth:`Router.add_before_hook`, ...) and returns the function unchanged, so
handlers stay plain functions that tests can call.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .filters import (
    GROUP_POLICIES,
    ActionFilter,
    AnyText,
    Captures,
    CommandFilter,
    Filter,
    MentionFilter,
    PredicateFilter,
    StepFilter,
    SubmitFilter,
    TextFilter,
    ThreadFilter,
    TypeFilter,
    group_policy_admits,
)
from .message import Message
from .state import SCOPES

Handler = Callable[..., Any]
ErrorHandler = Callable[[Message, Exception], Any]
#: ``before(msg)``: None (or True) to go on, a Message to go on with it instead, False to drop it, anything
#: else is the answer (sent instead of running the handler).
BeforeHook = Callable[[Message], Any]
#: ``after(msg, replies)``: None keeps the replies, a list replaces them.
AfterHook = Callable[[Message, list], Any]
#: A router's own filter: a :class:`~bot.filters.Filter`, or a function of the message (falsy: not for us).
PrefixFilter = Filter | Callable[[Message], Any]
F = TypeVar("F", bound=Callable[..., Any])

#: ``state=`` of a decorator: None (any state), a step, several, or ``"*"`` (any step: inside a dialog).
Steps = str | Iterable[str] | None


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
class Inclusion:
    """A router included in another, with the filters the inclusion adds."""

    router: Router
    filters: tuple[PrefixFilter, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """The route that takes a message, what the filters captured, and the routers it sits in (innermost last)."""

    route: Route
    captures: Captures
    routers: tuple[Router, ...]

    @property
    def router(self) -> Router:
        """The router that holds the route (its state scope applies)."""
        return self.routers[-1]

    def before_hooks(self) -> Iterator[BeforeHook]:
        """Outermost router first, as Flask runs the app's ``before_request`` before a blueprint's."""
        for router in self.routers:
            yield from router.before_hooks

    def after_hooks(self) -> Iterator[AfterHook]:
        """Innermost router first."""
        for router in reversed(self.routers):
            yield from router.after_hooks

    def error_handlers(self) -> Iterator[ErrorHandler]:
        """The ``on_error`` hooks that apply, nearest router first."""
        for router in reversed(self.routers):
            yield from router.error_handlers


class Router:
    def __init__(
        self,
        name: str = "",
        *,
        filters: Iterable[PrefixFilter] = (),
        group_policy: str | None = None,
        state_scope: str = "conversation",
    ) -> None:
        """``filters``: messages this router's routes may take; ``group_policy``: ``all``, ``mentioned``,
        ``commands`` or ``none`` (or CometChat's ``allMessages``, ...; None inherits, the root answers all);
        ``state_scope``: ``conversation``, or ``user`` for a state per user in group chats."""
        if group_policy is not None and group_policy not in GROUP_POLICIES:
            raise ValueError(f"group_policy must be one of {', '.join(GROUP_POLICIES)} (got {group_policy!r})")
        if state_scope not in SCOPES:
            raise ValueError(f"state_scope must be one of {', '.join(SCOPES)} (got {state_scope!r})")
        self.name = name
        self.filters: tuple[PrefixFilter, ...] = tuple(filters)
        self.group_policy = GROUP_POLICIES[group_policy] if group_policy else None
        self.state_scope = state_scope
        self.routes: list[Route] = []
        self.fallbacks: list[Route] = []
        self.error_handlers: list[ErrorHandler] = []
        self.before_hooks: list[BeforeHook] = []
        self.after_hooks: list[AfterHook] = []
        self.inclusions: list[Inclusion] = []

    def __repr__(self) -> str:
        return f"<Router {self.name or hex(id(self))}: {len(self.routes)} routes, {len(self.inclusions)} included>"

    def describe(self) -> str:
        """Its name and what limits it (group policy, its own filters, state scope)."""
        parts = [self.name or hex(id(self))]
        if self.group_policy:
            parts.append(f"groups: {self.group_policy}")
        if self.filters:
            parts.append("only " + ", ".join(_filter_name(f) for f in self.filters))
        if self.state_scope != "conversation":
            parts.append(f"state per {self.state_scope}")
        return "; ".join(parts)

    @property
    def children(self) -> list[Router]:
        return [inclusion.router for inclusion in self.inclusions]

    # ------------------------------------------------------------ explicit API

    def add_route(self, filter: Filter, handler: Handler, *, state: Steps = None) -> None:
        """Register ``handler`` for messages that ``filter`` matches (after the routes already here).

        ``state`` limits it to a step of the conversation's dialog (``"*"``: any step).
        """
        if state is not None:
            filter = StepFilter(filter, state, lambda: self.state_scope)
        self.routes.append(Route.for_handler(filter, handler))

    def add_fallback(self, handler: Handler) -> None:
        """Register a handler for text messages no route matched."""
        self.fallbacks.append(Route.for_handler(AnyText(), handler))

    def add_error_handler(self, handler: ErrorHandler) -> None:
        """Register ``handler(msg, error)``, called when a handler of this router (or an included one) raises."""
        self.error_handlers.append(handler)

    def add_before_hook(self, hook: BeforeHook) -> None:
        """Register ``hook(msg)``, run before the handler of any route of this router (or an included one)."""
        self.before_hooks.append(hook)

    def add_after_hook(self, hook: AfterHook) -> None:
        """Register ``hook(msg, replies)``, run after such a handler returned, before its replies are sent."""
        self.after_hooks.append(hook)

    def include_router(self, router: Router, *filters: PrefixFilter) -> None:
        """Try ``router``'s routes after this router's own, for messages ``filters`` accept (like Flask's
        ``register_blueprint`` with a URL prefix)."""
        if router is self or self in router._walk():
            raise ValueError("a router cannot include itself")
        self.inclusions.append(Inclusion(router, tuple(filters)))

    # ------------------------------------------------------------ decorators

    def on_text(self, pattern: str | re.Pattern[str], *, ignore_case: bool = True, state: Steps = None):
        """Text messages whose text contains a match of ``pattern`` (a regex, case-insensitive by default)."""
        return self._decorator(TextFilter(pattern, ignore_case=ignore_case), state)

    def on_command(self, *names: str, state: Steps = None) -> Callable[[F], F]:
        """Slash commands, e.g. ``on_command("weather", "w")`` for ``/weather Paris``; args in ``msg.command``."""
        return self._decorator(CommandFilter(*names), state)

    def on_type(self, *types: str, category: str = "message", state: Steps = None) -> Callable[[F], F]:
        """Messages of these types: ``on_type("image")``, ``on_type("audio", "video")``."""
        return self._decorator(TypeFilter(types, category=category), state)

    def on_custom(self, *types: str, state: Steps = None) -> Callable[[F], F]:
        """Custom messages of these types (``category == "custom"``); the payload is ``msg.custom_data``."""
        return self._decorator(TypeFilter(types, category="custom"), state)

    def on_action(self, *actions: str) -> Callable[[F], F]:
        """Action messages (``edited``, ``deleted``, ``joined``, ...), ignored unless a handler asks for them."""
        return self._decorator(ActionFilter(*actions), None)

    def on_mention(self, *, state: Steps = None) -> Callable[[F], F]:
        """Messages that @mention the bot (in a group, or anywhere)."""
        return self._decorator(MentionFilter(), state)

    def on_thread(self, parent_id: str | None = None, *, state: Steps = None) -> Callable[[F], F]:
        """Replies inside a thread (under ``parent_id`` if given); the bot's answers stay in the thread."""
        return self._decorator(ThreadFilter(parent_id), state)

    def on_submit(self, *interaction_ids: str, state: Steps = None) -> Callable[[F], F]:
        """Submissions of the bot's forms, cards or schedulers: ``on_submit("booking")`` for ``Form("booking",
        ...)``. The values reach the handler as ``msg.submission.values`` (and ``values=``)."""
        return self._decorator(SubmitFilter(*interaction_ids), state)

    def on_message(
        self,
        predicate: Callable[[Message], Any] | None = None,
        *,
        actions: bool = False,
        submissions: bool = False,
        state: Steps = None,
    ) -> Callable[[F], F]:
        """Messages for which ``predicate(msg)`` is true (every message when omitted); action messages and form
        submissions only when asked (``actions=True``, ``submissions=True``)."""
        filter = PredicateFilter(predicate or (lambda msg: True), actions=actions, submissions=submissions)
        return self._decorator(filter, state)

    def fallback(self, handler: F) -> F:
        """Decorator: the handler for text messages that no route matched."""
        self.add_fallback(handler)
        return handler

    def on_error(self, handler: F) -> F:
        """Decorator: ``handler(msg, error)`` runs when a handler raises; what it returns is sent."""
        self.add_error_handler(handler)
        return handler

    def before(self, hook: F) -> F:
        """Decorator: ``hook(msg)`` before a handler runs; returns None (go on), a Message (go on with it),
        False (drop the message) or an answer (sent instead of running the handler)."""
        self.add_before_hook(hook)
        return hook

    def after(self, hook: F) -> F:
        """Decorator: ``hook(msg, replies)`` after a handler returned; returns None or the replies to send."""
        self.add_after_hook(hook)
        return hook

    def _decorator(self, filter: Filter, state: Steps) -> Callable[[F], F]:
        def register(handler: F) -> F:
            self.add_route(filter, handler, state=state)
            return handler

        return register

    # ------------------------------------------------------------ matching

    def resolve(self, msg: Message) -> Resolution | None:
        """The first route that takes ``msg``; fallbacks only when no route anywhere does."""
        return self._first(msg, "routes", (), "all", {}) or self._first(msg, "fallbacks", (), "all", {})

    def _first(
        self, msg: Message, table: str, parents: tuple[Router, ...], policy: str, captured: Captures
    ) -> Resolution | None:
        captured = _apply(self.filters, msg, captured)
        if captured is None:
            return None
        chain = (*parents, self)
        # The policy decides for this router's own routes; an included router with a policy of its own decides
        # for its routes itself (one without inherits this one's).
        policy = self.group_policy or policy
        if group_policy_admits(policy, msg):
            for route in getattr(self, table):
                if msg.is_action and not route.filter.accepts_actions:
                    continue
                if msg.submission is not None and not getattr(route.filter, "accepts_submissions", False):
                    continue
                captures = route.filter(msg)
                if captures is not None:
                    return Resolution(route, {**captured, **captures}, chain)
        for inclusion in self.inclusions:
            prefix = _apply(inclusion.filters, msg, captured)
            if prefix is None:
                continue
            found = inclusion.router._first(msg, table, chain, policy, prefix)
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

    def limits(self) -> Iterator[tuple[Router, str]]:
        """Every router with what limits its routes, inherited limits included (for ``flask bot routes``)."""
        yield from self._limits("all", ())

    def _limits(self, policy: str, inherited: tuple[str, ...]) -> Iterator[tuple[Router, str]]:
        own = tuple(_filter_name(f) for f in self.filters)
        policy = self.group_policy or policy
        parts = [self.name or hex(id(self))]
        if policy != "all":
            parts.append(f"groups: {policy}" + ("" if self.group_policy else " (inherited)"))
        if inherited or own:
            parts.append("only " + ", ".join((*inherited, *own)))
        if self.state_scope != "conversation":
            parts.append(f"state per {self.state_scope}")
        yield self, "; ".join(parts)
        for inclusion in self.inclusions:
            names = (*inherited, *own, *(_filter_name(f) for f in inclusion.filters))
            yield from inclusion.router._limits(policy, names)

    def _walk(self) -> Iterator[Router]:
        yield self
        for inclusion in self.inclusions:
            yield from inclusion.router._walk()


def _filter_name(prefix: PrefixFilter) -> str:
    describe = getattr(prefix, "describe", None)
    return describe() if callable(describe) else getattr(prefix, "__name__", None) or type(prefix).__name__


def _apply(filters: tuple[PrefixFilter, ...], msg: Message, captured: Captures) -> Captures | None:
    """Run a router's own filters: None if one refuses, else what they captured added to ``captured``.

    A filter refuses with None, False or another falsy value that is not a dict; a dict (even an empty one,
    what a :class:`~bot.filters.Filter` returns for a match without captures) accepts.
    """
    for prefix in filters:
        result = prefix(msg)
        if result is None or result is False or (not result and not isinstance(result, dict)):
            return None
        if isinstance(result, dict) and result:
            captured = {**captured, **result}
    return captured


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

"""Find the user's routers: every module of the bots package that defines ``bot = Router()``."""

from __future__ import annotations

import importlib
import logging
import pkgutil

from .errors import ConfigError
from .routing import Router

log = logging.getLogger(__name__)


def discover_routers(package: str) -> list[Router]:
    """Import every module of ``package`` (sorted by name; ``_private`` ones skipped) and collect their ``bot``.

    Modules without a ``bot`` Router are skipped (helpers, shared code). When
    the package itself defines ``bot`` (in its ``__init__.py``), that router is
    the parent of the modules' routers: its routes are tried first and its
    hooks (``before``, ``after``, ``on_error``) and group policy apply to all.
    An import error is not hidden: the app must not start without its handlers.
    """
    try:
        pkg = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name == package:
            raise ConfigError(f"BOTS_PACKAGE {package!r} cannot be imported: no such package") from exc
        raise
    routers: list[Router] = []
    modules = []
    if hasattr(pkg, "__path__"):
        names = sorted(info.name for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_"))
        modules = [importlib.import_module(f"{package}.{name}") for name in names]
    for module in modules:
        router = _router_of(module)
        if router is not None:
            routers.append(router)
    parent = _router_of(pkg)
    if parent is not None:
        for router in routers:
            if router not in parent.children:
                parent.include_router(router)
        routers = [parent]
    if not routers:
        log.warning("no handlers found in package %r: define `bot = Router()` in a module there", package)
    return routers


def _router_of(module: object) -> Router | None:
    router = getattr(module, "bot", None)
    if not isinstance(router, Router):
        log.debug("%s defines no `bot = Router()`; skipped", getattr(module, "__name__", module))
        return None
    if not router.name:
        router.name = module.__name__  # type: ignore[attr-defined]
    return router

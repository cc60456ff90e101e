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

    Modules without a ``bot`` Router are skipped (helpers, shared code). An
    import error is not hidden: the app must not start without its handlers.
    """
    try:
        pkg = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name == package:
            raise ConfigError(f"BOTS_PACKAGE {package!r} cannot be imported: no such package") from exc
        raise
    routers: list[Router] = []
    candidates = [pkg]
    if hasattr(pkg, "__path__"):
        names = sorted(info.name for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_"))
        candidates += [importlib.import_module(f"{package}.{name}") for name in names]
    for module in candidates:
        router = getattr(module, "bot", None)
        if isinstance(router, Router):
            if not router.name:
                router.name = module.__name__
            routers.append(router)
        else:
            log.debug("%s defines no `bot = Router()`; skipped", module.__name__)
    if not routers:
        log.warning("no handlers found in package %r: define `bot = Router()` in a module there", package)
    return routers

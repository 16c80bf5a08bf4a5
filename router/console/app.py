"""Mounting the console: its pages under /console and its API under /api/v1, on whatever
Starlette application serves the process (the intake's, or a worker's health port)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from router.console.api import api_routes
from router.console.auth import Access
from router.console.pages import SECURITY_HEADERS, page_routes
from router.console.queries import Sources
from router.matching import RuleSet
from router.settings import Settings
from router.store.base import Store
from router.template_limits import RenderLimits

PREFIXES = ("/console", "/api/v1")  # the paths the console answers, on the intake's port too


def access_from(settings: Settings) -> Access:
    return Access(
        [token.get_secret_value() for token in settings.console_tokens],
        [token.get_secret_value() for token in settings.console_viewer_tokens],
        session_seconds=settings.console_session_hours * 3600,
        secure_cookie=settings.console_secure_cookie,
    )


def console_routes(
    settings: Settings,
    store: Store,
    rules: Callable[[], RuleSet | None],
    reload: Callable[[], Mapping[str, Any]] = dict,
) -> list[BaseRoute]:
    """The console's routes, or none when no console token is set."""
    access = access_from(settings)
    if not access.enabled:
        return []
    src = Sources(store, rules, reload, RenderLimits.from_settings(settings))

    async def to_console(request: Request) -> Response:
        return RedirectResponse("/console/", 308, headers=SECURITY_HEADERS)

    return [
        Route("/console", to_console),
        Mount("/console", routes=page_routes(src, access)),
        Mount("/api/v1", routes=api_routes(src, access)),
    ]

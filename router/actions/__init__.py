"""Delivery actions: a registry of deliverers by action type name.

The loader, `router check`, the worker and the docs all read `REGISTRY`, so an action type
exists in one place only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.actions.base import Deliverer
from router.actions.email import EmailDeliverer
from router.actions.http import HttpDeliverer
from router.actions.log import LogDeliverer

if TYPE_CHECKING:
    from router.settings import Settings

REGISTRY: dict[str, type[Deliverer]] = {
    HttpDeliverer.type: HttpDeliverer,
    EmailDeliverer.type: EmailDeliverer,
    LogDeliverer.type: LogDeliverer,
}


def build_deliverers(settings: Settings) -> dict[str, Deliverer]:
    """One deliverer per registered type, not started yet (the worker calls `start`)."""
    return {name: cls.from_settings(settings) for name, cls in REGISTRY.items()}


__all__ = [
    "REGISTRY",
    "Deliverer",
    "EmailDeliverer",
    "HttpDeliverer",
    "LogDeliverer",
    "build_deliverers",
]

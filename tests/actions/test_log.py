from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from router.actions.base import Deliverer
from router.actions.log import LogDeliverer
from router.actions.registry import REGISTRY, build_deliverers
from router.exceptions import GiveUp
from router.settings import Settings


def deliver(rendered: Mapping[str, Any], job_id: str = "job-1") -> int | None:
    return asyncio.run(LogDeliverer().deliver(rendered, job_id=job_id, timeout=None))


@pytest.mark.parametrize(
    ("level", "levelno"),
    [
        ("debug", logging.DEBUG),
        ("info", logging.INFO),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
        ("WARNING", logging.WARNING),
    ],
)
def test_one_line_at_the_rendered_level(
    caplog: pytest.LogCaptureFixture, level: str, levelno: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="router.actions.log")
    rendered = {"type": "log", "level": level, "message": "crm matched 42", "rule": "crm"}
    assert deliver(rendered, job_id="01HXJOB") is None
    (record,) = caplog.records
    assert record.name == "router.actions.log"
    assert record.levelno == levelno
    assert record.getMessage() == "crm matched 42"
    assert record.__dict__["rule"] == "crm"
    assert record.__dict__["delivery_id"] == "01HXJOB"


def test_message_is_not_a_format_string(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.actions.log")
    deliver({"type": "log", "level": "info", "message": "100% done %s %(x)d"})
    (record,) = caplog.records
    assert record.getMessage() == "100% done %s %(x)d"
    assert record.__dict__["rule"] is None


def test_unknown_level_is_permanent(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(GiveUp, match="unknown log level 'loud'"):
        deliver({"type": "log", "level": "loud", "message": "x"})
    assert caplog.records == []


def test_registry_builds_one_deliverer_per_type() -> None:
    deliverers = build_deliverers(Settings(_env_file=None))  # type: ignore[call-arg]
    assert set(deliverers) == set(REGISTRY) == {"http", "email", "log", "actito"}
    for name, deliverer in deliverers.items():
        assert isinstance(deliverer, Deliverer)
        assert type(deliverer) is REGISTRY[name].deliverer
        assert deliverer.type == name

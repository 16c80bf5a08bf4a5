"""The log's rate limit: a flood of one kind of line is cut to a few a second, and what is
dropped is counted on a later line, never lost silently."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from router import logs
from router.logs import RATE_LIMIT_KINDS, RATE_LIMIT_LINES, RateLimitedHandler
from tests.e2e.harness import poll


class Captured:
    """A rate-limited handler writing JSON lines into memory, on a logger of its own."""

    def __init__(self, name: str = "test.flood") -> None:
        self.stream = io.StringIO()
        self.handler = RateLimitedHandler(self.stream)
        self.handler.setFormatter(logs.JsonFormatter())
        self.logger = logging.getLogger(name)
        self.logger.handlers[:] = [self.handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def written(self) -> int:
        """Lines written as logged (summaries aside)."""
        return sum(1 for line in self.lines() if "the last:" not in line["message"])

    def dropped_reported(self) -> int:
        return sum(line.get("suppressed", 0) for line in self.lines())

    def close(self) -> None:
        self.handler.close()
        self.logger.handlers[:] = []


@pytest.fixture
def captured() -> Iterator[Captured]:
    log = Captured()
    yield log
    log.close()


def test_a_flood_of_one_kind_is_cut_and_counted(captured: Captured) -> None:
    started = time.time()
    for n in range(100):
        captured.logger.warning("accept failed on socket %d", n)
    if time.time() - started < 1.0:  # the whole burst fell within one window
        assert [line["message"] for line in captured.lines()] == [
            f"accept failed on socket {n}" for n in range(RATE_LIMIT_LINES)
        ]
    # Once the window has passed, a summary accounts for every line that was dropped.
    poll(lambda: captured.written() + captured.dropped_reported() == 100, timeout=5)
    summary = captured.lines()[-1]
    assert summary["level"] == "warning"
    assert summary["logger"] == "test.flood"
    assert summary["message"].endswith("the last: accept failed on socket 99")


def test_no_kind_is_written_more_often_than_the_limit(captured: Captured) -> None:
    deadline = time.monotonic() + 2.5
    sent = 0
    while time.monotonic() < deadline:  # a steady flood for 2.5 s
        captured.logger.error("Too many open files")
        sent += 1
        time.sleep(0.001)
    # Every line sent is either written or counted in a written line, exactly once.
    poll(lambda: captured.written() + captured.dropped_reported() == sent, timeout=5)
    stamps = sorted(datetime.fromisoformat(line["time"]).timestamp() for line in captured.lines())
    assert len(stamps) < sent / 10
    for n in range(len(stamps) - RATE_LIMIT_LINES):  # (stamps are rounded down to the ms)
        assert stamps[n + RATE_LIMIT_LINES] - stamps[n] >= 0.999, stamps


def test_kinds_are_limited_apart(captured: Captured) -> None:
    other = logging.getLogger("test.flood.other")
    other.handlers[:] = [captured.handler]
    other.propagate = False
    try:
        for n in range(20):
            captured.logger.warning("first kind %d", n)  # same template, other arguments
            captured.logger.error("first kind %d", n)  # another level
            captured.logger.warning("second kind %d", n)  # another template
            other.warning("first kind %d", n)  # another logger
    finally:
        other.handlers[:] = []
    kinds: dict[tuple[str, str, str], int] = {}
    for line in captured.lines():
        key = (line["logger"], line["level"], line["message"].split(" ", 1)[0])
        kinds[key] = kinds.get(key, 0) + 1
    assert len(kinds) == 4
    assert all(count == RATE_LIMIT_LINES for count in kinds.values()), kinds


def test_lines_that_share_a_first_line_are_one_kind(captured: Captured) -> None:
    # asyncio puts varying details below a fixed headline.
    for n in range(20):
        captured.logger.error(f"socket.accept() out of system resource\nsocket: <fd={n}>")
    assert len(captured.lines()) == RATE_LIMIT_LINES


def test_closing_the_handler_reports_what_was_dropped() -> None:
    log = Captured("test.closing")
    for _ in range(RATE_LIMIT_LINES + 7):
        log.logger.warning("closing soon")
    log.close()  # before the window ends: the count is written now
    assert log.dropped_reported() == 7


def test_memory_is_bounded_and_a_forgotten_kind_still_reports(captured: Captured) -> None:
    for _ in range(RATE_LIMIT_LINES + 2):
        captured.logger.warning("the first kind")
    for n in range(RATE_LIMIT_KINDS + 10):
        captured.logger.debug(f"kind number {n}")  # each line its own kind
    poll(lambda: captured.dropped_reported() == 2, timeout=5)
    reports = [line for line in captured.lines() if line.get("suppressed")]
    assert reports[0]["message"].endswith("the last: the first kind")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """logs.configure changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_limits_every_logger(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "json")
    for name in ("asyncio", "uvicorn.error", "router.app"):
        for _ in range(20):
            logging.getLogger(name).error("the same line again")
    sys.stdout.flush()
    written = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for name in ("asyncio", "uvicorn.error", "router.app"):
        assert sum(1 for line in written if line["logger"] == name) == RATE_LIMIT_LINES


def test_records_of_work_and_the_log_action_are_never_dropped(captured: Captured) -> None:
    # Below warning, a line records one piece of work (a delivery, a reload); a rule's log
    # action's line is itself the delivery, at whatever level the rule asks.
    action = logging.getLogger("router.actions.log")
    action.handlers[:] = [captured.handler]
    action.propagate = False
    try:
        for n in range(50):
            captured.logger.info("delivered %d", n)
            action.error("audit %d", n)
    finally:
        action.handlers[:] = []
    messages = [line["message"] for line in captured.lines()]
    assert [m for m in messages if m.startswith("delivered")] == [
        f"delivered {n}" for n in range(50)
    ]
    assert [m for m in messages if m.startswith("audit")] == [f"audit {n}" for n in range(50)]
    assert not any("suppressed" in line for line in captured.lines())

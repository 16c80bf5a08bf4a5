"""Logging set-up: a sentence plus fixed fields. JSON lines when stdout is not a terminal (in a
container), readable lines when it is. Fields come from `extra=` with the names in FIELDS.

Warnings and errors go through one rate limit, so no problem, however frequent (a flood of
refused connections, a destination down for every job), can flood the log. Lines below warning
are records of work done, one per event or delivery, and are never dropped; neither is what a
rule's log action writes (router.actions.log): that line is the delivery."""

from __future__ import annotations

import heapq
import json
import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

RATE_LIMIT_LINES = 5  # lines of one kind written in any RATE_LIMIT_WINDOW
RATE_LIMIT_WINDOW = 1.0  # seconds
RATE_LIMIT_KINDS = 1000  # kinds remembered at once; the least recently seen is forgotten first
RATE_LIMITED_FROM = logging.WARNING  # lines below this level are never dropped
UNLIMITED_LOGGERS = ("router.actions.log",)  # a rule's log action: each line is a delivery
TEMPLATE_CHARS = 200  # a kind is told apart by at most this much of its message template

# The fixed vocabulary of structured fields a log call may pass through `extra=`.
FIELDS = (
    "event_id",
    "rule",
    "delivery_id",
    "attempt",
    "action",
    "outcome",
    "status_code",
    "duration_ms",
    "version",
    "records",
    "error",
    "level_name",
    "suppressed",  # how many lines of this kind the rate limit dropped before this one
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ASCII escapes: a lone surrogate from a sender's JSON cannot break the log stream.
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in FIELDS
            if record.__dict__.get(name) is not None
        )
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            text = f"{text}  [{fields}]"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


Kind = tuple[str, int, str]  # (logger name, level, first line of the message template)


@dataclass
class _Seen:
    written: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_LIMIT_LINES))
    suppressed: int = 0
    last_suppressed: str = ""  # the last dropped line's message, quoted by the summary line
    summary_due: bool = False  # a summary of the suppressed lines is scheduled


class RateLimitedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes at most RATE_LIMIT_LINES lines of one kind (logger, level
    and message template) of warnings and errors in any RATE_LIMIT_WINDOW seconds and drops the
    rest (lines below RATE_LIMITED_FROM, and UNLIMITED_LOGGERS, always pass).

    Nothing is dropped silently. The count of a kind's dropped lines is reported once, in a
    `suppressed` field: on the next line of that kind written, or, if none comes first, on a
    summary line written as soon as the window allows one (by a helper thread, so a flood that
    stops is still accounted for), or when the handler closes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._seen: OrderedDict[Kind, _Seen] = OrderedDict()
        self._due: list[tuple[float, Kind]] = []  # heap: when a kind's summary may be written
        self._ready: list[logging.LogRecord] = []  # summaries of forgotten kinds
        self._limit = threading.Condition()
        self._flusher: threading.Thread | None = None
        self._closed = False

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno < RATE_LIMITED_FROM or record.name in UNLIMITED_LOGGERS:
            return bool(super().handle(record))
        kind = _kind(record)
        with self._limit:
            write = self._admit(kind, record)
        return bool(super().handle(record)) if write else False

    def close(self) -> None:
        with self._limit:
            self._closed = True
            self._limit.notify()
            summaries = self._ready + [
                _summary(kind, seen) for kind, seen in self._seen.items() if seen.suppressed
            ]
            self._seen.clear()
            self._due.clear()
            self._ready = []
        for summary in summaries:
            super().handle(summary)
        super().close()

    def _admit(self, kind: Kind, record: logging.LogRecord) -> bool:
        seen = self._seen.get(kind)
        if seen is None:
            seen = self._seen[kind] = _Seen()
            if len(self._seen) > RATE_LIMIT_KINDS:
                old_kind, old = self._seen.popitem(last=False)
                if old.suppressed:
                    self._ready.append(_summary(old_kind, old))
                    self._wake_flusher()
        else:
            self._seen.move_to_end(kind)
        now = record.created
        if not _has_room(seen, now):
            seen.suppressed += 1
            seen.last_suppressed = _first_line(record)
            if not seen.summary_due:
                seen.summary_due = True
                heapq.heappush(self._due, (seen.written[0] + RATE_LIMIT_WINDOW, kind))
                self._wake_flusher()
            return False
        seen.written.append(now)
        if seen.suppressed:
            record.suppressed = seen.suppressed
            seen.suppressed = 0
            seen.last_suppressed = ""
        return True

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush, name="log-rate-limit", daemon=True)
            self._flusher.start()
        self._limit.notify()

    def _flush(self) -> None:
        """The helper thread: writes summaries when they are due, until the handler closes."""
        with self._limit:
            while not self._closed:
                summaries = self._ready + self._summaries_due(time.time())
                self._ready = []
                if summaries:
                    self._limit.release()  # writing must not hold up the threads that log
                    try:
                        for summary in summaries:
                            super().handle(summary)
                    finally:
                        self._limit.acquire()
                    continue
                self._limit.wait(self._due[0][0] - time.time() if self._due else None)

    def _summaries_due(self, now: float) -> list[logging.LogRecord]:
        summaries = []
        while self._due and self._due[0][0] <= now:
            _, kind = heapq.heappop(self._due)
            seen = self._seen.get(kind)
            if seen is None or not seen.summary_due:
                continue
            seen.summary_due = False
            if not seen.suppressed:
                continue  # a line of the kind was written since and carried the count
            if not _has_room(seen, now):  # the kind spoke again since: wait for its window
                seen.summary_due = True
                heapq.heappush(self._due, (seen.written[0] + RATE_LIMIT_WINDOW, kind))
                continue
            seen.written.append(now)
            summaries.append(_summary(kind, seen, now))
            seen.suppressed = 0
            seen.last_suppressed = ""
        return summaries


def _kind(record: logging.LogRecord) -> Kind:
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    # Multi-line messages (asyncio's, tracebacks) vary below a fixed first line.
    return (record.name, record.levelno, template.split("\n", 1)[0][:TEMPLATE_CHARS])


def _first_line(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the template: logging reports those itself
        return ""
    return message.split("\n", 1)[0][:TEMPLATE_CHARS]


def _has_room(seen: _Seen, now: float) -> bool:
    written = seen.written
    return len(written) < RATE_LIMIT_LINES or now - written[0] >= RATE_LIMIT_WINDOW


def _summary(kind: Kind, seen: _Seen, now: float | None = None) -> logging.LogRecord:
    name, level, template = kind
    record = logging.LogRecord(
        name,
        level,
        __file__,
        0,
        "%d line(s) like this were not logged; the last: %s",
        (seen.suppressed, seen.last_suppressed or template),
        None,
    )
    if now is not None:
        record.created = now
    record.suppressed = seen.suppressed
    return record


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route every logger (the router's, uvicorn's, asyncio's) to stdout in the chosen format,
    warnings and errors through one rate limit."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    handler = RateLimitedHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs would repeat every push; the intake logs what matters itself.
    logging.getLogger("uvicorn.access").disabled = True

"""Logging set-up: a sentence plus fixed fields. JSON lines when stdout is not a terminal (in a
container), readable lines when it is. Fields come from `extra=` with the names in FIELDS."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

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


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route the router's and uvicorn's loggers to stdout in the chosen format."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs would repeat every push; the intake logs what matters itself.
    logging.getLogger("uvicorn.access").disabled = True

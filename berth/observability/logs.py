"""The format of Berth's own log lines (`berth.*` loggers): `text` (the default), one line a
record, or `json`, one JSON object a line for log shippers. The level is `log_level`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            document.update(request)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`[INFO] berth.access: GET /v2/... 200` and, for a request, its fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(levelname)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            fields = " ".join(
                f"{name}={value}"
                for name, value in request.items()
                if value is not None and name not in ("method", "path", "status")
            )
            line = f"{line} {fields}"
        return line


def configure(log_format: str, level: str) -> None:
    """Send the `berth` loggers to standard error in `log_format` at `level` (once a process)."""
    berth = logging.getLogger("berth")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    for old in list(berth.handlers):
        berth.removeHandler(old)
    berth.addHandler(handler)
    berth.setLevel(level.upper())
    berth.propagate = False

"""The format of Berth's own log lines (`berth.*` loggers): `text` (the default), one line a
record, or `json`, one JSON object a line for log shippers. The level is `log_level`.

Every line names the node that wrote it (`node`): the `node_name` setting, or this machine's
host name when that is empty, so the lines of several nodes gathered in one place tell them
apart.

The request lines (`berth.access`, one a request) are written by `AccessLog`, straight to
standard error in the same format: through `logging` a line costs several times as much CPU
(the caller's frame is looked up, the record built and formatted), which a registry answering
thousands of pulls a second pays on every one. They are buffered and written together (one
system call) every FLUSH_SECONDS, when BUFFER_LIMIT characters are waiting, and when the
server stops: a write a line was a third of a line's cost. A worker killed loses at most the
last second's lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
ACCESS_LOGGER = "berth.access"
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
# Shown in a text line's message, not again as fields.
_IN_MESSAGE = frozenset({"method", "path", "status"})
# Fields a client's request decides (the rest are numbers, or words the server chose or
# checked): quoted in text lines when they are not one plain token.
_FROM_CLIENT = frozenset({"path", "caller", "project", "method"})
FLUSH_SECONDS = 1.0
BUFFER_LIMIT = 64 * 1024


class _Clock:
    """UTC timestamps with milliseconds, the seconds part formatted once a second."""

    def __init__(self) -> None:
        self._current = (-1, "")  # one tuple: a thread never sees a second with another's text

    def stamp(self, now: float) -> str:
        second = int(now)
        current = self._current
        if current[0] != second:
            current = self._current = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        return f"{current[1]}.{int((now - second) * 1000):03d}Z"


_clock = _Clock()


def text_value(value: Any) -> str:
    """A field's value in a text line: as is when it is one plain token, else quoted and
    escaped as a JSON string (a path can hold spaces or newlines; a line stays one line)."""
    text = str(value)
    # The same test as `[!#-~]+`, in string methods: a regex match was a fifth of a line's cost.
    plain = text.isascii() and text.isprintable() and " " not in text and '"' not in text
    return text if plain and text else json.dumps(text)


def node_of(node_name: str) -> str:
    """The node a line names: `node_name`, or this machine's host name when it is empty."""
    return node_name or socket.gethostname()


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _clock.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return _encode(document)


class TextFormatter(logging.Formatter):
    """`2026-12-01T11:46:29.194Z [INFO] berth.gc: message node=node1`: the node last, as in a
    request line, where a traceback (on the lines after) does not part it from the message."""

    def __init__(self, node: str) -> None:
        # `%` doubled: the name is part of the format string.
        named = text_value(node).replace("%", "%%")
        super().__init__(f"%(asctime)s [%(levelname)s] %(name)s: %(message)s node={named}")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _clock.stamp(record.created)


class AccessLog:
    """One line a request, at `info`."""

    def __init__(self) -> None:
        self.enabled = True
        self.json = False
        self.node = node_of("")
        self._node_field = f" node={text_value(self.node)}"
        self.stream: TextIO = sys.stderr
        self._lines: list[str] = []
        self._waiting = 0  # characters in _lines

    def configure(self, log_format: str, level: str, node_name: str = "") -> None:
        self.flush()
        self.json = log_format == "json"
        self.node = node_of(node_name)
        self._node_field = f" node={text_value(self.node)}"
        self.enabled = logging.getLevelName(level.upper()) <= logging.INFO
        self.stream = sys.stderr

    def write(self, fields: dict[str, Any]) -> None:
        stamp = _clock.stamp(time.time())
        if self.json:
            message = f"{fields['method']} {fields['path']} {fields['status']}"
            line = _encode(
                {
                    "time": stamp,
                    "level": "info",
                    "logger": ACCESS_LOGGER,
                    "node": self.node,
                    "message": message,
                }
                | fields
            )
        else:
            method, path = text_value(fields["method"]), text_value(fields["path"])
            rest = " ".join(  # a list, not a generator: join makes one anyway
                [
                    f"{name}={text_value(value) if name in _FROM_CLIENT else value}"
                    for name, value in fields.items()
                    if value is not None and name not in _IN_MESSAGE
                ]
            )
            line = (
                f"{stamp} [INFO] {ACCESS_LOGGER}: {method} {path} {fields['status']} {rest}"
                f"{self._node_field}"
            )
        self._lines.append(line)
        self._waiting += len(line)
        if self._waiting >= BUFFER_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting."""
        if not self._lines:
            return
        lines, self._lines, self._waiting = self._lines, [], 0
        lines.append("")  # the last line's newline
        try:
            self.stream.write("\n".join(lines))
            self.stream.flush()
        except (OSError, ValueError):  # standard error closed or full: the requests stand
            pass


access = AccessLog()


async def flush_periodically() -> None:
    """`access.flush` every FLUSH_SECONDS, until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            access.flush()
    finally:
        access.flush()


def configure(log_format: str, level: str, node_name: str = "") -> None:
    """Send the `berth` loggers to standard error in `log_format` at `level`, each line naming
    the node (`node_of(node_name)`) (once a process)."""
    node = node_of(node_name)
    berth = logging.getLogger("berth")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node) if log_format == "json" else TextFormatter(node))
    for old in list(berth.handlers):
        berth.removeHandler(old)
    berth.addHandler(handler)
    berth.setLevel(level.upper())
    berth.propagate = False
    access.configure(log_format, level, node_name)

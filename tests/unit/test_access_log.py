"""The request log line in both formats: one line a request whatever the path holds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

from berth.observability import logs
from berth.observability.logs import BUFFER_LIMIT, AccessLog, text_value

FIELDS = {
    "request_id": "abc123",
    "method": "GET",
    "path": "/v2/demo/app/manifests/v1",
    "route": "/v2/{name:path}/manifests/{reference}",
    "surface": "registry",
    "status": 200,
    "received_bytes": 0,
    "sent_bytes": 528,
    "duration_ms": 1.5,
    "caller": "AKEXAMPLE",
    "project": None,
    "client": "127.0.0.1",
}


def written(log_format: str, fields: dict[str, object]) -> str:
    log = AccessLog()
    log.configure(log_format, "info")
    log.stream = io.StringIO()
    log.write(fields)
    assert log.stream.getvalue() == ""  # buffered until the next flush
    log.flush()
    text = log.stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


def test_json_lines_carry_every_field() -> None:
    line = json.loads(written("json", FIELDS))
    assert line["logger"] == "berth.access" and line["level"] == "info"
    assert line["message"] == "GET /v2/demo/app/manifests/v1 200"
    assert {k: line[k] for k in FIELDS} == FIELDS
    assert line["time"].endswith("Z")


def test_text_lines_quote_what_a_client_chose() -> None:
    line = written("text", FIELDS)
    assert " [INFO] berth.access: GET /v2/demo/app/manifests/v1 200 request_id=abc123 " in line
    assert "caller=AKEXAMPLE" in line and "project=" not in line  # None is left out
    odd = written("text", {**FIELDS, "path": "/v2/a b\nstatus=500", "caller": 'x" y'})
    assert 'GET "/v2/a b\\nstatus=500" 200' in odd
    assert 'caller="x\\" y"' in odd


def test_levels_above_info_write_no_request_lines() -> None:
    log = AccessLog()
    log.configure("text", "warning")
    assert not log.enabled
    log.configure("json", "debug")
    assert log.enabled


def test_lines_are_written_together_when_enough_are_waiting() -> None:
    log = AccessLog()
    log.configure("text", "info")
    log.stream = io.StringIO()
    for _ in range(BUFFER_LIMIT // 100 + 1):  # each line is over 100 characters
        log.write(FIELDS)
    written = log.stream.getvalue().splitlines()
    assert written and all("request_id=abc123" in line for line in written)
    log.flush()
    assert len(log.stream.getvalue().splitlines()) == BUFFER_LIMIT // 100 + 1


def test_a_value_is_written_as_is_only_when_it_is_one_plain_token() -> None:
    plain = {chr(code) for code in range(0x21, 0x7F)} - {'"'}
    for code in range(0x200):
        char = chr(code)
        expected = char if char in plain else json.dumps(char)
        assert text_value(char) == expected, repr(char)
        assert text_value(f"a{char}b") == (
            f"a{char}b" if char in plain else json.dumps(f"a{char}b")
        )
    assert text_value("") == '""'
    assert text_value(200) == "200"


def test_the_periodic_flush_writes_what_waits_when_it_is_stopped() -> None:
    async def serve_and_stop() -> str:
        stream = io.StringIO()
        logs.access.configure("text", "info")
        logs.access.stream = stream
        flushing = asyncio.create_task(logs.flush_periodically())
        await asyncio.sleep(0)
        logs.access.write(FIELDS)  # answered just before the server stops
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
        return stream.getvalue()

    try:
        assert "request_id=abc123" in asyncio.run(serve_and_stop())
    finally:
        logs.access.configure("text", "info")  # back to standard error

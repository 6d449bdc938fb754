"""Headers added to every answer of an ASGI app: the one way the registry, the API and the
console middlewares add theirs (pure ASGI: a header list appended at `http.response.start`,
nothing parsed)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Message, Send

Headers = Sequence[tuple[bytes, bytes]]


def adding_headers(send: Send, added: Headers, defaults: Headers = ()) -> Send:
    """`send`, with `added` appended to the response's headers, and each of `defaults` too
    unless the app already set a header of that name."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), *added]
            for default in defaults:
                if not any(name == default[0] for name, _ in headers):
                    headers.append(default)
            message["headers"] = headers
        await send(message)

    return send_with_headers

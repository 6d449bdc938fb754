"""Request bodies: the base of every body model, and the one media type bodies take."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.problems import problem
from berth.domain.descriptions import NOT_TEXT, lone_surrogate


class RequestBody(BaseModel):
    """A JSON request body, read strictly: a field takes only its own JSON type (`false` is not
    the quota 0, `"yes"` not true), and a field the body does not define is refused (a
    misspelt one would otherwise be ignored without a word). Both answer 422 naming the field.

    FastAPI validates the parsed JSON as Python values, where strict mode would also refuse a
    string for a date or an enumeration: such fields say `Field(strict=False)`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        """A string holding a lone surrogate (JSON's `"\\ud800"`) is refused in every field, in
        the one wording, before a field's own checks (pydantic refuses it in a field with
        bounds, as `string_unicode`, but takes it in one without): no database stores it."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and lone_surrogate(item) for item in items):
            raise PydanticCustomError("string_unicode", NOT_TEXT)
        return value


JSON_TYPES = ("application/json",)


def is_json(content_type: str) -> bool:
    """`application/json` or a `+json` type, parameters (`; charset=utf-8`) aside."""
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence in JSON_TYPES or (
        essence.startswith("application/") and essence.endswith("+json")
    )


class JsonBodies:
    """Every request body of the API is JSON: one sent as another type (a form, `text/plain`)
    is refused with 415 before it is read, rather than failing as a body of the wrong shape
    (or being ignored, by an operation that takes none)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or (
                b"transfer-encoding" in headers
            )
            if has_body and content_type and not is_json(content_type):
                answer = problem(
                    415,
                    f"the body is {content_type.split(';', 1)[0].strip()!r}: this API takes "
                    "JSON bodies (Content-Type: application/json)",
                    "UNSUPPORTED_MEDIA_TYPE",
                    headers={"Accept-Post": "application/json"}
                    if scope["method"] == "POST"
                    else None,
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

"""The base of every request body the API reads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """A JSON request body, read strictly: a field takes only its own JSON type (`false` is not
    the quota 0, `"yes"` not true), and a field the body does not define is refused (a
    misspelt one would otherwise be ignored without a word). Both answer 422 naming the field.

    FastAPI validates the parsed JSON as Python values, where strict mode would also refuse a
    string for a date or an enumeration: such fields say `Field(strict=False)`."""

    model_config = ConfigDict(extra="forbid", strict=True)

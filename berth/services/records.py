"""Typed values that cross the service boundary. A record the management API returns as it is
derives from `Record` (a frozen pydantic model: its fields and descriptions are the API's
schema, declared once); `plain()` turns records into the JSON the CLI prints."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


def plain(value: Any) -> Any:
    """Records (pydantic or dataclass, also in lists and dicts) as JSON-ready dicts and lists,
    times as `isoformat()` writes them."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dt.date):  # datetimes too
        return value.isoformat()
    return value

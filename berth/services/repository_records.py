"""A repository as the API and the CLI show it: its settings (`Visibility`, `ScanMode`), image
count and last change. Its own module: both `repositories.py` and `repository_listings.py`
make them."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from berth.services.records import Record

Visibility = Literal["public", "private"]
ScanMode = Literal["auto", "manual"]


class Repository(Record):
    project: str
    name: str
    description: str
    visibility: Visibility
    tag_overwrite: bool
    scan_mode: ScanMode
    images: int = Field(description="images stored (an index and its platform images count once)")
    created_at: dt.datetime
    updated_at: dt.datetime = Field(
        description="last modified: settings changed, or an image pushed or tagged"
    )

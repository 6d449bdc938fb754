"""How every `berth` verb reads PROJECT/REPO and shows values in its tables."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import typer

from berth.cli.common import cell, split_repo, when


@pytest.fixture
def in_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("argument", "parts"),
    [("demo/app", ("demo", "app")), ("demo/app/team/api", ("demo", "app/team/api"))],
)
def test_a_repository_argument_is_project_then_the_rest(
    argument: str, parts: tuple[str, str]
) -> None:
    assert split_repo(argument) == parts


@pytest.mark.parametrize("argument", ["demo", "demo/", "/app", ""])
def test_a_repository_argument_needs_both_parts(argument: str) -> None:
    with pytest.raises(typer.BadParameter, match="expected PROJECT/REPOSITORY"):
        split_repo(argument)


def test_times_are_shown_to_the_minute_with_their_zone(in_utc: None) -> None:
    assert when("2026-12-01T03:04:59+00:00") == "2026-12-01 03:04 UTC"
    assert when("2026-12-01T03:04:59") == "2026-12-01 03:04 UTC"  # the database keeps UTC
    assert when(None) == "never"
    assert when("", "-") == "-"


@pytest.mark.parametrize(
    ("value", "column", "shown"),
    [
        (None, "last_used_at", "never"),
        ("", "expires_at", "never"),
        (None, "description", "-"),
        (True, "public", "yes"),
        (False, "admin", "no"),
        (3, "images", "3"),
        ("2024-05-01T12:00 nightly build", "description", "2024-05-01T12:00 nightly build"),
        ("soon", "created_at", "soon"),  # not a time after all: shown as it is
    ],
)
def test_table_cells(value: object, column: str, shown: str) -> None:
    assert cell(value, column) == shown


def test_a_time_column_shows_its_time(in_utc: None) -> None:
    assert cell("2026-12-01T03:04:00+00:00", "created_at") == "2026-12-01 03:04 UTC"
    assert cell("2026-12-01T03:04:00+00:00", "at") == "2026-12-01 03:04 UTC"

"""How every `berth` verb reads PROJECT/REPO and shows values in its tables."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
import typer
from rich.console import Console, RenderableType

from berth.cli import common
from berth.cli.common import cell, data_table, split_image, split_repo, when
from berth.cli.scans import split_reference


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


@pytest.mark.parametrize(
    ("argument", "parts"),
    [
        ("demo/app", ("demo", "app", "")),
        ("demo/app/hello", ("demo", "app", "hello")),
        ("demo/app/team/tool.v2", ("demo", "app", "team/tool.v2")),
    ],
)
def test_an_image_argument_is_project_repository_then_image(
    argument: str, parts: tuple[str, str, str]
) -> None:
    assert split_image(argument) == parts


@pytest.mark.parametrize("image", ["Hello", "-x", "a//b", "team/", "hello world"])
def test_an_image_name_no_image_can_have_is_refused(image: str) -> None:
    """As the API refuses it (422), not listed as an image with nothing in it."""
    with pytest.raises(typer.BadParameter, match=f"invalid image name '{image}' in"):
        split_image(f"demo/app/{image}")
    with pytest.raises(typer.BadParameter, match=f"invalid image name '{image}' in"):
        split_reference(f"demo/app/{image}:v1")


@pytest.mark.parametrize("argument", ["demo/app:", "demo/app/hello:", "demo/app"])
def test_a_scan_argument_needs_a_tag_or_a_digest(argument: str) -> None:
    with pytest.raises(typer.BadParameter, match="expected PROJECT/REPO"):
        split_reference(argument)


def _printed(renderable: RenderableType, width: int) -> str:
    buffer = io.StringIO()
    Console(width=width, file=buffer, force_terminal=False, color_system=None).print(renderable)
    return buffer.getvalue()


UPLOAD = {
    "id": "0f" * 16,
    "repository": "builds/nightly-web-frontend",
    "target": "sha256:" + "a" * 64,
    "started_by": "alice-the-builder",
    "client": "build-runner-17.ci.example.internal",
    "started_at": "2026-12-04T01:02:03+00:00",
    "updated_at": "2026-12-04T01:12:03+00:00",
}


def test_a_table_too_wide_for_the_terminal_is_shown_as_records_with_every_value_whole(
    in_utc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rich cuts off what does not fit (here the last column, and the ID's end); records keep
    every value, each on lines of its own."""
    monkeypatch.setattr(common, "console", Console(width=80))
    shown = _printed(data_table([UPLOAD], list(UPLOAD), "Uploads", ids=frozenset({"id"})), 80)
    lines = [line.rstrip() for line in shown.splitlines()]
    assert lines[0].strip() == "Uploads"
    assert f"id:         {UPLOAD['id']}" in lines
    assert "started by: alice-the-builder" in lines
    assert "updated:    2026-12-04 01:12 UTC" in lines
    assert "sha256:" + "a" * 64 in "".join(line.split(": ", 1)[-1].strip() for line in lines)
    assert all(len(line) <= 80 for line in lines)


def test_a_table_that_fits_stays_a_table_with_its_ids_whole(
    in_utc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "console", Console(width=80))
    columns = ["id", "repository", "started_by", "updated_at"]
    shown = _printed(data_table([UPLOAD], columns, "Uploads", ids=frozenset({"id"})), 80)
    header = next(line for line in shown.splitlines() if line.startswith("id"))
    assert header.split() == ["id", "repository", "started", "by", "updated"]
    assert UPLOAD["id"] in shown  # on one line
    assert all(len(line) <= 80 for line in shown.splitlines())


def test_an_empty_list_shows_its_headers_or_says_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty list is a table of headers when they fit (`berth gc history` of a project
    never collected printed its title alone), else the title and `none`."""
    from berth.cli.gc import COLUMNS

    columns, headers = [key for key, _ in COLUMNS], dict(COLUMNS)
    monkeypatch.setattr(common, "console", Console(width=80))
    shown = _printed(data_table([], columns, "Garbage collection in demo", headers), 80)
    lines = shown.splitlines()
    assert lines[0].strip() == "Garbage collection in demo"
    assert lines[1].split()[:4] == ["run", "started", "state", "dry"], shown
    monkeypatch.setattr(common, "console", Console(width=30))
    narrow = _printed(data_table([], columns, "Garbage collection in demo", headers), 30)
    assert [line.strip() for line in narrow.splitlines()] == ["Garbage collection in demo", "none"]

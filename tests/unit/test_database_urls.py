"""A database URL's password is never shown, however the URL gives it: after `user:`, or as a
`password` query parameter (which libpq and asyncpg both take), in the database named by
`berth status` and the server's log lines, in settings errors, and in printed commands."""

from __future__ import annotations

import subprocess

import pytest

from berth.config import Settings
from berth.data_location import shown_database
from berth.database_urls import holds_password, without_password
from berth.invocation import pasteable_command, unprinted_database
from tests.servers import ROOT

SECRET = "s3cret-9f2c"
URLS = [
    f"postgresql://berth:{SECRET}@db.example:5432/berth?sslmode=require",
    f"postgresql://berth@db.example:5432/berth?password={SECRET}&sslmode=require",
    f"postgresql://berth@db.example:5432/berth?sslmode=require&PASSWORD={SECRET}",
    # As SQLAlchemy and libpq read them: a parameter's name %-decoded, a value up to the `&`.
    f"postgresql://berth@db.example:5432/berth?pass%77ord={SECRET}&sslmode=require",
    f"postgresql://berth@db.example:5432/berth?password=pw#{SECRET}&sslmode=require",
]


@pytest.mark.parametrize("url", URLS)
def test_a_password_is_masked_wherever_the_url_gives_it(url: str) -> None:
    assert holds_password(url)
    assert SECRET not in without_password(url)
    assert "***" in without_password(url)
    shown = shown_database(Settings(database_url=url))
    assert SECRET not in shown and "db.example:5432/berth" in shown, shown
    note = unprinted_database(url, given=True)
    assert note is not None and SECRET not in note, note
    assert SECRET not in pasteable_command("status", database_url=url)


def test_the_database_is_shown_as_its_url_was_written_but_for_its_password() -> None:
    url = f"postgresql://berth:{SECRET}@db.example:5432/berth?sslmode=require&password={SECRET}"
    masked = "berth:***@db.example:5432/berth?sslmode=require&password=***"
    assert shown_database(Settings(database_url=url)) == f"postgresql+asyncpg://{masked}"
    assert f"names (postgresql://{masked}) once" in str(unprinted_database(url, given=True))


def test_a_url_without_a_password_is_shown_and_printed_as_it_is() -> None:
    url = "postgresql://berth@db.example:5432/berth?sslmode=require"
    assert not holds_password(url)
    assert without_password(url) == url
    assert unprinted_database(url, given=True) is None
    assert "db.example:5432/berth?sslmode=require" in pasteable_command("status", database_url=url)


def test_a_settings_error_quoting_the_url_masks_a_password_given_as_a_parameter() -> None:
    """Berth refuses `sslpassword` (a client key's passphrase): its message quotes the URL."""
    url = f"postgresql://berth@db.example/berth?password={SECRET}&sslpassword={SECRET}"
    refused = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "berth"), "status"],
        env={"BERTH_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert refused.returncode == 2, refused
    assert "has the parameter sslpassword" in refused.stderr, refused.stderr
    assert SECRET not in refused.stderr + refused.stdout, refused.stderr

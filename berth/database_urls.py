"""Database URLs as users write them: the forms Berth takes (database_url's check), the driver
Berth opens each with, and a URL shown without its password."""

from __future__ import annotations

import re

from berth.database_tls import database_tls

# The driver Berth opens each database with, by the URL scheme that names only the database
# (postgresql:// as PostgreSQL's own documentation, Heroku and RDS write it; SQLAlchemy would
# take psycopg, which Berth does not ship, and no longer knows postgres://).
_BERTH_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
DATABASE_FORMS = (
    "Berth takes postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE (postgresql:// and "
    "postgres:// are read as that) or sqlite+aiosqlite:///PATH (or sqlite:///PATH)"
)


def with_berth_driver(url: str) -> str:
    """`url` naming the driver Berth opens its database with: postgresql://... and
    postgres://... as postgresql+asyncpg://..., sqlite://... as sqlite+aiosqlite://...; a URL
    that names its driver as it is."""
    scheme, separator, rest = url.partition("://")
    return f"{_BERTH_DRIVERS.get(scheme.lower(), scheme)}{separator}{rest}"


def checked_database_url(value: str | None) -> str | None:
    """database_url's check: a URL of a database Berth opens, its TLS parameters readable."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url  # here: settings are read before SQLAlchemy

    try:
        drivername = make_url(value).drivername
    except Exception as exc:  # SQLAlchemy's ArgumentError, or a port that is no number
        raise ValueError(
            "is not a database URL (e.g. postgresql+asyncpg://USER:PASSWORD@HOST:5432/"
            f"DATABASE): {exc}"
        ) from None
    if drivername.lower() not in {*_BERTH_DRIVERS, *_BERTH_DRIVERS.values()}:
        # Opening it would fail on a driver Berth does not ship, or open it synchronously.
        raise ValueError(f"names {drivername}, which Berth does not open: {DATABASE_FORMS}")
    if drivername.lower().startswith("postgres"):
        database_tls(make_url(value).query)  # ValueError: its TLS parameters, at once
    return value


# A password given as a query parameter (`?password=...`, which libpq and asyncpg both take
# beside `user:password@`; `sslpassword`, a client key's passphrase, which Berth refuses but a
# message may quote).
_SECRET_PARAMETER = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def without_password(url: str) -> str:
    """A database URL with its password (between `://user:` and `@`, or a `password` query
    parameter) replaced by `***`: the URL may be too malformed for SQLAlchemy to hide it."""
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url, count=1)
    return _SECRET_PARAMETER.sub(r"\1***", masked)


def holds_password(url: str) -> bool:
    """Whether the database URL `url` carries a password (after `user:`, or as a query
    parameter)."""
    return without_password(url) != url

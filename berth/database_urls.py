"""Database URLs as users write them: the forms Berth takes (database_url's check), the driver
Berth opens each with, and a URL shown without its password."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

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


# A connect timeout in the URL: asyncpg would be given `timeout` as a string, failing to
# connect (a TypeError), and takes no `connect_timeout` (libpq's). Berth's is a setting.
_CONNECT_TIMEOUTS = ("timeout", "connect_timeout")


def checked_database_url(value: str | None) -> str | None:
    """database_url's check: a URL of a database Berth opens, its TLS parameters readable, no
    connect timeout in it."""
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
        query = make_url(value).query
        for name in _CONNECT_TIMEOUTS:
            if name in query:
                raise ValueError(
                    f"has the parameter {name}, which Berth does not take: set "
                    "database_connect_timeout (seconds) instead"
                )
        database_tls(query)  # ValueError: its TLS parameters, at once
    return value


# The query parameters that give a password (`password`, which libpq and asyncpg both take
# beside `user:password@`; `sslpassword`, a client key's passphrase, which Berth refuses but a
# message may quote); a name compared %-decoded, as SQLAlchemy and libpq read it, in any case.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def without_password(url: str) -> str:
    """The database URL `url` as written, with its password replaced by `***` wherever it gives
    it: between `://user:` and `@`, and as a `password` query parameter (its whole value, up to
    the next `&`, as SQLAlchemy reads it). The URL's other parts are left as written: read as a
    string, since it may be too malformed for SQLAlchemy."""
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url, count=1)
    address, question, query = masked.partition("?")
    if not question:
        return masked
    return f"{address}?{'&'.join(map(_without_secret_value, query.split('&')))}"


def _without_secret_value(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    if equals and unquote_plus(name).lower() in _SECRET_PARAMETERS:
        return f"{name}=***"
    return parameter


def holds_password(url: str) -> bool:
    """Whether the database URL `url` carries a password (after `user:`, or as a query
    parameter)."""
    return without_password(url) != url

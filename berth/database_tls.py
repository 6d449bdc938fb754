"""libpq's TLS parameters in a PostgreSQL database_url, read with libpq's meaning.

PostgreSQL's documentation, Heroku and RDS write TLS into the URL as libpq does
(`?sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem`). SQLAlchemy passes a URL's query
parameters to asyncpg's connect() as arguments, and asyncpg takes none of these (it takes
`ssl=`): they are taken out of the URL here and made into its `ssl` argument, a mode string or
an SSLContext. Certificate files are read from the URL only (not ~/.postgresql/ or the PGSSL*
variables), so that what a URL says is all a node does. asyncpg's own `ssl=MODE` is left to it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# The modes that never fall back to a connection without TLS, where certificates are used.
ALWAYS_TLS = ("require", "verify-ca", "verify-full")
FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey")
TLS_PARAMETERS = ("sslmode", *FILE_PARAMETERS)
ASYNCPG_SSL = "ssl"  # asyncpg's own argument, taken by it as given (a mode string)
SYSTEM_ROOTS = "system"  # sslrootcert=system: the system's trusted CAs (libpq 16)
TAKEN = (
    "sslmode (disable, allow, prefer, require, verify-ca, verify-full), sslrootcert (a CA "
    "file, or system), sslcert and sslkey (a client certificate and its key)"
)
_SHOWN_MODES = ", ".join(SSL_MODES)


@dataclass(frozen=True)
class DatabaseTls:
    """How to reach a PostgreSQL server over TLS, as the URL's libpq parameters say."""

    mode: str
    root_cert: str | None = None
    cert: str | None = None
    key: str | None = None

    def asyncpg_ssl(self) -> str | ssl.SSLContext:
        """asyncpg's `ssl` argument: its own mode string for a mode that may do without TLS
        (it then tries both, as libpq), else a context that verifies what the mode says.
        OSError or ssl.SSLError for a file that cannot be read or is no certificate."""
        if self.mode not in ALWAYS_TLS:
            return self.mode
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # asyncpg's (and libpq's) floor
        context.check_hostname = self.mode == "verify-full"
        if self.root_cert == SYSTEM_ROOTS:
            context.load_default_certs()
        elif self.root_cert is not None:
            # With require too: libpq's rule, a CA given makes require verify as verify-ca.
            context.load_verify_locations(cafile=self.root_cert)
        else:  # require without a CA: encrypted, not verified
            context.verify_mode = ssl.CERT_NONE
        if self.cert is not None:
            # No passphrase (libpq's sslpassword is not taken): an encrypted key is refused,
            # rather than OpenSSL asking for it on the terminal.
            context.load_cert_chain(self.cert, self.key, password=lambda: b"")
        return context


def database_tls(query: Mapping[str, str | Sequence[str]]) -> DatabaseTls | None:
    """The TLS a PostgreSQL URL's query parameters ask for (None: it names none of libpq's,
    asyncpg's defaults apply); ValueError saying what is wrong, completing a sentence that
    starts with the URL (the parameters' values are file names and modes, never secrets)."""
    given: dict[str, str] = {}
    for name, value in query.items():
        if name.lower().startswith("ssl") and name not in (*TLS_PARAMETERS, ASYNCPG_SSL):
            raise ValueError(
                f"has the parameter {name}, which Berth does not take: it takes {TAKEN}"
            )
        if not isinstance(value, str):
            raise ValueError(f"gives {name} {len(value)} times: give it once")
        given[name] = value
    mode = given.get("sslmode")
    asyncpg_mode = given.get(ASYNCPG_SSL)
    if asyncpg_mode is not None:
        if asyncpg_mode not in SSL_MODES:
            raise ValueError(f"has ssl={asyncpg_mode}, which is not one of {_SHOWN_MODES}")
        if any(name in given for name in TLS_PARAMETERS):
            raise ValueError(
                "has both asyncpg's ssl and libpq's parameters: give sslmode (with "
                "sslrootcert, sslcert, sslkey as needed) instead of ssl"
            )
        return None
    files = [name for name in FILE_PARAMETERS if name in given]
    if mode is not None and mode not in SSL_MODES:
        raise ValueError(f"has sslmode={mode}, which is not one of libpq's: {_SHOWN_MODES}")
    if mode is None or mode not in ALWAYS_TLS:
        if not files:
            return None if mode is None else DatabaseTls(mode)
        # libpq would take them and still connect without TLS when the server has none
        # (prefer, its default): a CA named to be checked would check nothing.
        said = f"sslmode={mode}" if mode is not None else "no sslmode (libpq's default, prefer)"
        raise ValueError(
            f"names {' and '.join(files)} with {said}, which may connect without TLS: "
            "certificates are used with sslmode=require, verify-ca or verify-full"
        )
    root_cert = given.get("sslrootcert")
    if root_cert is None and mode != "require":
        raise ValueError(
            f"has sslmode={mode} without sslrootcert: name the file of the CA certificate "
            "that signed the server's (sslrootcert=/PATH/ca.pem), or sslrootcert=system "
            "for the system's trusted CAs"
        )
    if root_cert == SYSTEM_ROOTS and mode != "verify-full":
        # As libpq: any public CA signs certificates for other hosts.
        raise ValueError(
            f"has sslrootcert=system with sslmode={mode}: the system's CAs are taken with "
            "sslmode=verify-full only, which checks the server's host name too"
        )
    if "sslkey" in given and "sslcert" not in given:
        raise ValueError("has sslkey without sslcert: give the client certificate too")
    tls = DatabaseTls(mode, root_cert, given.get("sslcert"), given.get("sslkey"))
    _check_files(tls)
    return tls


def _check_files(tls: DatabaseTls) -> None:
    """Refuse, naming the parameter, a certificate or key file that cannot be used: found
    when the settings are read, not when a connection first fails."""
    named = zip(FILE_PARAMETERS, (tls.root_cert, tls.cert, tls.key), strict=True)
    for parameter, path in named:
        if path is None or (path == SYSTEM_ROOTS and parameter == "sslrootcert"):
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(
                f"has {parameter}={path}, which this user cannot read: {exc.strerror or exc}"
            ) from None
    try:
        tls.asyncpg_ssl()
    except ssl.SSLError as exc:
        # The CA is loaded first: a failure after it is the client's certificate or key.
        try:
            DatabaseTls("verify-ca", tls.root_cert).asyncpg_ssl()
        except ssl.SSLError:
            at_fault = f"sslrootcert={tls.root_cert}, which is not a PEM CA certificate"
        else:
            at_fault = (
                f"sslcert={tls.cert} and sslkey={tls.key}, which are not a PEM certificate "
                "and its unencrypted private key"
                if tls.key is not None
                else f"sslcert={tls.cert}, which does not hold a PEM certificate and its "
                "unencrypted private key"
            )
        raise ValueError(f"has {at_fault}" + (f": {exc.reason}" if exc.reason else "")) from None

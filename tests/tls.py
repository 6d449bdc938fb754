"""A throwaway certificate authority and server certificate, made with openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca_and_cert(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """Returns (ca.crt, server.crt, server.key); the server cert names every host in `hosts`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    names = ",".join(f"IP:{h}" if h[0].isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    ext = directory / "ext.cnf"
    ext.write_text(
        f"[ext]\nsubjectAltName={names}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-subj",
        "/CN=Berth test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={hosts[0]}",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "30",
        "-extfile",
        str(ext),
        "-extensions",
        "ext",
    )
    return ca_crt, crt, key


def make_client_cert(directory: Path, user: str) -> tuple[Path, Path]:
    """Returns (client.crt, client.key): a client certificate for `user` (its common name, as
    PostgreSQL's `cert` authentication reads it), signed by the CA `make_ca_and_cert` made in
    `directory`."""
    key, csr, crt = directory / "client.key", directory / "client.csr", directory / "client.crt"
    ext = directory / "client-ext.cnf"
    ext.write_text("[ext]\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(csr), "-subj", f"/CN={user}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.crt"),
         "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-out", str(crt), "-days",
         "30", "-extfile", str(ext), "-extensions", "ext"],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)  # as libpq demands of a key file (asyncpg does not check)
    return crt, key

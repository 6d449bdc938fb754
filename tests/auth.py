"""The Docker token flow as a registry client speaks it, and JWT tools for tests that attack it.

`challenge` reads a `WWW-Authenticate` header; `fetch_token` asks the realm for a token the way
docker does (GET, Basic access-key credentials, `service` and `scope` from the challenge);
`bearer` makes a client that sends it. `claims` reads a token's payload without checking it;
`resign`, `unsigned` and `hmac_signed` make the forgeries a registry must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

Credentials = tuple[str, str]  # (access key ID, secret access key)

_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params["realm"]

    @property
    def service(self) -> str:
        return self.params["service"]


def challenge(response: httpx.Response) -> Challenge:
    """The `WWW-Authenticate` challenge of a 401; fails the test when there is none."""
    header = response.headers.get("WWW-Authenticate")
    assert header, f"401 without WWW-Authenticate: {response.request.url} {response.text[:200]}"
    scheme, _, rest = header.partition(" ")
    return Challenge(scheme, dict(_PARAM_RE.findall(rest)))


def ping(client: httpx.Client) -> Challenge:
    """GET /v2/ without credentials: the 401 challenge that starts the token flow."""
    response = client.get("/v2/", auth=None)
    assert response.status_code == 401, f"/v2/ without credentials: {response.status_code}"
    found = challenge(response)
    assert found.scheme == "Bearer", f"expected a Bearer challenge, got {found}"
    return found


def token_response(
    client: httpx.Client,
    credentials: Credentials | None,
    *scopes: str,
    realm: Challenge | None = None,
    **params: str,
) -> httpx.Response:
    """GET {realm}?service=...&scope=... as docker does, with Basic credentials unless anonymous."""
    found = realm or ping(client)
    query: list[tuple[str, str]] = [("service", found.service)]
    query += [("scope", scope) for scope in scopes]
    query += list(params.items())
    if credentials is not None:
        query.append(("account", credentials[0]))
    return client.get(found.realm, params=tuple(query), auth=credentials)


def fetch_token(client: httpx.Client, credentials: Credentials | None, *scopes: str) -> str:
    """A token for `scopes` (200 expected); raises with the answer otherwise."""
    response = token_response(client, credentials, *scopes)
    assert response.status_code == 200, f"token request: {response.status_code} {response.text}"
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def granted(token: str) -> dict[str, set[str]]:
    """What a token grants: {"type:name": {actions}}."""
    return {
        f"{entry['type']}:{entry['name']}": set(entry["actions"])
        for entry in claims(token).get("access") or []
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _header_of(token: str) -> dict[str, Any]:
    header: dict[str, Any] = jwt.get_unverified_header(token)
    return header


def resign(token: str, key: ec.EllipticCurvePrivateKey, **changes: Any) -> str:
    """The token's claims (with `changes`) signed ES256 by `key`, keeping the header's `kid`."""
    payload = {**claims(token), **changes}
    kid = _header_of(token).get("kid")
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid} if kid else None)


def unsigned(token: str, **changes: Any) -> str:
    """The token's claims under `alg: none`, with an empty signature."""
    header = {**_header_of(token), "alg": "none"}
    payload = {**claims(token), **changes}
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}."


def hmac_signed(token: str, secret: bytes) -> str:
    """The token's claims signed HS256 with `secret` (the public key, in the classic confusion
    attack on servers that let the token choose its algorithm)."""
    header = {**_header_of(token), "alg": "HS256"}
    signing_input = (
        f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims(token)).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload changed and the original signature kept."""
    header, _payload, signature = token.split(".")
    payload = {**claims(token), **changes}
    return f"{header}.{_b64url(json.dumps(payload).encode())}.{signature}"

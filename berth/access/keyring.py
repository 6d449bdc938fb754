"""Server key material: the token signing key and the key that hashes access-key secrets.

Generated on first start into `{data_dir}/keys/` (mode 0600), or read from configured files,
which several nodes sharing one database must all be given.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class KeyFileUnusable(Exception):
    """A key file that cannot be read, or on the first start created: `setting` names it."""

    def __init__(self, setting: str, path: Path, creating: bool, error: OSError) -> None:
        super().__init__(f"{setting}: {path}: {error}")
        self.setting, self.path, self.creating, self.error = setting, path, creating, error


def write_key_file(path: Path, data: bytes) -> bool:
    """Write `data` to `path`, owner-only, unless another process created it first (False:
    both then use that process's key)."""
    # Owner-only: the data directory's group may pass through it (blob_redirect = "accel").
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Its own name: another start-up writing the same key at once has another.
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    # link() fails if another process created the file first.
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def _key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The `kid` of the tokens a key signs."""
    public_der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(public_der).hexdigest()[:16]


def existing_key_id(signing_key_file: Path) -> str | None:
    """The `kid` of the tokens signed with the key in `signing_key_file`, or None when there
    is no readable key there (nothing is created)."""
    try:
        loaded = serialization.load_pem_private_key(signing_key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return _key_id(loaded.public_key()) if isinstance(loaded, ec.EllipticCurvePrivateKey) else None


class Keyring:
    def __init__(self, signing_key_file: Path, secret_key_file: Path, *, save: bool = True) -> None:
        """The keys in the two files; a missing one is made and written, or with `save=False`
        made in memory only (`unsaved` names its file) until `saved()` writes it."""
        self._files = (signing_key_file, secret_key_file)
        self._unsaved: list[tuple[str, Path, bytes]] = []
        new_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = self._load_or_create("token_signing_key", signing_key_file, new_key, save)
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{signing_key_file} must hold an EC (P-256) private key")
        self.signing_key = loaded
        self.public_key = loaded.public_key()
        self.key_id = _key_id(self.public_key)
        self._secret_key = self._load_or_create(
            "secret_hash_key", secret_key_file, secrets.token_bytes(32), save
        )

    def _load_or_create(self, setting: str, path: Path, create: bytes, save: bool) -> bytes:
        creating = not path.exists()
        if creating and not save:
            self._unsaved.append((setting, path, create))
            return create
        try:
            if creating:
                write_key_file(path, create)
            return path.read_bytes()
        except OSError as exc:
            raise KeyFileUnusable(setting, path, creating, exc) from None

    @property
    def unsaved(self) -> list[Path]:
        """The key files whose keys were made in memory and are not written yet."""
        return [path for _, path, _ in self._unsaved]

    def saved(self) -> Keyring:
        """These keys once the ones made in memory are written to their files; where another
        process on the same files wrote first, the keys as the files hold them."""
        another_wrote = False
        for setting, path, data in self._unsaved:
            try:
                another_wrote |= not write_key_file(path, data)
            except OSError as exc:
                raise KeyFileUnusable(setting, path, True, exc) from None
        self._unsaved = []
        return Keyring(*self._files) if another_wrote else self

    @property
    def fingerprint(self) -> str:
        """Names this pair of keys without revealing either: the nodes of one install must
        all have the same (recorded in the database by the first node to start)."""
        public_der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        secret_tag = hmac.new(self._secret_key, b"berth key fingerprint", hashlib.sha256)
        return hashlib.sha256(public_der + secret_tag.digest()).hexdigest()

    def hash_secret(self, secret: str) -> str:
        return hmac.new(self._secret_key, secret.encode(), hashlib.sha256).hexdigest()

    def secret_matches(self, secret: str, stored_hash: str) -> bool:
        return hmac.compare_digest(self.hash_secret(secret), stored_hash)

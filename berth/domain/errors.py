"""Registry errors, named by the OCI Distribution error codes.

Services raise these; the HTTP layer renders them as the spec's JSON error body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    status = 500
    # The code a registry client is sent where `code` is not one of the spec's (which it
    # says a client's error MUST carry): docker and podman print an unknown code as
    # "unknown: MESSAGE". The management API sends `code`.
    oci_code: str | None = None

    def __init__(self, message: str, detail: Any = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.oci_code or self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    status = 400


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    status = 401


class Denied(RegistryError):
    code = "DENIED"
    status = 403


class HostInvalid(RegistryError):
    """A Host header that is not a host name or address (not an OCI code: none fits)."""

    code = "HOST_INVALID"
    status = 400


class InvalidValue(RegistryError):
    """A value that is not a name but is out of range or not one of the choices (a short
    password, an unknown role, a negative quota): the API answers 422 naming the field."""

    code = "INVALID_VALUE"
    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, [{"field": field, "message": message}] if field else None)
        self.field = field


class Refusals:
    """The InvalidValues of several checks, refused as one naming every field at fault, so a
    user fixes them all at once instead of learning of one per attempt."""

    def __init__(self) -> None:
        self.found: list[InvalidValue] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """Run a check; its InvalidValue is kept for `refuse`."""
        try:
            yield
        except InvalidValue as refusal:
            self.found.append(refusal)

    def refuse(self) -> None:
        """Raise what was found: one refusal as it is, several as one InvalidValue."""
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            combined = InvalidValue(
                "; ".join(f"{r.field}: {r.message}" if r.field else r.message for r in self.found)
            )
            combined.detail = [entry for r in self.found for entry in r.detail or []]
            raise combined


class NotFound(RegistryError):
    """Something that is not registry content (a user, an access key) does not exist."""

    code = "NOT_FOUND"
    status = 404


class Conflict(RegistryError):
    """Refused by the state of something else (a name taken, content in use). `field`: the
    request field whose value conflicts, for the API to name as it names a refused value."""

    code = "CONFLICT"
    oci_code = "DENIED"  # a delete refused while the content is in use
    status = 409

    def __init__(self, message: str, detail: Any = None, *, field: str | None = None) -> None:
        super().__init__(message, detail)
        self.field = field


class StateRefusal(Conflict):
    """A conflict with the state something is in (a webhook disabled, a delivery still being
    sent), not with something that exists already: the API answers 409 as for any conflict,
    the CLI exits 1 as for a refusal (3 says "exists")."""


class ConfirmationRequired(Conflict):
    """Refused until the caller repeats the name of what it destroys (a project that holds
    repositories): each surface says how (the API's `confirm`, the CLI's prompt)."""


class QuotaExceeded(RegistryError):
    code = "QUOTA_EXCEEDED"
    status = 403


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"
    status = 429


class RequestTimeout(RegistryError):
    """A request body that did not arrive in time (not an OCI code: none fits)."""

    code = "REQUEST_TIMEOUT"
    status = 408


class PaginationNumberInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    status = 400


class RangeNotSatisfiable(BlobUploadInvalid):
    """A chunk that does not start where the upload ends (spec: 416)."""

    status = 416

    def __init__(self, message: str, current_size: int) -> None:
        super().__init__(message)
        self.current_size = current_size


class BlobRangeNotSatisfiable(RegistryError):
    """A blob GET's or HEAD's Range that is invalid or asks for no byte of the blob (RFC 9110
    15.5.17). No OCI code fits a read's: this one names the status."""

    code = "RANGE_NOT_SATISFIABLE"
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers["Content-Range"] = f"bytes */{size}"


class StorageRefused(RegistryError):
    """The blob store (or the database) cannot store anything now, until an operator acts:
    nothing was stored. 507, which clients give up on or retry later, not at once."""

    status = 507


class StorageFull(StorageRefused):
    """The blob store (or the database) has no space left: nothing was stored."""

    code = "STORAGE_FULL"


class StorageReadOnly(StorageRefused):
    """The disk under the blob store (or the database) turned read-only (a filesystem error
    remounted it so, a read-only export or mount): nothing was stored."""

    code = "STORAGE_READ_ONLY"


class StoragePermissionDenied(StorageRefused):
    """The blob store's directories refuse the server's writes (EACCES, EPERM: an owner or
    mode changed under it, a directory marked immutable): nothing was stored."""

    code = "STORAGE_PERMISSION_DENIED"


class Unavailable(RegistryError):
    """A transient condition (the database is locked by another writer): try again soon."""

    code = "UNAVAILABLE"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retryAfter": retry_after})
        self.headers["Retry-After"] = str(retry_after)

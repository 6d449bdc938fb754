"""The S3 driver's errors: S3's refusals as ObjectStoreError, saying what the operator should
check, and the conditional request's failure."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, HTTPClientError, PartialCredentialsError, SSLError
from botocore.exceptions import ConnectionError as StoreConnectionError

from berth.domain.errors import Unavailable
from berth.storage.base import failures_logged

logger = logging.getLogger("berth.storage")

RETRY_AFTER_SECONDS = 5  # what a client is told to wait when the store cannot be reached

MISSING_OBJECT_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
MISSING_BUCKET_CODES = {"NoSuchBucket"}
PRECONDITION_FAILED_CODES = {"412", "PreconditionFailed"}
# The credentials themselves refused (wrong, expired), not a request they may not make.
CREDENTIALS_REFUSED_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
REFUSED_CODES = {"403", "AccessDenied", *CREDENTIALS_REFUSED_CODES}


def unreached(exc: BotoCoreError) -> bool:
    """Whether `exc` says the store was not reached (refused, unresolved, timed out, the
    connection dropped), not that TLS or the request itself failed."""
    if isinstance(exc, SSLError):  # a certificate not trusted stays so
        return False
    return isinstance(exc, StoreConnectionError | HTTPClientError)


class PreconditionFailed(Exception):
    """The object is no longer the one a conditional request (If-Match) named."""


# What a client and /readyz are told when the store refuses the registry (`refusal`): what
# its operator has to put right, with no address or bucket name.
MISSING_BUCKET = "the object store has no bucket for it (the operator should check s3_bucket)"
REFUSED_CREDENTIALS = (
    "the object store refused its credentials "
    "(the operator should check s3_access_key_id and s3_secret_access_key)"
)
NO_CREDENTIALS = (
    "the registry has no usable credentials for the object store "
    "(the operator should check s3_access_key_id and s3_secret_access_key)"
)
UNTRUSTED = "the registry cannot verify the object store (the operator should check its CA bundle)"
# botocore's names of the credentials given explicitly, as the settings that give them.
_CREDENTIAL_SETTINGS = {
    "aws_access_key_id": "s3_access_key_id",
    "aws_secret_access_key": "s3_secret_access_key",
}


class ObjectStoreError(Unavailable, OSError):
    """The object store cannot be used as configured: unreachable, the bucket missing, or
    the credentials refused. `str()` names the endpoint and bucket (the server's log, the
    refusal to serve, the CLI, a GC run's error); a client is answered 503 with Retry-After
    and told that storage is unavailable, and when the store refused the registry (`refusal`:
    the bucket missing, the credentials refused) why, and what its operator should check;
    the store's address is not its business."""

    def __init__(self, reason: str, refusal: str | None = None, *, passing: bool = False) -> None:
        super().__init__(
            f"the registry's storage is unavailable: {refusal}; try again later"
            if refusal
            else "the registry's storage is unavailable; try again shortly",
            RETRY_AFTER_SECONDS,
        )
        self.reason = reason
        self.refusal = refusal
        # The store could not be reached, or answered that it cannot serve now (5xx): what
        # may pass by itself (a store still starting), unlike a refusal or a bad setting.
        self.passing = passing
        # Logged where it happens: the answer no longer carries it, nor a traceback.
        if failures_logged():
            logger.warning("blob store: %s", reason)

    def __str__(self) -> str:
        return self.reason


def partial_credentials(exc: PartialCredentialsError) -> str:
    """Which credential is missing, as the setting that gives it when given explicitly."""
    missing = str(exc.kwargs.get("cred_var", ""))
    if exc.kwargs.get("provider") == "explicit" and missing in _CREDENTIAL_SETTINGS:
        given = next(s for v, s in _CREDENTIAL_SETTINGS.items() if v != missing)
        return (
            f"{given} is set but {_CREDENTIAL_SETTINGS[missing]} is not: set both "
            "(or neither, and the AWS chain gives them)"
        )
    return f"the credentials from {exc.kwargs.get('provider')} lack {missing}: give both parts"

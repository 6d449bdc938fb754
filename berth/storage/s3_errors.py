"""S3's errors, translated (`translated`): a missing object is FileNotFoundError, an object
changed under a conditional request PreconditionFailed, and what makes the store unusable
ObjectStoreError, saying to the operator what to check and to a client what is wrong."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as StoreConnectionError

from berth.domain.errors import Unavailable
from berth.storage.base import failures_logged

logger = logging.getLogger("berth.storage")

RETRY_AFTER_SECONDS = 5  # what a client is told to wait when the store cannot be reached

_MISSING_OBJECT_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_PRECONDITION_FAILED_CODES = {"412", "PreconditionFailed"}
# The credentials themselves refused (wrong, expired), not a request they may not make.
_CREDENTIALS_REFUSED_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_REFUSED_CODES = {"403", "AccessDenied", *_CREDENTIALS_REFUSED_CODES}


class PreconditionFailed(Exception):
    """The object is no longer the one a conditional request (If-Match) named."""


# What a client and /readyz are told when the store refuses the registry (`refusal`): what
# its operator has to put right, with no address or bucket name.
MISSING_BUCKET = "the object store has no bucket for it (the operator should check s3_bucket)"
REFUSED_CREDENTIALS = (
    "the object store refused its credentials "
    "(the operator should check s3_access_key_id and s3_secret_access_key)"
)
REFUSED_REQUEST = (
    "the object store refused a request of the registry (the operator should check that its "
    "credentials may read, write, list and delete the objects under s3_prefix)"
)
REFUSED_LISTING = (
    "the object store accepted the registry's credentials but refused it the listing of its "
    "bucket (the operator should check that the bucket policy and the credentials' "
    "permissions allow s3:ListBucket on it)"
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


# The permissions (IAM actions) Berth's requests need, which the user's policy and any bucket
# policy must allow: the one list, which README ("Configuration", S3) shows too. On the bucket:
# HeadBucket (the bucket's check, /readyz) and ListObjectsV2 need ListBucket;
# ListMultipartUploads (uploads abandoned midway) ListBucketMultipartUploads. On the objects:
# GetObject and HeadObject (and the source of CopyObject, UploadPartCopy and presigned URLs)
# need GetObject; PutObject, CopyObject and a multipart upload's parts and completion
# PutObject; DeleteObject and DeleteObjects DeleteObject; ListParts ListMultipartUploadParts.
BUCKET_PERMISSIONS = ("s3:ListBucket", "s3:ListBucketMultipartUploads")
OBJECT_PERMISSIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
PERMISSIONS_NEEDED = (
    f"{' and '.join(BUCKET_PERMISSIONS)} on the bucket, and {', '.join(OBJECT_PERMISSIONS)} "
    "on the objects under s3_prefix"
)


class ObjectStoreError(Unavailable, OSError):
    """The object store cannot be used as configured: unreachable, the bucket missing, the
    credentials or a request refused. `str()` names the endpoint and bucket (the server's log,
    the refusal to serve, the CLI, a GC run's error); a client is answered 503 with
    Retry-After and told that storage is unavailable, and when the store refused the registry
    (`refusal`: the bucket missing, the credentials or a request refused) why, and what its
    operator should check; the store's address is not its business."""

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


@contextlib.contextmanager
def translated(shown: str, key: str | None = None, *, bucket_check: bool = False) -> Iterator[None]:
    """S3's errors in a request on `key` (None: on the bucket) of the store `shown` (its
    bucket and endpoint) as the driver's; `bucket_check`: the request is the bucket's check."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _MISSING_BUCKET_CODES or (key is None and status == "404"):
            raise ObjectStoreError(
                f"the {shown} does not exist: create it, or set s3_bucket", MISSING_BUCKET
            ) from None
        if code in _MISSING_OBJECT_CODES:
            raise FileNotFoundError(f"no object {key!r} in the {shown}") from None
        if code in _PRECONDITION_FAILED_CODES or status == "412":
            raise PreconditionFailed(key) from None
        if code in _REFUSED_CODES or status == "403":
            raise _refused(shown, exc, key, code or status, bucket_check) from None
        raise ObjectStoreError(
            f"the {shown} answered {code or status}: {error.get('Message', exc)}",
            passing=status.startswith("5"),
        ) from exc
    except NoCredentialsError:
        raise ObjectStoreError(
            f"no credentials for the {shown}: set s3_access_key_id and s3_secret_access_key "
            "(or give them to the AWS chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a "
            "profile, instance metadata)",
            NO_CREDENTIALS,
        ) from None
    except PartialCredentialsError as exc:
        raise ObjectStoreError(
            f"{_partial_credentials(exc)}, for the {shown}", NO_CREDENTIALS
        ) from None
    except BotoCoreError as exc:  # connection refused, timeouts
        raise ObjectStoreError(f"cannot use the {shown}: {exc}", passing=_unreached(exc)) from exc


def _refused(
    shown: str, exc: ClientError, key: str | None, code: str, bucket_check: bool
) -> ObjectStoreError:
    """Why the store refused a request. The bucket's check refused (the first request, and
    readiness's), or a code that says so: the credentials (a refused check that a listing
    shows to be a permission refused is `bucket_check_refusal`'s). Any other request refused
    after the check accepted them, listings of the bucket included: that they may not make it
    (read but not write, a bucket policy), or that they changed since (a refused HEAD has no
    body to tell which)."""
    if bucket_check or code in _CREDENTIALS_REFUSED_CODES:
        return _credentials_refused(shown, code)
    request = exc.operation_name if key is None else f"{exc.operation_name} of {key!r}"
    return ObjectStoreError(
        f"the {shown} refused {request} ({code}): check that the credentials "
        "(s3_access_key_id and s3_secret_access_key) are right and that the bucket policy and "
        f"their permissions allow what Berth needs: {PERMISSIONS_NEEDED}",
        REFUSED_REQUEST,
    )


def _credentials_refused(shown: str, code: str) -> ObjectStoreError:
    return ObjectStoreError(
        f"the {shown} refused the credentials ({code}): check s3_access_key_id and "
        "s3_secret_access_key",
        REFUSED_CREDENTIALS,
    )


def bucket_check_refusal(shown: str, listing: ClientError | None) -> ObjectStoreError:
    """Why the bucket's check (HeadBucket, refused 403 with no body to say why) was refused,
    from the listing under s3_prefix asked after it: `listing` its refusal, None when it was
    answered. The store checks the signature before the permissions, so AccessDenied says that
    it accepted the credentials but refuses them s3:ListBucket, which both requests need;
    a listing answered, that the credentials are accepted and may list there, though not the
    whole bucket. Any other code (SignatureDoesNotMatch, InvalidAccessKeyId, an expired token),
    or none: the credentials, as the check alone said."""
    if listing is None:
        return ObjectStoreError(
            f"the {shown} refused its check (HeadBucket: 403) but answered a listing under "
            "s3_prefix (ListObjectsV2): it accepts the credentials, and the bucket policy or "
            "their permissions allow s3:ListBucket only on a condition (such as on s3:prefix) "
            "that HeadBucket, which asks for the whole bucket, does not meet: allow it without "
            f"one. Berth needs {PERMISSIONS_NEEDED}",
            REFUSED_LISTING,
        )
    code = str(listing.response.get("Error", {}).get("Code", ""))
    if code == "AccessDenied":
        return ObjectStoreError(
            f"the {shown} accepts the credentials, but the bucket policy or their permissions "
            "refuse them s3:ListBucket on the bucket (its check, HeadBucket: 403; "
            f"ListObjectsV2: AccessDenied). Berth needs {PERMISSIONS_NEEDED}",
            REFUSED_LISTING,
        )
    return _credentials_refused(shown, code if code in _CREDENTIALS_REFUSED_CODES else "403")


def _unreached(exc: BotoCoreError) -> bool:
    """Whether `exc` says the store was not reached (refused, unresolved, timed out, the
    connection dropped), not that TLS or the request itself failed."""
    if isinstance(exc, SSLError):  # a certificate not trusted stays so
        return False
    return isinstance(exc, StoreConnectionError | HTTPClientError)


def _partial_credentials(exc: PartialCredentialsError) -> str:
    """Which credential is missing, as the setting that gives it when given explicitly."""
    missing = str(exc.kwargs.get("cred_var", ""))
    if exc.kwargs.get("provider") == "explicit" and missing in _CREDENTIAL_SETTINGS:
        given = next(s for v, s in _CREDENTIAL_SETTINGS.items() if v != missing)
        return (
            f"{given} is set but {_CREDENTIAL_SETTINGS[missing]} is not: set both "
            "(or neither, and the AWS chain gives them)"
        )
    return f"the credentials from {exc.kwargs.get('provider')} lack {missing}: give both parts"

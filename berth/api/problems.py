"""Errors of the management API as RFC 9457 problem documents (`application/problem+json`).

Every 4xx (and the rare 5xx) answer has the same shape:

    {"type": "urn:berth:problem:quota-exceeded", "title": "Quota exceeded", "status": 403,
     "detail": "project 'acme' already has 100 of its maximum 100 repositories ...",
     "code": "QUOTA_EXCEEDED", "errors": [{"field": "name", "message": "..."}],
     "request_id": "387ea0ad58424270b3c9fefd98f34e7a"}

`request_id` is added to every problem as it is sent (`observability/requests.py`). `errors` names the request fields at fault (body fields by name, `query.page`, `path.project`
for the others); it is empty when no one field is. A conflict with a value the request gives
(a webhook URL the project has already) names that field too, and stays a 409. Services raise
`RegistryError`s; this module turns them into problems, with the service's message as the
`detail`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from berth.domain.descriptions import NOT_TEXT
from berth.domain.digests import DIGEST_RULE
from berth.domain.errors import Conflict, InvalidValue, RegistryError
from berth.domain.names import COMPONENT_RULE, PROJECT_NAME_RULE
from berth.domain.patterns import MAX_TAG_PATTERN, TAG_RULE
from berth.observability.requests import with_request_id

PROBLEM_TYPE = "application/problem+json"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    507: "Insufficient storage",
}


class FieldProblem(BaseModel):
    field: str = Field(description="the request field at fault, e.g. `description`, `query.page`")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str = Field(description="what went wrong, for a person")
    code: str = Field(description="a stable machine-readable code, e.g. CONFLICT")
    errors: list[FieldProblem] = Field(default_factory=list)
    request_id: str | None = Field(
        None,
        description="the request's ID, also in the X-Request-ID header: quote it when reporting "
        "a problem (added to every problem as it is sent)",
    )


class FieldError(RegistryError):
    """A request field the API refuses after parsing (e.g. a date in the past): 422 naming it."""

    code = "VALIDATION_FAILED"
    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", [{"field": field, "message": message}])


def problem(
    status: int,
    detail: str,
    code: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = with_request_id(problem_body(status, detail, code, errors))
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_TYPE)


def problem_body(
    status: int, detail: str, code: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The problem document itself (also sent by `berth/limits.py`, in front of the API)."""
    return {
        "type": f"urn:berth:problem:{code.lower().replace('_', '-')}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "errors": errors or [],
    }


def _field_name(location: tuple[Any, ...]) -> str:
    """`("body", "description")` -> `description`; `("query", "page")` -> `query.page`."""
    if not location:
        return "body"
    where, *rest = location
    path = ".".join(str(part) for part in rest)
    if where == "body":
        return path or "body"
    return f"{where}.{path}" if path else str(where)


def _form_problem(field: str) -> str:
    last = field.rsplit(".", 1)[-1]
    if last == "project":
        return f"not a project name: {PROJECT_NAME_RULE}"
    if last == "digest":
        return f"not a digest: {DIGEST_RULE}"
    if last in ("repository", "name", "user"):
        return f"use {COMPONENT_RULE}"
    if last == "tag":
        return f"not a tag: {TAG_RULE}, {MAX_TAG_PATTERN} characters at most"
    return "this value does not have the form this field takes (see the API documentation)"


async def _validation_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid value"))
        field = _field_name(tuple(error.get("loc", ())))
        if error.get("type") == "string_pattern_mismatch":
            message = _form_problem(field)  # a person reads this: never the regular expression
        if error.get("type") == "string_unicode":
            message = NOT_TEXT  # pydantic's own words for it name no cause
        if error.get("type") == "json_invalid":
            field, message = "body", "the body is not valid JSON"
        errors.append({"field": field, "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, detail, "VALIDATION_FAILED", errors)


async def _registry_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    errors: list[dict[str, str]] = []
    if isinstance(exc, (FieldError, InvalidValue)) and exc.detail:
        errors = exc.detail
    elif isinstance(exc, Conflict) and exc.field:
        errors = [{"field": exc.field, "message": exc.message}]
    status = exc.status if 400 <= exc.status < 600 else 500
    status = getattr(exc, "api_status", status)  # where the API's answer differs from /v2's
    if exc.code == "NAME_INVALID" and status == 400:
        status = 422  # a name the service refuses: a request field, as validation errors are
    return problem(status, exc.message, exc.code, errors, exc.headers or None)


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's answer to a body that is not UTF-8: as undecodable as invalid JSON.
        where = exc.__cause__.start
        message = f"the body is not valid JSON: it is not UTF-8 (byte {where} of the body)"
        return problem(
            422, f"body: {message}", "VALIDATION_FAILED", [{"field": "body", "message": message}]
        )
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
    if exc.status_code == 404:
        detail = f"no API endpoint at {request.url.path}"
    return problem(
        exc.status_code,
        detail,
        codes.get(exc.status_code, "HTTP_ERROR"),
        headers=headers or None,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path. The router's 405 names only the
    methods of the first route whose path matched (`PUT /projects/p1`: GET, not DELETE).
    Each method is tried as a request of its own, since FastAPI's included routers match a
    path only together with a method."""
    allowed = [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]
    if "GET" in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")  # answered as GET (berth.api.app)
    return allowed


async def _server_problem(request: Request, exc: Exception) -> Response:
    return problem(500, "the server failed to handle this request", "INTERNAL_ERROR")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(RegistryError, _registry_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(Exception, _server_problem)


def responses(
    *statuses: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem answers, for a route or router: `described`
    says when an operation answers one of them, where its title is not enough."""
    described = described or {}
    return {
        status: {
            "model": Problem,
            "description": described.get(status, TITLES.get(status, "Error")),
        }
        for status in (*statuses, *described)
    }


# Answers many operations share, described once (`components.responses`) and referenced.
SHARED_ANSWERS = {
    "LoginThrottled": (
        429,
        "too many failed sign-ins from this address: Basic credentials (and passwords) are "
        "refused for a while; `Retry-After` says how long",
    ),
    "BodyTooLarge": (413, "the body is over the server's limit for this path"),
    "NotJson": (415, "the body is not JSON (`Content-Type`)"),
    "Unavailable": (
        503,
        "the database is busy or unreachable (or the server is in maintenance); try again "
        "after `Retry-After` seconds",
    ),
}


def _shared(name: str) -> tuple[str, dict[str, str]]:
    return str(SHARED_ANSWERS[name][0]), {"$ref": f"#/components/responses/{name}"}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what is sent: every 4xx/5xx answer is a `Problem` as
    `application/problem+json` (FastAPI would document `application/json`, and its own
    validation error shape for 422); and list the answers many operations share: 429 where
    Basic credentials are taken (the login throttle), 413 and 415 where a body is, 503
    everywhere (every operation reads the database)."""
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    problem_content = {PROBLEM_TYPE: {"schema": problem_ref}}
    components = schema.setdefault("components", {})
    components["responses"] = {
        name: {"description": description, "content": problem_content}
        for name, (_, description) in SHARED_ANSWERS.items()
    }
    default_security = schema.get("security", [])
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            for status, answer in answers.items():
                if str(status)[0] in "45":
                    answer["content"] = problem_content
            shared = ["Unavailable"]
            if any("accessKey" in way for way in operation.get("security", default_security)):
                shared.append("LoginThrottled")
            if "requestBody" in operation:
                shared += ["BodyTooLarge", "NotJson"]
            for name in shared:
                status, reference = _shared(name)
                answers.setdefault(status, reference)
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    if "Problem" not in schemas:
        own = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(own.pop("$defs", {}))
        schemas["Problem"] = own
    return schema

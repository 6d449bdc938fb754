"""The OpenAPI document states each name's rule as the API enforces it: a client that checks a
name against the document's pattern (and maxLength) accepts exactly the names Berth accepts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from berth.api.app import create_api
from berth.domain.names import (
    MAX_USER_NAME_LENGTH,
    is_valid_component,
    is_valid_name,
    is_valid_tag,
    project_name_problem,
)
from berth.services.repositories import MAX_REPOSITORY_NAME

# What the API accepts for each kind of name: the checks the services and handlers run.
ACCEPTS: dict[str, Callable[[str], bool]] = {
    "project": lambda name: project_name_problem(name) is None,
    "repository": lambda name: is_valid_component(name) and len(name) <= MAX_REPOSITORY_NAME,
    "user": lambda name: is_valid_component(name) and len(name) <= MAX_USER_NAME_LENGTH,
    "tag": is_valid_tag,
    "image": lambda name: name == "" or is_valid_name(name),  # "": the repository's own
}
# Request bodies' fields named otherwise than their kind.
BODY_NAMES = {("NewProject", "name"): "project", ("NewRepository", "name"): "repository"}
BODY_NAMES |= {("NewUser", "name"): "user"}

NAMES = [
    *("demo", "team-a", "a", "7", "a1-b2", "a--b", "x" * 63, "x" * 64, "x" * 65, "x" * 128),
    *("x" * 129, "x" * 200, "my.project", "my_project", "my__project", "a.b_c-d", "a..b"),
    *("a___b", "-a", "a-", ".a", "a.", "_a", "Demo", "DEMO", "v1.0", "V1.0_rc-2", "a/b"),
    *("a/b/c", "a//b", "/a", "a/", "", " ", "a b", "café", "a:b", "a@b", "a*b", "\uff41"),
]


def _schemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The string schemas of a field (both of `str | None`'s)."""
    yield from schema.get("anyOf", [schema])


def _fields() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind of name, where, string schema) of every request field that takes a name."""
    document = create_api().openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ACCEPTS:
                    for schema in _schemas(parameter["schema"]):
                        if schema.get("type") == "string":
                            where = f"{method.upper()} {path} {parameter['name']}"
                            yield parameter["name"], where, schema
    for model, schema in document["components"]["schemas"].items():
        for field, field_schema in schema.get("properties", {}).items():
            kind = BODY_NAMES.get((model, field), field)
            for string in _schemas(field_schema):
                if kind in ACCEPTS and "pattern" in string:
                    yield kind, f"{model}.{field}", string


FIELDS = list(_fields())


def _document_accepts(schema: dict[str, Any], name: str) -> bool:
    # A JSON Schema pattern matches anywhere (ECMA-262 search); Berth's are anchored.
    return re.search(schema["pattern"], name) is not None and len(name) <= schema.get(
        "maxLength", len(name)
    )


def test_every_kind_of_name_has_fields_with_patterns() -> None:
    assert {kind for kind, _, _ in FIELDS} == set(ACCEPTS)
    unstated = [where for _, where, schema in FIELDS if "pattern" not in schema]
    assert unstated == [], "name fields whose rule the document does not state"


@pytest.mark.parametrize(("kind", "where", "schema"), FIELDS, ids=[f[1] for f in FIELDS])
def test_a_fields_pattern_accepts_the_names_the_api_accepts(
    kind: str, where: str, schema: dict[str, Any]
) -> None:
    disagree = [name for name in NAMES if _document_accepts(schema, name) != ACCEPTS[kind](name)]
    assert disagree == [], f"{where}: the document and Berth disagree on these {kind} names"

"""Name, tag and reference grammar from the OCI Distribution Specification."""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.domain.errors import NameInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
COMPONENT_RE = re.compile(_COMPONENT)
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Hostnames are not part of a repository name; 255 is what docker allows for the whole reference.
MAX_NAME_LENGTH = 255


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def is_valid_component(component: str) -> bool:
    return COMPONENT_RE.fullmatch(component) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class ImageName:
    """Where an OCI name lives in Berth: project, repository and the image path inside it.

    `display` is the OCI name as the client wrote it (with the project in path style),
    so Location headers and tag lists echo back what the client asked for.
    """

    project: str
    repository: str
    image: str
    display: str


def split_name(name: str, host_project: str | None) -> ImageName:
    """Resolve an OCI name to (project, repository, image).

    With a project host (`{project}.{region}.{domain}`) the name is `repository[/image...]`;
    otherwise (path style) the first component is the project.
    """
    if not is_valid_name(name):
        raise NameInvalid(
            f"invalid repository name {name!r}: use lowercase letters, digits and "
            "separators (., _, __, -) between path components",
            {"name": name},
        )
    parts = name.split("/")
    if host_project is None:
        if len(parts) < 2:
            raise NameInvalid(
                f"repository name {name!r} needs the project first: {{project}}/{{repository}}[/image]",
                {"name": name},
            )
        project, parts = parts[0], parts[1:]
    else:
        project = host_project
    return ImageName(project, parts[0], "/".join(parts[1:]), name)

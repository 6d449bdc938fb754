"""Names: the OCI Distribution grammar of names, tags and references, the grammar of project
names (each becomes a DNS label of its registry host) and of the Host header."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from berth.domain.errors import NameInvalid, NameUnknown

# Each grammar once, anchored: the checks here match with it, and the OpenAPI document states
# it as its fields' `pattern` (a JSON Schema pattern matches anywhere in a value unless
# anchored), so the two cannot disagree.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
COMPONENT_PATTERN = rf"^{_COMPONENT}$"
REPOSITORY_NAME_PATTERN = COMPONENT_PATTERN  # a repository is one component of an OCI name
USER_NAME_PATTERN = COMPONENT_PATTERN
IMAGE_PATH_PATTERN = rf"^(?:{_COMPONENT}(?:/{_COMPONENT})*)?$"  # inside a repository; may be ""
TAG_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
COMPONENT_RE = re.compile(COMPONENT_PATTERN)
TAG_RE = re.compile(TAG_PATTERN)
# Hostnames are not part of a repository name; 255 is what docker allows for the whole reference.
MAX_NAME_LENGTH = 255
# An upload's id, as every Berth makes it (uuid4's hex): in its Location and in the store's
# keys of its scratch (`{s3_prefix}uploads/{id}/`).
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")


# A project is the first label of its host, `{project}.{region}.{domain}`: RFC 1123 label rules,
# in lowercase (host names are case-insensitive; registry names are not).
PROJECT_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
PROJECT_RE = re.compile(PROJECT_NAME_PATTERN)
MAX_PROJECT_LENGTH = 63
MAX_USER_NAME_LENGTH = 64
# A component of an OCI name (a repository, each part of an image's name) and a user name.
COMPONENT_RULE = "lowercase letters and digits, with '.', '_', '__' or '-' between them"
IMAGE_NAME_RULE = f"{COMPONENT_RULE}, and '/' between its parts"
USER_NAME_RULE = f"{COMPONENT_RULE}, at most 64 characters"
PROJECT_NAME_RULE = (
    "lowercase letters, digits and '-' (not first or last), at most 63 characters: "
    "it becomes the first label of the project's host name"
)

# What a Host header may be: a DNS name, an IPv4 address or a bracketed IPv6 address, with an
# optional port. Anything else (quotes, spaces, commas, paths) is refused before it is used.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_RE = re.compile(rf"(?:(?:{_LABEL}\.)*{_LABEL}\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
MAX_HOST_LENGTH = 260  # 253 for the name, a port


def project_name_problem(name: str) -> str | None:
    """Why `name` cannot name a project, for a person; None when it can."""
    if PROJECT_RE.fullmatch(name) is not None:
        return None
    shown = name if len(name) <= 80 else name[:77] + "..."
    if len(name) > MAX_PROJECT_LENGTH:
        why = f"it has {len(name)} characters"
    elif not name:
        why = "it is empty"
    elif name != name.lower() and PROJECT_RE.fullmatch(name.lower()):
        why = "it has uppercase letters"
    elif name[0] == "-" or name[-1] == "-":
        why = "it starts or ends with '-'"
    else:
        bad = sorted(
            {c for c in name if not (c.isascii() and (c.islower() or c.isdigit()))} - {"-"}
        )
        why = "it contains " + ", ".join(repr(c) for c in bad)
    return f"invalid project name {shown!r} ({why}): use {PROJECT_NAME_RULE}"


def normalized_host(host: str) -> str | None:
    """The Host header in lowercase (without a final dot), or None when it is not a host name
    or address with an optional port."""
    if len(host) > MAX_HOST_LENGTH:  # before the cache: it would keep huge values alive
        return None
    return _normalized_host(host)


@functools.lru_cache(maxsize=1024)  # checked on every request; a server sees few hosts
def _normalized_host(host: str) -> str | None:
    if HOST_RE.fullmatch(host) is None:
        return None
    name = hostname_of(host)
    if name.endswith("."):  # the absolute form of the same name
        host = name[:-1] + host[len(name) :]
    return host.lower()


def hostname_of(host: str) -> str:
    """`name:port` -> `name`; `[::1]:port` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class RegistryAddress:
    """How a client names a project's registry: `login` is what `docker login` takes, `prefix`
    what an image name starts with (`{prefix}/{repository}/{image}:{tag}`)."""

    login: str
    prefix: str
    host_style: bool


def registry_address(project: str, host: str, project_host_suffix: str) -> RegistryAddress:
    """The address of `project`'s registry for a client that reached this server at `host`.

    A client that reached a host under `{region}.{domain}` (or that name itself) resolves the
    project hosts too, so it gets the project's own host `{project}.{region}.{domain}`, with
    the port it used; any other host (localhost, an IP address, another name) is path style on
    that same host, the project being the first path component. Both are what the registry
    routes (`host_project`).
    """
    hostname = hostname_of(host).lower()
    port = host[len(hostname) :]
    suffix = project_host_suffix.lower()
    if hostname == suffix.lstrip(".") or hostname.endswith(suffix):
        own = f"{project}{suffix}{port}"
        return RegistryAddress(own, own, host_style=True)
    return RegistryAddress(host, f"{host}/{project}", host_style=False)


def is_loopback_name(hostname: str) -> bool:
    """`localhost` and the names under it, loopback by RFC 6761: browsers (and curl) resolve
    every one of them themselves; docker, skopeo and containerd ask the system's resolver,
    which may know none but `localhost`."""
    name = hostname.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


@functools.lru_cache(maxsize=1024)  # on every request; a server sees few hosts
def host_project(host: str | None, project_host_suffix: str) -> str | None:
    """The project a `{project}.{region}.{domain}[:port]` Host names; None for path style.

    Host names are case-insensitive: `DEMO.{region}.{domain}` is project `demo`. The inverse
    of `registry_address`.
    """
    if not host:
        return None
    hostname = hostname_of(host).lower()
    suffix = project_host_suffix.lower()
    if hostname.endswith(suffix):
        project = hostname[: -len(suffix)]
        if project and "." not in project:
            return project
    return None


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
    host_style: bool = False  # the project came from the host, not from the name


@functools.lru_cache(
    maxsize=4096
)  # on every request (the result is immutable; errors are not kept)
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
            # NAME_UNKNOWN, not NAME_INVALID: docker retries NAME_INVALID for about 50 s before
            # it shows the message, and stops at once on NAME_UNKNOWN.
            raise NameUnknown(
                f"repository name {name!r} needs the project first: "
                f"{{project}}/{{repository}}[/image], e.g. PROJECT/{name}",
                {"name": name},
            )
        return ImageName(parts[0], parts[1], "/".join(parts[2:]), name)
    return ImageName(host_project, parts[0], "/".join(parts[1:]), name, host_style=True)


def name_unknown(name: ImageName, *, project_exists: bool, pushing: bool) -> NameUnknown:
    """NAME_UNKNOWN for a name whose project or repository does not exist: a push is told how
    the repository is created (a push creates none), a pull or delete to check the name."""
    if not project_exists:
        return NameUnknown(f"project {name.project!r} does not exist", {"project": name.project})
    detail = {"project": name.project, "repository": name.repository}
    if name.host_style and name.repository == name.project:
        rest = name.display.split("/", 1)[1] if "/" in name.display else "REPOSITORY/IMAGE"
        return NameUnknown(
            f"repository {name.repository!r} does not exist in project {name.project!r}; this "
            f"host already names project {name.project!r}, so leave it out of the image name: "
            f"HOST/{rest}, not HOST/{name.project}/{rest}",
            detail,
        )
    if not pushing:
        return NameUnknown(
            f"repository {name.repository!r} does not exist in project {name.project!r}: "
            "check the image name",
            detail,
        )
    # Said to registry clients, who may hold only an access key: no server commands.
    return NameUnknown(
        f"repository {name.repository!r} does not exist in project {name.project!r}; a project "
        "member creates it first, in the web console (Repositories, Create repository) or with "
        f"POST /api/v1/projects/{name.project}/repositories",
        detail,
    )


def joined_name(*parts: str | None) -> str:
    """An OCI name from its parts (project, repository, image path), the empty ones left out:
    an image path of "" is the repository's own name."""
    return "/".join(part for part in parts if part)

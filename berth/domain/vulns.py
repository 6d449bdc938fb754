"""Known vulnerabilities in OSV form: reading a record, and deciding whether an installed
package version is affected (and which release fixes it).

Pure: no database, no files. `parse_advisory` checks what matching relies on and names the
field that is wrong; `affected_by` follows the OSV schema's evaluation (events sorted by
version; `introduced`, `fixed`, `last_affected`, `limit`; explicit `versions`), comparing
versions with `univers`, which knows each ecosystem's ordering.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# Only these range types order versions; GIT ranges name commits, which an image's package
# metadata never holds.
ORDERED_RANGES = ("ECOSYSTEM", "SEMVER")
EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")

# The OSV ecosystem (before any ":release" suffix) and the univers class of the version
# ordering it uses (by name: univers and cvss are imported at first use, so a server process
# that never scans or imports advisories does not hold them).
VERSION_SCHEMES: dict[str, str] = {
    "Debian": "DebianVersion",
    "Ubuntu": "DebianVersion",
    "Alpine": "AlpineLinuxVersion",
    "PyPI": "PypiVersion",
    "npm": "SemverVersion",
    "Go": "GolangVersion",
    "Red Hat": "RpmVersion",
    "Rocky Linux": "RpmVersion",
    "AlmaLinux": "RpmVersion",
    "openSUSE": "RpmVersion",
    "SUSE": "RpmVersion",
    "Mageia": "RpmVersion",
}


@functools.cache
def version_scheme(ecosystem: str) -> Any | None:
    """The univers version class ordering `ecosystem`'s versions; None when none is known."""
    name = VERSION_SCHEMES.get(ecosystem)
    if name is None:
        return None
    from univers import versions as uv  # at first use: see VERSION_SCHEMES

    return getattr(uv, name)


class Severity(IntEnum):
    """Ordered so that a policy can say "at or above"."""

    UNKNOWN = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


# Words databases put in their own severity fields (GitHub's "MODERATE", Ubuntu's "negligible").
SEVERITY_WORDS = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "important": Severity.HIGH,
    "moderate": Severity.MEDIUM,
    "medium": Severity.MEDIUM,
    "low": Severity.LOW,
    "negligible": Severity.LOW,
}


class MalformedRecord(ValueError):
    """An OSV record that cannot be used; `field` is the JSON path of what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Event:
    kind: str  # one of EVENT_KINDS
    version: str


@dataclass(frozen=True)
class Range:
    type: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Affected:
    ecosystem: str  # as the record says it, e.g. "Debian:12", "Alpine:v3.18", "PyPI"
    name: str
    ranges: tuple[Range, ...] = ()
    versions: tuple[str, ...] = ()
    severity: Severity | None = None  # this package's own, where the record gives one

    @property
    def key(self) -> tuple[str, str]:
        """What an installed package is looked up by."""
        return match_ecosystem(self.ecosystem), package_key(self.ecosystem, self.name)


@dataclass(frozen=True)
class Advisory:
    id: str
    modified: dt.datetime
    aliases: tuple[str, ...] = ()
    summary: str = ""
    published: dt.datetime | None = None
    withdrawn: dt.datetime | None = None
    severity: Severity = Severity.UNKNOWN
    link: str | None = None
    affected: tuple[Affected, ...] = ()

    @property
    def source(self) -> str:
        """The database that published it, by OSV's convention its ID's prefix (GHSA, PYSEC,
        GO, DSA, ALPINE, ...)."""
        return self.id.split("-", 1)[0].upper()


@dataclass(frozen=True)
class Finding:
    advisory_id: str
    aliases: tuple[str, ...]
    package: str
    installed: str
    fixed: str | None  # the first release that fixes it, when the record names one
    severity: Severity
    summary: str
    link: str | None


@dataclass(frozen=True)
class InstalledPackage:
    """What matching needs of a package in an image: the OSV ecosystem it belongs to (with
    the distribution release for OS packages), the name the records use (the source package
    for Debian and Alpine), and the installed version. `source_version` is the version of
    the source package it was built from when dpkg records one apart (`Source: lvm2
    (2.03.16-2)` for dmsetup 2:1.02.185-2, `Source: bc (1.07.1-3)` for a rebuild 1.07.1-3+b1):
    Debian's and Ubuntu's records name source packages at source versions, so it is what
    their ranges are compared with."""

    ecosystem: str
    name: str
    version: str
    sources: tuple[str, ...] = field(default=())  # other names records may use
    source_version: str | None = None

    @property
    def matched_version(self) -> str:
        """The version a record's ranges are compared with."""
        return self.source_version or self.version


def base_ecosystem(ecosystem: str) -> str:
    return ecosystem.split(":", 1)[0]


def match_ecosystem(ecosystem: str) -> str:
    """A record's ecosystem as an image's packages are labelled: Ubuntu's records say
    "Ubuntu:22.04:LTS" for what os-release calls 22.04 (its Pro streams, "Ubuntu:Pro:...",
    cover other packages and stay apart)."""
    parts = ecosystem.split(":")
    if len(parts) == 3 and parts[0] == "Ubuntu" and parts[2] == "LTS":
        return f"Ubuntu:{parts[1]}"
    return ecosystem


def package_key(ecosystem: str, name: str) -> str:
    """A name as records and images may spell it differently: PyPI names compare normalized
    (PEP 503); the others exactly."""
    if base_ecosystem(ecosystem) == "PyPI":
        return re.sub(r"[-_.]+", "-", name).lower()
    return name


# --- reading a record -----------------------------------------------------------------------


def _string(value: Any, path: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedRecord(path, "must be a non-empty string")
    return value


def _time(value: Any, path: str, *, required: bool = True) -> dt.datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise MalformedRecord(path, "must be an RFC 3339 time")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python before 3.11's parser takes 0, 3 or 6 fraction digits; records have 2 to 9.
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise MalformedRecord(path, f"{value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedRecord(path, "must be a list")
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRecord(path, "must be an object")
    return value


def _range(value: Any, path: str) -> Range:
    data = _object(value, path)
    kind = _string(data.get("type"), f"{path}.type")
    events: list[Event] = []
    for e, event in enumerate(_list(data.get("events"), f"{path}.events")):
        event_path = f"{path}.events[{e}]"
        event = _object(event, event_path)
        kinds = [k for k in EVENT_KINDS if k in event]
        if len(kinds) != 1:
            raise MalformedRecord(
                event_path, "must hold exactly one of introduced, fixed, last_affected, limit"
            )
        events.append(Event(kinds[0], _string(event[kinds[0]], f"{event_path}.{kinds[0]}")))
    if not events:
        raise MalformedRecord(f"{path}.events", "must list at least one event")
    return Range(kind, tuple(events))


def _affected(value: Any, path: str) -> Affected | None:
    """None for an entry without a package (OSV allows one that names only commits)."""
    data = _object(value, path)
    if data.get("package") is None:
        return None
    package = _object(data.get("package"), f"{path}.package")
    ecosystem = _string(package.get("ecosystem"), f"{path}.package.ecosystem")
    name = _string(package.get("name"), f"{path}.package.name")
    ranges = tuple(
        _range(r, f"{path}.ranges[{i}]") for i, r in enumerate(_list(data.get("ranges"), path))
    )
    versions = tuple(
        _string(v, f"{path}.versions[{i}]")
        for i, v in enumerate(_list(data.get("versions"), f"{path}.versions"))
    )
    own = data.get("ecosystem_specific")
    severity = None
    if isinstance(own, dict) and isinstance(own.get("severity"), str):
        severity = SEVERITY_WORDS.get(own["severity"].lower())
    return Affected(ecosystem, name, ranges, versions, severity)


def _link(data: dict[str, Any]) -> str | None:
    references = [r for r in _list(data.get("references"), "references") if isinstance(r, dict)]
    for wanted in ("ADVISORY", "WEB", None):
        for reference in references:
            if (wanted is None or reference.get("type") == wanted) and isinstance(
                reference.get("url"), str
            ):
                return str(reference["url"])
    return None


def parse_advisory(value: Any) -> Advisory:
    """One OSV record, checked: MalformedRecord names the field that is missing or wrong."""
    data = _object(value, "(record)")
    advisory_id = _string(data.get("id"), "id")
    modified = _time(data.get("modified"), "modified")
    assert modified is not None
    aliases = tuple(
        _string(a, f"aliases[{i}]") for i, a in enumerate(_list(data.get("aliases"), "aliases"))
    )
    entries = [
        _affected(a, f"affected[{i}]")
        for i, a in enumerate(_list(data.get("affected"), "affected"))
    ]
    affected = tuple(a for a in entries if a is not None)
    summary = _string(data.get("summary"), "summary", required=False)
    if not summary:
        details = _string(data.get("details"), "details", required=False)
        summary = details.strip().split("\n", 1)[0][:300]
    return Advisory(
        id=advisory_id,
        modified=modified,
        aliases=aliases,
        summary=summary,
        published=_time(data.get("published"), "published", required=False),
        withdrawn=_time(data.get("withdrawn"), "withdrawn", required=False),
        severity=record_severity(data),
        link=_link(data),
        affected=affected,
    )


# --- severity -------------------------------------------------------------------------------


def _score_severity(score: float) -> Severity:
    if score >= 9.0:
        return Severity.CRITICAL
    if score >= 7.0:
        return Severity.HIGH
    if score >= 4.0:
        return Severity.MEDIUM
    if score > 0.0:
        return Severity.LOW
    return Severity.UNKNOWN


def vector_severity(kind: str, vector: str) -> Severity:
    """The qualitative rating of a CVSS vector's base score; UNKNOWN when it is not one."""
    from cvss import CVSS2, CVSS3, CVSS4  # at first use: see VERSION_SCHEMES
    from cvss.exceptions import CVSSError

    try:
        if kind == "CVSS_V4":
            return _score_severity(float(CVSS4(vector).base_score))
        if kind == "CVSS_V3":
            return _score_severity(float(CVSS3(vector).scores()[0]))
        if kind == "CVSS_V2":
            return _score_severity(float(CVSS2(vector).scores()[0]))
    except (CVSSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return Severity.UNKNOWN


def record_severity(data: dict[str, Any]) -> Severity:
    """From the record's CVSS vectors (the newest CVSS version given), else the priority
    Ubuntu's records give as a `severity` of type `Ubuntu` (a word: negligible, low, medium,
    high, critical; many of them carry no vector), else the severity word its database put
    in `database_specific`."""
    vectors: dict[str, str] = {
        str(s.get("type")): s["score"]
        for s in _list(data.get("severity"), "severity")
        if isinstance(s, dict) and isinstance(s.get("score"), str)
    }
    for kind in ("CVSS_V4", "CVSS_V3", "CVSS_V2"):
        if kind in vectors:
            rated = vector_severity(kind, vectors[kind])
            if rated is not Severity.UNKNOWN:
                return rated
    worded = SEVERITY_WORDS.get(vectors.get("Ubuntu", "").strip().lower())
    if worded is not None:
        return worded
    own = data.get("database_specific")
    if isinstance(own, dict) and isinstance(own.get("severity"), str):
        return SEVERITY_WORDS.get(own["severity"].lower(), Severity.UNKNOWN)
    return Severity.UNKNOWN


# --- matching -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _parse_version(scheme: Any, text: str) -> Any | None:
    """`text` in `scheme`'s ordering (cached: the same versions recur across records and
    packages, and parsing is most of matching's time), or None when it cannot be read."""
    from univers import versions as uv  # at first use: see VERSION_SCHEMES

    try:
        return scheme(text)
    except (uv.InvalidVersion, ValueError, TypeError, AttributeError):
        return None


def _sorted_events(scheme: Any, events: Iterable[Event]) -> list[tuple[Any, Event]]:
    """Events with their parsed versions, in version order; `introduced: "0"` (OSV's "from
    the beginning") first. Events whose version the scheme cannot read are left out."""
    parsed: list[tuple[Any, Event]] = []
    for event in events:
        if event.kind == "introduced" and event.version == "0":
            parsed.append((None, event))
            continue
        version = _parse_version(scheme, event.version)
        if version is not None:
            parsed.append((version, event))
    ordered_zero = [p for p in parsed if p[0] is None]
    rest = sorted((p for p in parsed if p[0] is not None), key=lambda p: p[0])
    return ordered_zero + rest


def _in_range(scheme: Any, version: Any, events: Sequence[Event]) -> tuple[bool, str | None]:
    """(affected, the fixing release) of one range, per the OSV schema's evaluation."""
    ordered = _sorted_events(scheme, events)
    limits = [v for v, e in ordered if e.kind == "limit"]
    if limits and not any(version < limit for limit in limits):
        return False, None
    affected = False
    for event_version, event in ordered:
        if event.kind == "introduced" and (event_version is None or version >= event_version):
            affected = True
        elif (event.kind == "fixed" and version >= event_version) or (
            event.kind == "last_affected" and version > event_version
        ):
            affected = False
    if not affected:
        return False, None
    fixed = next(
        (e.version for v, e in ordered if e.kind == "fixed" and v is not None and v > version),
        None,
    )
    return True, fixed


def affected_by(affected: Affected, installed: str) -> tuple[bool, str | None]:
    """Whether `installed` (a version of `affected`'s package) is affected, and the first
    release that fixes it (None when no range names one). A version listed in `versions` is
    affected; ranges are compared in the ecosystem's ordering. An ecosystem without a known
    ordering, or a version it cannot read, is matched only by the `versions` list."""
    listed = installed in affected.versions
    scheme = version_scheme(base_ecosystem(affected.ecosystem))
    version = _parse_version(scheme, installed) if scheme is not None else None
    if scheme is None or version is None:
        return listed, None
    hit = False
    fixed: str | None = None
    for range_ in affected.ranges:
        if range_.type not in ORDERED_RANGES:
            continue
        in_range, fixing = _in_range(scheme, version, range_.events)
        if in_range:
            hit = True
            fixed = fixed or fixing
    # "2.3" and "2.3.0" are one PyPI release: a listed version is compared in the
    # ecosystem's terms when its text differs.
    hit = hit or listed or any(_parse_version(scheme, v) == version for v in affected.versions)
    return hit, fixed


class AdvisoryIndex:
    """Advisories by the (ecosystem, package name) keys they name, so that each installed
    package is compared with its own advisories only."""

    def __init__(self, advisories: Iterable[Advisory]) -> None:
        self.by_key: dict[tuple[str, str], list[tuple[Advisory, Affected]]] = {}
        for advisory in advisories:
            if advisory.withdrawn is not None:
                continue
            for affected in advisory.affected:
                self.by_key.setdefault(affected.key, []).append((advisory, affected))

    def candidates(self, package: InstalledPackage) -> list[tuple[Advisory, Affected]]:
        names = {package_key(package.ecosystem, n) for n in (package.name, *package.sources)}
        return [c for name in sorted(names) for c in self.by_key.get((package.ecosystem, name), [])]


def findings_for(
    package: InstalledPackage, advisories: Iterable[Advisory] | AdvisoryIndex
) -> list[Finding]:
    """The findings of one installed package among `advisories` (withdrawn ones never count),
    one per advisory, ordered by ID. Pass an `AdvisoryIndex` to match many packages."""
    index = advisories if isinstance(advisories, AdvisoryIndex) else AdvisoryIndex(advisories)
    found: dict[str, Finding] = {}
    for advisory, affected in index.candidates(package):
        if advisory.id in found:
            continue
        hit, fixed = affected_by(affected, package.matched_version)
        if hit:
            found[advisory.id] = Finding(
                advisory_id=advisory.id,
                aliases=advisory.aliases,
                package=package.name,
                installed=package.version,
                fixed=fixed,
                severity=affected.severity or advisory.severity,
                summary=advisory.summary,
                link=advisory.link,
            )
    return [found[k] for k in sorted(found)]

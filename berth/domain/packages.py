"""Reading the package databases an image carries, as packages named by purl.

Pure: each function takes the bytes of one file an image holds (the layer reader in
`services/scanning` finds them and bounds their size) and says which packages it lists.
Debian/Ubuntu `var/lib/dpkg/status` (and distroless `status.d/` files), Alpine
`lib/apk/db/installed`, Python `*.dist-info/METADATA` and `*.egg-info/PKG-INFO`, npm
`node_modules/**/package.json`, the build information Go writes into its executables
(toolchain and module versions), and `etc/os-release`, which says the distribution release
whose advisories apply to the OS packages.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser

from packageurl import PackageURL

from berth.domain.vulns import InstalledPackage, package_key


@dataclass(frozen=True)
class OsRelease:
    id: str  # "debian", "ubuntu", "alpine", ...
    version_id: str
    pretty_name: str

    @property
    def ecosystem(self) -> str | None:
        """The OSV ecosystem of this release's packages: Debian:12, Ubuntu:22.04,
        Alpine:v3.18; None for a distribution without OSV data Berth can match."""
        if self.id == "debian" and self.version_id:
            return f"Debian:{self.version_id.split('.', 1)[0]}"
        if self.id == "ubuntu" and self.version_id:
            return f"Ubuntu:{self.version_id}"
        if self.id == "alpine" and self.version_id:
            return "Alpine:v" + ".".join(self.version_id.split(".")[:2])
        return None

    @property
    def distro(self) -> str:
        """The purl `distro` qualifier, e.g. debian-12."""
        return f"{self.id}-{self.version_id}" if self.version_id else self.id


@dataclass(frozen=True)
class Package:
    purl: str
    type: str  # the purl type: deb, apk, pypi, npm, golang
    name: str
    version: str
    ecosystem: str | None  # the OSV ecosystem its advisories name; None: unknown release
    path: str  # the file in the image that lists it
    source: str | None = None  # the source package OS advisories name (deb, apk)
    source_version: str | None = None  # its version, where dpkg records one apart (deb)

    def installed(self) -> InstalledPackage | None:
        """What vulnerability matching looks up, or None when the ecosystem is unknown."""
        if self.ecosystem is None:
            return None
        sources = (self.source,) if self.source and self.source != self.name else ()
        return InstalledPackage(
            self.ecosystem, self.name, self.version, sources, self.source_version
        )


def parse_os_release(content: bytes) -> OsRelease:
    values: dict[str, str] = {}
    for line in content.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return OsRelease(
        id=values.get("ID", "").lower(),
        version_id=values.get("VERSION_ID", ""),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def _lines(content: bytes) -> Iterator[str]:
    """The lines of a text file one at a time (a package database may hold millions)."""
    for line in io.StringIO(content.decode("utf-8", "replace")):
        yield line.rstrip("\r\n")


def _stanzas(content: bytes) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas separated by blank lines (dpkg's status), one at a time;
    continuation lines are dropped (no field matching needs reads them)."""
    current: dict[str, str] = {}
    for line in _lines(content):
        if not line.strip():
            if current:
                yield current
            current = {}
        elif not line[0].isspace():
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    if current:
        yield current


def parse_dpkg_status(content: bytes, path: str, os: OsRelease | None) -> Iterator[Package]:
    """Installed packages of a dpkg status file (or one `status.d/` file, which distroless
    images keep per package and which may lack a Status field), one at a time: the caller
    stops when it has enough."""
    namespace = os.id if os is not None and os.id in ("debian", "ubuntu") else "debian"
    ecosystem = os.ecosystem if os is not None and os.id in ("debian", "ubuntu") else None
    for stanza in _stanzas(content):
        name, version = stanza.get("Package"), stanza.get("Version")
        status = stanza.get("Status", "install ok installed").split()
        if not name or not version or "installed" not in status[-1:]:
            continue
        # "Source: zlib" or "Source: lvm2 (2.03.16-2)" when the source's version differs
        # (dmsetup 2:1.02.185-2, a rebuild's 1.07.1-3+b1): records compare the latter.
        source_field = stanza.get("Source", "")
        match = re.match(r"^(\S+)(?:\s+\((\S+)\))?", source_field)
        source = match.group(1) if match else name
        source_version = match.group(2) if match else None
        qualifiers = {"arch": stanza["Architecture"]} if stanza.get("Architecture") else {}
        if os is not None:
            qualifiers["distro"] = os.distro
        purl = PackageURL("deb", namespace, name, version, qualifiers or None).to_string()
        yield Package(purl, "deb", name, version, ecosystem, path, source, source_version)


def parse_apk_installed(content: bytes, path: str, os: OsRelease | None) -> Iterator[Package]:
    """Installed packages of Alpine's `lib/apk/db/installed` (one-letter fields: P name,
    V version, A architecture, o origin, the source package advisories name; blocks apart
    by blank lines), one at a time: the caller stops when it has enough."""
    ecosystem = os.ecosystem if os is not None and os.id == "alpine" else None
    fields: dict[str, str] = {}
    for line in itertools.chain(_lines(content), [""]):  # a blank line ends the last block
        if line.strip():
            if len(line) > 2 and line[1] == ":" and line[0] not in fields:
                fields[line[0]] = line[2:].strip()
            continue
        name, version = fields.get("P"), fields.get("V")
        if name and version:
            qualifiers = {"arch": fields["A"]} if fields.get("A") else {}
            if os is not None:
                qualifiers["distro"] = os.distro
            purl = PackageURL("apk", "alpine", name, version, qualifiers or None).to_string()
            yield Package(purl, "apk", name, version, ecosystem, path, fields.get("o"))
        fields = {}


def parse_python_metadata(content: bytes, path: str) -> Package | None:
    """A Python distribution's METADATA or PKG-INFO (email headers: Name, Version)."""
    headers = HeaderParser().parsestr(content.decode("utf-8", "replace"), headersonly=True)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return None
    name, version = str(name).strip(), str(version).strip()
    purl = PackageURL("pypi", None, package_key("PyPI", name), version).to_string()
    return Package(purl, "pypi", name, version, "PyPI", path)


def parse_package_json(content: bytes, path: str) -> Package | None:
    """An npm package's package.json under node_modules (name and version)."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested thousands deep: not one
        return None
    if not isinstance(data, dict):
        return None
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return None
    namespace, _, short = name.rpartition("/")
    purl = PackageURL("npm", namespace or None, short, version).to_string()
    return Package(purl, "npm", name, version, "npm", path)


# --- Go executables -------------------------------------------------------------------------

# Go's linker writes a `.go.buildinfo` record into each executable's writable data: this
# magic, a pointer size and flags byte (32 bytes in all), then, since Go 1.18, the toolchain
# version and the module list as length-prefixed (uvarint) strings.
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
GO_BUILDINFO_HEADER = 32
_GO_FLAG_INLINE_STRINGS = 0x2
# The module text is wrapped in two 16-byte sentinels; its last line ends before the second.
_GO_SENTINEL = 16
# OSV's Go ecosystem names the toolchain's standard library "stdlib".
GO_STDLIB = "stdlib"
# A Go release as its toolchain names itself (go1.21.5; go1.20 for a .0 before Go 1.21;
# go1.21rc2, go1.22beta1 for pre-releases). The Go vulnerability database writes each as the
# semantic version Go's module proxy gives it (1.21.5, 1.20.0, 1.21.0-rc.2, 1.22.0-beta.1):
# only in that form does a pre-release sort before its release and rc.10 after rc.9.
_GO_RELEASE_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?(?:(beta|rc)(\d+))?")


@dataclass(frozen=True)
class GoBuildInfo:
    go_version: str  # as the toolchain wrote it: "go1.21.5", "go1.22.1 X:boringcrypto"
    modules: str  # the module text: path, mod, dep, => and build lines
    length: int  # bytes of the record, from its magic


def _uvarint(data: bytes, offset: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    for position in range(offset, min(len(data), offset + 10)):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position + 1
        shift += 7
    return None


def parse_go_buildinfo(blob: bytes) -> GoBuildInfo | None:
    """The build information record at the start of `blob`; None when it is not one, is cut
    short, or is of the pointer form Go wrote before 1.18 (its strings lie elsewhere in the
    executable, which a streamed read cannot reach)."""
    if len(blob) < GO_BUILDINFO_HEADER or not blob.startswith(GO_BUILDINFO_MAGIC):
        return None
    if not blob[len(GO_BUILDINFO_MAGIC) + 1] & _GO_FLAG_INLINE_STRINGS:
        return None
    strings: list[bytes] = []
    offset = GO_BUILDINFO_HEADER
    for _ in range(2):
        read = _uvarint(blob, offset)
        if read is None or read[1] + read[0] > len(blob):
            return None
        size, offset = read
        strings.append(blob[offset : offset + size])
        offset += size
    version, modules = strings
    if len(modules) > 2 * _GO_SENTINEL and modules[-_GO_SENTINEL - 1 : -_GO_SENTINEL] == b"\n":
        modules = modules[_GO_SENTINEL:-_GO_SENTINEL]
    else:
        modules = b""  # built without module support (GOPATH mode): only the toolchain
    return GoBuildInfo(
        version.decode("utf-8", "replace"), modules.decode("utf-8", "replace"), offset
    )


def go_release_version(go_version: str) -> str | None:
    """The semantic version the Go vulnerability database gives the toolchain that wrote
    `go_version` in an executable ("go1.21rc2" -> "1.21.0-rc.2"; the experiments Go lists
    after a space, "go1.22.1 X:boringcrypto", do not change the release), or None when it
    names no release: a development build ("devel go1.22-abcdef ..."), a vendor's or an
    experiment suffix written into the version itself ("go1.21.0-X:boringcrypto")."""
    fields = go_version.split()
    match = _GO_RELEASE_RE.fullmatch(fields[0]) if fields else None
    if match is None:
        return None
    major, minor, patch, stage, number = match.groups()
    version = f"{int(major)}.{int(minor)}.{int(patch or 0)}"
    return f"{version}-{stage}.{int(number)}" if stage else version


def _golang_package(module: str, version: str, path: str, ecosystem: str | None = "Go") -> Package:
    namespace, _, name = module.rpartition("/")
    purl = PackageURL("golang", namespace or None, name, version).to_string()
    return Package(purl, "golang", module, version, ecosystem, path)


def parse_go_binary(blob: bytes, path: str) -> list[Package]:
    """The Go toolchain (as `stdlib`, the name Go's advisories give the standard library)
    and the modules a Go executable was built from. A module replaced by another version
    (`=>`) is listed as the replacement; one replaced by a local directory, and a main
    module built from a checkout ("(devel)"), have no version to match and are left out.
    A toolchain that names no Go release (`go_release_version`) is listed as it wrote its
    version, with no ecosystem: no advisory is matched against a version it cannot order."""
    info = parse_go_buildinfo(blob)
    if info is None:
        return []
    packages: list[Package] = []
    release = go_release_version(info.go_version)
    if release is not None:
        packages.append(_golang_package(GO_STDLIB, release, path))
    elif info.go_version.strip():
        packages.append(_golang_package(GO_STDLIB, info.go_version.strip(), path, None))
    modules: list[tuple[str, str]] = []
    for line in info.modules.splitlines():
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3:
            modules.append((fields[1], fields[2]))
        elif fields[0] == "=>" and len(fields) >= 3 and modules:
            modules[-1] = (fields[1], fields[2])
    for module, version in modules:
        if module and version.startswith("v"):
            packages.append(_golang_package(module, version, path))
    return packages

"""Go executables' toolchain and modules (`berth.domain.packages.parse_go_binary`): the toolchain
as the Go vulnerability database names its release, and modules where go.mod replaced one.

The records are built as the Go linker lays out `.go.buildinfo` (Go 1.18 and later: magic,
pointer size, flags with inline strings, then the toolchain version and the module text as
uvarint-length strings, the text between cmd/go's two 16-byte sentinels). The module text is
what runtime/debug's `BuildInfo.String` writes: a replaced module's `dep` line has no sum and
is followed by a `=>` line naming the replacement (path, version, sum); a replacement by a
local directory has an empty version and sum (Go's own test, mod_modinfo.txt, checks
`dep rsc.io/quote v1.5.2` then `=> rsc.io/quote v1.0.0 h1:...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.domain.packages import GO_BUILDINFO_MAGIC, Package, parse_go_binary
from berth.domain.vulns import Advisory, findings_for, parse_advisory, version_scheme

# cmd/go's modinfo sentinels (modload: infoStart, infoEnd), as found in real executables.
INFO_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
INFO_END = bytes.fromhex("f932433186182072008242104116d8f2")
PATH = "usr/local/bin/app"


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def go_executable_buildinfo(go_version: str, module_lines: list[str]) -> bytes:
    """A `.go.buildinfo` record of a 64-bit little-endian Go 1.18+ build."""
    header = GO_BUILDINFO_MAGIC + bytes([8, 0x2])
    header += bytes(32 - len(header))
    text = "".join(line + "\n" for line in module_lines).encode()
    modules = INFO_START + text + INFO_END
    version = go_version.encode()
    return header + _uvarint(len(version)) + version + _uvarint(len(modules)) + modules


def modules_listed(module_lines: list[str]) -> list[tuple[str, str]]:
    blob = go_executable_buildinfo("go1.22.1", module_lines)
    return [(p.name, p.version) for p in parse_go_binary(blob, PATH) if p.name != "stdlib"]


MAIN = [
    "path\tgithub.com/example/app/cmd/app",
    "mod\tgithub.com/example/app\t(devel)\t",
]
BUILD = ["build\t-compiler=gc", "build\tGOOS=linux"]


def test_a_module_replaced_by_another_version_is_listed_as_the_replacement() -> None:
    """`replace golang.org/x/net => golang.org/x/net v0.23.0`: the executable holds v0.23.0's
    code, so that is the version advisories are matched against, not v0.17.0."""
    listed = modules_listed(
        [
            *MAIN,
            "dep\tgithub.com/pkg/errors\tv0.9.1\th1:FEBLx1zS214owpjy7qsBeixbURkuhQAwrK5UwLGTwt4=",
            "dep\tgolang.org/x/net\tv0.17.0",
            "=>\tgolang.org/x/net\tv0.23.0\th1:7EYJ93RZ9vYSZAIb2x3lnuvqO5zneoD6IvWjuhfxjTs=",
            "dep\tgolang.org/x/text\tv0.14.0\th1:ScX5w1eTa3QqT8oi6+ziP7dTV1S2+ALU0bI+0zXKWiQ=",
            *BUILD,
        ]
    )
    assert listed == [
        ("github.com/pkg/errors", "v0.9.1"),
        ("golang.org/x/net", "v0.23.0"),
        ("golang.org/x/text", "v0.14.0"),
    ]


def test_a_module_replaced_by_a_fork_is_listed_under_the_forks_path() -> None:
    """`replace github.com/dgrijalva/jwt-go => github.com/golang-jwt/jwt v3.2.2+incompatible`
    (the maintained fork): the fork's module and version are what the executable holds, and
    its package URL is the fork's."""
    blob = go_executable_buildinfo(
        "go1.22.1",
        [
            *MAIN,
            "dep\tgithub.com/dgrijalva/jwt-go\tv3.2.0+incompatible",
            "=>\tgithub.com/golang-jwt/jwt\tv3.2.2+incompatible\th1:"
            "IfV12K8xAKAnZqdXVzCZ+TOjboZ2keLg81eXfW3O+oY=",
            *BUILD,
        ],
    )
    assert [p.purl for p in parse_go_binary(blob, PATH)] == [
        "pkg:golang/stdlib@1.22.1",
        "pkg:golang/github.com/golang-jwt/jwt@v3.2.2%2Bincompatible",
    ]


def test_a_module_replaced_by_a_local_directory_is_left_out() -> None:
    """A directory replacement (`replace golang.org/x/net => ../net`) has no version: whatever
    the checkout held is unknown, so no version is claimed for it, neither the replaced one nor
    another; the modules around it are listed as usual."""
    listed = modules_listed(
        [
            *MAIN,
            "dep\tgithub.com/google/uuid\tv1.6.0\th1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=",
            "dep\tgolang.org/x/net\tv0.17.0",
            "=>\t../net\t\t",
            "dep\tgolang.org/x/sys\tv0.18.0\th1:DBdB3niSjOA/O0blCZBqDefyWNYveAYMNF1Wum0DYQ4=",
            *BUILD,
        ]
    )
    assert listed == [("github.com/google/uuid", "v1.6.0"), ("golang.org/x/sys", "v0.18.0")]


def test_a_malformed_replacement_line_changes_nothing() -> None:
    """A `=>` line without a version, or one before any module line, is not a replacement
    Go writes: the module keeps the version its own line names, and nothing is invented."""
    listed = modules_listed(
        [
            "=>\tgolang.org/x/crypto\tv0.21.0\th1:X31++rzVUdKhX5sWmSOFZxx8UW/ldWx55cbf08iNAMA=",
            *MAIN,
            "dep\tgolang.org/x/net\tv0.17.0",
            "=>\tgolang.org/x/net",
            "dep\tgolang.org/x/text\tv0.14.0\th1:ScX5w1eTa3QqT8oi6+ziP7dTV1S2+ALU0bI+0zXKWiQ=",
            *BUILD,
        ]
    )
    assert listed == [("golang.org/x/net", "v0.17.0"), ("golang.org/x/text", "v0.14.0")]


# --- the toolchain's version ----------------------------------------------------------------
#
# Go names its releases go1.21.5, go1.20 (a .0 before Go 1.21), go1.21rc2 and go1.22beta1;
# the Go vulnerability database writes the same releases as semantic versions (1.20.0,
# 1.21.0-rc.2, "introduced": "1.22.0-0" in GO-2024-2963, tests/fixtures/osv-go).


def stdlib(go_version: str) -> Package:
    (package,) = parse_go_binary(go_executable_buildinfo(go_version, MAIN + BUILD), PATH)
    assert package.name == "stdlib"
    return package


@pytest.mark.parametrize(
    ("go_version", "purl"),
    [
        ("go1.21rc2", "pkg:golang/stdlib@1.21.0-rc.2"),
        ("go1.22beta1", "pkg:golang/stdlib@1.22.0-beta.1"),
        ("go1.20", "pkg:golang/stdlib@1.20.0"),
        ("go1.21.0", "pkg:golang/stdlib@1.21.0"),
        ("go1.22.1 X:boringcrypto", "pkg:golang/stdlib@1.22.1"),
    ],
)
def test_the_toolchain_is_listed_as_the_go_database_writes_its_release(
    go_version: str, purl: str
) -> None:
    package = stdlib(go_version)
    assert (package.purl, package.ecosystem) == (purl, "Go")


def test_pre_releases_sort_before_their_release_and_by_number() -> None:
    """rc10 after rc9 and every rc before the release, and between the `rc.N` versions the
    database's ranges name (its fixes land in a release candidate, `1.21.0-rc.3`)."""
    go = version_scheme("Go")
    assert go is not None
    built = ["go1.21beta1", "go1.21rc1", "go1.21rc2", "go1.21rc9", "go1.21rc10", "go1.21.0"]
    versions = [go(stdlib(v).version) for v in built]
    assert sorted(versions) == versions
    assert len(set(versions)) == len(versions)
    rc2 = go(stdlib("go1.21rc2").version)
    assert go("1.21.0-rc.1") < rc2 < go("1.21.0-rc.3") < go("1.21.0")


def go_2024_2963() -> list[Advisory]:
    record = Path(__file__).parents[2] / "fixtures" / "osv-go" / "GO-2024-2963.json"
    return [parse_advisory(json.loads(record.read_text()))]


def test_a_release_candidate_is_matched_as_the_release_the_record_names() -> None:
    """GO-2024-2963 affects 1.22.0-0 (every 1.22 pre-release) up to the fix in 1.22.5."""
    installed = stdlib("go1.22rc1").installed()
    assert installed is not None
    found = [(f.advisory_id, f.installed, f.fixed) for f in findings_for(installed, go_2024_2963())]
    assert found == [("GO-2024-2963", "1.22.0-rc.1", "1.22.5")]


@pytest.mark.parametrize(
    "go_version",
    [
        "devel go1.22-2f0b2eb5e1 Thu Jan 4 18:25:39 2024 +0000",
        "go1.21.0-X:boringcrypto",
        "go1.21.0-bigcorp",
    ],
)
def test_a_toolchain_naming_no_release_is_listed_unmatched(go_version: str) -> None:
    """A development build or a suffix inside the version: the standard library is listed as
    the toolchain wrote it, and no advisory is matched against a version it does not name."""
    package = stdlib(go_version)
    assert (package.version, package.ecosystem) == (go_version, None)
    assert package.installed() is None

"""Matching installed packages against genuine OSV records (`berth.domain.vulns`).

The records are in tests/fixtures/osv, copied unmodified (README.md there says from where);
each expected finding is asserted by its ID and fixing release, and each fixed release is
asserted to find nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from berth.domain.packages import parse_dpkg_status, parse_os_release
from berth.domain.vulns import (
    Advisory,
    Affected,
    Event,
    InstalledPackage,
    MalformedRecord,
    Range,
    Severity,
    affected_by,
    findings_for,
    match_ecosystem,
    parse_advisory,
    vector_severity,
)

RECORDS = Path(__file__).parents[2] / "fixtures" / "osv"
DPKG = "var/lib/dpkg/status"


def record(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDS / f"{name}.json").read_text())
    return data


def everything() -> list[Any]:
    return [parse_advisory(json.loads(p.read_text())) for p in sorted(RECORDS.glob("*.json"))]


def test_a_record_is_read_as_published() -> None:
    advisory = parse_advisory(record("PYSEC-2023-74"))

    assert advisory.id == "PYSEC-2023-74"
    assert advisory.source == "PYSEC"
    assert advisory.aliases == ("CVE-2023-32681", "GHSA-j8r2-6x86-q33q")
    assert advisory.modified == dt.datetime(2023, 6, 5, 1, 13, 0, 534973, tzinfo=dt.UTC)
    assert advisory.summary.startswith("Requests is a HTTP library.")
    assert advisory.link == (
        "https://github.com/psf/requests/security/advisories/GHSA-j8r2-6x86-q33q"
    )
    assert [(a.ecosystem, a.name) for a in advisory.affected] == [("PyPI", "requests")]


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        # PYSEC-2023-74: introduced 2.3.0, fixed 2.31.0 (and an explicit versions list).
        (InstalledPackage("PyPI", "requests", "2.30.0"), [("PYSEC-2023-74", "2.31.0")]),
        (InstalledPackage("PyPI", "Requests", "2.3.0"), [("PYSEC-2023-74", "2.31.0")]),
        (InstalledPackage("PyPI", "requests", "2.31.0"), []),
        (InstalledPackage("PyPI", "requests", "2.2.1"), []),
        # GHSA-3fx5-fwvr-xrjg: ms before 0.7.1.
        (InstalledPackage("npm", "ms", "0.7.0"), [("GHSA-3fx5-fwvr-xrjg", "0.7.1")]),
        (InstalledPackage("npm", "ms", "0.7.1"), []),
        # GHSA-fhjf-83wg-r2j9: its events are published out of order (introduced 0,
        # introduced 2.0.0, fixed 2.0.1, fixed 1.3.2); sorted they say < 1.3.2 and 2.0.0.
        (InstalledPackage("npm", "mixin-deep", "1.3.1"), [("GHSA-fhjf-83wg-r2j9", "1.3.2")]),
        (InstalledPackage("npm", "mixin-deep", "1.3.2"), []),
        (InstalledPackage("npm", "mixin-deep", "2.0.0"), [("GHSA-fhjf-83wg-r2j9", "2.0.1")]),
        (InstalledPackage("npm", "mixin-deep", "2.0.1"), []),
        # GHSA-mhpp-875w-9cpv: jquery from the prerelease 2.1.1-0 up to 3.0.0.
        (InstalledPackage("npm", "jquery", "2.1.0"), []),
        (InstalledPackage("npm", "jquery", "2.1.1"), [("GHSA-mhpp-875w-9cpv", "3.0.0")]),
        (InstalledPackage("npm", "jquery", "2.2.4"), [("GHSA-mhpp-875w-9cpv", "3.0.0")]),
        (InstalledPackage("npm", "jquery", "3.0.0"), []),
        # CVE-2018-5407: Alpine's openssl, fixed in 1.0.2q-r0 (Alpine's own ordering:
        # 1.0.2p-r0 < 1.0.2q-r0, r-suffixed package releases).
        (InstalledPackage("Alpine:v3.8", "openssl", "1.0.2p-r0"), [("CVE-2018-5407", "1.0.2q-r0")]),
        (InstalledPackage("Alpine:v3.8", "openssl", "1.0.2q-r0"), []),
        (InstalledPackage("Alpine:v3.8", "openssl", "1.0.2q-r1"), []),
        # The same package in a release the record does not list is not matched.
        (InstalledPackage("Alpine:v2.7", "openssl", "1.0.2p-r0"), []),
        # GO-2020-0001: gin before 1.6.0 (Go module versions carry a "v").
        (
            InstalledPackage("Go", "github.com/gin-gonic/gin", "v1.5.0"),
            [("GO-2020-0001", "1.6.0")],
        ),
        (InstalledPackage("Go", "github.com/gin-gonic/gin", "v1.6.0"), []),
    ],
)
def test_genuine_records_find_affected_releases_and_not_fixed_ones(
    package: InstalledPackage, expected: list[tuple[str, str]]
) -> None:
    found = findings_for(package, everything())

    assert [(f.advisory_id, f.fixed) for f in found] == expected


def test_a_finding_says_what_a_user_sees() -> None:
    [finding] = findings_for(InstalledPackage("npm", "ms", "0.7.0"), everything())

    assert finding.aliases == ("CVE-2015-8315",)
    assert finding.package == "ms"
    assert finding.installed == "0.7.0"
    assert finding.summary == "Regular Expression Denial of Service in ms"
    # CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H scores 7.5.
    assert finding.severity is Severity.HIGH
    assert finding.link == "https://nvd.nist.gov/vuln/detail/CVE-2015-8315"


@pytest.mark.parametrize(
    ("name", "severity"),
    [
        ("GHSA-3fx5-fwvr-xrjg", Severity.HIGH),  # CVSS 3.0 vector, 7.5
        ("CVE-2018-5407", Severity.MEDIUM),  # CVSS 3.1 vector AV:L/AC:H/...: 4.7
        ("GO-2020-0001", Severity.UNKNOWN),  # neither a vector nor a severity word
    ],
)
def test_severity_comes_from_the_cvss_vector(name: str, severity: Severity) -> None:
    assert parse_advisory(record(name)).severity is severity


@pytest.mark.parametrize(
    ("kind", "vector", "severity"),
    [
        # NVD's vectors: CVE-2014-0160 (Heartbleed, 5.0), CVE-2014-6271 (Shellshock, 10.0),
        # CVE-2021-44228 (Log4Shell, 10.0).
        ("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:N/A:N", Severity.MEDIUM),
        ("CVSS_V2", "AV:N/AC:L/Au:N/C:C/I:C/A:C", Severity.CRITICAL),
        ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", Severity.CRITICAL),
        (
            "CVSS_V4",
            "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            Severity.CRITICAL,
        ),
        ("CVSS_V3", "CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", Severity.LOW),  # 1.6
        ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", Severity.UNKNOWN),  # 0.0
        ("CVSS_V3", "not a vector", Severity.UNKNOWN),
        ("CVSS_V4", "CVSS:4.0/AV:N", Severity.UNKNOWN),  # metrics missing
        ("CVSS_V5", "CVSS:5.0/AV:N", Severity.UNKNOWN),  # a version Berth does not know
    ],
)
def test_each_cvss_version_rates_on_the_qualitative_scale(
    kind: str, vector: str, severity: Severity
) -> None:
    assert vector_severity(kind, vector) is severity


def test_the_databases_own_severity_word_counts_without_a_vector() -> None:
    data = record("GHSA-3fx5-fwvr-xrjg")
    del data["severity"]  # leaving database_specific.severity "HIGH"

    assert parse_advisory(data).severity is Severity.HIGH


@pytest.mark.parametrize(
    ("priority", "severity"),
    [("high", Severity.HIGH), ("negligible", Severity.LOW), ("untriaged", Severity.UNKNOWN)],
)
def test_ubuntu_s_priority_counts_without_a_vector(priority: str, severity: Severity) -> None:
    """The OSV schema's `Ubuntu` severity type: the Ubuntu security team's priority, a word,
    which Ubuntu's records give where they have no CVSS vector."""
    data = record("GO-2020-0001")  # no vector, no database severity word of its own
    data["severity"] = [{"type": "Ubuntu", "score": priority}]

    assert parse_advisory(data).severity is severity


def test_a_withdrawn_record_finds_nothing() -> None:
    data = record("GHSA-3fx5-fwvr-xrjg")
    data["withdrawn"] = data["modified"]

    found = findings_for(InstalledPackage("npm", "ms", "0.7.0"), [parse_advisory(data)])

    assert found == []


def test_without_the_records_nothing_is_found() -> None:
    others = [a for a in everything() if a.id != "PYSEC-2023-74"]

    assert findings_for(InstalledPackage("PyPI", "requests", "2.30.0"), others) == []


# The OSV schema documentation's own range examples (docs/schema.md, "last_affected vs fixed
# example" and the evaluation pseudocode), on a semver package.
def test_last_affected_includes_that_version_and_fixed_excludes_it() -> None:
    up_to = Affected("npm", "x", (Range("ECOSYSTEM", (Event("introduced", "0"),
                     Event("last_affected", "2.1.214"))),))  # fmt: skip
    until = Affected("npm", "x", (Range("SEMVER", (Event("introduced", "0"),
                     Event("fixed", "2.1.214"))),))  # fmt: skip

    assert affected_by(up_to, "2.1.214") == (True, None)
    assert affected_by(up_to, "2.1.215") == (False, None)
    assert affected_by(until, "2.1.213") == (True, "2.1.214")
    assert affected_by(until, "2.1.214") == (False, None)


def test_limit_bounds_a_range() -> None:
    limited = Affected("npm", "x", (Range("SEMVER", (Event("introduced", "1.0.0"),
                       Event("limit", "2.0.0"))),))  # fmt: skip

    assert affected_by(limited, "1.5.0") == (True, None)
    assert affected_by(limited, "2.0.0") == (False, None)
    assert affected_by(limited, "0.9.0") == (False, None)


def test_debian_ordering_knows_epochs_tildes_and_security_updates() -> None:
    # Versions as Debian 12's archive has them (zlib1g: 1:1.2.13.dfsg-1 in main,
    # 1:1.2.13.dfsg-1+deb12u1 in the security update).
    fix = Affected("Debian:12", "zlib", (Range("ECOSYSTEM", (Event("introduced", "0"),
                   Event("fixed", "1:1.2.13.dfsg-1+deb12u1"))),))  # fmt: skip

    assert affected_by(fix, "1:1.2.13.dfsg-1") == (True, "1:1.2.13.dfsg-1+deb12u1")
    assert affected_by(fix, "1:1.2.13.dfsg-1+deb12u1") == (False, None)
    assert affected_by(fix, "1.2.14-1") == (True, "1:1.2.13.dfsg-1+deb12u1")  # no epoch: older
    assert affected_by(fix, "1:1.2.13.dfsg-1~bpo1") == (True, "1:1.2.13.dfsg-1+deb12u1")


def test_an_unreadable_installed_version_matches_only_listed_versions() -> None:
    [requests] = parse_advisory(record("PYSEC-2023-74")).affected

    assert affected_by(requests, "not a version") == (False, None)
    # A listed version written differently is the same PyPI release.
    assert affected_by(requests, "2.30")[0] is True


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("id"), "id"),
        (lambda r: r.pop("modified"), "modified"),
        (lambda r: r.update(modified="yesterday"), "modified"),
        (lambda r: r.update(aliases="CVE-2023-32681"), "aliases"),
        (lambda r: r["affected"][0]["package"].pop("name"), "affected[0].package.name"),
        (
            lambda r: r["affected"][0]["ranges"][1]["events"][1].update(introduced="2.4"),
            "affected[0].ranges[1].events[1]",
        ),
        (lambda r: r["affected"][0].update(versions=[2]), "affected[0].versions[0]"),
    ],
)
def test_a_malformed_record_names_the_field(change: Any, field: str) -> None:
    data = copy.deepcopy(record("PYSEC-2023-74"))
    change(data)

    with pytest.raises(MalformedRecord) as refused:
        parse_advisory(data)

    assert refused.value.field == field


@pytest.mark.parametrize(
    ("recorded", "image"),
    [
        ("Ubuntu:22.04:LTS", "Ubuntu:22.04"),
        ("Ubuntu:23.10", "Ubuntu:23.10"),
        ("Ubuntu:Pro:18.04:LTS", "Ubuntu:Pro:18.04:LTS"),
        ("Debian:12", "Debian:12"),
        ("Alpine:v3.16", "Alpine:v3.16"),
    ],
)
def test_record_ecosystems_are_matched_as_images_label_their_packages(
    recorded: str, image: str
) -> None:
    assert match_ecosystem(recorded) == image


# Two entries of Debian 12's dpkg status as installed (this machine's, `apt-get install dmsetup
# bc`): dmsetup is built from lvm2 at another version, with an epoch of its own; bc is a
# rebuild (binNMU) of its source's upload.
DEBIAN_12_STATUS = b"""\
Package: dmsetup
Status: install ok installed
Architecture: amd64
Source: lvm2 (2.03.16-2)
Version: 2:1.02.185-2

Package: bc
Status: install ok installed
Architecture: amd64
Source: bc (1.07.1-3)
Version: 1.07.1-3+b1
"""


def _source_range(name: str, fixed: str) -> Advisory:
    """A Debian 12 range on a source package (an example range, not a published record)."""
    events = (Event("introduced", "0"), Event("fixed", fixed))
    affected = Affected("Debian:12", name, (Range("ECOSYSTEM", events),))
    return Advisory(id=f"EXAMPLE-{name}", modified=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                    affected=(affected,))  # fmt: skip


def test_debian_packages_are_matched_at_their_source_s_version() -> None:
    """Debian's records name the source package at its versions: dmsetup 2:1.02.185-2 is
    lvm2 2.03.16-2, older than a fix in 2.03.16-3, though its own version, with its epoch,
    sorts after it; bc 1.07.1-3+b1 is bc 1.07.1-3, a fix in it already."""
    os = parse_os_release(b'ID=debian\nVERSION_ID="12"\n')
    dmsetup, bc = (p.installed() for p in parse_dpkg_status(DEBIAN_12_STATUS, DPKG, os))
    assert dmsetup is not None and bc is not None

    [finding] = findings_for(dmsetup, [_source_range("lvm2", "2.03.16-3")])
    assert (finding.package, finding.installed, finding.fixed) == (
        "dmsetup",
        "2:1.02.185-2",
        "2.03.16-3",
    )
    assert findings_for(dmsetup, [_source_range("lvm2", "2.03.16-2")]) == []
    assert findings_for(bc, [_source_range("bc", "1.07.1-3")]) == []
    assert [f.fixed for f in findings_for(bc, [_source_range("bc", "1.07.1-4")])] == ["1.07.1-4"]

"""Names, tags, hosts and registry addresses (`berth.domain.names`)."""

from __future__ import annotations

import pytest

from berth.domain.errors import NameInvalid, NameUnknown
from berth.domain.names import (
    is_loopback_name,
    is_valid_tag,
    normalized_host,
    project_name_problem,
    registry_address,
    split_name,
)


@pytest.mark.parametrize("name", ["a/b", "proj/repo/team/app", "a-b/c__d", "a.b/c_d", "a/b--c"])
def test_valid_names_resolve_in_path_style(name: str) -> None:
    resolved = split_name(name, None)
    assert resolved.project == name.split("/")[0]
    assert resolved.repository == name.split("/")[1]


@pytest.mark.parametrize(
    "name", ["A/b", "a//b", "a/b/", "../a", "a/../b", "a/-b", "a/b_", "a/b___c", "a/" + "b" * 300]
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(NameInvalid):
        split_name(name, None)


def test_host_style_name_has_no_project_component() -> None:
    resolved = split_name("repo/team/app", "proj")
    assert (resolved.project, resolved.repository, resolved.image) == ("proj", "repo", "team/app")


def test_path_style_needs_a_project_and_repository() -> None:
    # NAME_UNKNOWN: docker gives up at once on it (it retries NAME_INVALID for ~50 s).
    with pytest.raises(NameUnknown, match="project first"):
        split_name("onlyone", None)


@pytest.mark.parametrize("name", ["demo", "a", "0", "my-proj", "a1-b2-c3", "a" * 63])
def test_project_names_are_dns_labels(name: str) -> None:
    assert project_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("my_proj", "it contains '_'"),
        ("a.b", "it contains '.'"),
        ("-demo", "starts or ends with '-'"),
        ("demo-", "starts or ends with '-'"),
        ("Demo", "uppercase"),
        ("a" * 64, "64 characters"),
        ("", "empty"),
        ("dé", "it contains 'é'"),
    ],
)
def test_a_project_name_that_is_no_dns_label_is_refused_readably(name: str, why: str) -> None:
    problem = project_name_problem(name)
    assert problem is not None
    assert why in problem
    assert "lowercase letters, digits and '-' (not first or last), at most 63" in problem
    assert "^[" not in problem and "pattern" not in problem  # never a regular expression


@pytest.mark.parametrize(
    ("host", "normalized"),
    [
        ("demo.kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev"),
        ("DEMO.Kr-Central-2.KCR.dev:443", "demo.kr-central-2.kcr.dev:443"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("localhost", "localhost"),
        ("Demo.kr-central-2.kcr.dev.:8443", "demo.kr-central-2.kcr.dev:8443"),
        ('a",realm="http://evil.example/x', None),
        ("a b", None),
        ("a/b", None),
        ("a,b", None),
        ("", None),
        ("a:", None),
        ("a:123456", None),
        ("x" * 300, None),
    ],
)
def test_the_host_header_grammar(host: str, normalized: str | None) -> None:
    assert normalized_host(host) == normalized


@pytest.mark.parametrize(
    ("host", "login", "prefix"),
    [
        # Reached under the region's domain: the project's own host, with the port used.
        ("kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev"),
        ("web.kr-central-2.kcr.dev:8443", "demo.kr-central-2.kcr.dev:8443", None),
        # Anywhere else: path style on that same host and port.
        ("localhost:5000", "localhost:5000", "localhost:5000/demo"),
        ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000/demo"),
        ("berth.corp:5000", "berth.corp:5000", "berth.corp:5000/demo"),
        ("[::1]:5000", "[::1]:5000", "[::1]:5000/demo"),
    ],
)
def test_the_registry_address_of_a_project(host: str, login: str, prefix: str | None) -> None:
    address = registry_address("demo", host, ".kr-central-2.kcr.dev")
    assert address.login == login
    assert address.prefix == (prefix or login)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b"])
def test_invalid_tags(tag: str) -> None:
    assert not is_valid_tag(tag)


def test_an_overlong_host_is_refused_before_the_host_cache_keeps_it() -> None:
    from berth.domain import names

    cached = names._normalized_host.cache_info().currsize
    assert names.normalized_host("a" * 400_000) is None
    assert names._normalized_host.cache_info().currsize == cached


@pytest.mark.parametrize(
    ("hostname", "loopback"),
    [
        ("localhost", True),
        ("demo.local.localhost", True),
        ("DEMO.LOCAL.LOCALHOST.", True),
        ("localhost.example.com", False),
        ("notlocalhost", False),
        ("127.0.0.1", False),
        ("demo.kr-central-2.kcr.dev", False),
    ],
)
def test_localhost_names_are_the_loopback_names_browsers_resolve_themselves(
    hostname: str, loopback: bool
) -> None:
    assert is_loopback_name(hostname) is loopback

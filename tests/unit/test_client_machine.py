"""What the client tests add to the machine (/etc/docker/certs.d, /etc/hosts) after a run that
was killed before its cleanup: the next run, wanting the same address again, clears a dead run's
leftovers and still refuses to touch what it did not make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients import machine
from tests.clients.machine import OWNER_FILE, DockerCertsDirs, HostsEntries


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_a_certs_directory_left_by_a_killed_run_is_replaced(tmp_path: Path, ca: Path) -> None:
    root = tmp_path / "certs.d"
    left = root / "127.0.0.1:10010"
    left_host = root / "clients88aac7c6.kr-central-2.kcr.test:10010"  # never wanted again
    for directory in (left, left_host):
        directory.mkdir(parents=True)
        (directory / OWNER_FILE).write_text(f"{dead_pid()}\n")
        (directory / "ca.crt").write_text("the killed run's CA\n")

    certs = DockerCertsDirs(root=root)
    certs.trust("127.0.0.1:10010", ca)

    assert (left / "ca.crt").read_text() == ca.read_text()
    assert not left_host.exists()
    certs.remove_all()
    assert not left.exists()


def test_a_certs_directory_of_a_running_test_or_of_someone_else_is_refused(
    tmp_path: Path, ca: Path
) -> None:
    root = tmp_path / "certs.d"
    running = root / "127.0.0.1:10011"
    running.mkdir(parents=True)
    (running / OWNER_FILE).write_text("1\n")  # init never dies
    operators = root / "registry.example:443"
    operators.mkdir()
    (operators / "ca.crt").write_text("the operator's CA\n")

    certs = DockerCertsDirs(root=root)
    for address in ("127.0.0.1:10011", "registry.example:443"):
        with pytest.raises(FileExistsError):
            certs.trust(address, ca)
    assert (operators / "ca.crt").read_text() == "the operator's CA\n"
    assert running.exists()


def test_hosts_lines_of_a_killed_run_are_dropped_and_others_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    killed = f"127.0.0.1 old.test # berth-client-tests-{dead_pid()}-0123456789ab\n"
    living = "127.0.0.1 live.test # berth-client-tests-1-0123456789ab\n"
    hosts.write_text("127.0.0.1 localhost\n" + killed + living)
    monkeypatch.setattr(machine, "HOSTS_FILE", hosts)

    entry = HostsEntries(["new.test"])
    entry.add()
    assert hosts.read_text() == "127.0.0.1 localhost\n" + living + entry.line + "\n"
    entry.remove()
    assert hosts.read_text() == "127.0.0.1 localhost\n" + living

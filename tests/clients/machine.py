"""The machine-wide settings the clients need, added for the session and taken away after it.

- /etc/hosts lines mapping the project hosts to 127.0.0.1. They must be there before dockerd and
  containerd start: Go programs cache /etc/hosts for a few seconds, and a miss goes to an
  outside resolver. The file may be a bind mount, so it is rewritten in place, never replaced.
- /etc/docker/certs.d/HOST:PORT/ca.crt, where dockerd looks for a registry's CA. It has no
  per-daemon setting for this; it reads the directory at every login, push and pull.

Every change is tagged or recorded with the test process that made it, so that only what this
session added is removed, and what a killed run left behind (no cleanup runs after SIGKILL) is
cleared by the next run instead of failing it: ports are handed out in order, so the next run
wants the same `127.0.0.1:PORT` again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOSTS_FILE = Path("/etc/hosts")
HOSTS_LOCK_FILE = Path(tempfile.gettempdir()) / "berth-tests-etc-hosts.lock"
DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")
OWNER_FILE = ".berth-client-tests-pid"  # in each certs.d directory the tests create
_TAG = re.compile(r"# berth-client-tests-(\d+)-[0-9a-f]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _rewrite_in_place(path: Path, text: str) -> None:
    with path.open("r+") as handle:
        handle.seek(0)
        handle.write(text)
        handle.truncate()


@contextlib.contextmanager
def _hosts_file_lock() -> Iterator[None]:
    """Test workers edit /etc/hosts side by side (the client tests and the webhook tests' own
    names): each read-and-rewrite holds this lock, so no worker's line is lost to another's."""
    with open(HOSTS_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _left_by_a_dead_run(line: str) -> bool:
    tagged = _TAG.search(line.rstrip("\n"))
    return tagged is not None and not _alive(int(tagged.group(1)))


@dataclass
class HostsEntries:
    """One /etc/hosts line naming `hosts`, ending in a tag unique to this session."""

    hosts: list[str]
    address: str = "127.0.0.1"
    tag: str = field(
        default_factory=lambda: f"# berth-client-tests-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    )

    @property
    def line(self) -> str:
        return f"{self.address} {' '.join(self.hosts)} {self.tag}"

    def add(self) -> None:
        with _hosts_file_lock():
            lines = HOSTS_FILE.read_text().splitlines(keepends=True)
            kept = [line for line in lines if not _left_by_a_dead_run(line)]
            if len(kept) != len(lines):
                _rewrite_in_place(HOSTS_FILE, "".join(kept))
            text = "".join(kept)
            separator = "" if not text or text.endswith("\n") else "\n"
            with HOSTS_FILE.open("a") as handle:
                handle.write(f"{separator}{self.line}\n")

    def remove(self) -> None:
        with _hosts_file_lock():
            lines = HOSTS_FILE.read_text().splitlines(keepends=True)
            kept = [line for line in lines if not line.rstrip("\n").endswith(self.tag)]
            if len(kept) != len(lines):
                _rewrite_in_place(HOSTS_FILE, "".join(kept))


@dataclass
class DockerCertsDirs:
    """`/etc/docker/certs.d/ADDRESS/ca.crt` entries, each removed again by `remove_all`."""

    root: Path = DOCKER_CERTS_DIR
    added: list[Path] = field(default_factory=list)
    created_root: list[Path] = field(default_factory=list)

    def trust(self, address: str, ca: Path) -> Path:
        """Make dockerd trust `ca` for the registry at `address` (`host:port`, `[::1]:port`)."""
        self._clear_dead_runs()
        directory = self.root / address
        if directory.exists():
            raise FileExistsError(f"{directory} exists already: not this session's to change")
        for parent in reversed([self.root, *self.root.parents]):
            if not parent.exists():
                parent.mkdir()
                self.created_root.append(parent)
        directory.mkdir()
        self.added.append(directory)
        (directory / OWNER_FILE).write_text(f"{os.getpid()}\n")
        shutil.copyfile(ca, directory / "ca.crt")
        return directory

    def _clear_dead_runs(self) -> None:
        if self.root.is_dir():
            for directory in self.root.iterdir():
                if self._left_by_a_dead_run(directory):
                    shutil.rmtree(directory, ignore_errors=True)

    @staticmethod
    def _left_by_a_dead_run(directory: Path) -> bool:
        try:
            pid = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):  # not made by these tests
            return False
        return not _alive(pid)

    def untrust(self, address: str) -> None:
        directory = self.root / address
        if directory in self.added:
            shutil.rmtree(directory, ignore_errors=True)
            self.added.remove(directory)

    def remove_all(self) -> None:
        for directory in list(self.added):
            shutil.rmtree(directory, ignore_errors=True)
        self.added.clear()
        for parent in reversed(self.created_root):
            with contextlib.suppress(OSError):  # not empty: someone else uses it now
                parent.rmdir()
        self.created_root.clear()

"""The command-line clients, each bound to its own state and to the registry under test.

Every wrapper adds what reaching this registry takes (plain HTTP on loopback, and credentials
once the registry has them), so a test reads as the commands a user would type.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.clients.daemons import Containerd, Dockerd
from tests.clients.registry import Registry
from tests.clients.tools import run, write_json

Result = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class ContainersConfig:
    """Private configuration for the containers/image clients (skopeo, podman).

    The machine's /etc/containers files and ~/.docker are left alone: trust policy, registries
    and credentials all come from here.
    """

    base: Path

    @classmethod
    def create(cls, base: Path) -> ContainersConfig:
        config = cls(base)
        write_json(config.policy, {"default": [{"type": "insecureAcceptAnything"}]})
        config.registries.write_text("unqualified-search-registries = []\n")
        write_json(config.auth_file, {"auths": {}})
        # podman also reads $DOCKER_CONFIG/config.json, and fails when that file is missing.
        write_json(config.docker_config / "config.json", {"auths": {}})
        (base / "tmp").mkdir(exist_ok=True)
        return config

    @property
    def policy(self) -> Path:
        return self.base / "policy.json"

    @property
    def registries(self) -> Path:
        return self.base / "registries.conf"

    @property
    def auth_file(self) -> Path:
        return self.base / "auth.json"

    @property
    def docker_config(self) -> Path:
        return self.base / "docker-config"

    @property
    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_REGISTRIES_CONF": str(self.registries),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "DOCKER_CONFIG": str(self.docker_config),
            "TMPDIR": str(self.base / "tmp"),
        }


def remote_flags(registry: Registry, prefix: str = "") -> list[str]:
    """containers/image flags for this registry: no TLS (plain HTTP), and credentials if any."""
    flags = [f"--{prefix}tls-verify=false"]
    if registry.credentials:
        flags.append(f"--{prefix}creds={':'.join(registry.credentials)}")
    return flags


@dataclass(frozen=True)
class Skopeo:
    binary: str
    config: ContainersConfig
    registry: Registry

    def __call__(self, *args: str | Path) -> Result:
        return run([self.binary, "--policy", self.config.policy, *args], self.config.env)

    def copy(
        self, source: str, destination: str, *flags: str | Path, arch: str | None = None
    ) -> Result:
        """`skopeo copy`, with the registry flags on whichever side is `docker://`.

        `arch` picks the platform out of an image index (`--override-arch`).
        """
        sides = []
        if source.startswith("docker://"):
            sides += remote_flags(self.registry, "src-")
        if destination.startswith("docker://"):
            sides += remote_flags(self.registry, "dest-")
        platform = ["--override-arch", arch] if arch else []
        return self(*platform, "copy", *sides, *flags, source, destination)

    def remote(self, verb: str, *args: str | Path) -> Result:
        """A verb that reads or changes the registry: inspect, list-tags, delete."""
        return self(verb, *remote_flags(self.registry), *args)


@dataclass(frozen=True)
class Podman:
    """podman without a daemon: vfs storage, cgroupfs and file events under its own root."""

    binary: str
    base: Path
    config: ContainersConfig
    registry: Registry

    @property
    def options(self) -> list[str]:
        return [
            "--storage-driver", "vfs",
            "--root", str(self.base / "root"),
            "--runroot", str(self.base / "run"),
            "--tmpdir", str(self.base / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def __call__(self, *args: str | Path) -> Result:
        return run([self.binary, *self.options, *args], self.config.env)

    def remote(self, verb: str, *args: str | Path) -> Result:
        """push, pull: with plain HTTP allowed and credentials if any."""
        return self(verb, *remote_flags(self.registry), *args)


@dataclass(frozen=True)
class Docker:
    """The docker CLI talking to a dockerd of the tests' own."""

    binary: str
    daemon: Dockerd
    registry: Registry

    def __call__(self, *args: str | Path) -> Result:
        return run([self.binary, *args], self.daemon.env)

    def login(self) -> None:
        """docker has no per-command credentials: log in once (nothing to do while open)."""
        if self.registry.credentials:
            username, password = self.registry.credentials
            run(
                [self.binary, "login", "-u", username, "--password-stdin", self.registry.address],
                self.daemon.env,
                input=password,
            )


@dataclass(frozen=True)
class Ctr:
    """containerd's `ctr` in one namespace of a containerd of the tests' own."""

    binary: str
    daemon: Containerd
    registry: Registry
    namespace: str = "berth-tests"

    def __call__(self, *args: str | Path) -> Result:
        return run(
            [self.binary, "--address", self.daemon.socket, "--namespace", self.namespace, *args]
        )

    @property
    def remote_flags(self) -> list[str]:
        flags = ["--plain-http"]
        if self.registry.credentials:
            flags.append(f"--user={':'.join(self.registry.credentials)}")
        return flags

    def push(self, reference: str, *flags: str) -> Result:
        return self("images", "push", *self.remote_flags, *flags, reference)

    def pull(self, reference: str, *flags: str) -> Result:
        return self("images", "pull", *self.remote_flags, *flags, reference)

    def image_digest(self, reference: str) -> str:
        """The manifest (or index) digest containerd recorded for an image."""
        header, *rows = self("images", "ls", f"name=={reference}").stdout.splitlines()
        assert header.split()[:3] == ["REF", "TYPE", "DIGEST"], header
        (row,) = rows
        return row.split()[2]

"""The command-line clients, each bound to its own state and to the registry under test.

Every wrapper adds what reaching this registry takes (trust in the test CA, and its access key),
so a test reads as the commands a user would type. `at(registry)` gives the same client aimed at
another registry (path style, another project, other credentials).
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from tests.clients.daemons import Containerd, Dockerd
from tests.clients.layouts import OciLayout, TestImage
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


def skopeo_round_trip(
    config: ContainersConfig, source: str, remote: str, credentials: str, into: Path
) -> OciLayout:
    """skopeo copies `source` to the plain-HTTP `remote` (`docker://...`) with `credentials`
    (`KEY_ID:SECRET`), then copies it back into a new OCI layout at `into`."""
    skopeo = ["skopeo", "--policy", str(config.policy), "copy"]
    push = ["--dest-tls-verify=false", f"--dest-creds={credentials}", source, remote]
    run([*skopeo, *push], config.env)
    pulled = OciLayout(into)
    pull = ["--src-tls-verify=false", f"--src-creds={credentials}", remote, f"oci:{into}:v1"]
    run([*skopeo, *pull], config.env)
    return pulled


def remote_flags(registry: Registry, prefix: str = "") -> list[str]:
    """containers/image flags for this registry: the test CA, and the access key if any."""
    flags = [f"--{prefix}cert-dir={registry.trust.cert_dir}"]
    if registry.credentials:
        flags.append(f"--{prefix}creds={':'.join(registry.credentials)}")
    return flags


@dataclass(frozen=True)
class Skopeo:
    binary: str
    config: ContainersConfig
    registry: Registry

    def __call__(self, *args: str | Path, check: bool = True) -> Result:
        return run(
            [self.binary, "--policy", self.config.policy, *args], self.config.env, check=check
        )

    def at(self, registry: Registry) -> Skopeo:
        return replace(self, registry=registry)

    def copy(
        self,
        source: str,
        destination: str,
        *flags: str | Path,
        arch: str | None = None,
        check: bool = True,
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
        return self(*platform, "copy", *sides, *flags, source, destination, check=check)

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
    def runroot(self) -> Path:
        """podman refuses a runroot over 50 characters, which pytest's base temporary paths
        exceed under xdist (`.../popen-gw0/podman0/run`): a short one derived from `base`."""
        return Path("/tmp") / f"podman-run-{hashlib.sha256(bytes(self.base)).hexdigest()[:12]}"

    @property
    def options(self) -> list[str]:
        return [
            "--storage-driver", "vfs",
            "--root", str(self.base / "root"),
            "--runroot", str(self.runroot),
            "--tmpdir", str(self.base / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def __call__(self, *args: str | Path, check: bool = True) -> Result:
        return run([self.binary, *self.options, *args], self.config.env, check=check)

    def at(self, registry: Registry) -> Podman:
        return replace(self, registry=registry)

    def remote(self, verb: str, *args: str | Path, check: bool = True) -> Result:
        """push, pull: trusting the test CA, with the access key if any."""
        return self(verb, *remote_flags(self.registry), *args, check=check)


@dataclass(frozen=True)
class Docker:
    """The docker CLI talking to a dockerd of the tests' own.

    Credentials live on the client side (`$DOCKER_CONFIG/config.json`, written by `docker
    login`); the CLI hands them to the daemon with each push and pull. `config_dir` gives a
    client its own, so that one test's login or logout does not reach the others.
    """

    binary: str
    daemon: Dockerd
    registry: Registry
    config_dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = self.daemon.env
        if self.config_dir is not None:
            env["DOCKER_CONFIG"] = str(self.config_dir)
        return env

    def __call__(self, *args: str | Path, check: bool = True, input: str | None = None) -> Result:
        return run([self.binary, *args], self.env, check=check, input=input)

    def at(self, registry: Registry) -> Docker:
        return replace(self, registry=registry)

    def with_config(self, config_dir: Path) -> Docker:
        """This client with a config directory (and so credentials) of its own, empty."""
        write_json(config_dir / "config.json", {"auths": {}})
        return replace(self, config_dir=config_dir)

    def import_image(self, image: TestImage, reference: str, workdir: Path) -> None:
        """`docker import` of the test image's files, named `reference` (no registry needed)."""
        self("import", image.rootfs_tar(workdir / "rootfs.tar"), reference)

    def login(self, check: bool = True) -> Result:
        """`docker login` with the registry's access key (the secret on stdin)."""
        assert self.registry.credentials, "no access key to log in with"
        key_id, secret = self.registry.credentials
        address = self.registry.address
        return self(
            "login", "--username", key_id, "--password-stdin", address, input=secret, check=check
        )


@dataclass(frozen=True)
class Ctr:
    """containerd's `ctr` in one namespace of a containerd of the tests' own; it reaches the
    registry through containerd's hosts directory (HTTPS, the test CA)."""

    binary: str
    daemon: Containerd
    registry: Registry
    namespace: str = "berth-tests"

    def __call__(self, *args: str | Path, check: bool = True) -> Result:
        return run(
            [self.binary, "--address", self.daemon.socket, "--namespace", self.namespace, *args],
            check=check,
        )

    def at(self, registry: Registry) -> Ctr:
        return replace(self, registry=registry)

    @property
    def remote_flags(self) -> list[str]:
        flags = [f"--hosts-dir={self.daemon.hosts_dir}"]
        if self.registry.credentials:
            flags.append(f"--user={':'.join(self.registry.credentials)}")
        return flags

    def push(self, reference: str, *flags: str, check: bool = True) -> Result:
        return self("images", "push", *self.remote_flags, *flags, reference, check=check)

    def pull(self, reference: str, *flags: str, check: bool = True) -> Result:
        return self("images", "pull", *self.remote_flags, *flags, reference, check=check)

    def image_digest(self, reference: str) -> str:
        """The manifest (or index) digest containerd recorded for an image."""
        header, *rows = self("images", "ls", f"name=={reference}").stdout.splitlines()
        assert header.split()[:3] == ["REF", "TYPE", "DIGEST"], header
        (row,) = rows
        return row.split()[2]

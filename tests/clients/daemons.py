"""dockerd and containerd, each started by the tests in its own directory with its own sockets.

Nothing here touches the machine's own daemons (/var/run/docker.sock, /run/containerd): every
path, socket and configuration file lives under the directory a daemon is given.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.clients.tools import require_binary, run

READY_TIMEOUT = 60
STOP_TIMEOUT = 30


@dataclass
class Daemon:
    """A long-running process with a log file, stopped by its own pid."""

    base: Path
    name: str = "daemon"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.base / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in pytest must not reach it before stop()
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready in {READY_TIMEOUT}s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Dockerd(Daemon):
    """dockerd on vfs storage, without iptables or a bridge, reached through its own socket."""

    name: str = "dockerd"
    binary: str = "dockerd"
    cli: str = "docker"

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """What the docker CLI needs to talk to this daemon, with a config dir of its own."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config_dir)}

    @property
    def config_dir(self) -> Path:
        return self.base / "client-config"

    def command(self) -> list[str]:
        daemon_json = self.base / "daemon.json"
        daemon_json.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
        self.config_dir.mkdir(exist_ok=True)
        (self.config_dir / "config.json").write_text('{"auths": {}}\n')
        return [
            self.binary,
            "--config-file", str(daemon_json),
            "--storage-driver", "vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--data-root", str(self.base / "root"),
            "--exec-root", str(self.base / "exec"),
            "--pidfile", str(self.base / "dockerd.pid"),
            "--host", f"unix://{self.socket}",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        return run([self.cli, "version"], self.env, check=False, timeout=10).returncode == 0


CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{base}/cni/bin"
  conf_dir = "{base}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts_dir}"
"""


@dataclass
class Containerd(Daemon):
    """containerd with its CRI plugin on, and a hosts directory for per-registry settings."""

    name: str = "containerd"
    binary: str = "containerd"
    ctr: str = "ctr"

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def hosts_dir(self) -> Path:
        """containerd's `config_path`: one `HOST:PORT/hosts.toml` per registry (CRI reads it)."""
        return self.base / "certs.d"

    def command(self) -> list[str]:
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                base=self.base,
                root=self.base / "root",
                state=self.base / "state",
                socket=self.socket,
                hosts_dir=self.hosts_dir,
            )
        )
        return [self.binary, "--config", str(config)]

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        plugins = run([self.ctr, "--address", str(self.socket), "plugins", "ls"], check=False)
        return plugins.returncode == 0

    def cri_enabled(self) -> bool:
        plugins = run([self.ctr, "--address", str(self.socket), "plugins", "ls"]).stdout
        return any(
            line.split()[1:2] == ["cri"] and line.split()[-1] == "ok"
            for line in plugins.splitlines()
        )

    def trust(self, address: str, ca: Path) -> None:
        """Tell containerd (`ctr --hosts-dir` and CRI) to reach `address` over HTTPS, trusting
        the test CA. containerd 1.6 rejects a hosts.toml without a `[host]` table."""
        host_dir = self.hosts_dir / address
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "hosts.toml").write_text(
            f'server = "https://{address}"\n\n'
            f'[host."https://{address}"]\n'
            '  capabilities = ["pull", "resolve", "push"]\n'
            f'  ca = "{ca}"\n'
        )


@contextmanager
def running_dockerd(directory: Path) -> Iterator[Dockerd]:
    """A dockerd of its own in `directory`, with the CLI from the daemon's package (a newer
    docker may also be on PATH), stopped on the way out."""
    binary = require_binary("dockerd")
    cli = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else require_binary("docker")
    daemon = Dockerd(directory, binary=binary, cli=cli)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()

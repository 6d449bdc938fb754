"""A fork server for the tests' `berth` CLI runs.

A new `berth` process spends ~0.9 s importing SQLAlchemy, pydantic, Typer and Berth before it
does anything, and the suite runs hundreds. This server (one per test process) imports them
once; each run is a child forked from it that executes `python -m berth.cli.main ARGS` as a new
interpreter would, with the caller's arguments, environment, working directory and standard
streams, and exits with the CLI's status.

What an import decides from the environment (the interpreter's PYTHON* settings, the locale,
Typer's and Rich's switches, Prometheus's multiprocess directory) was decided once, in the
server: a run whose environment differs in any of them gets a new interpreter instead.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import locale
import os
import pkgutil
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BERTH = [sys.executable, "-m", "berth.cli.main"]
# A forked child's exit status when it failed before the CLI started (no Berth verb exits so).
SETUP_FAILED = 70

# Variables read while a module is imported (or by the interpreter at start), by prefix.
_IMPORT_TIME_PREFIXES = ("PYTHON", "TYPER_", "_TYPER_", "LC_")
_IMPORT_TIME_NAMES = {
    "LANG",
    "LANGUAGE",
    "TERMINAL_WIDTH",
    "GITHUB_ACTIONS",
    "FORCE_COLOR",
    "PY_COLORS",
    "NO_COLOR",
    "TERM",
    "COLORTERM",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "PROMETHEUS_MULTIPROC_DIR",
    "TMPDIR",
}


def _decided_at_import(env: dict[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if name.upper() in _IMPORT_TIME_NAMES or name.startswith(_IMPORT_TIME_PREFIXES)
    }


# The server.


def _preload() -> None:
    import berth

    for module in pkgutil.walk_packages(berth.__path__, "berth."):
        importlib.import_module(module.name)


def _exit_status(code: object) -> int:
    """What the interpreter exits with for SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict[str, Any]) -> int:
    """Run the CLI as the request says; its exit status. Raises only before the CLI starts."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()  # TZ, which a new interpreter reads at start
    os.umask(request["umask"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = [sys.argv[0], *request["args"]]
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    # Run as __main__ afresh (its imports are what was preloaded).
    del sys.modules["berth.cli.main"]
    try:
        runpy.run_module("berth.cli.main", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exit:
        status = _exit_status(exit.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status


def serve(path: str) -> None:
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)  # EOF: the test process has gone
    waiting: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj == 0:
                if not os.read(0, 4096):
                    return
            elif key.fileobj == wakeup_read:
                os.read(wakeup_read, 4096)
            else:
                connection, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
                pid = os.fork()
                if pid == 0:
                    status = SETUP_FAILED
                    try:
                        for target, fd in enumerate(fds):
                            os.dup2(fd, target)
                            os.close(fd)
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        selector.close()
                        for held in (listener, connection, *waiting.values()):
                            held.close()
                        os.close(wakeup_read)
                        os.close(wakeup_write)
                        status = _run_child(json.loads(message))
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        os._exit(status)
                for fd in fds:
                    os.close(fd)
                waiting[pid] = connection
                connection.send(str(pid).encode())
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid)
            with contextlib.suppress(OSError):
                connection.send(str(os.waitstatus_to_exitcode(status)).encode())
            connection.close()


# The client.


class _Server:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="berth-forks-")
        self.path = os.path.join(self.directory, "socket")
        self.env = dict(os.environ)
        errors_path = os.path.join(self.directory, "errors.log")
        with open(errors_path, "ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.cli_forks", self.path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
                env=self.env,
            )
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            said = Path(errors_path).read_text(errors="replace")
            raise RuntimeError(f"the CLI fork server did not start: {said}")
        atexit.register(self.stop)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def serves(self, env: dict[str, str]) -> bool:
        return self.process.poll() is None and _decided_at_import(env) == _decided_at_import(
            self.env
        )


_server: _Server | None = None
_starting = threading.Lock()


def _forks() -> _Server:
    global _server
    with _starting:
        if _server is None or _server.process.poll() is not None:
            _server = _Server()
        return _server


def _umask() -> int:
    """This process's umask, which a child it starts would inherit (read, not set and reset:
    other threads may be creating files)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise RuntimeError("no Umask in /proc/self/status")


def _decoded(data: bytes) -> str:
    """As subprocess decodes a text-mode child's output."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def run_berth(
    args: list[str],
    env: dict[str, str],
    cwd: Path | str = ROOT,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`berth ARGS` with `env` in `cwd` (`input` on its standard input, else none), its output
    captured as text: as subprocess.run would run it, in a child of the fork server."""
    command = [*BERTH, *args]
    forks = _forks()
    if forks.serves(env):
        forked = _forked(forks, args, env, cwd, input, timeout)
        if forked.returncode != SETUP_FAILED:
            return forked
        # Nothing of the verb ran: said, and run again as a new process.
        warnings.warn(f"the fork server could not start {args}: {forked.stderr}", stacklevel=2)
    return subprocess.run(
        command, env=env, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout
    )


def _forked(
    forks: _Server,
    args: list[str],
    env: dict[str, str],
    cwd: Path | str,
    input: str | None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    command = [*BERTH, *args]
    with contextlib.ExitStack() as files:
        stdin: IO[bytes] = files.enter_context(tempfile.TemporaryFile())
        if input is not None:
            stdin.write(input.encode(locale.getpreferredencoding(False)))
            stdin.seek(0)
        stdout = files.enter_context(tempfile.TemporaryFile())
        stderr = files.enter_context(tempfile.TemporaryFile())
        channel = files.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        channel.connect(forks.path)
        request = {"args": args, "env": env, "cwd": str(cwd), "umask": _umask()}
        socket.send_fds(
            channel, [json.dumps(request).encode()], [f.fileno() for f in (stdin, stdout, stderr)]
        )
        pid = int(channel.recv(64))
        channel.settimeout(timeout)
        try:
            returncode = int(channel.recv(64))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(command, timeout) from None
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(
            command, returncode, _decoded(stdout.read()), _decoded(stderr.read())
        )


if __name__ == "__main__":
    serve(sys.argv[1])

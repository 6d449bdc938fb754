"""Commands run as typed at a terminal: standard input is a pseudo-terminal with the answer
typed ahead, standard output and error captured apart (what a script reading --json gets)."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path


def typed_at_terminal(
    words: list[str], answer: str, *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `words` with a terminal as standard input on which `answer` is typed."""
    controller, terminal = pty.openpty()
    try:
        # Held by the terminal until read, as keys typed ahead of a prompt are.
        os.write(controller, answer.encode())
        return subprocess.run(
            words,
            stdin=terminal,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(terminal)
        os.close(controller)

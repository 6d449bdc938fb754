"""The console's files as a browser receives them: where they are, and the headers that keep
the page from loading anything from elsewhere or being framed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import playwright

import berth.console
from tests.servers import BerthServer


def test_root_redirects_browsers_to_the_console(sqlite_server: BerthServer) -> None:
    with httpx.Client(base_url=sqlite_server.url) as client:
        root = client.get("/")
        assert root.status_code == 302
        assert root.headers["location"] == "/console/"
        assert client.get("/console").status_code in (301, 302, 307, 308)


def test_a_project_host_root_opens_the_console(sqlite_server: BerthServer) -> None:
    """A browser opening a registry host (a project's too) lands on the console there."""
    with httpx.Client(base_url=sqlite_server.url) as client:
        answer = client.get("/", headers={"Host": f"demo.local.localhost:{sqlite_server.port}"})
    assert answer.status_code == 302
    assert answer.headers["location"] == "/console/"


def test_the_page_and_its_modules_load_only_from_the_server(sqlite_server: BerthServer) -> None:
    with httpx.Client(base_url=sqlite_server.url) as client:
        page = client.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        # Every file the page names, and every module those import, is served here.
        pending = ["js/app.js", "style.css", "favicon.svg"]
        seen: set[str] = set()
        while pending:
            path = pending.pop()
            if path in seen:
                continue
            seen.add(path)
            answer = client.get(f"/console/{path}")
            assert answer.status_code == 200, path
            # (the SVG namespace is a name, not an address anything is fetched from)
            text = answer.text.replace("http://www.w3.org/2000/svg", "")
            assert "http://" not in text and "https://" not in text, f"{path} names another site"
            if path.endswith(".js"):
                assert answer.headers["content-type"].startswith(
                    ("text/javascript", "application/javascript")
                )
                base = path.rsplit("/", 1)[0]
                for imported in re.findall(r'from "\./([^"]+)"', answer.text):
                    pending.append(f"{base}/{imported}")
                for imported in re.findall(r'from "\.\./([^"]+)"', answer.text):
                    pending.append(f"js/{imported}")
        assert "js/views/management.js" in seen


def test_every_console_script_parses_as_a_module() -> None:
    """A syntax error in one module leaves the console blank, and plain `node --check` passes
    one (it reads these files as CommonJS and stops at `import`): parsed here as modules, by
    the Node.js that Playwright brings."""
    node = Path(playwright.__file__).parent / "driver" / "node"
    scripts = sorted((Path(berth.console.__file__).parent / "static").rglob("*.js"))
    assert len(scripts) > 20
    for script in scripts:
        with script.open("rb") as source:
            parsed = subprocess.run(
                [str(node), "--input-type=module", "--check"],
                stdin=source,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert parsed.returncode == 0, f"{script}: {parsed.stderr}"

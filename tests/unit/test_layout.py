"""docs/architecture.md's promise about the layout: no module in `berth/` is over 600 lines, so
that a module stays one responsibility a reader can hold (a module that grows past it is split
along its parts, as retention, manifests, uploads and the S3 store were)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOST_LINES = 600


def test_no_module_in_berth_is_over_600_lines() -> None:
    assert (
        f"no module in `berth/` is over {MOST_LINES} lines"
        in (ROOT / "docs" / "architecture.md").read_text()
    )
    over = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "berth").rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert over == {}, f"split these along their responsibilities: {over}"

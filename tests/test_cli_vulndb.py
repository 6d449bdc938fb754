"""`berth vulndb import` and `berth vulndb status` as an operator runs them, on the genuine
OSV records of tests/fixtures/osv."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from tests.servers import BERTH, ROOT

RECORDS = ROOT / "tests" / "fixtures" / "osv"


def berth(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*BERTH, "--data-dir", str(data_dir), *args])


def run(words: list[str]) -> subprocess.CompletedProcess[str]:
    """A command, with only its --data-dir pointing at the data."""
    env = {
        **os.environ,
        "BERTH_ADMIN_PASSWORD": "Vulndb-test-pass-1",
        "COLUMNS": "100",
        "TZ": "UTC",
    }
    for name in ("BERTH_DATA_DIR", "BERTH_CONFIG", "BERTH_DATABASE_URL"):
        env.pop(name, None)
    return subprocess.run(
        words,
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_vulndb_import_and_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert berth(data, "init").returncode == 0
    empty = berth(data, "vulndb", "status")
    assert "The vulnerability database is empty" in empty.stdout

    folder = tmp_path / "osv"
    shutil.copytree(RECORDS, folder)
    (folder / "truncated.json").write_text('{"id": "X-1", ')
    imported = berth(data, "vulndb", "import", str(folder))

    assert imported.returncode == 1
    assert f"Imported {folder}: 6 added, 0 replaced by newer records, 0 unchanged." in (
        " ".join(imported.stdout.split())
    )
    assert f"refused: {folder / 'truncated.json'}: (file): not JSON" in (
        " ".join(imported.stderr.split())
    )

    again = berth(data, "vulndb", "import", str(RECORDS / "PYSEC-2023-74.json"), "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["unchanged"] == 1

    shown = berth(data, "vulndb", "status")
    assert shown.returncode == 0
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    assert lines[0].startswith("6 records; last import ")
    assert "npm 3" in lines and "PyPI 1" in lines and "Go 1" in lines
    assert any(line.startswith("PYSEC 1 2023-06-05") for line in lines)


def test_a_file_nested_too_deeply_is_refused_and_the_others_imported(tmp_path: Path) -> None:
    """JSON nested deeper than the parser goes is one refused file, not an import that stops
    with a traceback before the other files."""
    data = tmp_path / "data"
    assert berth(data, "init").returncode == 0
    folder = tmp_path / "osv"
    shutil.copytree(RECORDS, folder)
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    imported = berth(data, "vulndb", "import", str(folder))

    assert imported.returncode == 1, imported.stderr
    assert "Traceback" not in imported.stderr and "RecursionError" not in imported.stderr
    assert f"Imported {folder}: 6 added," in " ".join(imported.stdout.split())
    assert (
        f"refused: {folder / 'deep.json'}: (file): not an OSV record: JSON nested too deeply"
        in (" ".join(imported.stderr.split()))
    )


def test_the_import_command_it_prints_works_as_printed_with_the_data_directory_it_was_given(
    tmp_path: Path,
) -> None:
    """Run with --data-dir, `vulndb status` on an empty database names the import command with
    that directory: pasted with a real PATH, it imports there."""
    data = tmp_path / "data"
    assert berth(data, "init").returncode == 0
    empty = " ".join(berth(data, "vulndb", "status").stdout.split())
    printed = empty.split("import OSV records with `", 1)[1].split("`", 1)[0]
    assert shlex.split(printed)[1:] == ["--data-dir", str(data), "vulndb", "import", "PATH"]
    words = [str(RECORDS) if word == "PATH" else word for word in shlex.split(printed)]
    imported = run(words)
    assert imported.returncode == 0, imported.stderr
    assert "6 added" in " ".join(imported.stdout.split())
    assert "6 records" in " ".join(berth(data, "vulndb", "status").stdout.split())


def test_a_file_over_16_mib_is_refused_saying_how_to_import_its_records(tmp_path: Path) -> None:
    """One list of genuine records joined past the per-file limit: refused by its size, the
    message says to import them as a directory or a zip instead; nothing is imported."""
    data = tmp_path / "data"
    assert berth(data, "init").returncode == 0
    records = [json.loads(f.read_text()) for f in sorted(RECORDS.glob("*.json"))]
    huge = tmp_path / "huge.json"
    text = json.dumps(records)
    huge.write_text("[" + ",".join([text[1:-1]] * (17 * 1024 * 1024 // len(text) + 1)) + "]")
    assert huge.stat().st_size > 16 * 1024 * 1024

    imported = berth(data, "vulndb", "import", str(huge))

    assert imported.returncode == 1
    assert " ".join(imported.stderr.split()) == (
        f"refused: {huge}: (file): larger than 16 MiB, the most one file may hold; import its "
        "records as a directory of files or a zip of them (one record per file, as OSV's "
        "all.zip has them)"
    )
    assert "0 added" in " ".join(imported.stdout.split())
    assert "16 MiB" in " ".join(berth(data, "vulndb", "import", "--help").stdout.split())

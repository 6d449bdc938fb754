"""Numbers given to the CLI (ids, limits, pages, a quota) out of what the database holds: each
is refused as a bad value (exit status 2) naming it, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.in_process import in_process
from tests.servers import BerthServer

HUGE = "99999999999999999999"  # past a 64-bit integer: SQLite cannot compare with it


@pytest.fixture(scope="module")
def verbs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    berth = BerthServer(Path(tmp_path_factory.mktemp("numbers")) / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    verbs.cli("project", "create", "demo")
    verbs.cli("repo", "create", "demo/app")
    return verbs


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["image", "list", "demo/app", "--page", HUGE], "--page"),
        (["gc", "history", "demo", "--limit", HUGE], "--limit"),
        (["retention", "history", "demo", "--limit", HUGE], "--limit"),
        (["audit", "demo", "--limit", HUGE], "--limit"),
        (["audit", "--limit", HUGE], "--limit"),
        (["immutability", "remove", "demo", HUGE, "--yes"], "RULE_ID"),
        (["immutability", "remove", "demo", "0", "--yes"], "RULE_ID"),
        (["webhook", "update", "demo", HUGE, "--description", "x"], "WEBHOOK_ID"),
        (["webhook", "delete", "demo", HUGE, "--yes"], "WEBHOOK_ID"),
        (["webhook", "test", "demo", HUGE], "WEBHOOK_ID"),
        (["webhook", "new-secret", "demo", HUGE], "WEBHOOK_ID"),
        (["webhook", "deliveries", "demo", HUGE], "WEBHOOK_ID"),
        (["webhook", "redeliver", "demo", HUGE, "1"], "WEBHOOK_ID"),
        (["webhook", "redeliver", "demo", "1", "3000000000"], "DELIVERY_ID"),
    ],
)
def test_a_number_out_of_range_is_a_bad_value(verbs: Any, args: list[str], named: str) -> None:
    refused = verbs.cli(*args, check=False)
    assert refused.returncode == 2, refused
    assert "Traceback" not in refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert f"Invalid value for '{named}'" in said or f"Invalid value for {named}" in said, said


def test_a_quota_past_the_largest_is_refused_as_the_api_refuses_it(verbs: Any) -> None:
    for quota in (HUGE, "1000001", "-5"):
        refused = verbs.cli("project", "quota", "demo", quota, check=False)
        assert refused.returncode == 2, refused
        said = " ".join(refused.stderr.split())
        assert "the repository quota must be from 0 to 1,000,000" in said, said
    # A word that is no option and no number is said to be neither.
    typo = verbs.cli("project", "quota", "demo", "--jsn", check=False)
    assert typo.returncode == 2 and "not '--jsn'" in typo.stderr, typo
    # The quota stays as it was, and the largest one is taken.
    assert verbs.cli_json("project", "quota", "demo")["quota_is_default"] is True
    assert verbs.cli_json("project", "quota", "demo", "1000000")["repository_quota"] == 1_000_000

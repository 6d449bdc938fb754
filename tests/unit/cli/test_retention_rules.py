"""`berth retention set --rule`: the text a person types, as a rule or as a refusal (exit 2)."""

from __future__ import annotations

import pytest
import typer

from berth.cli.retention import parse_rule
from berth.domain.retention import Keep, Rule


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("last=10", Rule(Keep.LAST, count=10)),
        ("tagged=v*,repositories=app/*", Rule(Keep.TAGGED, pattern="v*", repositories="app/*")),
        ("pushed_within=30", Rule(Keep.PUSHED_WITHIN, days=30.0)),
        ("pulled_within=7.5,tags=release-*", Rule(Keep.PULLED_WITHIN, days=7.5, tags="release-*")),
        ("untagged_within=1", Rule(Keep.UNTAGGED_WITHIN, days=1.0)),
    ],
)
def test_every_kind_of_rule_is_read(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("last", "'last' is not NAME=VALUE"),
        ("last=", "'last=' is not NAME=VALUE"),
        ("newest=3", "it starts with what it keeps, one of last, pushed_within"),
        ("last=ten", "'ten' is not a number"),
        ("pushed_within=a month", "'a month' is not a number"),
        ("last=2,colour=red", "'colour' is not repositories or tags"),
        ("repositories=app,last=2", "it starts with what it keeps"),
    ],
)
def test_a_rule_that_is_not_one_exits_2_saying_why(
    text: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as exited:
        parse_rule(text)
    assert exited.value.exit_code == 2
    assert said in " ".join(capsys.readouterr().err.split())

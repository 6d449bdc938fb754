"""The retention planner: one named scenario per pitfall other registries met."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from berth.domain.patterns import glob_matches
from berth.domain.retention import (
    Keep,
    Manifest,
    Rule,
    RuleInvalid,
    images_of,
    plan,
)
from berth.domain.tag_rules import ImmutableTagRule

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def d(n: int) -> str:
    return f"sha256:{n:064x}"


def image(
    n: int,
    *tags: str,
    repo: str = "app",
    age_days: float = 0,
    pulled_days: float | None = None,
    children: tuple[str, ...] = (),
    subject: str | None = None,
    sub: str = "",
) -> Manifest:
    return Manifest(
        repository=repo,
        image=sub,
        digest=d(n),
        tags=frozenset(tags),
        pushed_at=NOW - dt.timedelta(days=age_days),
        last_pulled_at=None if pulled_days is None else NOW - dt.timedelta(days=pulled_days),
        children=children,
        subject=subject,
    )


def deleted(snapshot: list[Manifest], *rules: Rule, **kwargs: object) -> list[str]:
    result = plan(snapshot, rules, NOW, **kwargs)  # type: ignore[arg-type]
    return [x.image.digest for x in result.deletions]


def test_keep_last_n_keeps_the_newest_per_repository() -> None:
    snapshot = [image(i, f"b{i}", age_days=10 - i) for i in range(5)]
    snapshot += [image(100 + i, repo="other", age_days=10 - i) for i in range(3)]
    assert deleted(snapshot, Rule(Keep.LAST, count=2)) == [d(0), d(1), d(2), d(100)]


def test_an_image_no_rule_scopes_is_untouched() -> None:
    snapshot = [image(1, "old", age_days=100), image(2, "old", repo="infra", age_days=100)]
    result = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, repositories="app", days=7)], NOW)
    assert [x.image.digest for x in result.deletions] == [d(1)]
    assert result.untouched == 1


def test_any_rule_keeping_an_image_keeps_it() -> None:
    snapshot = [image(1, "v1", age_days=100), image(2, "ci-2", age_days=100), image(3, age_days=1)]
    rules = [Rule(Keep.TAGGED, pattern="v*"), Rule(Keep.PUSHED_WITHIN, days=7)]
    assert deleted(snapshot, *rules) == [d(2)]


def test_shared_digest_several_tags_kept_when_any_tag_keeps_it() -> None:
    # Harbor #9215: one digest tagged `ci-41` and `v1.2`; a rule keeping v* keeps the image,
    # and with it its ci tag: nothing on that digest is deleted.
    snapshot = [image(1, "ci-41", "v1.2", age_days=50), image(2, "ci-42", age_days=40)]
    result = plan(snapshot, [Rule(Keep.TAGGED, pattern="v*")], NOW)
    assert [(x.image.digest, x.image.tags) for x in result.deletions] == [
        (d(2), frozenset({"ci-42"}))
    ]


def test_shared_digest_counts_once_for_keep_last() -> None:
    snapshot = [image(1, "latest", "v3", age_days=1), image(2, "v2", age_days=2)]
    snapshot.append(image(3, "v1", age_days=3))
    assert deleted(snapshot, Rule(Keep.LAST, count=2)) == [d(3)]


def test_multi_arch_index_children_go_with_the_index_and_are_not_images() -> None:
    amd, arm = image(11, age_days=30), image(12, age_days=30)
    old_index = image(10, "old", age_days=30, children=(d(11), d(12)))
    # A newer index shares the arm64 manifest.
    arm2 = image(22, age_days=1)
    new_index = image(20, "new", age_days=1, children=(d(12), d(22)))
    snapshot = [amd, arm, old_index, arm2, new_index]
    assert len(images_of(snapshot)) == 2  # children are not images
    result = plan(snapshot, [Rule(Keep.LAST, count=1)], NOW)
    assert len(result.deletions) == 1
    deletion = result.deletions[0]
    assert deletion.image.digest == d(10)
    # The shared child stays while the kept index lists it.
    assert [c.digest for c in deletion.children] == [d(11)]


def test_a_multi_platform_push_under_way_neither_counts_nor_goes() -> None:
    """A run between a multi-platform push's platform manifests (untagged, pushed first) and
    its index: within the settling time they are in no rule's scope, so `last` does not count
    them as the newest images (deleting the release before in their place) and `tagged`
    does not delete them under the push. Once settled they are judged like any image."""
    releases = [image(1, "v1", age_days=2), image(2, "v2", age_days=1)]
    under_way = [image(11, age_days=60 / 86_400), image(12, age_days=60 / 86_400)]
    snapshot = releases + under_way
    hour = dt.timedelta(hours=1)
    # Without settling, both releases went.
    assert deleted(snapshot, Rule(Keep.LAST, count=2)) == [d(1), d(2)]
    assert deleted(snapshot, Rule(Keep.LAST, count=2), settling=hour) == []
    result = plan(snapshot, [Rule(Keep.TAGGED, pattern="v*")], NOW, settling=hour)
    assert result.deletions == () and result.untouched == 2
    # Past the settling time, still untagged (no index came): images of their own.
    settled = [image(11, age_days=2 / 24), image(12, age_days=2 / 24)]
    assert deleted(releases + settled, Rule(Keep.LAST, count=2), settling=hour) == [d(1), d(2)]
    # A tagged image is judged at once, however new.
    fresh = image(3, "v3", age_days=60 / 86_400)
    assert deleted([*releases, fresh], Rule(Keep.LAST, count=2), settling=hour) == [d(1)]


def test_a_nested_index_goes_all_the_way_down_except_what_a_kept_index_lists() -> None:
    """index -> index -> image manifests: the grandchildren go too (none is left behind as an
    untagged image), but one a kept index also lists stays, and so does a nested index a kept
    index lists, with what it lists."""
    amd, arm, s390x = image(11, age_days=30), image(12, age_days=30), image(13, age_days=30)
    inner = image(10, age_days=30, children=(d(11), d(12)))
    kept_inner = image(14, age_days=30, children=(d(13),))
    outer = image(1, "old", age_days=30, children=(d(10), d(14)))
    signature = image(15, age_days=30, subject=d(12))  # of a grandchild: goes with it
    ppc = image(22, age_days=1)
    new_index = image(20, "new", age_days=1, children=(d(11), d(14), d(22)))
    snapshot = [amd, arm, s390x, inner, kept_inner, outer, signature, ppc, new_index]
    assert [i.digest for i in images_of(snapshot)] == [d(1), d(20)]
    result = plan(snapshot, [Rule(Keep.LAST, count=1)], NOW)
    [deletion] = result.deletions
    assert deletion.image.digest == d(1)
    assert [c.digest for c in deletion.children] == [d(10), d(12)]
    assert [r.digest for r in deletion.referrers] == [d(15)]
    # When the new index goes too, everything goes: nothing is left over as an image.
    result = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=0.5)], NOW)
    going = {m.digest for x in result.deletions for m in (x.image, *x.children, *x.referrers)}
    assert going == {m.digest for m in snapshot}
    # Each manifest goes with exactly one of the images (the one deleted last holds it).
    assert sum(len(x.children) for x in result.deletions) == 6


def test_a_platform_manifest_with_a_tag_of_its_own_stays_when_its_index_goes() -> None:
    """`docker manifest create` tags each platform: a tag names an image someone can pull by
    it, so it stays (with its referrers, and what it lists), as the API's image delete keeps
    it; its tag still counts as the index's for the rules."""
    amd, arm = image(11, age_days=30), image(12, "v1-arm64", age_days=30)
    arm_signature = image(13, "arm.sig", age_days=30, subject=d(12))
    inner_child = image(14, age_days=30)
    tagged_inner = image(15, "inner", age_days=30, children=(d(14),))
    index = image(10, age_days=30, children=(d(11), d(12), d(15)))
    snapshot = [amd, arm, arm_signature, inner_child, tagged_inner, index]
    [deletion] = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=7)], NOW).deletions
    assert deletion.image.digest == d(10)
    assert [c.digest for c in deletion.children] == [d(11)]
    assert deletion.referrers == ()
    # A rule keeping the platform's tag keeps the index (the listing shows it with it), and a
    # protected tag on it no longer does: deleting the index leaves the tag where it is.
    assert deleted(snapshot, Rule(Keep.TAGGED, pattern="v1-*")) == []
    protected = plan(
        snapshot, [Rule(Keep.PUSHED_WITHIN, days=7)], NOW, protected=lambda _p, t: "." in t
    )
    assert [x.image.digest for x in protected.deletions] == [d(10)]


def test_a_referrer_an_index_that_stays_lists_stays_with_its_referrers() -> None:
    subject = image(1, "old", age_days=30)
    signature = image(2, age_days=30, subject=d(1))
    countersignature = image(3, age_days=30, subject=d(2))
    sbom = image(4, age_days=30, subject=d(1))
    holder = image(5, "holder", age_days=1, children=(d(2),))
    snapshot = [subject, signature, countersignature, sbom, holder]
    [deletion] = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=7)], NOW).deletions
    assert deletion.image.digest == d(1)
    assert [r.digest for r in deletion.referrers] == [d(4)]
    # With the index going too, the signature goes, once, and its countersignature with it.
    result = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=0.5)], NOW)
    going = [m.digest for x in result.deletions for m in (x.image, *x.children, *x.referrers)]
    assert sorted(going) == sorted(m.digest for m in snapshot)


def test_referrers_go_with_their_subject_and_never_keep_it() -> None:
    subject = image(1, "v1", age_days=90)
    signature = image(2, age_days=0, subject=d(1))  # pushed today
    sbom_signature = image(3, age_days=0, subject=d(2))  # a referrer of the referrer
    snapshot = [subject, signature, sbom_signature]
    result = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=7)], NOW)
    assert [x.image.digest for x in result.deletions] == [d(1)]
    assert [r.digest for r in result.deletions[0].referrers] == [d(2), d(3)]


def test_a_kept_image_keeps_its_referrers() -> None:
    snapshot = [image(1, "v1", age_days=1), image(2, age_days=90, subject=d(1))]
    assert deleted(snapshot, Rule(Keep.PUSHED_WITHIN, days=7)) == []


def test_a_broad_tag_scope_leaves_other_images_alone() -> None:
    # Harbor #16065: a rule meant for CI tags must not delete releases. With the tag scope
    # `ci-*`, images without a ci- tag are outside the rule and untouched.
    snapshot = [image(i, f"ci-{i}", age_days=20 - i) for i in range(5)]
    snapshot += [image(50, "v1.0", age_days=100), image(51, age_days=100)]
    result = plan(snapshot, [Rule(Keep.LAST, tags="ci-*", count=2)], NOW)
    assert [x.image.digest for x in result.deletions] == [d(0), d(1), d(2)]
    assert result.untouched == 2


def test_a_promoted_image_is_outside_a_rule_for_other_tags() -> None:
    # A CI build promoted by adding a release tag carries both: a rule scoped to `ci-*` must
    # not delete the release with it. Only images whose every tag is a ci- tag are in scope.
    snapshot = [
        image(1, "ci-1", "rel-1", age_days=3),
        image(2, "ci-2", age_days=2),
        image(3, "ci-3", age_days=1),
    ]
    result = plan(snapshot, [Rule(Keep.LAST, count=1, tags="ci-*")], NOW)
    assert [x.image.digest for x in result.deletions] == [d(2)]
    assert (result.kept, result.untouched) == (1, 1)


def test_a_tag_scoped_rule_leaves_untagged_images_alone() -> None:
    snapshot = [image(1, age_days=90), image(2, "ci-2", age_days=90), image(3, "ci-3")]
    result = plan(snapshot, [Rule(Keep.PUSHED_WITHIN, days=7, tags="ci-*")], NOW)
    assert [x.image.digest for x in result.deletions] == [d(2)]
    assert result.untouched == 1
    # Without a tag scope, the untagged image is in the rule's scope (and goes).
    assert deleted(snapshot, Rule(Keep.PUSHED_WITHIN, days=7)) == [d(1), d(2)]


def test_a_platform_manifest_tag_outside_the_scope_keeps_its_index_out_of_it() -> None:
    # An index's tags are its own and its platform manifests'.
    snapshot = [
        image(11, "rel-amd64", age_days=30),
        image(10, "ci-10", age_days=30, children=(d(11),)),
        image(20, "ci-20", age_days=30),
    ]
    assert deleted(snapshot, Rule(Keep.PUSHED_WITHIN, days=7, tags="ci-*")) == [d(20)]


# (repository pattern, full name, covered): retention and immutable tag rules read each the same.
SHARED_PATTERNS = [
    ("nest", "nest", True),
    ("nest", "nest/appa", True),  # a repository covers its images
    ("nest", "nest/appa/x", True),
    ("nest", "nested/appa", False),
    ("nest/*", "nest/appa", True),
    ("nest/*", "nest", False),
    ("nest/app[ab]", "nest/appb", True),
    ("nest/app[ab]", "nest/appc", False),
    ("nest/app[!a]", "nest/appa", False),
    ("nest/app?", "nest/appb", True),
    ("ne*", "nest/appa", True),
    ("*", "anything/at/all", True),
]


@pytest.mark.parametrize(("pattern", "name", "covered"), SHARED_PATTERNS)
def test_retention_and_immutable_tag_rules_read_a_repository_pattern_alike(
    pattern: str, name: str, covered: bool
) -> None:
    repository, _, sub = name.partition("/")
    snapshot = [image(1, "2", repo=repository, sub=sub, age_days=30)]
    rule = Rule(Keep.PUSHED_WITHIN, repositories=pattern, days=1)
    rule.check()
    assert (deleted(snapshot, rule) == [d(1)]) is covered
    assert ImmutableTagRule(1, "2", pattern).covers(name, "2") is covered


@pytest.mark.parametrize(
    ("pattern", "tag", "matched"),
    [("v[0-9]*", "v2", True), ("v[0-9]*", "vx", False), ("rel-?", "rel-1", True)],
)
def test_retention_and_immutable_tag_rules_read_a_tag_pattern_alike(
    pattern: str, tag: str, matched: bool
) -> None:
    snapshot = [image(1, tag, age_days=30)]
    rule = Rule(Keep.TAGGED, pattern=pattern)
    rule.check()
    assert (deleted(snapshot, rule) == []) is matched
    assert ImmutableTagRule(1, pattern, None).covers("app", tag) is matched


def test_a_broad_repository_pattern_matches_nested_names() -> None:
    snapshot = [image(1, "a", sub="web", age_days=9), image(2, "b", repo="apps", age_days=9)]
    assert deleted(snapshot, Rule(Keep.PUSHED_WITHIN, repositories="app*", days=1)) == [
        d(1),
        d(2),
    ]
    assert deleted(snapshot, Rule(Keep.PUSHED_WITHIN, repositories="app/*", days=1)) == [d(1)]


def test_protected_tags_are_never_deleted() -> None:
    snapshot = [image(1, "v1", age_days=90), image(2, "ci-1", age_days=90)]
    result = plan(
        snapshot,
        [Rule(Keep.PUSHED_WITHIN, days=7)],
        NOW,
        protected=lambda path, tag: tag.startswith("v"),
    )
    assert [x.image.digest for x in result.deletions] == [d(2)]
    assert result.protected == 1


def test_a_protected_tag_on_a_referrer_keeps_its_subject() -> None:
    snapshot = [image(1, age_days=90), image(2, "sig", age_days=90, subject=d(1))]
    result = plan(
        snapshot, [Rule(Keep.PUSHED_WITHIN, days=7)], NOW, protected=lambda _p, t: t == "sig"
    )
    assert result.deletions == ()


def test_untagged_older_than_days_are_removed_and_tagged_stay() -> None:
    snapshot = [image(1, "v1", age_days=90), image(2, age_days=90), image(3, age_days=1)]
    assert deleted(snapshot, Rule(Keep.UNTAGGED_WITHIN, days=7)) == [d(2)]


def test_keep_by_pull_time() -> None:
    snapshot = [
        image(1, "a", age_days=90, pulled_days=1),
        image(2, "b", age_days=90, pulled_days=30),
        image(3, "c", age_days=90),
    ]
    assert deleted(snapshot, Rule(Keep.PULLED_WITHIN, days=7)) == [d(2), d(3)]


def test_rules_are_checked() -> None:
    with pytest.raises(RuleInvalid, match="needs 'count'"):
        Rule(Keep.LAST).check()
    with pytest.raises(RuleInvalid, match="takes no 'days'"):
        Rule(Keep.LAST, count=1, days=2).check()
    with pytest.raises(RuleInvalid, match="pattern"):
        Rule(Keep.TAGGED, pattern="v 1").check()
    Rule(Keep.TAGGED, repositories="team/*", pattern="release-*").check()
    Rule(Keep.TAGGED, repositories="team-[ab]", pattern="v[0-9]*").check()  # classes, as rules'
    Rule(Keep.LAST, count=1, tags="ci-[!x]*").check()


@pytest.mark.parametrize(
    ("rule", "refused"),
    [
        (Rule(Keep.LAST, count=100_001), "count must be between 1 and 100000"),
        (Rule(Keep.LAST, count=-1), "count must be between 1 and 100000"),
        # One typo would delete every image of the project no other rule keeps.
        (Rule(Keep.LAST, count=0), r"between 1 and 100000 \(last=0 would keep no image"),
        (Rule(Keep.PUSHED_WITHIN, days=0), r"more than 0 .*\(pushed_within=0 would keep no"),
        (Rule(Keep.PULLED_WITHIN, days=0), r"more than 0 .*\(pulled_within=0 would keep no"),
        (Rule(Keep.UNTAGGED_WITHIN, days=0), r"untagged_within=0 would delete each untagged"),
        (Rule(Keep.PUSHED_WITHIN, days=36_501), "days must be more than 0 and at most 36500"),
        (Rule(Keep.UNTAGGED_WITHIN, days=-0.5), "days must be more than 0 and at most 36500"),
        (Rule(Keep.LAST, count=1, repositories="team app"), "repositories: invalid repository"),
        (Rule(Keep.LAST, count=1, repositories="App"), "repositories: invalid repository"),
        (Rule(Keep.LAST, count=1, repositories="../app"), "repositories: .* can match nothing"),
        (Rule(Keep.LAST, count=1, tags="-rc*"), "tags: .* can match nothing"),
        (Rule(Keep.TAGGED, pattern=".x"), "pattern: .* can match nothing"),
        (Rule(Keep.LAST, count=1, tags="v/1"), "tags: invalid tag pattern"),
        (Rule(Keep.LAST, count=1, tags="v[1"), r"each '\[' needs its '\]'"),
        (Rule(Keep.TAGGED, pattern="v" * 129), "pattern: a tag pattern has at most 128"),
        (Rule(Keep.TAGGED, pattern="v*", count=3), r"takes no 'count' \(it needs 'pattern'\)"),
        (Rule(Keep.PULLED_WITHIN), "needs 'days'"),
    ],
)
def test_a_rule_out_of_bounds_is_refused_saying_what(rule: Rule, refused: str) -> None:
    with pytest.raises(RuleInvalid, match=refused):
        rule.check()


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        (Rule(Keep.LAST, count=5), "keep the 5 most recently pushed images (in *)"),
        (Rule(Keep.LAST, count=1), "keep the 1 most recently pushed image (in *)"),
        (
            Rule(Keep.PUSHED_WITHIN, days=30, repositories="app/*"),
            "keep images pushed within 30 days (in app/*)",
        ),
        (Rule(Keep.PULLED_WITHIN, days=7.5), "keep images pulled within 7.5 days (in *)"),
        (
            Rule(Keep.TAGGED, pattern="v*", tags="v*"),
            "keep images with a tag matching v* (in *, images whose tags all match v*)",
        ),
        (Rule(Keep.UNTAGGED_WITHIN, days=2), "remove untagged images older than 2 days (in *)"),
    ],
)
def test_each_kind_of_rule_describes_itself(rule: Rule, said: str) -> None:
    """What `berth retention show` and the console list for a project's rules."""
    rule.check()
    assert rule.describe() == said


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        ("*", "", True),
        ("*", "app/web/x", True),  # `*` crosses slashes
        ("app*", "app/web", True),
        ("app/*", "apps", False),
        ("v?.0", "v1.0", True),
        ("v?.0", "v10.0", False),  # `?` is one character
        ("v1.0", "v1x0", False),  # `.` is literal
        ("v1.*-rc", "v1.2.3-rc", True),
        ("*-rc", "v1-rc-2", False),  # the whole value must match
        ("v[0-9]*", "v1.0", True),  # a class, as immutable tag rules read it
        ("v[0-9]*", "vx", False),
        ("[!v]*", "latest", True),
        ("[!v]*", "v1", False),
    ],
)
def test_a_pattern_matches_as_documented(pattern: str, value: str, matched: bool) -> None:
    assert glob_matches(pattern, value) is matched


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        ("*a*a*a*a*a*a*a*b", False),  # a backtracking matcher: minutes
        (("*a" * 127)[:254] + "b", False),  # 255 characters, the most a pattern may have
        ("*?" * 127 + "b", False),
        ("?*" * 127, True),
        (("*" + "a" * 10) * 23 + "b", False),
        ("*a" * 100 + "*", True),
    ],
)
def test_a_pathological_pattern_matches_in_linear_time(pattern: str, matched: bool) -> None:
    """A project admin chooses the patterns and a run (or a dry run) matches each against
    every tag of the project: many stars against a long tag must not take exponential time.
    CPU time, so that other processes on the machine do not count."""
    value = "a" * 128  # the longest tag
    started = time.process_time()
    for candidate in (value, f"{value}/{value}"):
        assert glob_matches(pattern, candidate) is matched
    assert time.process_time() - started < 0.25


def ci_images(count: int) -> list[Manifest]:
    """`count` images of a CI repository, two tags each, one pushed every 86 seconds."""
    return [image(i, f"ci-{i}", f"sha-{i}", age_days=i / 1000) for i in range(count)]


def test_ten_thousand_images_plan_quickly_and_in_linear_time() -> None:
    """A repository at the 10,000-image limit plans in well under a second of CPU time, and
    ten times the images cost about ten times as much (a sort: a little more), not a hundred.
    Timed in this process's CPU time, the best of a few alternated tries: wall time on a loaded
    machine (other processes on the CPUs) says nothing about the planner."""
    rules = [Rule(Keep.LAST, count=10)]
    snapshots = {size: ci_images(size) for size in (1_000, 10_000)}
    best = dict.fromkeys(snapshots, float("inf"))
    for _ in range(3):
        for size, snapshot in snapshots.items():
            started = time.process_time()
            result = plan(snapshot, rules, NOW)
            best[size] = min(best[size], time.process_time() - started)
            assert len(result.deletions) == size - 10
    assert best[10_000] < 2.0, best
    # Linear: about 10 (13 measured); quadratic: 100 (a list for a set in `plan`: 66, under
    # the bound above). `max`: a clock too coarse to see the small plan divides by nothing.
    assert best[10_000] / max(best[1_000], 0.001) < 40, best

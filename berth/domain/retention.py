"""Retention: which images a project's rules keep, and so which a run deletes.

How rules combine, in one sentence (the console and the docs say the same):

    A rule keeps; an image is kept when any rule keeps it, and an image that no rule's scope
    covers is never touched.

Precisely: each rule has a *scope* (a repository pattern and, optionally, a tag pattern: the rule
then covers only tagged images whose every tag matches it; see `berth.domain.patterns`) and one
*selector* saying which images of its scope it keeps. An image covered by at least one rule's scope and kept by none is deleted; an
image with a protected tag (tag overwrite off, or an immutable tag rule) is always kept.

The unit is the image (a top-level manifest): its tags go with it, and an image with several
tags is kept when any of them keeps it, but covered by a tag-scoped rule only when all of them
match its tag pattern (a CI build promoted by adding a release tag leaves a rule for CI tags). An
index's platform manifests go with their index (never counted as images of their own, never
deleted while an index that stays lists them); their tags are judged as the index's, but one
with a tag of its own is an image someone named and stays, an image of its own once its index
is gone (as the management API's image delete keeps it). A referrer (a signature, an SBOM: a
manifest whose `subject` is stored) goes with its subject, unless an index that stays lists it,
and never keeps it alive.

An untagged image pushed within the settling time (`gc_grace_period`) is outside every rule's
scope: it may be a platform manifest of a multi-platform push whose index has not arrived yet,
which a `last` rule would count as the newest image (deleting an older release in its place)
and a `tagged` rule would delete under the push.

`plan` is a pure function over a snapshot of the project's manifests.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from berth.domain.patterns import (
    glob_matches,
    repository_matches,
    repository_pattern_problem,
    tag_pattern_problem,
)

COMBINATION_RULE = (
    "A rule keeps; an image is kept when any rule keeps it, and an image that no rule's scope "
    "covers is never touched."
)
MAX_RULES = 20


class Keep(StrEnum):
    """What a rule keeps of the images in its scope."""

    LAST = "last"  # the `count` most recently pushed images of each repository
    PUSHED_WITHIN = "pushed_within"  # images pushed within `days`
    PULLED_WITHIN = "pulled_within"  # images pulled within `days`
    TAGGED = "tagged"  # images with a tag matching `pattern`
    UNTAGGED_WITHIN = "untagged_within"  # every tagged image; untagged ones pushed within `days`


class RuleInvalid(ValueError):
    """A rule that cannot be applied (said for a person)."""


# What a rule of `days=0` would do, for its refusal.
_ZERO_DAYS = {
    Keep.PUSHED_WITHIN: "would keep no image and delete every image in the rule's scope",
    Keep.PULLED_WITHIN: "would keep no image and delete every image in the rule's scope",
    Keep.UNTAGGED_WITHIN: (
        "would delete each untagged image as soon as a run sees it, the platform manifests "
        "of a multi-platform push still under way among them"
    ),
}


@dataclass(frozen=True, slots=True)
class Rule:
    keep: Keep
    repositories: str = "*"  # a repository pattern (`berth.domain.patterns`)
    tags: str | None = None  # scope: only tagged images whose every tag matches this
    count: int | None = None  # LAST
    days: float | None = None  # PUSHED_WITHIN, PULLED_WITHIN, UNTAGGED_WITHIN
    pattern: str | None = None  # TAGGED

    def check(self) -> None:
        """Raise `RuleInvalid` unless the rule has exactly what its selector needs."""
        checks = (
            ("repositories", self.repositories, repository_pattern_problem),
            ("tags", self.tags, tag_pattern_problem),
            ("pattern", self.pattern, tag_pattern_problem),
        )
        for name, value, problem_of in checks:
            if value is not None and (problem := problem_of(value)) is not None:
                raise RuleInvalid(f"{name}: {problem}")
        needs = {
            Keep.LAST: "count",
            Keep.PUSHED_WITHIN: "days",
            Keep.PULLED_WITHIN: "days",
            Keep.UNTAGGED_WITHIN: "days",
            Keep.TAGGED: "pattern",
        }[self.keep]
        for name in ("count", "days", "pattern"):
            present = getattr(self, name) is not None
            if name == needs and not present:
                raise RuleInvalid(f"a '{self.keep}' rule needs '{name}'")
            if name != needs and present:
                raise RuleInvalid(f"a '{self.keep}' rule takes no '{name}' (it needs '{needs}')")
        # 0 keeps nothing: with the default scope, one typo would delete every image of the
        # project that no other rule keeps.
        if self.count is not None and not 1 <= self.count <= 100_000:
            raise RuleInvalid(
                "count must be between 1 and 100000 (last=0 would keep no image and delete "
                "every image in the rule's scope)"
            )
        if self.days is not None and not 0 < self.days <= 36_500:
            raise RuleInvalid(
                f"days must be more than 0 and at most 36500 ({self.keep}=0 "
                f"{_ZERO_DAYS[self.keep]})"
            )

    def covers(self, image: Image) -> bool:
        """Whether `image` is in the rule's scope: its repository pattern covers the image's
        name and, for a rule with a tag pattern, the image is tagged and every tag of it
        matches (an image that also carries another tag, such as a CI build promoted by
        adding a release tag, is outside the rule)."""
        if not repository_matches(self.repositories, image.path):
            return False
        if self.tags is None:
            return True
        pattern = self.tags
        return bool(image.tags) and all(glob_matches(pattern, tag) for tag in image.tags)

    def describe(self) -> str:
        scope = f"in {self.repositories}"
        if self.tags is not None:
            scope += f", images whose tags all match {self.tags}"
        days = f"{self.days:g}" if self.days is not None else "?"
        if self.keep is Keep.LAST:
            count = self.count if self.count is not None else 0
            what = f"keep the {count} most recently pushed {'image' if count == 1 else 'images'}"
        elif self.keep is Keep.PUSHED_WITHIN:
            what = f"keep images pushed within {days} days"
        elif self.keep is Keep.PULLED_WITHIN:
            what = f"keep images pulled within {days} days"
        elif self.keep is Keep.TAGGED:
            what = f"keep images with a tag matching {self.pattern}"
        else:
            what = f"remove untagged images older than {days} days"
        return f"{what} ({scope})"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A stored manifest as the snapshot saw it."""

    repository: str
    image: str
    digest: str
    tags: frozenset[str]
    pushed_at: dt.datetime
    last_pulled_at: dt.datetime | None = None
    children: tuple[str, ...] = ()  # an index's platform manifests
    subject: str | None = None  # a referrer's subject

    @property
    def path(self) -> str:
        return f"{self.repository}/{self.image}" if self.image else self.repository


@dataclass(frozen=True, slots=True)
class Image:
    """A top-level manifest with what goes with it."""

    manifest: Manifest
    # stored platform manifests its index lists, down nested indexes (each once, nearest first)
    children: tuple[Manifest, ...]
    referrers: tuple[Manifest, ...]  # its referrers, and theirs, recursively
    # (platform manifest digest, its referrers): they go only with that platform manifest
    child_referrers: tuple[tuple[str, tuple[Manifest, ...]], ...] = ()

    @property
    def path(self) -> str:
        return self.manifest.path

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def tags(self) -> frozenset[str]:
        """Its own tags and its platform manifests' (the listing shows them with it, and the
        rules judge it by them; its referrers' tags are not its own)."""
        found = set(self.manifest.tags)
        for child in self.children:
            found |= child.tags
        return frozenset(found)

    @property
    def pushed_at(self) -> dt.datetime:
        return self.manifest.pushed_at

    @property
    def last_pulled_at(self) -> dt.datetime | None:
        times = [m.last_pulled_at for m in (self.manifest, *self.children) if m.last_pulled_at]
        return max(times) if times else None

    def every_tag(self) -> Iterable[tuple[str, str]]:
        """(repository path, tag) of every tag a delete would remove, referrers' included: a
        platform manifest with a tag of its own stays, with its referrers."""
        staying = {child.digest for child in self.children if child.tags}
        every = [self.manifest, *self.referrers]
        for _digest, referrers in self.child_referrers:
            if _digest not in staying:
                every.extend(referrers)
        for member in every:
            for tag in member.tags:
                yield member.path, tag


@dataclass(frozen=True, slots=True)
class Deletion:
    """An image a run deletes: the image, then its referrers (and those of its platform
    manifests going) that no remaining index lists, then its platform manifests (down nested
    indexes) that no remaining index lists and that have no tag of their own."""

    image: Manifest
    referrers: tuple[Manifest, ...]
    children: tuple[Manifest, ...]

    @property
    def path(self) -> str:
        return self.image.path


@dataclass(frozen=True, slots=True)
class Plan:
    deletions: tuple[Deletion, ...]
    kept: int  # images in some rule's scope that stay
    protected: int  # of those, kept for a protected tag although no rule keeps them
    untouched: int  # images no rule's scope covers
    reasons: dict[tuple[str, str], list[int]] = field(default_factory=dict)


Protected = Callable[[str, str], bool]


def images_of(snapshot: Sequence[Manifest]) -> list[Image]:
    """The images among stored manifests: neither a platform manifest of a stored index nor a
    referrer of a stored subject (as `metadata.queries.is_image` counts them)."""
    by_key: dict[tuple[str, str], Manifest] = {(m.path, m.digest): m for m in snapshot}
    listed: set[tuple[str, str]] = set()
    referrers_of: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
    for m in snapshot:
        for child in m.children:
            if (m.path, child) in by_key:
                listed.add((m.path, child))
        if m.subject is not None and (m.path, m.subject) in by_key:
            referrers_of[(m.path, m.subject)].append(m)

    def referrers(m: Manifest, seen: set[str]) -> list[Manifest]:
        found = []
        for r in referrers_of.get((m.path, m.digest), ()):
            if r.digest not in seen:
                seen.add(r.digest)
                found.append(r)
                found.extend(referrers(r, seen))
        return found

    def descendants(m: Manifest) -> tuple[Manifest, ...]:
        """What an index lists, down nested indexes: each stored manifest once, nearest first."""
        found: list[Manifest] = []
        seen = {m.digest}
        level = [m]
        while level:
            below = []
            for parent in level:
                for digest in parent.children:
                    child = by_key.get((m.path, digest))
                    if child is not None and digest not in seen:
                        seen.add(digest)
                        below.append(child)
            found.extend(below)
            level = below
        return tuple(found)

    images = []
    for m in snapshot:
        key = (m.path, m.digest)
        if key in listed or (m.subject is not None and (m.path, m.subject) in by_key):
            continue
        children = descendants(m)
        seen = {m.digest, *(c.digest for c in children)}
        found = referrers(m, seen)
        of_children = tuple((c.digest, tuple(referrers(c, seen))) for c in children)
        images.append(Image(m, children, tuple(found), tuple(r for r in of_children if r[1])))
    return images


def _going_with(snapshot: Sequence[Manifest], doomed: Sequence[Image]) -> set[tuple[str, str]]:
    """(path, digest) of the doomed images and of what goes with them: a platform manifest
    without a tag of its own when every index listing it goes, level by level down nested
    indexes (a manifest an index that stays lists stays, and so do those only it lists), and
    a referrer when its subject goes and every index listing it goes."""
    going = {(image.path, image.digest) for image in doomed}
    listers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for m in snapshot:
        for child in m.children:
            listers[(m.path, child)].add((m.path, m.digest))
    candidates = [(child, False) for image in doomed for child in image.children if not child.tags]
    for image in doomed:
        candidates += [(referrer, True) for referrer in image.referrers]
        for _digest, referrers in image.child_referrers:
            candidates += [(referrer, True) for referrer in referrers]
    grew = True
    while grew:
        grew = False
        for m, is_referrer in candidates:
            key = (m.path, m.digest)
            if key in going or not listers[key] <= going:
                continue
            if is_referrer and (m.path, m.subject) not in going:
                continue
            going.add(key)
            grew = True
    return going


def _kept_by(rule: Rule, scope: list[Image], now: dt.datetime) -> set[int]:
    """Indexes (into `scope`) of the images `rule` keeps."""
    if rule.keep is Keep.LAST:
        assert rule.count is not None
        by_path: dict[str, list[int]] = defaultdict(list)
        for i, image in enumerate(scope):
            by_path[image.path].append(i)
        kept: set[int] = set()
        for indexes in by_path.values():
            # Newest first; the digest breaks ties so the choice never depends on row order.
            indexes.sort(key=lambda i: (scope[i].pushed_at, scope[i].digest), reverse=True)
            kept.update(indexes[: rule.count])
        return kept
    if rule.keep is Keep.TAGGED:
        pattern = rule.pattern
        assert pattern is not None
        return {
            i for i, image in enumerate(scope) if any(glob_matches(pattern, t) for t in image.tags)
        }
    assert rule.days is not None
    since = now - dt.timedelta(days=rule.days)
    if rule.keep is Keep.PUSHED_WITHIN:
        return {i for i, image in enumerate(scope) if image.pushed_at >= since}
    if rule.keep is Keep.PULLED_WITHIN:
        return {
            i
            for i, image in enumerate(scope)
            if (pulled := image.last_pulled_at) is not None and pulled >= since
        }
    return {i for i, image in enumerate(scope) if image.tags or image.pushed_at >= since}


def plan(
    snapshot: Sequence[Manifest],
    rules: Sequence[Rule],
    now: dt.datetime,
    protected: Protected = lambda _path, _tag: False,
    settling: dt.timedelta = dt.timedelta(0),
) -> Plan:
    """What a run over `snapshot` deletes under `rules`, at `now`; an untagged image pushed
    within `settling` of `now` is in no rule's scope."""
    images = images_of(snapshot)
    covered: list[bool] = [False] * len(images)
    kept: list[bool] = [False] * len(images)
    reasons: dict[tuple[str, str], list[int]] = {}
    settled_before = now - settling
    judged = [
        i for i, image in enumerate(images) if image.tags or image.pushed_at <= settled_before
    ]
    for number, rule in enumerate(rules, start=1):
        scope_indexes = [i for i in judged if rule.covers(images[i])]
        scope = [images[i] for i in scope_indexes]
        for i in scope_indexes:
            covered[i] = True
        for local in _kept_by(rule, scope, now):
            i = scope_indexes[local]
            kept[i] = True
            reasons.setdefault((images[i].path, images[i].digest), []).append(number)
    protected_count = 0
    doomed: list[Image] = []
    for i, image in enumerate(images):
        if not covered[i] or kept[i]:
            continue
        if any(protected(path, tag) for path, tag in image.every_tag()):
            kept[i] = True
            protected_count += 1
            continue
        doomed.append(image)
    going = _going_with(snapshot, doomed)
    deletions = []
    claimed: set[tuple[str, str]] = set()
    # Latest first, so that a platform manifest several doomed images hold goes with the one
    # deleted last (a run deletes in this order, in batches): by then no index lists it.
    for image in sorted(doomed, key=lambda im: (im.path, im.pushed_at, im.digest), reverse=True):
        children: list[Manifest] = []
        candidates = list(image.referrers)
        of_children = dict(image.child_referrers)
        for child in image.children:
            key = (child.path, child.digest)
            if child.tags or key not in going or key in claimed:
                continue  # tagged: in `going` only as some image's referrer, if at all
            claimed.add(key)
            children.append(child)
            candidates.extend(of_children.get(child.digest, ()))
        referrers: list[Manifest] = []
        for referrer in candidates:
            key = (referrer.path, referrer.digest)
            if key in going and key not in claimed:
                claimed.add(key)
                referrers.append(referrer)
        deletions.append(Deletion(image.manifest, tuple(referrers), tuple(children)))
    deletions.reverse()
    return Plan(
        deletions=tuple(deletions),
        kept=sum(1 for i in range(len(images)) if covered[i] and kept[i]),
        protected=protected_count,
        untouched=sum(1 for c in covered if not c),
        reasons=reasons,
    )

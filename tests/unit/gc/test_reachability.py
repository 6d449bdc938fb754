"""What a garbage collection run deletes, one named scenario per test, on the pure rules of
`berth.services.gc.reachability` (no database: milliseconds). `test_runs_agree.py` runs the
same scenarios through a real run on SQLite."""

from __future__ import annotations

import datetime as dt

from berth.services.gc.reachability import Verdict, decide, grace_cutoff
from tests.unit.gc.scenarios import CUTOFF, GRACE, NOW, OLD, YOUNG, Content, digest


def collect(content: Content, *, delete_untagged: bool = True) -> Verdict:
    return decide(content.graph(), CUTOFF, delete_untagged=delete_untagged)


def blobs_of(*names: str) -> frozenset[str]:
    return frozenset(digest(name) for name in names)


def test_the_cutoff_is_the_grace_period_before_now() -> None:
    assert grace_cutoff(NOW, GRACE) == NOW - dt.timedelta(days=1)


def test_empty_project_deletes_nothing() -> None:
    content = Content()
    content.repository()
    assert collect(content) == Verdict()


def test_tagged_image_keeps_its_layers() -> None:
    content = Content()
    repository = content.repository()
    content.image(repository, "web", ["base", "app"], tagged=True)
    verdict = collect(content)
    assert verdict.manifests == frozenset()
    assert verdict.links == frozenset() and verdict.blobs == frozenset()


def test_untagged_image_stays_without_delete_untagged() -> None:
    content = Content()
    repository = content.repository()
    content.image(repository, "old", ["base"])
    verdict = collect(content, delete_untagged=False)
    assert verdict.manifests == frozenset() and verdict.blobs == frozenset()


def test_untagged_image_goes_with_delete_untagged_and_its_layers_with_it() -> None:
    content = Content()
    repository = content.repository()
    old = content.image(repository, "old", ["base"])
    verdict = collect(content)
    assert verdict.manifests == {old.id}
    assert verdict.images == 1
    assert verdict.blobs == blobs_of("old-config", "base")
    assert verdict.links == {(repository, d) for d in blobs_of("old-config", "base")}


def test_layer_shared_between_images_stays_while_one_of_them_does() -> None:
    content = Content()
    repository = content.repository()
    content.image(repository, "kept", ["base", "kept-layer"], tagged=True)
    content.image(repository, "gone", ["base", "gone-layer"])
    verdict = collect(content)
    assert verdict.blobs == blobs_of("gone-config", "gone-layer")
    assert digest("base") not in {d for _, d in verdict.links}


def test_layer_shared_between_repositories_keeps_its_blob() -> None:
    content = Content()
    first, second = content.repository(), content.repository()
    content.image(first, "gone", ["base"])
    content.image(second, "kept", ["base"], tagged=True)
    verdict = collect(content)
    assert (first, digest("base")) in verdict.links  # the first repository lets go of it
    assert (second, digest("base")) not in verdict.links
    assert digest("base") not in verdict.blobs  # the second still serves it


def test_blob_another_project_links_stays_in_storage() -> None:
    content = Content()
    ours, theirs = content.repository(), content.repository("other")
    content.image(ours, "gone", ["base"])
    content.blob(theirs, "base")
    verdict = collect(content)
    assert (ours, digest("base")) in verdict.links
    assert (theirs, digest("base")) not in verdict.links  # another project's run decides that
    assert digest("base") not in verdict.blobs


def test_children_of_a_tagged_index_stay() -> None:
    content = Content()
    repository = content.repository()
    amd64 = content.image(repository, "amd64", ["amd64-layer"])
    arm64 = content.image(repository, "arm64", ["arm64-layer"])
    content.index(repository, "multi", [amd64, arm64], tagged=True)
    verdict = collect(content)
    assert verdict.manifests == frozenset() and verdict.blobs == frozenset()


def test_untagged_index_goes_with_its_children_as_one_image() -> None:
    content = Content()
    repository = content.repository()
    amd64 = content.image(repository, "amd64", ["amd64-layer"])
    arm64 = content.image(repository, "arm64", ["arm64-layer"])
    index = content.index(repository, "multi", [amd64, arm64])
    verdict = collect(content)
    assert verdict.manifests == {index.id, amd64.id, arm64.id}
    assert verdict.images == 1  # the index stands for its platforms
    assert verdict.blobs == blobs_of("amd64-config", "amd64-layer", "arm64-config", "arm64-layer")


def test_child_shared_with_a_tagged_index_stays_when_the_other_index_goes() -> None:
    content = Content()
    repository = content.repository()
    shared = content.image(repository, "shared", ["shared-layer"])
    only = content.image(repository, "only", ["only-layer"])
    content.index(repository, "kept", [shared], tagged=True)
    gone = content.index(repository, "gone", [shared, only])
    verdict = collect(content)
    assert verdict.manifests == {gone.id, only.id}
    assert verdict.blobs == blobs_of("only-config", "only-layer")


def test_referrer_of_a_kept_image_stays() -> None:
    content = Content()
    repository = content.repository()
    subject = content.image(repository, "signed", ["base"], tagged=True)
    content.referrer(subject, "signature")
    verdict = collect(content)
    assert verdict.manifests == frozenset() and verdict.blobs == frozenset()


def test_referrer_goes_with_its_untagged_subject_and_is_not_counted_again() -> None:
    content = Content()
    repository = content.repository()
    subject = content.image(repository, "signed", ["base"])
    signature = content.referrer(subject, "signature")
    verdict = collect(content)
    assert verdict.manifests == {subject.id, signature.id}
    assert verdict.images == 1


def test_referrer_without_its_subject_goes_as_an_image_of_its_own() -> None:
    content = Content()
    repository = content.repository()
    orphan = content.image(repository, "orphan-signature", ["payload"], subject=digest("absent"))
    verdict = collect(content)
    assert verdict.manifests == {orphan.id}
    assert verdict.images == 1


def test_tagged_referrer_keeps_its_untagged_subject() -> None:
    content = Content()
    repository = content.repository()
    subject = content.image(repository, "attested", ["base"])
    content.referrer(subject, "sbom", tagged=True)
    verdict = collect(content)
    assert verdict.manifests == frozenset() and verdict.blobs == frozenset()


def test_grace_period_keeps_a_young_untagged_image_and_its_layers() -> None:
    content = Content()
    repository = content.repository()
    content.image(repository, "fresh", ["fresh-layer"], at=YOUNG)
    verdict = collect(content)
    assert verdict.manifests == frozenset() and verdict.blobs == frozenset()
    assert verdict.young.images == 1
    assert verdict.young.newest == YOUNG


def test_young_referrer_keeps_its_old_untagged_subject() -> None:
    content = Content()
    repository = content.repository()
    subject = content.image(repository, "old-subject", ["base"])
    content.referrer(subject, "new-signature", at=YOUNG)
    verdict = collect(content)
    assert verdict.manifests == frozenset()
    assert verdict.young.images == 1  # the subject; the referrer is not an image of its own


def test_blob_only_an_upload_holds_stays_within_the_grace_period() -> None:
    content = Content()
    repository = content.repository()
    content.blob(repository, "pushed-before-its-manifest", at=YOUNG)
    verdict = collect(content)
    assert verdict.links == frozenset() and verdict.blobs == frozenset()
    assert verdict.young.blobs == 1
    assert verdict.young.newest == YOUNG


def test_blob_only_an_upload_holds_goes_after_the_grace_period() -> None:
    content = Content()
    repository = content.repository()
    content.blob(repository, "never-referenced", at=OLD)
    verdict = collect(content, delete_untagged=False)
    assert verdict.links == {(repository, digest("never-referenced"))}
    assert verdict.blobs == blobs_of("never-referenced")


def test_abandoned_upload_goes_and_a_recent_one_stays() -> None:
    content = Content()
    repository = content.repository()
    content.upload(repository, "abandoned", at=OLD)
    content.upload(repository, "inprogress", at=YOUNG)
    assert collect(content, delete_untagged=False).uploads == {"abandoned"}


def test_an_upload_older_than_the_grace_period_stays_until_the_upload_expiry() -> None:
    """Uploads follow `upload_expiry` (a day by default), not the grace period (an hour): a
    client that paused between chunks for two hours finishes its upload."""
    content = Content()
    repository = content.repository()
    content.upload(repository, "paused", at=NOW - dt.timedelta(hours=2))
    content.upload(repository, "abandoned", at=OLD)
    hour_of_grace = grace_cutoff(NOW, 3600)
    verdict = decide(content.graph(), hour_of_grace, delete_untagged=False, upload_cutoff=CUTOFF)
    assert verdict.uploads == {"abandoned"}


def test_old_blob_no_repository_links_goes_and_a_young_one_stays() -> None:
    content = Content()
    content.repository()
    content.stored("orphan", at=OLD)
    content.stored("just-stored", at=YOUNG)
    assert collect(content).blobs == blobs_of("orphan")


def test_manifest_pushed_during_the_decision_is_kept_with_its_layers() -> None:
    content = Content()
    repository = content.repository()
    content.image(repository, "old", ["base"])
    # Pushed after the run took its time: later than any cutoff of the run.
    content.image(repository, "racing", ["base", "racing-layer"], at=NOW)
    verdict = collect(content)
    assert verdict.blobs == blobs_of("old-config")
    assert digest("base") not in verdict.blobs
    assert verdict.young.images == 1

"""The types of event a webhook is sent, and what each means (the API, the CLI's help and the
console list them)."""

from __future__ import annotations

IMAGE_PUSHED = "io.berth.image.pushed"
IMAGE_DELETED = "io.berth.image.deleted"
TAG_DELETED = "io.berth.tag.deleted"
TAG_RESTORED = "io.berth.tag.restored"
GC_FINISHED = "io.berth.gc.finished"
QUOTA_REFUSED = "io.berth.quota.refused"
IMAGE_LIMIT_REFUSED = "io.berth.image_limit.refused"
SCAN_FINISHED = "io.berth.scan.finished"
# Sent only by "send a test event", whatever the endpoint subscribes to.
TEST = "io.berth.webhook.test"

EVENT_TYPES: dict[str, str] = {
    IMAGE_PUSHED: "a manifest was pushed, or a push pointed a tag at a manifest",
    IMAGE_DELETED: "an image was deleted by digest, with its tags (an index: one event, listing "
    "the platform manifests and the referrers deleted with it)",
    TAG_DELETED: "a tag was deleted (the image stays)",
    TAG_RESTORED: "a deleted tag was put back",
    GC_FINISHED: "a garbage collection run ended (succeeded, failed or rolled back)",
    QUOTA_REFUSED: "a new repository was refused: the project's repository quota is reached",
    IMAGE_LIMIT_REFUSED: "a push was refused: the repository's image limit is reached",
    SCAN_FINISHED: "an image's vulnerability scan finished (done, or failed with the reason)",
}

"""The S3 permissions Berth needs are one list: README shows the operator the ones that the
driver's refusals name (`s3_errors.PERMISSIONS_NEEDED`), and no other."""

from __future__ import annotations

import re
from pathlib import Path

from berth.storage.s3_errors import BUCKET_PERMISSIONS, OBJECT_PERMISSIONS

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_names_the_permissions_the_refusals_name() -> None:
    text = " ".join(README.read_text().split())
    stated = text.split("The user's permissions and any bucket policy must allow", 1)[1]
    stated = stated.split(".", 1)[0]
    on_bucket, on_objects = stated.split(" on the bucket, and ", 1)
    assert re.findall(r"`(s3:\w+)`", on_bucket) == list(BUCKET_PERMISSIONS)
    assert re.findall(r"`(s3:\w+)`", on_objects) == list(OBJECT_PERMISSIONS)
    assert on_objects.endswith(" on the objects under `s3_prefix`")

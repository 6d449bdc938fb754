"""What `berth gc` prints, computed without a run."""

from __future__ import annotations

import time

import pytest

from berth.cli.gc import young_kept


def test_young_kept_names_the_zone_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        kept = young_kept(
            {
                "grace_period_seconds": 3600,
                "young_images_kept": 1,
                "young_blobs_kept": 2,
                "young_collectable_at": "2026-12-01T03:00:00+00:00",
            }
        )
    finally:
        monkeypatch.undo()
        time.tzset()
    assert kept == [
        ("Grace period", "3600 s (gc_grace_period)"),
        ("Kept: younger than that", "1 image and 2 blobs"),
        ("Kept: collectable from", "2026-12-01 12:00 KST"),
    ]

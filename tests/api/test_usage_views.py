"""What the Management and Monitoring pages read agrees: one storage sample, one GC state."""

from __future__ import annotations

from tests.api.conftest import Team, new_team, ok, push_image


def test_summary_and_storage_series_show_one_sample(team: Team) -> None:
    push_image(team.registry(), team.oci_name(), "v1")
    # No collection has happened in this new project (the schedule runs every 30 minutes):
    # Management (the summary) takes the first sample, and Monitoring shows that one.
    summary = ok(team["reader"].get(team.url("/summary")))["storage"]
    assert summary["bytes"] > 0 and summary["collected_at"] is not None
    series = ok(team["reader"].get(team.url("/storage")))
    assert series["last"] == summary and series["samples"] == [summary]
    assert series["collected_at"] == summary["collected_at"]
    # Monitoring first: Management then shows Monitoring's sample.
    other = new_team(team.server)
    try:
        push_image(other.registry(), other.oci_name(), "v1")
        first = ok(other["reader"].get(other.url("/storage")))
        assert first["last"] is not None and first["samples"] == [first["last"]]
        assert ok(other["reader"].get(other.url("/summary")))["storage"] == first["last"]
    finally:
        other.close()

"""`berth immutability`: the verbs against a running server's data, and the rules they make
holding a tag that a client then tries to remove."""

from __future__ import annotations

from tests.api.conftest import push_image
from tests.conftest import new_repo
from tests.oci import manifest_path
from tests.servers import BerthServer


def test_immutability_verbs(sqlite_server: BerthServer) -> None:
    repo = new_repo(sqlite_server)
    project = repo.project
    with repo.client:
        push_image(repo.client, repo.name, "v1")
        assert repo.client.delete(manifest_path(repo.name, "v1")).status_code == 202

        added = sqlite_server.cli(
            "immutability", "add", project, "v*", "--repository", repo.repository
        ).stdout
        assert f"Rule 1: tags matching 'v*' in repositories matching '{repo.repository}'" in (
            " ".join(added.split())
        )
        everywhere = sqlite_server.cli_json("immutability", "add", project, "release-*", "--json")
        assert everywhere["repository_pattern"] is None

        shown = sqlite_server.cli("immutability", "list", project).stdout
        assert shown.index("v*") < shown.index(repo.repository) < shown.index("release-*")
        assert "all" in shown.split("release-*", 1)[1]

        again = sqlite_server.cli(
            "immutability", "add", project, "v*", "-r", repo.repository, check=False
        )
        assert again.returncode == 3 and "already has this rule 'v*'" in again.stderr
        unmatchable = sqlite_server.cli(
            "immutability", "add", project, "v*", "-r", "../beta/app", check=False
        )
        assert unmatchable.returncode == 2 and unmatchable.stderr.startswith("error: ")
        said = " ".join(unmatchable.stderr.split())
        assert "invalid repository pattern '../beta/app'" in said
        assert "so it can match nothing" in said

        # Restoring the removed tag moves nothing; from then on the rule holds it.
        sqlite_server.cli("tag", "restore", repo.name, "v1")
        refused = repo.client.delete(manifest_path(repo.name, "v1"))
        assert refused.status_code == 403
        assert "tag v1 is immutable: rule 'v*'" in refused.json()["errors"][0]["message"]

        assert (
            "Removed immutable tag rule 1"
            in sqlite_server.cli("immutability", "remove", project, "1", "--yes").stdout
        )
        assert repo.client.delete(manifest_path(repo.name, "v1")).status_code == 202
        assert [r["id"] for r in sqlite_server.cli_items("immutability", "list", project)] == [2]

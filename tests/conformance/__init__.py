"""OCI Distribution Specification conformance, a Python port of the upstream Go suite.

Upstream is opencontainers/distribution-spec, directory `conformance/`. It has had two shapes,
and every check either makes is made here, against a fresh repository per test, on each backend:

- The Ginkgo suite (setup.go, 01_pull_test.go, 02_push_test.go, 03_discovery_test.go,
  04_management_test.go): the four workflows `TestPull`, `TestPush`, `TestContentDiscovery`
  and `TestContentManagement`. Each upstream `Specify` is a check with the same accepted
  status codes; upstream's setup steps run as fixtures.
- The redesigned runner (run.go, api.go, testdata.go): `TestBlobAPIs` (every way to push a
  blob, mounts, range reads, well-known blobs, bad digests; sha256 and sha512),
  `TestManifestData` (push, list, HEAD, pull, referrers and delete for each kind of content it
  generates), `TestManifestErrors` and `TestEmptyRepository`.

One file per upstream file: test_01_pull, test_02_push, test_03_discovery and
test_04_management for the Ginkgo workflows; test_blobs and test_manifests (with
blob_pushes.py and datasets.py) for the redesigned runner; checks.py and conftest.py hold
what they share. One server per backend serves the whole package.

Where the two shapes disagree the stricter one is kept and the docstring says so. Checks the
spec makes that neither suite does are marked "spec:" in their docstrings. Upstream treats a
missing optional feature (e.g. no `OCI-Filters-Applied`) as "unsupported", not as a failure:
those cases emit a warning here.
"""

"""The OCI Distribution API (/v2): thin handlers over berth.services."""

"""The HTTP management API under /api/v1, used by the web console and scripts."""

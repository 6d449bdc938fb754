"""How far back a project's usage can be read."""

from __future__ import annotations

# Days of storage samples kept, the most a usage query (API, CLI, console) may ask for.
STORAGE_SAMPLE_RETENTION_DAYS = 400

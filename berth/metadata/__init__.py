"""The metadata layer: what exists and what references what (SQLite or PostgreSQL)."""

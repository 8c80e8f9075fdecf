"""Fixtures for fixtures_prefect (filled by its issue)."""

"""Fixtures for fixtures_pipeline (filled by its issue)."""

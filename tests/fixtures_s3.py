"""Fixtures for fixtures_s3 (filled by its issue)."""

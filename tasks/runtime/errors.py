"""Errors a user can act on. ``taming`` prints them in one line, naming the stage, and
exits 1 (parameters: exit 2); any other exception is a bug and keeps its traceback."""
from __future__ import annotations


class StageError(RuntimeError):
    """A stage's inputs are missing, inconsistent or unusable; the message says which and why."""

"""Errors about model files that a user can act on: the message names the file and the problem.

The command line prints these in one line (no traceback); every other exception is a bug.
"""
from __future__ import annotations


class ModelFileError(Exception):
    """A checkpoint, project config or weights file is missing, unsafe, corrupt or does not
    fit the model it should hold."""

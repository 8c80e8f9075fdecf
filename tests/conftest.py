"""Shared fixtures. Server fixtures (S3 on loopback, Prefect) live in their own
plugin modules and start real servers once per session."""
import os

import pytest

# Keep the 2-core CI machine responsive: one intra-op thread per test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests talk to loopback only: the weights resolver never tries an official URL
# (tests of the download path serve their files from 127.0.0.1 and lift this).
os.environ.setdefault("TAMING_OFFLINE", "1")

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")


@pytest.fixture(scope="session")
def reference_dir():
    """tests/reference: vectors made by the original implementations (its README says how)."""
    return REFERENCE

# Fixture plugins, one module per area (S3 server on loopback, Prefect server,
# the smoke pipeline in a temporary repo copy).
pytest_plugins = ["fixtures_s3", "fixtures_prefect", "fixtures_pipeline"]

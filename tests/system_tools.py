"""System binaries the tests need (installed by .ci/run), found or skipped, never silently under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """Path of ``name``; skip without it, but fail when CI is set (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed but CI is set: .ci/run installs it (apt-get install prometheus)")
        pytest.skip(f"{name} not installed (apt-get install prometheus, as .ci/run does); CI is not set")
    return path

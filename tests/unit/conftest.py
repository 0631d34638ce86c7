"""Fixtures of the unit suites: `native` and `backend` (both ext/ backends)."""

from tests.unit.ext_backends import backend, native  # noqa: F401  (pytest fixtures)

"""What the ext/ parity suites share: both backends, the REQUIRE flag, bit comparison.

Native-only tests skip when ext._native is not built, and fail instead when
STREAMSCORE_REQUIRE_NATIVE=1 is set (the first `make test` leg).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from ext import _reference as ref

try:
    from ext import _native as nat
except ImportError as _exc:  # not built (or broken)
    nat = None
    NATIVE_IMPORT_ERROR: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    NATIVE_IMPORT_ERROR = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


REQUIRE_NATIVE = _flag("STREAMSCORE_REQUIRE_NATIVE")
DISABLE_NATIVE = _flag("STREAMSCORE_DISABLE_NATIVE")

# Hypothesis runs many examples per test; no per-example deadline because the
# reference backend is slow Python by design.
PARITY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def require_native():
    """The native module, or skip (fail when STREAMSCORE_REQUIRE_NATIVE=1)."""
    if nat is None:
        msg = f"native extension ext._native is not importable ({NATIVE_IMPORT_ERROR})"
        if REQUIRE_NATIVE:
            pytest.fail(msg + " but STREAMSCORE_REQUIRE_NATIVE=1 is set")
        pytest.skip(msg + "; build it with `pip install --no-build-isolation --no-deps -e .`")
    return nat


@pytest.fixture
def native():
    return require_native()


@pytest.fixture(params=["native", "reference"])
def backend(request):
    return require_native() if request.param == "native" else ref


def bits(x) -> np.ndarray:
    """64-bit patterns of a float or float array, every NaN mapped to one
    canonical NaN: IEEE-754 leaves NaN sign/payload propagation unspecified
    (compilers may swap the operands of + and *), so only NaN *positions* are
    part of the contract.  Signed zeros and infinities are compared exactly."""
    a = np.array(x, dtype=np.float64, copy=True, ndmin=1)
    a[np.isnan(a)] = np.nan
    return a.view(np.uint64)


def assert_bits_equal(a, b, what: str = "") -> None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if not np.array_equal(bits(a), bits(b)):
        bad = np.argwhere((bits(a) != bits(b)).reshape(a.shape))[:5]
        detail = [(tuple(i), a[tuple(i)], b[tuple(i)]) for i in bad]
        raise AssertionError(f"{what}: not bit-identical at {detail}")

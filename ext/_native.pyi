"""
Native (C++/nanobind) streamscore kernels; see ext/__init__.py for the spec.
"""

# Hand-maintained from `python -m nanobind.stubgen -m ext._native`; the public
# names must match the compiled module and ext/_reference.py
# (tests/unit/test_ext_parity.py::test_stub_matches_native_module).

from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import numpy
from numpy.typing import NDArray

def hash_string(value: str, n_buckets: int, seed: int = 0) -> int:
    """
    Bucket of one string: 64-bit FNV-1a (basis XOR seed) of its UTF-8 bytes, modulo n_buckets.
    """

def hash_strings(
    values: Iterable[str], n_buckets: int, seed: int = 0
) -> Annotated[NDArray[numpy.int64], dict(shape=(None,))]:
    """
    Buckets of many strings as a 1-D int64 array; same hash as hash_string().
    """

class SlidingWindow:
    """Time window (ts - size_ms, ts] over one entity's values."""

    def __init__(self, size_ms: int) -> None: ...
    @staticmethod
    def from_state(size_ms: int, ts: Sequence[int], values: Sequence[float]) -> SlidingWindow:
        """
        Window equal to SlidingWindow(size_ms) fed every (ts, value) pair in order; inverse of state().
        """

    def update(self, ts: int, value: float) -> None:
        """Append (ts, value), then evict items with item_ts <= ts - size_ms."""

    def update_many(
        self,
        ts: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        values: Annotated[
            NDArray[numpy.float64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
    ) -> Annotated[NDArray[numpy.float64], dict(shape=(None, None))]:
        """
        Apply every row; returns an (n, 6) float64 array of [count, sum, mean, min, max, var] after each row.
        """

    def state(self) -> tuple[list[int], list[float]]:
        """Live items, oldest first, as (ts list, values list)."""

    @property
    def size_ms(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def var(self) -> float: ...
    @property
    def last(self) -> float: ...
    def __getstate__(self) -> tuple[int, list[int], list[float]]: ...
    def __setstate__(self, arg: tuple[int, Sequence[int], Sequence[float]], /) -> None: ...
    def __repr__(self) -> str: ...

class TumblingTable:
    """Tumbling-window [count, sum, min, max] per key; see ext/__init__.py."""

    def __init__(self, size_ms: int) -> None: ...
    def update_many(
        self,
        keys: Sequence[str],
        ts: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        values: Annotated[
            NDArray[numpy.float64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        has_value: Annotated[
            NDArray[numpy.bool_], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
    ) -> Annotated[NDArray[numpy.float64], dict(shape=(None, None))]:
        """
        Apply every row in order; returns an (n, 5) float64 array of [count, sum, mean, min, max] of the row's key after each row.
        """

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""

    def load(self, key: str, start: int, count: int, sum: float, min: float, max: float) -> None:
        """Install a key's state read from the store (not marked dirty)."""

    def take_dirty(self) -> list[tuple[str, int, int, float, float, float]]:
        """
        (key, start, count, sum, min, max) of every dirty key, in first-dirtied order; clears the dirty set.
        """

    def take_dirty_packed(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """
        take_dirty() as (prefix + UTF-8 key, b'T' + struct.pack('<qqddd', start, count, sum, min, max)) pairs: store entries.
        """

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""

    @property
    def size_ms(self) -> int: ...
    @property
    def late(self) -> int: ...
    def __len__(self) -> int: ...
    def __repr__(self) -> str: ...

class HoppingTable:
    """Hopping-window [count, sum, mean, min, max, var] per key; see ext/__init__.py."""

    def __init__(self, size_ms: int, hop_ms: int, grace_ms: int = 0) -> None: ...
    def update_many(
        self,
        keys: Sequence[str],
        ts: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        values: Annotated[
            NDArray[numpy.float64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        has_value: Annotated[
            NDArray[numpy.bool_], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
    ) -> Annotated[NDArray[numpy.float64], dict(shape=(None, None))]:
        """
        Apply every row in order; returns an (n, 6) float64 array of [count, sum, mean, min, max, var] of each row's window.
        """

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""

    def load(
        self,
        key: str,
        newest: int,
        buckets: Sequence[int],
        counts: Sequence[int],
        sums: Sequence[float],
        means: Sequence[float],
        m2s: Sequence[float],
        mins: Sequence[float],
        maxs: Sequence[float],
    ) -> None:
        """Install a key's state read from the store (not marked dirty)."""

    def take_dirty(
        self,
    ) -> list[
        tuple[str, int, list[int], list[int], list[float], list[float], list[float], list[float], list[float]]
    ]:
        """
        (key, newest, buckets, counts, sums, means, m2s, mins, maxs) of every dirty key, in first-dirtied order; clears the dirty set.
        """

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""

    @property
    def size_ms(self) -> int: ...
    @property
    def hop_ms(self) -> int: ...
    @property
    def grace_ms(self) -> int: ...
    @property
    def late(self) -> int: ...
    def __len__(self) -> int: ...
    def __repr__(self) -> str: ...

class SessionTable:
    """Gap-based session aggregates per key; see ext/__init__.py."""

    def __init__(self, gap_ms: int, half_life_ms: int = 0) -> None: ...
    def update_many(
        self,
        keys: Sequence[str],
        ts: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        values: Annotated[
            NDArray[numpy.float64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        has_value: Annotated[
            NDArray[numpy.bool_], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
    ) -> Annotated[NDArray[numpy.float64], dict(shape=(None, None))]:
        """
        Apply every row in order; returns an (n, 10) float64 array of [count, sum, mean, min, max, var, since, duration, decay_sum, decay_mean] of each row's session.
        """

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""

    def load(
        self,
        key: str,
        start: int,
        newest: int,
        count: int,
        sum: float,
        mean: float,
        m2: float,
        min: float,
        max: float,
        dsum: float,
        dweight: float,
    ) -> None:
        """Install a key's state read from the store (not marked dirty)."""

    def take_dirty(
        self,
    ) -> list[tuple[str, int, int, int, float, float, float, float, float, float, float]]:
        """
        (key, start, newest, count, sum, mean, m2, min, max, dsum, dweight) of every dirty key, in first-dirtied order; clears the dirty set.
        """

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""

    @property
    def gap_ms(self) -> int: ...
    @property
    def half_life_ms(self) -> int: ...
    @property
    def late(self) -> int: ...
    def __len__(self) -> int: ...
    def __repr__(self) -> str: ...


class ScaledLogistic:
    """River's StandardScaler() | LogisticRegression(optim.SGD(lr), l2, intercept_lr): the same bits."""

    def __init__(self, lr: float, l2: float, intercept_lr: float, clip_gradient: float = 1e12) -> None: ...
    def predict_proba_one(self, x: dict[str, float]) -> float: ...
    def learn_one(self, x: dict[str, float], y: bool) -> None: ...
    def state(self) -> dict[str, Any]: ...
    @staticmethod
    def from_state(state: dict[str, Any]) -> ScaledLogistic: ...

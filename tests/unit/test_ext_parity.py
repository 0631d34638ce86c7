"""Parity of the native kernels (ext._native) with their pure-Python twin
(ext._reference), plus backend selection, persistence and stub drift.

Parity is *bit-identical*: both backends execute the same IEEE-754 operations
in the same order (see the ext/__init__.py docstring), so every float is
compared through its 64-bit pattern (signed zeros and infinities included;
NaN positions must match, NaN sign/payload bits are unspecified by IEEE-754).

Native-only tests are skipped when the extension is not built, unless
STREAMSCORE_REQUIRE_NATIVE=1 is set, in which case they fail.
"""

from __future__ import annotations

import ast
import copy
import math
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ext
from tests.unit.ext_backends import (
    DISABLE_NATIVE,
    PARITY,
    REQUIRE_NATIVE,
    assert_bits_equal,
    nat,
    ref,
)
from tests.unit.ext_backends import require_native as _require_native
REPO = Path(__file__).resolve().parents[2]
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1
EPS = 2.0**-52


# -- helpers -----------------------------------------------------------------




def props(w) -> list[float]:
    return [float(w.count), w.sum, w.mean, w.min, w.max, w.var, w.last]


def assert_same_window(a, b, what: str = "") -> None:
    assert a.size_ms == b.size_ms
    assert a.count == b.count
    ts_a, vals_a = a.state()
    ts_b, vals_b = b.state()
    assert ts_a == ts_b, what
    assert_bits_equal(vals_a, vals_b, what + " state values")
    assert_bits_equal(props(a), props(b), what + " properties")


# -- strategies --------------------------------------------------------------

finite_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # full range: huge, tiny, subnormal
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 1e20, -1e20, 1e300, -1e300, 5e-324, 1e-300]),
)
any_values = st.one_of(finite_values, st.sampled_from([math.inf, -math.inf, math.nan]))

window_sizes = st.one_of(
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=100_000),
    st.sampled_from([1, 2, 1000, 60_000, 2**40, 2**62, I64_MAX]),
)


@st.composite
def streams(draw, values=finite_values, max_rows=150):
    """(size_ms, ts int64 array, values float64 array); ts non-decreasing,
    increments include zero, in-window, block-skipping and huge jumps."""
    size = draw(window_sizes)
    t = draw(
        st.one_of(
            st.integers(min_value=-(10**6), max_value=10**6),
            st.integers(min_value=I64_MIN, max_value=I64_MAX),
            st.sampled_from([I64_MIN, 0, I64_MAX - 1000, I64_MAX]),
        )
    )
    n = draw(st.integers(min_value=0, max_value=max_rows))
    step = st.one_of(
        st.just(0),
        st.integers(min_value=0, max_value=max(1, size // 8)),
        st.integers(min_value=0, max_value=min(I64_MAX, 2 * size + 1)),
        st.integers(min_value=0, max_value=I64_MAX),
    )
    ts = []
    for _ in range(n):
        t = min(t + draw(step), I64_MAX)
        ts.append(t)
    vals = draw(st.lists(values, min_size=n, max_size=n))
    return size, np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64)


# -- build / backend selection ------------------------------------------------


def test_native_extension_is_built():
    """Skipped only when ext._native is absent and STREAMSCORE_REQUIRE_NATIVE is
    not set; with it set, absence is a failure."""
    mod = _require_native()
    assert mod.__name__ == "ext._native"
    assert Path(mod.__file__).parent == Path(ext.__file__).parent


def test_package_exports_selected_backend():
    backend_mod = nat if ext.NATIVE else ref
    assert ext.backend_name() == ("native" if ext.NATIVE else "reference")
    assert ext.hash_string is backend_mod.hash_string
    assert ext.hash_strings is backend_mod.hash_strings
    assert ext.SlidingWindow is backend_mod.SlidingWindow
    assert ext.TumblingTable is backend_mod.TumblingTable
    assert ext.HoppingTable is backend_mod.HoppingTable
    assert ext.SessionTable is backend_mod.SessionTable
    assert ext.ScaledLogistic is backend_mod.ScaledLogistic
    assert set(ext.__all__) == {
        "NATIVE", "HoppingTable", "ScaledLogistic", "SessionTable", "SlidingWindow", "TumblingTable", "backend_name",
        "hash_string", "hash_strings",
    }
    if DISABLE_NATIVE:
        assert not ext.NATIVE
    if REQUIRE_NATIVE:
        assert ext.NATIVE
    if nat is not None and not DISABLE_NATIVE:
        assert ext.NATIVE


_BLOCK_NATIVE = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "ext._native":
                {raise_stmt}
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _import_ext(env_overrides: dict[str, str], block: str | None = None):
    """Import `ext` in a fresh interpreter; returns (returncode, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env.update(env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    prelude = ""
    if block == "missing":
        prelude = _BLOCK_NATIVE.format(raise_stmt='raise ModuleNotFoundError("No module named ext._native", name=name)')
    elif block == "broken":
        prelude = _BLOCK_NATIVE.format(raise_stmt='raise ImportError("undefined symbol: boom")')
    code = prelude + textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("always")
        import ext
        print(ext.backend_name(), ext.NATIVE)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr


def test_disable_env_forces_reference():
    rc, out, err = _import_ext({"STREAMSCORE_DISABLE_NATIVE": "1"})
    assert rc == 0, err
    assert out == "reference False"


def test_default_prefers_native(native):
    rc, out, err = _import_ext({})
    assert rc == 0, err
    assert out == "native True"
    rc, out, err = _import_ext({"STREAMSCORE_REQUIRE_NATIVE": "1"})
    assert rc == 0, err
    assert out == "native True"


def test_missing_native_falls_back_silently():
    rc, out, err = _import_ext({}, block="missing")
    assert rc == 0, err
    assert out == "reference False"
    assert "Warning" not in err


def test_missing_native_with_require_is_import_error():
    rc, out, err = _import_ext({"STREAMSCORE_REQUIRE_NATIVE": "1"}, block="missing")
    assert rc != 0
    assert "ImportError" in err
    assert "STREAMSCORE_REQUIRE_NATIVE" in err and "is not built" in err


def test_broken_native_warns_and_falls_back():
    rc, out, err = _import_ext({}, block="broken")
    assert rc == 0, err
    assert out == "reference False"
    assert "RuntimeWarning" in err and "undefined symbol: boom" in err


def test_require_and_disable_together_is_import_error():
    rc, out, err = _import_ext({"STREAMSCORE_REQUIRE_NATIVE": "1", "STREAMSCORE_DISABLE_NATIVE": "1"})
    assert rc != 0
    assert "both set" in err


# -- stub / API drift ---------------------------------------------------------


def _stub_api() -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    tree = ast.parse((REPO / "ext" / "_native.pyi").read_text())
    top: set[str] = set()
    members: dict[str, set[str]] = {}
    properties: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            top.update(t.id for t in targets if isinstance(t, ast.Name))
        if isinstance(node, ast.ClassDef):
            members[node.name] = set()
            properties[node.name] = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members[node.name].add(item.name)
                    if any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list):
                        properties[node.name].add(item.name)
    return {n for n in top if not n.startswith("_")}, members, properties


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def test_stub_matches_native_module(native):
    top, members, properties = _stub_api()
    assert top == _public(dir(native)), "ext/_native.pyi drifted from the compiled module"
    for cls_name, stub_members in members.items():
        cls = getattr(native, cls_name)
        assert _public(stub_members) == _public(dir(cls)), f"{cls_name} members drifted"
        actual_props = {n for n in _public(dir(cls)) if isinstance(cls.__dict__.get(n), property)}
        assert properties[cls_name] == actual_props, f"{cls_name} properties drifted"


def test_reference_has_same_api_as_stub():
    top, members, properties = _stub_api()
    assert top == set(ref.__all__)
    for cls_name, stub_members in members.items():
        cls = getattr(ref, cls_name)
        assert _public(stub_members) == _public(dir(cls)), f"reference {cls_name} members drifted"
        actual_props = {n for n in _public(dir(cls)) if isinstance(cls.__dict__.get(n), property)}
        assert properties[cls_name] == actual_props


def test_kernels_header_is_free_of_python():
    header = REPO / "ext" / "src" / "kernels.hpp"
    text = header.read_text()
    for forbidden in ("Python.h", "nanobind", "pybind11"):
        assert forbidden not in "\n".join(l for l in text.splitlines() if l.startswith("#include"))
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH to compile kernels.hpp standalone")
    proc = subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only",
         "-I", str(header.parent), "-x", "c++", "-"],
        input='#include "kernels.hpp"\nint main() { return 0; }\n',
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


# -- hashing -----------------------------------------------------------------

# Published 64-bit FNV-1a test vectors (seed 0).
FNV1A64_VECTORS = {"": 0xCBF29CE484222325, "a": 0xAF63DC4C8601EC8C, "foobar": 0x85944171F73967E8}


def _fnv1a64(data: bytes, seed: int) -> int:
    h = 0xCBF29CE484222325 ^ seed
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def test_fnv1a_known_vectors(backend):
    for s, h in FNV1A64_VECTORS.items():
        assert backend.hash_string(s, I64_MAX) == h % I64_MAX
        assert backend.hash_string(s, 1 << 40, seed=0) == h % (1 << 40)
    assert backend.hash_strings(list(FNV1A64_VECTORS), I64_MAX).tolist() == [
        h % I64_MAX for h in FNV1A64_VECTORS.values()
    ]
    seed = 0x0123456789ABCDEF
    assert backend.hash_string("héllo ✓", I64_MAX, seed) == _fnv1a64("héllo ✓".encode(), seed) % I64_MAX


bucket_counts = st.one_of(st.integers(min_value=1, max_value=1024), st.integers(min_value=1, max_value=I64_MAX))
seeds = st.one_of(st.just(0), st.integers(min_value=0, max_value=U64_MAX))


@PARITY
@given(strings=st.lists(st.text(), max_size=40), n_buckets=bucket_counts, seed=seeds)
def test_hash_parity(strings, n_buckets, seed):
    native = _require_native()
    got_n = native.hash_strings(strings, n_buckets, seed)
    got_r = ref.hash_strings(strings, n_buckets, seed)
    assert got_n.dtype == np.int64 and got_r.dtype == np.int64
    assert got_n.shape == got_r.shape == (len(strings),)
    assert got_n.tolist() == got_r.tolist()
    assert all(0 <= b < n_buckets for b in got_n.tolist())
    singles_n = [native.hash_string(s, n_buckets, seed) for s in strings]
    singles_r = [ref.hash_string(s, n_buckets, seed) for s in strings]
    assert singles_n == singles_r == got_n.tolist()
    assert singles_r == [_fnv1a64(s.encode("utf-8"), seed) % n_buckets for s in strings]


def test_hash_large_batch_parity(native):
    rng = np.random.default_rng(7)
    strings = ["user-%d-%s" % (i, "é" * int(rng.integers(0, 4))) for i in range(5000)]
    for n_buckets, seed in [(1 << 20, 0), (97, 12345), (I64_MAX, U64_MAX)]:
        assert native.hash_strings(strings, n_buckets, seed).tolist() == ref.hash_strings(
            strings, n_buckets, seed
        ).tolist()
    # any iterable of str is accepted, e.g. a tuple or a generator
    assert native.hash_strings(tuple(strings[:10]), 10).tolist() == ref.hash_strings(
        (s for s in strings[:10]), 10
    ).tolist()


def _raises_same(call, *args, **kwargs):
    """Both backends raise the same exception type (and message, for ours)."""
    native = _require_native()
    errors = []
    for mod in (native, ref):
        with pytest.raises(Exception) as info:
            call(mod)(*args, **kwargs)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]), errors
    return errors


def test_hash_errors_match():
    for args in [("x", 0), ("x", -5)]:
        errs = _raises_same(lambda m: m.hash_string, *args)
        assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    errs = _raises_same(lambda m: m.hash_strings, ["x"], 0)
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    for seed in (-1, 1 << 64):
        assert isinstance(_raises_same(lambda m: m.hash_string, "x", 10, seed)[0], TypeError)
    assert isinstance(_raises_same(lambda m: m.hash_string, "x", 1 << 63)[0], TypeError)
    assert isinstance(_raises_same(lambda m: m.hash_string, b"x", 10)[0], TypeError)
    assert isinstance(_raises_same(lambda m: m.hash_string, "\ud800", 10)[0], UnicodeEncodeError)
    assert isinstance(_raises_same(lambda m: m.hash_strings, ["ok", "\udfff"], 10)[0], UnicodeEncodeError)
    errs = _raises_same(lambda m: m.hash_strings, ["ok", 3], 10)
    assert isinstance(errs[0], TypeError) and str(errs[0]) == str(errs[1])
    errs = _raises_same(lambda m: m.hash_strings, "abc", 10)
    assert isinstance(errs[0], TypeError) and str(errs[0]) == str(errs[1])
    assert isinstance(_raises_same(lambda m: m.hash_strings, 5, 10)[0], TypeError)


# -- sliding window ------------------------------------------------------------


def _run_rows(mod, size, ts, vals):
    w = mod.SlidingWindow(size)
    out = w.update_many(ts, vals)
    return w, out


@PARITY
@given(stream=streams())
def test_window_update_many_parity(stream):
    native = _require_native()
    size, ts, vals = stream
    w_n, out_n = _run_rows(native, size, ts, vals)
    w_r, out_r = _run_rows(ref, size, ts, vals)
    assert out_n.dtype == out_r.dtype == np.float64
    assert out_n.shape == out_r.shape == (len(ts), 6)
    assert_bits_equal(out_n, out_r, "update_many rows")
    assert_same_window(w_n, w_r, "final window")


@PARITY
@given(stream=streams(values=any_values))
def test_window_parity_with_non_finite_values(stream):
    native = _require_native()
    size, ts, vals = stream
    w_n, out_n = _run_rows(native, size, ts, vals)
    w_r, out_r = _run_rows(ref, size, ts, vals)
    assert_bits_equal(out_n, out_r, "update_many rows (inf/nan)")
    assert_same_window(w_n, w_r, "final window (inf/nan)")


@settings(PARITY, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=streams(max_rows=60), data=st.data())
def test_update_matches_update_many(backend, stream, data):
    """Per-row update() + properties == update_many rows, in each backend, and
    a random mix of update / update_many chunks gives the same final window."""
    size, ts, vals = stream
    w_batch, rows = _run_rows(backend, size, ts, vals)
    w_step = backend.SlidingWindow(size)
    for i, (t, v) in enumerate(zip(ts.tolist(), vals.tolist())):
        w_step.update(t, v)
        assert_bits_equal(props(w_step)[:6], rows[i], f"row {i}")
        assert w_step.last == v or (math.isnan(w_step.last) and math.isnan(v))
    assert_same_window(w_step, w_batch)

    w_mix = backend.SlidingWindow(size)
    i = 0
    while i < len(ts):
        k = data.draw(st.integers(min_value=1, max_value=len(ts) - i))
        if data.draw(st.booleans()):
            part = w_mix.update_many(ts[i : i + k], vals[i : i + k])
            assert_bits_equal(part, rows[i : i + k], "chunk")
        else:
            for t, v in zip(ts[i : i + k].tolist(), vals[i : i + k].tolist()):
                w_mix.update(t, v)
        i += k
    assert_same_window(w_mix, w_batch)


@PARITY
@given(stream=streams(), data=st.data())
def test_state_round_trip(stream, data):
    """from_state(size, *w.state()) continues bit-for-bit like w, within and
    across backends."""
    native = _require_native()
    size, ts, vals = stream
    cut = data.draw(st.integers(min_value=0, max_value=len(ts)))
    _, full = _run_rows(ref, size, ts, vals)
    for src_mod in (native, ref):
        src = src_mod.SlidingWindow(size)
        src.update_many(ts[:cut], vals[:cut])
        st_ts, st_vals = src.state()
        assert isinstance(st_ts, list) and isinstance(st_vals, list)
        assert all(type(t) is int for t in st_ts) and all(type(v) is float for v in st_vals)
        for dst_mod in (native, ref):
            restored = dst_mod.SlidingWindow.from_state(size, st_ts, st_vals)
            assert type(restored) is dst_mod.SlidingWindow
            assert_same_window(restored, src, "restored")
            rest = restored.update_many(ts[cut:], vals[cut:])
            assert_bits_equal(rest, full[cut:], f"{src_mod.__name__} -> {dst_mod.__name__}")


def test_restore_is_a_replay(backend):
    """from_state == fresh window fed every pair, even with expired items."""
    w = backend.SlidingWindow.from_state(10, [0, 6, 12, 15], [1.0, 2.0, 3.0, 4.0])
    assert w.state() == ([6, 12, 15], [2.0, 3.0, 4.0])
    assert (w.count, w.sum, w.min, w.max, w.last) == (3, 9.0, 2.0, 4.0, 4.0)


def test_pickle_and_copy_round_trip(backend):
    w = backend.SlidingWindow(50)
    rows = w.update_many(np.array([0, 10, 40, 60], dtype=np.int64), np.array([0.1, -2.0, 3e10, 7.25]))
    for clone in (pickle.loads(pickle.dumps(w)), copy.deepcopy(w), copy.copy(w)):
        assert type(clone) is backend.SlidingWindow and clone is not w
        assert_same_window(clone, w, "clone")
        more = (np.array([61, 95, 200], dtype=np.int64), np.array([1.0, 2.0, 3.0]))
        assert_bits_equal(clone.update_many(*more), copy.deepcopy(w).update_many(*more))
    assert w.state() == ([40, 60], [3e10, 7.25])  # untouched by clones
    assert rows.shape == (4, 6)


def test_window_semantics(backend):
    w = backend.SlidingWindow(10)
    assert w.size_ms == 10
    assert (w.count, w.sum) == (0, 0.0)
    assert all(math.isnan(x) for x in (w.mean, w.min, w.max, w.var, w.last))
    assert w.state() == ([], [])
    assert repr(w) == "SlidingWindow(size_ms=10, count=0)"
    w.update(100, 1.0)
    w.update(105, 3.0)
    assert (w.count, w.sum, w.mean, w.min, w.max, w.var, w.last) == (2, 4.0, 2.0, 1.0, 3.0, 1.0, 3.0)
    w.update(110, 5.0)  # 100 <= 110 - 10: evicted -> window (100, 110]
    assert w.state() == ([105, 110], [3.0, 5.0])
    w.update(110, -5.0)  # equal timestamps are fine
    assert (w.count, w.min, w.max, w.last) == (3, -5.0, 5.0, -5.0)
    w.update(200, 7.0)
    assert w.state() == ([200], [7.0])
    assert (w.count, w.var) == (1, 0.0)
    empty = w.update_many(np.array([], dtype=np.int64), np.array([], dtype=np.float64))
    assert empty.shape == (0, 6) and empty.dtype == np.float64
    assert repr(w) == "SlidingWindow(size_ms=10, count=1)"


def test_no_cancellation_drift(backend):
    """Evicted values leave no trace: a subtract-on-exit running sum would give
    sum 0.0 here, and Welford removal a negative variance."""
    w = backend.SlidingWindow(10)
    w.update(0, 1e20)
    w.update(5, 1.0)
    w.update(12, 2.0)
    assert (w.count, w.sum, w.mean, w.var) == (2, 3.0, 1.5, 0.25)
    w2 = backend.SlidingWindow(1000)
    ts = np.arange(0, 100_000, 7, dtype=np.int64)
    rows = w2.update_many(ts, (0.1 * np.arange(len(ts))) % 3 + 1e8)
    assert (rows[:, 5] >= 0.0).all()


@settings(max_examples=150, deadline=None)
@given(
    stream=streams(values=st.floats(min_value=-1e6, max_value=1e6), max_rows=80),
    offset=st.sampled_from([0.0, 1e3, -1e6, 1e9]),
)
def test_window_accuracy_against_exact(stream, offset):
    """sum/mean/var against exact rational arithmetic over the live items,
    within the forward-error bound of the merge algorithm."""
    size, ts, vals = stream
    assume(len(ts) > 0)
    vals = vals + offset
    w = ref.SlidingWindow(size)
    rows = w.update_many(ts, vals)
    live_ts, live_vals = w.state()
    n = len(live_vals)
    exact = [Fraction(v) for v in live_vals]
    ex_sum = sum(exact)
    ex_mean = ex_sum / n
    ex_var = sum((x - ex_mean) ** 2 for x in exact) / n
    count, s, mean, mn, mx, var = rows[-1]
    assert count == n and mn == min(live_vals) and mx == max(live_vals)
    abs_sum = float(sum(abs(x) for x in exact))
    tiny = 1e-300  # absolute slack for gradual underflow (subnormal inputs, squares)
    assert abs(Fraction(s) - ex_sum) <= 2 * n * EPS * abs_sum
    assert abs(Fraction(mean) - ex_mean) <= 2 * (n + 1) * EPS * abs_sum / n + tiny
    mean_sq = float(sum(x * x for x in exact) / n)
    # var is relative to 1e-9 when well conditioned; the mean_sq term covers
    # data whose spread is tiny next to its magnitude.
    assert abs(Fraction(var) - ex_var) <= 1e-9 * ex_var + 8 * n * EPS * mean_sq + tiny


def test_large_batch_parity_and_consistency(native):
    """Batches above the GIL-release threshold, realistic event-time stream."""
    rng = np.random.default_rng(42)
    n = 20_000
    ts = np.cumsum(rng.integers(0, 50, size=n)).astype(np.int64) + 1_700_000_000_000
    vals = rng.normal(100.0, 25.0, size=n)
    vals[::97] = -vals[::97] * 1e6
    for size in (1, 250, 60_000):
        w_n, out_n = _run_rows(native, size, ts, vals)
        w_r, out_r = _run_rows(ref, size, ts, vals)
        assert_bits_equal(out_n, out_r, f"size={size}")
        assert_same_window(w_n, w_r)


def test_window_errors_match():
    native = _require_native()
    for size in (0, -1):
        errs = _raises_same(lambda m: m.SlidingWindow, size)
        assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    assert isinstance(_raises_same(lambda m: m.SlidingWindow, 1 << 63)[0], TypeError)
    assert isinstance(_raises_same(lambda m: m.SlidingWindow, 1.5)[0], TypeError)

    def window_with_items(mod):
        w = mod.SlidingWindow(100)
        w.update_many(np.array([10, 20], dtype=np.int64), np.array([1.0, 2.0]))
        return w

    ws = {m: window_with_items(m) for m in (native, ref)}
    errs = _raises_same(lambda m: ws[m].update, 19, 1.0)
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    # an invalid batch is rejected as a whole and leaves the window untouched
    bad_ts = np.array([20, 30, 25, 40], dtype=np.int64)
    errs = _raises_same(lambda m: ws[m].update_many, bad_ts, np.ones(4))
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    assert "(row 2)" in str(errs[0])
    for m, w in ws.items():
        assert w.state() == ([10, 20], [1.0, 2.0]), m
    errs = _raises_same(lambda m: ws[m].update_many, np.array([30, 31]), np.ones(3))
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    for bad in ([30, 31], np.array([[30, 31]]), np.array(["30", "31"])):
        assert isinstance(_raises_same(lambda m: ws[m].update_many, bad, np.ones(2))[0], TypeError)
    assert isinstance(_raises_same(lambda m: ws[m].update, 30, "1.0")[0], TypeError)
    errs = _raises_same(lambda m: m.SlidingWindow.from_state, 10, [1, 2], [1.0])
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])
    errs = _raises_same(lambda m: m.SlidingWindow.from_state, 10, [2, 1], [1.0, 1.0])
    assert isinstance(errs[0], ValueError) and str(errs[0]) == str(errs[1])


def test_update_many_input_conversions_match(native):
    """Both backends accept the same array inputs and convert them alike."""
    cases = [
        (np.array([1, 2, 3], dtype=np.int32), np.array([1.5, 2.5, -3.0], dtype=np.float32)),
        (np.array([1, 5, 9, 13, 17, 21])[::2], np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[::2]),
        (np.array([1, 2], dtype=np.uint8), np.array([1, 2], dtype=np.int64)),
        (np.array([1, 2], dtype=np.int64), np.array([True, False])),
    ]
    for ts, vals in cases:
        out_n = native.SlidingWindow(4).update_many(ts, vals)
        out_r = ref.SlidingWindow(4).update_many(ts, vals)
        assert_bits_equal(out_n, out_r, f"{ts.dtype}/{vals.dtype}")

#!/usr/bin/env bash
# benchmarks/gpu_check.sh - one-shot check of the torch model (models/deep.py) on a CUDA machine.
#
# What it does, in order; each step is guarded (a failing step does not stop the next) and
# bounded by `timeout`; the whole script takes about 1-2 minutes, and the timeouts are cut so
# that it ends within ~5.5 minutes (GPU_CHECK_BUDGET_S, default 330 s) even if something hangs.
# Everything goes to $OUT (default /tmp/gpu_check_out), at most 8 files:
#   setup.txt            0. installs the wheels carried in .whl/*.whl into /tmp/site (the
#                           imports of tests/conftest.py: confluent-kafka, the pydantic-settings
#                           stack) and decides whether the `models` shim is needed (below)
#   build.txt            0b. builds ext/_native for the machine's python3 (cmake + nanobind there)
#   env.txt              1. nvidia-smi, torch / CUDA version, device name, ext backend
#   test_deep.txt        2. pytest tests/unit/test_deep.py (the CUDA test included), run with the
#                           project's conftests
#   test_deep_noconftest.txt  2b. only if 2 could not run the tests (e.g. a conftest import
#                           failed): the same file again with --noconftest (test_deep.py uses
#                           only its own fixtures and tmp_path)
#   torch_infer.txt/.json 3. python -m benchmarks.torch_infer --devices cpu,cuda (defaults:
#                           --seconds 0.5 --repeats 5, torch's default CPU threads)
#   summary.txt          exit status of every step
#
# How it is run: from the repository root of the GPU machine, with the ignored folder .whl
# carried along with the working tree:
#     bash benchmarks/gpu_check.sh              (OUT=/some/dir to choose the output folder,
#                                                PY=/path/to/python to choose the interpreter)
#
# The GPU machine's python3 (3.12, its own CUDA torch and numpy, pytest, pytest-timeout,
# hypothesis) is used as it is; .whl must hold NO torch, numpy or nvidia-* wheel (one in
# /tmp/site would shadow the machine's CUDA torch). .whl (git-ignored) is filled on a dev machine by
# benchmarks/gpu_wheels.sh: river, rule-engine, confluent-kafka and the pydantic-settings stack
# (versions of the project's .venv), and
# .whl/optional/typing_extensions-*.whl, installed only when the machine's own
# typing_extensions is too old for that pydantic (pydantic needs >= 4.16). Should the
# machine's python3 have no pip, the wheels are unpacked with zipfile instead. Should the
# machine have its own pydantic, the carried one (in /tmp/site, first on PYTHONPATH) wins.
#
# Differences from a dev machine, and what the script does about them:
# * The machine's python is 3.12: step 0b builds ext/_native for it (cmake + nanobind are there);
#   should that fail, `ext` falls back to the pure-Python ext/_reference (identical results,
#   slower hashing, which lowers torch_infer's rows/s). env.txt records the backend.
# * River is carried as a wheel (its scipy and narwhals are on the machine). Should
#   `import models` still fail, the script registers `models` as a bare package whose
#   __init__.py is not run (a pytest -p plugin / a runpy wrapper written to
#   /tmp/gpu_check_shim), so `import models.deep` loads the real models/deep.py and
#   models/base.py, all that test_deep.py and torch_infer use. setup.txt says which.
#
# `set -u` but deliberately not `set -e`.

set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
SHIM_DIR=/tmp/gpu_check_shim
SHIM_MOD=_gpu_check_models_shim
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GPU_CHECK_REPO="$REPO"
unset STREAMSCORE_REQUIRE_NATIVE   # would turn ext's fallback to the reference into an ImportError
T0=$(date +%s)
DEADLINE=$(( T0 + ${GPU_CHECK_BUDGET_S:-330} ))   # every step's timeout is cut to what is left of this
. "$REPO/benchmarks/gpu_common.sh"   # lim, note, install_wheels, build_native, ...
: > "$SUMMARY"
note "gpu_check start $(date -u +%FT%TZ) repo=$REPO py=$PY out=$OUT"

# ------------------------------------------------------------------ 0. wheels and the shim
{
    echo "== wheels carried in .whl"
    ls -l .whl .whl/optional 2>&1
    if compgen -G ".whl/*.whl" > /dev/null; then
        # Refuse any wheel that would shadow the machine's CUDA torch / numpy.
        bad=$(ls .whl/*.whl .whl/optional/*.whl 2>/dev/null | grep -iE '/(torch|numpy|nvidia|triton)[-_]' || true)
        if [ -n "$bad" ]; then
            echo "REFUSING to install (would shadow the machine's packages): $bad"
        else
            install_wheels .whl/*.whl
        fi
    else
        echo "no .whl/*.whl carried"
    fi
} > "$OUT/setup.txt" 2>&1
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

USE_SHIM=0
{
    echo "== conftest imports (streams.settings, streams.broker)"
    if "$PY" -c "import streams.settings, streams.broker" > /dev/null 2>&1; then
        echo "conftest imports OK"
    else
        "$PY" -c "import streams.settings, streams.broker" 2>&1 | tail -5
        install_typing_extensions_if_old
        "$PY" -c "import streams.settings, streams.broker; print('conftest imports OK now')" 2>&1 | tail -5
    fi
    echo "== import models"
    if [ "${GPU_CHECK_SHIM:-}" != "1" ] && "$PY" -c "import models" > /dev/null 2>&1; then
        echo "import models OK: no shim"
    else
        "$PY" -c "import models" 2>&1 | tail -3
        echo "-> using the shim $SHIM_DIR/$SHIM_MOD.py (models/__init__.py not run)"
        mkdir -p "$SHIM_DIR"
        cat > "$SHIM_DIR/$SHIM_MOD.py" <<'PYEOF'
"""Written by benchmarks/gpu_check.sh: make `models` a bare package whose __init__.py is
not run (it re-exports River learners, and River needs scipy, not carried), so that
`import models.deep` / `models.base` load the real files of the repository."""
import importlib.machinery
import os
import sys
import types

if "models" not in sys.modules:
    _path = [os.path.join(os.environ.get("GPU_CHECK_REPO", os.getcwd()), "models")]
    _spec = importlib.machinery.ModuleSpec("models", None, is_package=True)
    _spec.submodule_search_locations = _path
    _pkg = types.ModuleType("models", "streamscore models (gpu_check shim: __init__.py not run)")
    _pkg.__path__ = _path
    _pkg.__spec__ = _spec
    _pkg.__package__ = "models"
    sys.modules["models"] = _pkg
PYEOF
        export PYTHONPATH="$SHIM_DIR:$PYTHONPATH"
        USE_SHIM=1
        "$PY" -c "import $SHIM_MOD, models.deep, models.base; print('models.deep via shim OK:', models.deep.__file__)" 2>&1 | tail -5
    fi
    echo "== packages in $SITE"
    ls "$SITE" 2>&1 | grep -i dist-info
} >> "$OUT/setup.txt" 2>&1
note "step 0 setup: shim=$USE_SHIM PYTHONPATH=$PYTHONPATH ($(( $(date +%s) - T0 ))s)"

# ------------------------------------------------------------------ 0b. the native kernels, for this python
# ext/_native in the tree is built for CPython 3.11; build it for the machine's python3 so that
# feature hashing runs natively, as on a dev machine; env.txt says which backend ran.
build_native > "$OUT/build.txt" 2>&1
note "step 0b native build: $(tail -1 "$OUT/build.txt") ($(el))"

# ------------------------------------------------------------------ 1. environment
{
    echo "== nvidia-smi"
    timeout "$(lim 30)" nvidia-smi 2>&1
    echo "rc=$?"
    echo "== torch"
    timeout "$(lim 90)" "$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))' 2>&1
    echo "rc=$?"
    echo "== details"
    timeout "$(lim 90)" "$PY" - <<'PYEOF' 2>&1
import importlib.metadata as md, os, platform, sys
print("python", sys.version.replace("\n", " "), sys.executable)
print("platform", platform.platform(), "cpus", os.cpu_count())
import numpy, torch
print("torch", torch.__version__, "from", torch.__file__)
print("numpy", numpy.__version__, "from", numpy.__file__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        print("device", i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
    a = torch.randn(256, 256, device="cuda")
    print("cuda matmul ok:", bool(torch.isfinite(a @ a).all().item()))
for name in ("typing_extensions", "pydantic", "pydantic_core", "pydantic-settings", "confluent-kafka",
             "pytest", "pytest-timeout", "hypothesis", "scipy", "river"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} (not installed)")
import ext
print("ext backend:", ext.backend_name())
PYEOF
    echo "rc=$?"
} > "$OUT/env.txt" 2>&1
note "step 1 env: done ($(( $(date +%s) - T0 ))s)"

# ------------------------------------------------------------------ 2. CUDA unit tests
PYTEST_ARGS=(-q -rA --durations=10 -p no:cacheprovider tests/unit/test_deep.py -o addopts='')
# --timeout needs pytest-timeout (the machine should have it); without it pytest would refuse the flag.
if "$PY" -c "import pytest_timeout" > /dev/null 2>&1; then
    PYTEST_ARGS+=(--timeout 300)
else
    note "step 2: pytest-timeout missing, running without --timeout"
fi
[ "$USE_SHIM" = 1 ] && PYTEST_ARGS=(-p "$SHIM_MOD" "${PYTEST_ARGS[@]}")
timeout -k 10 "$(lim 200)" "$PY" -m pytest "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT/test_deep.txt"
rc2=${PIPESTATUS[0]}
note "step 2 test_deep: rc=$rc2 ($(( $(date +%s) - T0 ))s) [0 all passed, 1 some failed, 124 timed out]"
case "$rc2" in
    0|1|124|137) ;;
    *)  # the tests did not run (conftest import error, usage error, ...): once more without conftests
        timeout -k 10 "$(lim 150)" "$PY" -m pytest --noconftest "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT/test_deep_noconftest.txt"
        rc2b=${PIPESTATUS[0]}
        note "step 2b test_deep --noconftest: rc=$rc2b ($(( $(date +%s) - T0 ))s)"
        ;;
esac

# ------------------------------------------------------------------ 3. inference benchmark
BENCH_ARGS=(--json "$OUT/torch_infer.json" --devices cpu,cuda)
if [ "$USE_SHIM" = 1 ]; then
    timeout -k 10 "$(lim 150)" "$PY" -c "
import runpy, sys
import $SHIM_MOD
sys.argv[0] = 'benchmarks.torch_infer'
runpy.run_module('benchmarks.torch_infer', run_name='__main__', alter_sys=True)
" "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/torch_infer.txt"
else
    timeout -k 10 "$(lim 150)" "$PY" -m benchmarks.torch_infer "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/torch_infer.txt"
fi
rc3=${PIPESTATUS[0]}
note "step 3 torch_infer: rc=$rc3 ($(( $(date +%s) - T0 ))s)"

note "gpu_check end $(date -u +%FT%TZ), $(( $(date +%s) - T0 ))s in all"
exit 0

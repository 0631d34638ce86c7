#!/usr/bin/env bash
# benchmarks/gpu_scaleout.sh - two workers against one (`full` vs `full_2workers`) on the device
# machine (16 cores), where the cores are not the limit that they are on the 2-core dev machine.
#
# Why a script of its own: one repetition per run on that machine varies by ~27 % (BENCHMARKS.md,
# "The 0.5 s commit interval on a 16-core machine"), so a ratio from `--repeat 3` (all of `full`,
# then all of `full_2workers`) mixes drift into the ratio. This runs ROUNDS rounds, each one
# `python -m benchmarks --only full,full_2workers --repeat 1`, so each ratio is a pair run back to
# back, and reports the per-round ratios and their median. Then, if time is left, one more round
# under `taskset -c 0,1` (broker, workers and harness on two of the machine's cores: the shape of
# the dev machine, on a quiet one).
#
# Outputs under $OUT (default /tmp/gpu_scaleout_out), at most 8 files:
#   setup.txt        wheels installed into /tmp/site, the native build, import check
#   bench.log        every harness invocation's output, in order
#   roundN.json      the harness's JSON per round (N = 1..ROUNDS); records_per_worker in its reps
#   taskset2.json    the 2-core round, if it ran
#   summary.txt      per round: full events/s, full_2workers events/s, ratio, split; the median ratio
#
# Settings (env): SCALE_ROUNDS (3), SCALE_EVENTS (200000), SCALE_TASKSET (1: do the 2-core round when
# >= 170 s are left), SCALE_BUDGET_S (500) bounds the whole script. The torch model runs on the CPU
# (STREAMSCORE_DEVICE=cpu), as the dev machine's runs do.
#
# How it is run (from the repository root of the device machine, carry: [".whl"]; .whl as
# described in benchmarks/gpu_e2e.sh):
#     bash benchmarks/gpu_scaleout.sh
# `set -u` but deliberately not `set -e`.

set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-/tmp/gpu_scaleout_out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
SITE="${E2E_SITE:-/tmp/site}"
ROUNDS="${SCALE_ROUNDS:-3}"
EVENTS="${SCALE_EVENTS:-200000}"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/bench.log"
for v in $(compgen -e | grep '^STREAMSCORE_'); do unset "$v"; done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
DEADLINE=$(( T0 + ${SCALE_BUDGET_S:-500} ))
. "$REPO/benchmarks/gpu_common.sh"   # lim, left, el, note, install_wheels, build_native
: > "$SUMMARY"
: > "$LOG"
note "gpu_scaleout start $(date -u +%FT%TZ) py=$PY rounds=$ROUNDS events=$EVENTS nproc=$(nproc)"

{
    bad=$(ls .whl/*.whl .whl/e2e/*.whl .whl/optional/*.whl 2>/dev/null \
          | grep -iE '/(torch|numpy|scipy|pandas|nvidia|triton)[-_]' || true)
    if [ -n "$bad" ]; then echo "REFUSING to install: $bad"; else install_wheels .whl/*.whl .whl/e2e/*.whl; fi
} > "$OUT/setup.txt" 2>&1
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
{
    "$PY" -c "import pydantic, pydantic_settings" > /dev/null 2>&1 || install_typing_extensions_if_old
    build_native
    timeout -k 5 "$(lim 90)" "$PY" -c 'import streams.cli, streams.app, benchmarks.harness, ext, torch, sys
print("imports OK; ext backend", ext.backend_name(), "torch", torch.__version__, "python", sys.version.split()[0])'
    echo "imports rc=$?"
} >> "$OUT/setup.txt" 2>&1
note "setup: $(grep -E '^(pip install|unpacked|REFUSING|build rc|imports)' "$OUT/setup.txt" | cut -c1-120 | tr '\n' ' ') ($(el))"

WRAP='import signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
from benchmarks.cli import main
sys.exit(main())'
# bench NAME PREFIX...: one round of full + full_2workers; PREFIX is a command prefix (e.g. taskset)
bench() {
    local name=$1 t1=$(date +%s) rc; shift
    echo "=== $name $(date -u +%T) prefix: ${*:-none}" >> "$LOG"
    STREAMSCORE_DEVICE=cpu timeout -k 15 "$(lim 200)" "$@" "$PY" -c "$WRAP" --only full,full_2workers \
        --events "$EVENTS" --repeat 1 --no-extras --no-latency --markdown /tmp/gpu_scaleout.md \
        --results "$OUT/$name.json" >> "$LOG" 2>&1
    rc=$?
    note "round $name: rc=$rc in $(( $(date +%s) - t1 ))s ($(el), $(left)s left)"
}
for i in $(seq 1 "$ROUNDS"); do
    if [ "$(left)" -lt 130 ]; then note "round$i: skipped ($(left)s left)"; continue; fi
    bench "round$i"
done
if [ "${SCALE_TASKSET:-1}" = 1 ] && [ "$(left)" -ge 170 ] && command -v taskset > /dev/null; then
    bench taskset2 taskset -c 0,1
else
    note "taskset2: skipped ($(left)s left)"
fi

timeout 30 "$PY" - "$OUT" <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import json, os, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
ratios = []
for path in sorted(out.glob("*.json")):
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"{path.stem}: no results ({type(exc).__name__})")
        continue
    one, two = runs.get("full", {}), runs.get("full_2workers", {})
    e1, e2 = one.get("events_per_s"), two.get("events_per_s")
    rep = (two.get("reps") or [{}])[0]
    split = rep.get("records_per_worker")
    ratio = e2 / e1 if e1 and e2 else None
    if ratio and path.stem.startswith("round"):
        ratios.append(ratio)
    print(f"{path.stem}: full {e1 and round(e1):,} events/s (CPU {one.get('cpu_pct')} %, correct {one.get('correct')}); "
          f"full_2workers {e2 and round(e2):,} events/s (CPU {two.get('cpu_pct')} %, correct {two.get('correct')}, "
          f"records per worker {split}); ratio {ratio and round(ratio, 2)}")
if ratios:
    print(f"{os.cpu_count()} cores: 2 workers / 1 worker, per round {[round(r, 2) for r in ratios]}, median {statistics.median(ratios):.2f}")
PYEOF
note "gpu_scaleout end $(date -u +%FT%TZ), $(el) in all"
exit 0

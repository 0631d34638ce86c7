#!/usr/bin/env bash
# benchmarks/gpu_session.sh - the whole device-machine session in one command: benchmarks/gpu_check.sh
# (the CUDA test, torch inference rows/s on cpu and cuda), then benchmarks/gpu_e2e.sh (`full` with the
# model on CUDA and on the CPU, `windowed`, `full_2workers`).
#
# Why: the device tool brings back at most 8 files, and the two scripts write 15; the e2e JSON was lost
# that way once (BENCHMARKS.md, 2026-11-27 01:58). This packs everything into $OUT/gpu_session.tar.gz
# and keeps the two summaries beside it, and prints them (the tool returns the output's tail).
#
# Fill .whl on the dev machine first (`bash benchmarks/gpu_wheels.sh`: the wheels gpu_check.sh and gpu_e2e.sh
# install there), then run from the repository root of the GPU machine with carry: [".whl"]:
#     bash benchmarks/gpu_session.sh
# Then, with the packages gpu_e2e.sh installed, `python -m benchmarks.rounds` (one torch pass per fetch
# round against one per partition-batch, in process) with the model on CUDA and on the CPU, each bounded
# by ROUNDS_TIMEOUT_S (75; 0 skips them).
# Budgets (env): GPU_CHECK_BUDGET_S (150 here), E2E_BUDGET_S (320 here).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
FINAL="${OUT:-/tmp/gpu_session_out}"
mkdir -p "$FINAL" /tmp/gpu_session/check /tmp/gpu_session/e2e
echo "gpu_session start $(date -u +%FT%TZ)"   # no commit here: the device's copy of .git can be stale
OUT=/tmp/gpu_session/check GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-150}" bash benchmarks/gpu_check.sh > /tmp/gpu_session/check.stdout 2>&1
echo "gpu_check rc=$?"
OUT=/tmp/gpu_session/e2e E2E_BUDGET_S="${E2E_BUDGET_S:-320}" bash benchmarks/gpu_e2e.sh > /tmp/gpu_session/e2e.stdout 2>&1
echo "gpu_e2e rc=$?"
mkdir -p /tmp/gpu_session/rounds
if [ "${ROUNDS_TIMEOUT_S:-75}" -gt 0 ]; then
    for dev in cuda cpu; do
        ( for v in $(compgen -e | grep '^STREAMSCORE_'); do unset "$v"; done
          STREAMSCORE_DEVICE=$dev PYTHONPATH="${E2E_SITE:-/tmp/site}:$REPO" timeout -k 5 "${ROUNDS_TIMEOUT_S:-75}" \
              python3 -m benchmarks.rounds --events "${ROUNDS_EVENTS:-12000}" --per-partition 2,10,50 --blocks 3 \
              --allow-differences --json "/tmp/gpu_session/rounds/rounds_$dev.json" ) \
            > "/tmp/gpu_session/rounds/rounds_$dev.txt" 2>&1
        echo "rounds $dev rc=$?"
    done
fi
tar -czf "$FINAL/gpu_session.tar.gz" -C /tmp gpu_session
cp /tmp/gpu_session/check/summary.txt "$FINAL/check_summary.txt" 2>/dev/null
cp /tmp/gpu_session/e2e/summary.txt "$FINAL/e2e_summary.txt" 2>/dev/null
echo "===== gpu_check summary"; cat /tmp/gpu_session/check/summary.txt 2>/dev/null
echo "===== torch_infer"; tail -25 /tmp/gpu_session/check/torch_infer.txt 2>/dev/null
echo "===== test_deep"; tail -5 /tmp/gpu_session/check/test_deep.txt 2>/dev/null
echo "===== gpu_e2e summary"; cat /tmp/gpu_session/e2e/summary.txt 2>/dev/null
for dev in cuda cpu; do echo "===== rounds $dev"; tail -6 "/tmp/gpu_session/rounds/rounds_$dev.txt" 2>/dev/null; done
echo "gpu_session end $(date -u +%FT%TZ)"

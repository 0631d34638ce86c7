"""Backpressure: a backlog far bigger than a micro-batch is drained in capped batches with bounded memory.

The worker is the slow side here: the whole backlog (elec2 replayed several
times under new event ids, each event padded with a 512-byte field the
pipeline ignores, each followed by its label) is on the broker before the
worker has read a tenth of it. The worker must pull it at its own pace: a
micro-batch is at most ``batch_max`` records, librdkafka prefetches a bounded
queue per partition, outputs are flushed at every commit, state goes to
RocksDB. So its memory must not grow with the backlog.

How it is measured: the worker first drains a warm-up stream (models, state
store, caches and allocator arenas reach their working size); its RSS then is
the baseline. The backlog is replayed at once, and while the worker drains it
the test samples the consumer lag and reads the worker's peak RSS
(``VmHWM`` in ``/proc/PID/status``) at the end.

The bound, ``RSS_GROWTH_MIB`` above the baseline, is the sum of what may
legitimately be held while draining (one partition):

* librdkafka's prefetch queue: ``queued.min.messages`` = 20,000 records
  (``streams/app.py``), about 15 MiB of these events, at most
  ``queued.max.messages.kbytes`` (64 MiB);
* one micro-batch of ``batch_max`` = 500 records and its outputs;
* the output producer's queue: flushed before every commit
  (``commit_interval_s``), so at most one interval of predictions;
* RocksDB's memtables: up to two 64 MiB write buffers of the partition store
  (the stored predictions and label markers of every event);

about 150 MiB; 200 MiB leaves room for allocator slack. The backlog itself is
about 180 MB on the wire (several times that as Python objects): a worker that
read ahead without bound, or kept what it read, would exceed it.

Also asserted: every micro-batch holds at most ``batch_max`` records (the
``streamscore_worker_batch_size_records`` histogram, bucket ``le=500``), and
while a backlog exists nearly all batches are full-size (more than 250).
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streams.datasets import iter_records
from streams.demo import start_worker, stop_worker, wait_ready
from streams.metrics import LAG_METRIC, scrape, total
from streams.replay import replay
from streams.settings import Settings
from tests.faults.harness import make_run_settings, proc_status_mib, tail, wait_for

pytestmark = pytest.mark.integration

BATCH_MAX = 500                  # a bucket boundary of the batch-size histogram (streams/metrics.py BATCH_BUCKETS)
PAD = 512                        # bytes of an ignored field on each event: the backlog is big on the wire
RSS_GROWTH_MIB = 200.0           # see the module docstring
WARM_PASSES = 1                  # elec2 is 45,312 events, each followed by its label
BACKLOG_PASSES = 5               # 226,560 events + 226,560 labels


def write_stream(path: Path, passes: range, pad: int = PAD) -> tuple[int, int]:
    """elec2 (events with inline labels) once per pass, event ids suffixed with the pass; (records, events)."""
    base = list(iter_records("elec2"))
    filler = "x" * pad
    records = events = 0
    with path.open("wb") as fh:
        for rep in passes:
            for rec in base:
                v = dict(rec["value"])
                v["event_id"] = f"{v['event_id']}-{rep}"
                if "label" not in v:
                    v["note"] = filler
                    events += 1
                fh.write(orjson.dumps({"topic": "events", "key": rec["key"], "ts": rec["ts"], "value": v}) + b"\n")
                records += 1
    return records, events


def metrics(s: Settings) -> dict:
    return scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics", timeout=5.0)


def batch_sizes(samples: dict) -> dict[str, float]:
    """Cumulative bucket counts of the batch-size histogram, by ``le``."""
    return {labels["le"]: v for labels, v in samples.get("streamscore_worker_batch_size_records_bucket", ())}


def drain(broker_bootstrap: str, root: Path, backlog_passes: int) -> dict[str, float]:
    """Warm a worker up, replay a backlog at once, let it drain; the figures the assertions need."""
    warm, backlog = root / "warm.jsonl", root / "backlog.jsonl"
    n_warm, _ = write_stream(warm, range(WARM_PASSES))
    n_backlog, n_events = write_stream(backlog, range(WARM_PASSES, WARM_PASSES + backlog_passes))
    s = make_run_settings(broker_bootstrap, root, "backpressure", pipeline="elec2", partitions=1,
                          batch_max=BATCH_MAX)
    log = root / "worker.log"
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log, timeout=90)
        replay(warm, s)
        wait_for(lambda: total(metrics(s), "streamscore_worker_events_in_total") >= n_warm, "the warm-up drained",
                 [proc], log, poll=lambda: time.sleep(0.2))
        before = metrics(s)
        baseline = proc_status_mib(proc.pid, "VmRSS")

        replay(backlog, s)                   # ~450k records on the broker: the worker is far behind
        max_lag = 0.0
        rss_samples: list[float] = []

        def drained() -> bool:
            nonlocal max_lag
            m = metrics(s)
            max_lag = max(max_lag, total(m, LAG_METRIC))
            rss_samples.append(proc_status_mib(proc.pid, "VmRSS"))
            return total(m, "streamscore_worker_events_in_total") >= n_warm + n_backlog

        wait_for(drained, "the backlog drained", [proc], log, poll=lambda: time.sleep(0.25))
        peak = proc_status_mib(proc.pid, "VmHWM")
        after = metrics(s)
    finally:
        code = stop_worker(proc)
    assert code == 0, f"worker exited with {code}\n{tail(log)}"

    b0, b1 = batch_sizes(before), batch_sizes(after)
    n_batches = b1["+Inf"] - b0["+Inf"]
    step = max(1, len(rss_samples) // 12)
    return {
        "records": n_backlog, "events": n_events, "backlog_mb": backlog.stat().st_size / 1e6,
        "baseline_mib": baseline, "peak_mib": peak, "growth_mib": peak - baseline, "max_lag": max_lag,
        "batches": n_batches, "batches_le_max": b1[f"{float(BATCH_MAX)}"] - b0[f"{float(BATCH_MAX)}"],
        "batches_le_half": b1[f"{float(BATCH_MAX // 2)}"] - b0[f"{float(BATCH_MAX // 2)}"],
        "predictions": total(after, "streamscore_worker_predictions_total")
        - total(before, "streamscore_worker_predictions_total"),
        "dlq": total(after, "streamscore_worker_dlq_total") - total(before, "streamscore_worker_dlq_total"),
        "rss_trace_mib": [round(r) for r in rss_samples[::step]],  # type: ignore[dict-item]
    }


def check(r: dict[str, float], backlog_passes: int) -> None:
    assert r["max_lag"] >= 0.5 * r["events"], f"no real backlog formed at the worker: {r}"   # lag of labels lags
    assert r["predictions"] == r["events"] and r["dlq"] == 0, r                  # every event scored once
    assert r["batches_le_max"] == r["batches"], f"a micro-batch exceeded batch_max={BATCH_MAX}: {r}"
    assert r["batches"] >= r["records"] / BATCH_MAX, r
    assert r["batches_le_half"] <= 0.1 * r["batches"], f"batches were not filled to the cap under a backlog: {r}"
    assert r["growth_mib"] <= RSS_GROWTH_MIB, (
        f"worker RSS grew {r['growth_mib']:.0f} MiB (> {RSS_GROWTH_MIB:.0f}) draining a {r['backlog_mb']:.0f} MB "
        f"backlog of {backlog_passes} passes: {r}")


def test_large_backlog_drains_in_capped_batches_with_bounded_memory(broker, tmp_path):
    r = drain(broker.bootstrap, tmp_path, BACKLOG_PASSES)
    print(f"backpressure: {r}")
    check(r, BACKLOG_PASSES)


@pytest.mark.slow
def test_soak_three_times_the_backlog_same_memory_bound(broker, tmp_path):
    """15 passes (680k events, ~540 MB on the wire): the same bound holds, it does not grow with the backlog."""
    r = drain(broker.bootstrap, tmp_path, 3 * BACKLOG_PASSES)
    print(f"backpressure soak: {r}")
    check(r, 3 * BACKLOG_PASSES)

"""A torch checkpoint hot-swapped into a running worker under load: nothing dropped, nothing doubled.

The worker scores elec2 with a River model and a torch Wide & Deep model
(pipelines/elec2_deep.toml). While a producer keeps sending events, a
checkpoint trained offline (``streams.train``, the code behind ``streamscore
train``) is dropped where the worker watches for it. Every event must get
exactly one prediction, the torch model's version must jump to the
checkpoint's and never go back, and the worker must count the swap.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.datasets import iter_records
from streams.demo import OutputReader, scrape, start_worker, stop_worker, total, wait_ready
from streams.replay import iter_lines
from streams.spec import load_spec
from streams.train import train

pytestmark = pytest.mark.integration

N_EVENTS = 3000


def _deep_steps(pred: dict) -> int:
    m = re.search(r"deep@(\d+)", pred["model_version"])
    assert m, pred["model_version"]
    return int(m.group(1))


def test_checkpoint_hot_swap_under_load_drops_and_doubles_nothing(make_settings, tmp_path: Path) -> None:
    # a checkpoint trained offline on 8,000 records of elec2 (no overlap with the live ids below)
    stream = tmp_path / "train.jsonl"
    with stream.open("wb") as fh:
        for r in iter_records("elec2", limit=8000):
            fh.write(orjson.dumps(r) + b"\n")
    ckpt_dir = tmp_path / "ckpt"
    report = train(load_spec("elec2_deep"), stream, out=tmp_path / "trained.pt", device="cpu")
    trained_steps = int(report["models"]["deep"]["version"].split("@")[1])
    assert trained_steps > 50

    s = make_settings(pipeline="elec2_deep", checkpoint_dir=ckpt_dir, batch_max=200)
    log = tmp_path / "worker.log"
    proc = start_worker(s, log)
    reader = OutputReader(s)
    try:
        wait_ready(s, proc, log)
        live = [r for r in iter_records("elec2", limit=2 * N_EVENTS)]   # events with inline labels
        values = []
        for r in live:
            v = dict(r["value"])
            v["event_id"] = "live-" + str(v["event_id"])
            values.append(orjson.dumps(v))
        n_events = sum(1 for r in live if "nswprice" in r["value"])

        def produce() -> None:
            p = Producer(s.producer_config())
            for i, v in enumerate(values):
                p.produce(s.topic("events"), v, b"nsw")
                if i % 100 == 99:
                    p.flush(10)
                    time.sleep(0.1)            # a steady load over ~6 s (the worker polls the file each second)
            assert p.flush(10) == 0

        th = threading.Thread(target=produce)
        th.start()
        deadline = time.monotonic() + 60
        while len(reader.predictions) < n_events // 3 and time.monotonic() < deadline:
            reader.poll(0.2)
        # deploy mid-stream, atomically, as `streamscore train` does
        deploy = ckpt_dir / "elec2_deep" / "deep.pt"
        deploy.parent.mkdir(parents=True, exist_ok=True)
        tmp = deploy.with_suffix(".tmp")
        tmp.write_bytes((tmp_path / "trained.pt").read_bytes())
        tmp.replace(deploy)
        th.join()
        while reader.done < n_events and time.monotonic() < deadline:
            reader.poll(0.2)
        samples = scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics")
    finally:
        stop_worker(proc)
        reader.close()

    assert reader.duplicates == 0 and not reader.dlq
    expected = {"live-" + str(r["value"]["event_id"]) for r in live if "nswprice" in r["value"]}
    assert set(reader.predictions) == expected                    # none dropped
    # in the order the worker scored them (ts grows with the event index)
    steps = [_deep_steps(p) for p in sorted(reader.predictions.values(), key=lambda p: p["ts"])]
    jump = next(i for i, st in enumerate(steps) if st >= trained_steps)
    assert 0 < jump < len(steps) - 1, "the swap must land mid-stream"
    assert max(steps[:jump]) < trained_steps and min(steps[jump:]) >= trained_steps   # never back
    assert total(samples, "streamscore_model_checkpoint_swaps_total", model="deep") == 1
    assert "hot-swapped deep" in log.read_text()
    # the worker also saved its own checkpoint of the partition when it stopped
    assert (ckpt_dir / "elec2_deep" / "deep" / "p0.pt").is_file()


def test_train_writes_the_checkpoint_workers_start_from(tmp_path: Path) -> None:
    stream = tmp_path / "s.jsonl"
    with stream.open("wb") as fh:
        for r in iter_records("elec2", limit=2000):
            fh.write(orjson.dumps(r) + b"\n")
    assert sum(1 for _ in iter_lines(stream.open("rb"))) == 2000
    report = train(load_spec("elec2_deep"), stream, checkpoints=tmp_path / "ck", device="cpu")
    path = Path(report["checkpoints"]["deep"])
    assert path == tmp_path / "ck" / "elec2_deep" / "deep.pt" and path.is_file()
    assert report["events"] == 1000 and report["labels"] == 1000
    deep = report["models"]["deep"]
    assert deep["n"] == 1000 and deep["log_loss"] < deep["baseline_log_loss"]   # it learned something

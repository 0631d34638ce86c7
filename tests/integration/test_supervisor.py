"""`streamscore worker --workers 2`: two processes share the partitions; a dead one is restarted.

Real broker, real worker processes: the supervisor's children must both hold
partitions, answer every event, come back after a SIGKILL, and stop cleanly
(exit 0) when the supervisor gets SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest
from confluent_kafka import Producer

from streams.demo import OutputReader
from streams.metrics import scrape, total
from streams.settings import Settings

pytestmark = pytest.mark.integration

FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")


def two_free_ports() -> int:
    """A port p with p and p + 1 both free (the supervisor offsets ports by the worker index)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", p + 1))
                    return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def assigned(s: Settings, port: int) -> float:
    try:
        return total(scrape(f"http://{s.metrics_host}:{port}/metrics"), "streamscore_worker_assigned_partitions")
    except OSError:
        return 0.0


def wait(cond, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_two_workers_share_partitions_and_a_dead_one_comes_back(make_settings, tmp_path) -> None:
    s = make_settings(pipeline="elec2", partitions=2)
    s = s.model_copy(update={"web_port": two_free_ports(), "metrics_port": two_free_ports()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    for name in ("broker", "app_id", "topic_prefix", "pipeline", "partitions", "state_dir", "web_port",
                 "metrics_port", "session_timeout_s", "commit_interval_s", "metrics_interval_s"):
        env[Settings.env_name(name)] = str(getattr(s, name))
    log = (tmp_path / "supervisor.log").open("wb")
    sup = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--workers", "2"], env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    reader = OutputReader(s)
    try:
        ports = (s.metrics_port, s.metrics_port + 1)
        wait(lambda: all(assigned(s, p) >= 1 for p in ports), "both workers to hold a partition")
        p = Producer(s.producer_config())
        for i in range(200):
            ev = {"event_id": f"e{i}", "ts": i, **{f: 0.1 * (i % 7) for f in FEATURES}}
            p.produce(s.topic("events"), orjson.dumps(ev), f"k{i}".encode(), partition=i % 2)
        assert p.flush(10) == 0
        wait(lambda: reader.poll(0.2) is not None and len(reader.predictions) == 200, "200 predictions")

        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait(lambda: len(children(sup.pid)) == 2 and victim not in children(sup.pid), "the worker to be restarted")
        wait(lambda: sum(assigned(s, p) for p in ports) == 2 and all(assigned(s, p) >= 1 for p in ports),
             "the restarted worker to rejoin", timeout=120)
        for i in range(200, 260):
            ev = {"event_id": f"e{i}", "ts": i, **{f: 0.1 * (i % 7) for f in FEATURES}}
            p.produce(s.topic("events"), orjson.dumps(ev), f"k{i}".encode(), partition=i % 2)
        assert p.flush(10) == 0
        wait(lambda: reader.poll(0.2) is not None and len(reader.predictions) == 260, "260 predictions")
    finally:
        sup.send_signal(signal.SIGTERM)
        rc = sup.wait(60)
        reader.close()
    assert rc == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    assert children(sup.pid) == []

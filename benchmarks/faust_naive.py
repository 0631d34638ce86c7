"""The ``faust_naive`` baseline: the textbook faust agent.

``async for event in stream`` one event at a time, the window state in a faust
Table backed by RocksDB (``store="rocksdb://"``; faust-streaming uses the
``rocksdict`` driver when it is installed, as here), and ``await
topic.send()`` per output. Same computation as ``raw`` (per-user 60 s
tumbling count and mean in event time) and the same output format; every
table write also goes to the table's changelog topic, as faust does.

The app is built by :func:`build_app` (nothing is created at import time).
Run by the harness as ``python -m benchmarks.faust_naive ...``; it writes its
progress to ``--status`` and, once ``--expected`` outputs are flushed, waits
for SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import faust

from benchmarks.raw import COUNT_NAME, MEAN_NAME, WINDOW_MS
from benchmarks.status import write_status

TABLE = "windows"


def changelog_topic(app_id: str) -> str:
    """Name of the table's changelog topic (created by the harness, with explicit configs)."""
    return f"{app_id}-{TABLE}-changelog"


def build_app(*, broker: str, app_id: str, topic: str, out_topic: str, partitions: int, datadir: str,
              web_port: int, expected: int, status: str, store: str = "rocksdb://") -> faust.App:
    """A one-agent faust app: events in, window features out, state in a RocksDB table."""
    app = faust.App(
        app_id,
        broker=f"kafka://{broker}",
        store=store,
        datadir=datadir,
        web_port=web_port,
        web_host="127.0.0.1",
        web_enabled=False,
        topic_partitions=partitions,
        topic_allow_declare=False,     # topics (and the changelog) are created by the harness
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        env_prefix="STREAMSCORE_BENCH_FAUST_",
    )
    source = app.topic(topic, key_type=str, value_serializer="json")
    sink = app.topic(out_topic, key_type=str, value_serializer="json")
    windows = app.Table(TABLE, default=None, partitions=partitions)
    done = {"n": 0, "t": time.monotonic()}

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if assigned:
            write_status(status, "ready", done["n"])

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for event in stream:
            ts = event["ts"]
            user = event["user"]
            start = ts - ts % WINDOW_MS
            st = windows.get(user)
            if st is None or start > st[0]:
                st = [start, 0, 0.0]
            if start == st[0]:
                st[1] += 1
                st[2] += event["amount"]
            windows[user] = st
            c = st[1]
            await sink.send(key=user, value={
                "event_id": event["event_id"],
                "key": user,
                "ts": ts,
                "features": {COUNT_NAME: float(c), MEAN_NAME: st[2] / c if c else 0.0},
                "latency_ms": round(time.time() * 1000.0 - stream.current_event.message.timestamp * 1000.0, 3),
            })
            done["n"] += 1
            now = time.monotonic()
            if done["n"] >= expected:
                await app.producer.flush()
                write_status(status, "done", done["n"])
            elif now - done["t"] >= 1.0 or done["n"] == 1:   # and after the first output
                write_status(status, "running", done["n"])
                done["t"] = now

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faust_naive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--app-id", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out-topic", required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--web-port", type=int, required=True, help="faust binds it even when disabled.")
    ap.add_argument("--expected", type=int, required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--store", default="rocksdb://")
    args = ap.parse_args(argv)
    Path(args.datadir).mkdir(parents=True, exist_ok=True)
    app = build_app(broker=args.broker, app_id=args.app_id, topic=args.topic, out_topic=args.out_topic,
                    partitions=args.partitions, datadir=args.datadir, web_port=args.web_port,
                    expected=args.expected, status=args.status, store=args.store)
    from faust.worker import Worker

    worker = Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()   # returns (or exits) when SIGTERM stops the worker
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long a takeover waits for state: ``python -m benchmarks.recovery``.

Why: with the state changelog (streams/changelog.py) a worker given a
partition reads that partition's changelog before it processes a record. A
worker that never held the partition reads all of it; one with a standby copy
(refreshed every ``standby_interval_s``) reads only what was written since.
This measures both against the embedded broker, in one process: a changelog
partition of ``--keys`` state entries written in flushes of ``--flush``
entries, each entry ``--value-bytes`` long, then

* ``full``: recovery into an empty store (the baseline: a new machine), and
* ``standby``: a copy caught up once, then ``--behind`` more flushes written,
  then recovery from its own position (a takeover with standbys on),

reported as records/s, seconds, and the ratio of the two times. Both
recovered stores are checked equal to the writer's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from streams.broker import EmbeddedBroker, create_topics
from streams.changelog import CHANGELOG_CONFIG, Changelog
from streams.settings import Settings
from streams.state import PartitionStore


def _write(cl: Changelog, store: PartitionStore, keys: range, value_bytes: int, flush: int) -> None:
    """Puts in flushes of ``flush`` entries, the way a worker's commit sends them."""
    ks = list(keys)
    for lo in range(0, len(ks), flush):
        for k in ks[lo:lo + flush]:
            store.put(f"p:{k:09d}", os.urandom(value_bytes))
        store.staged(cl.send(0, store.dirty_items()))
        errors = cl.flush(60)
        assert not errors, errors
        store.flush()


def run(keys: int, value_bytes: int, flush: int, behind: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="streamscore-recovery-") as tmp, EmbeddedBroker() as broker:
        root = Path(tmp)
        s = Settings(broker=broker.bootstrap, topic_prefix="bench-", app_id="recovery")
        topic = s.changelog_topic("bench")
        create_topics(broker.bootstrap, {topic: 1}, config=CHANGELOG_CONFIG)
        cl = Changelog(topic, s.producer_config(), s.consumer_config(group="recovery-bench"))
        writer = PartitionStore(root / "writer")
        cl.recover(writer, 0)
        _write(cl, writer, range(keys), value_bytes, flush)

        standby = PartitionStore(root / "standby")
        cl.recover(standby, 0)                                   # caught up ...
        _write(cl, writer, range(keys, keys + behind * flush), value_bytes, flush)   # ... then left behind

        fresh = PartitionStore(root / "fresh")
        t0 = time.perf_counter()
        full = cl.recover(fresh, 0, timeout=600)
        full_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        part = cl.recover(standby, 0, timeout=600)
        standby_s = time.perf_counter() - t0

        expect = dict(writer.items())
        assert dict(fresh.items()) == expect and dict(standby.items()) == expect, "recovered state differs"
        for st in (writer, standby, fresh):
            st.close()
        cl.close()
    return {"records": full.applied, "full_s": full_s, "full_records_per_s": full.applied / full_s,
            "standby_records": part.applied, "standby_s": standby_s, "ratio": full_s / standby_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=200_000, help="State entries written before the standby catches up.")
    p.add_argument("--value-bytes", type=int, default=300, help="Bytes per value (a stored prediction is ~300).")
    p.add_argument("--flush", type=int, default=10_000, help="Entries per flush (one commit's worth).")
    p.add_argument("--behind", type=int, default=2, help="Flushes the standby is behind at the takeover.")
    p.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    a = p.parse_args(argv)
    r = run(a.keys, a.value_bytes, a.flush, a.behind)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"full recovery (empty store): {r['records']:,} records in {r['full_s']:.2f}s "
              f"({r['full_records_per_s']:,.0f} records/s)")
        print(f"standby takeover ({a.behind} flushes behind): {r['standby_records']:,} records in "
              f"{r['standby_s']:.2f}s; {r['ratio']:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

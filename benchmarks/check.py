"""Reading outputs back from Kafka, and checking them against the workload.

Correctness of a run:

* every input event id has an output, and every output belongs to an input
  event (a redelivered duplicate is allowed only if it is byte-identical);
* no dead letters;
* window features: every window of the target is present in every output
  and equals the brute-force reference (:func:`benchmarks.workload.reference_windows`):
  counts exactly, means to 1e-9 relative. For a window keyed by a field other
  than the partitioning key (user), a worker with partition-local state can
  only aggregate the events of its own partitions; the check accepts the
  global or the per-partition reference and reports which one matched;
* scored targets: a finite ``score`` in [0, 1].
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.workload import WindowDef, Workload, reference_windows
from streams.settings import Settings

FEATURE_RE = re.compile(r"^(?P<field>.+)_(?P<agg>count|sum|mean|min|max)_(?P<span>\d+)(?P<unit>ms|s|m|h|d)_by_(?P<key>.+)$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass
class Outputs:
    """What a run published: first output per event id, its Kafka timestamp."""

    first: dict[str, bytes] = field(default_factory=dict)
    ts_ms: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    duplicates_differing: int = 0
    dlq: list[bytes] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.first)

    def span_s(self) -> float:
        if len(self.ts_ms) < 2:
            return 0.0
        return (max(self.ts_ms.values()) - min(self.ts_ms.values())) / 1000.0


def read_outputs(broker: str, topics: tuple[str, ...], dlq_topic: str | None, expected: int,
                 idle_s: float = 10.0, timeout_s: float = 300.0) -> Outputs:
    """Read ``topics`` from the beginning until ``expected`` distinct event ids were seen
    (then drain what is left), or nothing new arrived for ``idle_s`` seconds."""
    s = Settings(broker=broker)
    c = Consumer(s.consumer_config(group=f"bench-reader-{uuid.uuid4().hex[:8]}"))
    meta = c.list_topics(timeout=10)
    names = [*topics, *([dlq_topic] if dlq_topic else [])]
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in names for p in meta.topics[t].partitions])
    out = Outputs()
    last_new = time.monotonic()
    deadline = last_new + timeout_s
    loads = orjson.loads
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(10_000, 0.5 if out.n < expected else 0.3)
            if not msgs:
                if out.n >= expected or time.monotonic() - last_new > idle_s:
                    break
                continue
            last_new = time.monotonic()
            for m in msgs:
                if m.error():
                    continue
                v = m.value()
                if m.topic() == dlq_topic:
                    out.dlq.append(v)
                    continue
                eid = loads(v)["event_id"]
                prev = out.first.get(eid)
                if prev is None:
                    out.first[eid] = v
                    out.ts_ms[eid] = m.timestamp()[1]
                else:
                    out.duplicates += 1
                    out.duplicates_differing += int(prev != v)
    finally:
        c.close()
    return out


def parse_feature(name: str) -> tuple[str, str, int, str] | None:
    """``amount_count_60s_by_user`` -> ("amount", "count", 60000, "user")."""
    m = FEATURE_RE.match(name)
    if not m:
        return None
    return m["field"], m["agg"], int(m["span"]) * UNIT_MS[m["unit"]], m["key"]


class Reference:
    """Brute-force window references of one workload, computed once each."""

    def __init__(self, workload: Workload) -> None:
        self.w = workload
        self._cache: dict[tuple[WindowDef, bool], tuple[list[int], list[float]]] = {}

    def get(self, wd: WindowDef, per_partition: bool) -> tuple[list[int], list[float]]:
        k = (wd, per_partition)
        if k not in self._cache:
            self._cache[k] = reference_windows(self.w.events, self.w.partitions, wd, per_partition)
        return self._cache[k]


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def check_outputs(out: Outputs, workload: Workload, ref: Reference, windows: tuple[WindowDef, ...],
                  scored: bool, partition_key: str = "user") -> tuple[bool, dict[str, Any]]:
    """Check a run's outputs; returns (correct, details)."""
    expected = {ev["event_id"]: i for i, ev in enumerate(workload.events)}
    got = set(out.first)
    missing = [e for e in expected if e not in got]
    unexpected = [e for e in got if e not in expected]
    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} events without output (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} outputs for unknown event ids (e.g. {unexpected[:3]})")
    if out.duplicates_differing:
        problems.append(f"{out.duplicates_differing} redelivered outputs differ from the first")
    if out.dlq:
        problems.append(f"{len(out.dlq)} dead letters (e.g. {out.dlq[0][:200]!r})")
    details: dict[str, Any] = {"outputs": out.n, "duplicates": out.duplicates, "missing": len(missing),
                               "dlq": len(out.dlq)}
    docs = {eid: orjson.loads(v) for eid, v in out.first.items() if eid in expected}
    if windows and docs:
        sample = next(iter(docs.values())).get("features") or {}
        names: dict[tuple[str, str, int, str], str] = {}
        for n in sample:
            parsed = parse_feature(n)
            if parsed:
                names[parsed] = n
        semantics: dict[str, str] = {}
        for wd in windows:
            cname = names.get((wd.field, "count", wd.size_ms, wd.key))
            mname = names.get((wd.field, "mean", wd.size_ms, wd.key))
            label = f"{wd.field}/{wd.key}/{wd.size_ms // 1000}s"
            if cname is None or mname is None:
                problems.append(f"window {label}: no count/mean feature in the outputs "
                                f"(features seen: {sorted(sample)[:6]})")
                continue
            modes = [False] if wd.key == partition_key else [False, True]
            bad_first: str | None = None
            for per_partition in modes:
                counts, means = ref.get(wd, per_partition)
                bad = 0
                example = None
                for eid, doc in docs.items():
                    i = expected[eid]
                    f = doc.get("features") or {}
                    c, m = f.get(cname), f.get(mname)
                    if c is None or m is None or c != counts[i] or not _close(float(m), means[i]):
                        bad += 1
                        if example is None:
                            example = f"{eid}: got ({c}, {m}) expected ({counts[i]}, {means[i]})"
                if not bad:
                    semantics[label] = "partition-local" if per_partition else "global"
                    break
                if bad_first is None:
                    bad_first = f"window {label}: {bad} of {len(docs)} outputs differ from the reference, {example}"
            else:
                problems.append(bad_first or f"window {label}: mismatch")
        details["window_semantics"] = semantics
    if scored and docs:
        bad_scores = [e for e, d in docs.items()
                      if not isinstance(d.get("score"), (int, float)) or not math.isfinite(d["score"])
                      or not 0.0 <= d["score"] <= 1.0]
        if bad_scores:
            problems.append(f"{len(bad_scores)} outputs without a finite score in [0, 1] (e.g. {bad_scores[:3]})")
    details["problems"] = problems
    return not problems, details

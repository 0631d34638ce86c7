"""Shared machinery of the kill suite: run workers, read raw outputs, dump and compare state.

Nothing here sleeps as synchronisation: every wait polls a count (predictions
read back, records consumed on /metrics) against a generous deadline.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from rocksdict import AccessType, Options, Rdict

from models import persistence
from streams.broker import create_topics, free_port
from streams.changelog import Changelog
from streams.demo import OutputReader, all_topics, start_worker, stop_worker, wait_ready
from streams.metrics import scrape, total
from streams.replay import replay
from streams.settings import Settings
from streams.spec import load_spec
from streams.state import BOOKKEEPING_KEYS, PartitionStore

SNAPSHOT_KEY = "kill-suite-snapshot-key-0123456789abcdef"   # shared by reference and killed runs
DEADLINE_S = 180.0


def make_run_settings(bootstrap: str, root: Path, tag: str, *, pipeline: str, partitions: int,
                      **kw: Any) -> Settings:
    """Settings for one run (own topics, group, state dir, ports), topics created."""
    name = f"{tag}-{time.time_ns() % 10**9}"
    s = Settings(broker=bootstrap, app_id=f"t-{name}", topic_prefix=f"{name}-", pipeline=pipeline,
                 partitions=partitions, state_dir=root / name, web_port=free_port(), metrics_port=free_port(),
                 session_timeout_s=6.0, commit_interval_s=0.5, metrics_interval_s=1.0,
                 snapshot_key=SNAPSHOT_KEY, **kw)
    create_topics(bootstrap, all_topics(s))
    return s


def second_worker(s: Settings, own_state: bool = False) -> Settings:
    """The same worker configuration (group, topics) on its own ports; ``own_state``: its own state
    directory too (another machine, as far as state goes: what it takes over comes from changelogs)."""
    update: dict[str, Any] = {"web_port": free_port(), "metrics_port": free_port()}
    if own_state:
        update["state_dir"] = s.state_dir.with_name(f"{s.state_dir.name}-w{update['web_port']}")
    return s.model_copy(update=update)


def settled(reader: OutputReader, quiet_s: float = 8.0) -> Callable[[], bool]:
    """A condition: no new prediction record (answers and re-answers) for ``quiet_s`` seconds.

    8 s: longer than the session timeout of the test workers (6 s). A killed
    worker's group membership expires only then, and the rebalance it causes
    makes the new owner re-read from the committed offsets: with 3 s of quiet
    the labels could start before that re-read, which then scores an
    unflushed event again with models the labels have trained.

    Waiting for this (not only for every event to have an answer) before the
    labels are replayed matters after a kill: an answer the killed worker
    published but had not flushed is scored again by the next owner, and if
    labels were already arriving they could train its models first, giving a
    second answer that differs from the first (labels on their own topic are
    not ordered with the events; docs/reliability.md, section 4). Quiet alone
    does not prove the re-read happened (a takeover can take longer than
    ``quiet_s``): :func:`run_stream` first waits for the group's committed
    offsets at the end of the events topic.
    """
    last = {"n": -1, "t": time.monotonic()}

    def cond() -> bool:
        reader.poll(0.2)
        n = len(reader.predictions) + reader.duplicates
        if n != last["n"]:
            last.update(n=n, t=time.monotonic())
        return time.monotonic() - last["t"] >= quiet_s

    return cond


def consumed(s: Settings, topic: str) -> float:
    """Records of logical ``topic`` this worker process has consumed (0 if /metrics is not up)."""
    try:
        return total(scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics"),
                     "streamscore_worker_events_in_total", topic=topic)
    except OSError:
        return 0.0


def topic_ends(s: Settings, logical: str) -> dict[int, int]:
    """Each partition's end offset of logical topic, read to the fetch high watermark (not ListOffsets)."""
    topic = s.topic(logical)
    c = Consumer(s.consumer_config(group=f"{s.app_id}-ends-{time.time_ns()}", **{"enable.partition.eof": True}))
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(ends) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                if m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF:
                    ends[m.partition()] = m.offset()
        assert len(ends) == len(parts), f"{topic}: no end found for partitions {set(parts) - set(ends)}"
        return ends
    finally:
        c.close()


def changelog_records(s: Settings, partitions: int) -> dict[int, list[tuple[int, bytes, dict[str, bytes]]]]:
    """Every record of the pipeline's changelog, per partition in log order: (offset, key, headers).

    Read to the end of each partition (the fetch's partition EOF, not ListOffsets).
    """
    topic = s.changelog_topic(load_spec(s.pipeline).name)
    c = Consumer(s.consumer_config(group=f"{s.app_id}-changelog-{time.time_ns()}", **{"enable.partition.eof": True}))
    out: dict[int, list[tuple[int, bytes, dict[str, bytes]]]] = {p: [] for p in range(partitions)}
    done: set[int] = set()
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + 60
        while len(done) < partitions and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                out[m.partition()].append((m.offset(), m.key(), dict(m.headers() or [])))
    finally:
        c.close()
    assert len(done) == partitions, f"{topic}: not read to its end (partitions {set(range(partitions)) - done})"
    return out

def caught_up(s: Settings, ends: dict[str, dict[int, int]]) -> Callable[[], bool]:
    """A condition: the group's committed offsets have reached ``ends`` ({logical topic: {partition: end}}).

    Why the kill suites wait for this before they stop the workers: "every
    event answered" counts the answers of killed workers, which may be far
    ahead of what the last worker has processed (a worker can answer a whole
    8,000-record stream before the harness sees 25 % of it and kills it). A
    worker stopped then leaves its state behind the input (correctly: its
    offsets are not committed past it either), and the final state could not
    equal an uninterrupted run's. Committed offsets at the end mean, by the
    commit order, that the state covers every record.
    """
    def cond() -> bool:
        c = Consumer(s.consumer_config(group=s.app_id))
        try:
            for logical, by_part in ends.items():
                tps = [TopicPartition(s.topic(logical), p) for p in by_part]
                for tp in c.committed(tps, timeout=10):
                    if max(tp.offset, 0) < by_part[tp.partition]:
                        return False
            return True
        finally:
            c.close()

    return cond


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def wait_for(cond: Callable[[], bool], what: str, procs: Iterable[subprocess.Popen[bytes]] = (),
             log: Path | None = None, timeout: float = DEADLINE_S, poll: Callable[[], Any] | None = None) -> None:
    """Poll until ``cond()``; fail early if a worker that should be alive exited."""
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, f"worker exited ({p.returncode}) while waiting for {what}\n{tail(log) if log else ''}"
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}\n{tail(log) if log else ''}"
        if poll is not None:
            poll()
        else:
            time.sleep(0.1)


@dataclass
class Run:
    """What a run left behind: raw published outputs and the stopped worker's state."""

    settings: Settings
    predictions: list[bytes] = field(default_factory=list)     # every published prediction, raw
    dlq: list[dict[str, Any]] = field(default_factory=list)
    kills: int = 0
    exit_codes: list[int] = field(default_factory=list)
    wall_s: float = 0.0


def read_raw(s: Settings, topic: str, expect_ids: set[str] | None = None, idle_s: float = 2.0) -> list[bytes]:
    """Every record of ``topic`` (all partitions) from the beginning, raw bytes.

    Reads until every id of ``expect_ids`` was seen and nothing new arrived for
    ``idle_s`` (ListOffsets(latest) of the embedded broker is not trusted).
    """
    c = Consumer(s.consumer_config(group=f"{s.app_id}-raw-{time.time_ns()}"))
    try:
        meta = c.list_topics(s.topic(topic), timeout=10)
        c.assign([TopicPartition(s.topic(topic), p, OFFSET_BEGINNING) for p in meta.topics[s.topic(topic)].partitions])
        out: list[bytes] = []
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        last = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(5000, 0.2)
            for m in msgs:
                if m.error() is None:
                    out.append(m.value())
                    if expect_ids is not None:
                        seen.add(orjson.loads(m.value())["event_id"])
                    last = time.monotonic()
            complete = expect_ids is None or expect_ids <= seen
            if complete and time.monotonic() - last >= idle_s:
                break
        return out
    finally:
        c.close()


def run_stream(s: Settings, log: Path, stream: Path, event_ids: set[str], n_labels_topic: int, *,
               kill_at: Iterable[float] = (), workers: int = 1, kill_worker: int = 0,
               restart: bool = True, own_state: bool = False) -> Run:
    """Replay ``stream`` through ``workers`` worker processes; SIGKILL at fractions of events answered.

    The events topic is replayed first and every event is awaited before the
    labels topic is replayed (see the test modules for why). At each fraction
    of ``kill_at`` (of distinct events answered) worker ``kill_worker`` is
    killed with SIGKILL and, if ``restart``, started again on the same state
    directory. Finally every worker is stopped cleanly (SIGTERM: flush, close).
    """
    t0 = time.monotonic()
    run = Run(s)
    confs = [s] + [second_worker(s, own_state) for _ in range(workers - 1)]
    procs = [start_worker(c, log) for c in confs]
    reader = OutputReader(s)
    try:
        for c, p in zip(confs, procs):
            wait_ready(c, p, log, timeout=90)
        if workers > 1:          # every worker in the group holds a partition before the replay starts
            for c, p in zip(confs, procs):
                wait_for(lambda c=c: _assigned(c) > 0 and sum(_assigned(x) for x in confs) == s.partitions,
                         "a settled group", procs, log, timeout=90)
        replay(stream, s, topics=["events"])
        n = len(event_ids)
        for frac in sorted(kill_at):
            wait_for(lambda frac=frac: len(reader.predictions) >= frac * n, f"{frac:.0%} of the events answered",
                     procs, log, poll=lambda: reader.poll(0.05))
            victim = procs[kill_worker]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            run.kills += 1
            alive = [p for i, p in enumerate(procs) if i != kill_worker]
            if restart:
                procs[kill_worker] = start_worker(confs[kill_worker], log)
                wait_ready(confs[kill_worker], procs[kill_worker], log, timeout=90)
            else:
                procs = alive
                confs = [c for i, c in enumerate(confs) if i != kill_worker]
        wait_for(lambda: not event_ids.difference(reader.predictions, (d.get("event_id") for d in reader.dlq)),
                 "every event answered", procs, log, poll=lambda: reader.poll(0.2))
        if n_labels_topic:
            # Every event answered is not every event *processed*: a killed worker's answers may be
            # unflushed, and its partitions are re-read by their next owner only after the group
            # notices (session timeout, then a join): 9-10 s here, longer than `settled`'s quiet.
            # Labels before that re-read would train the models first (one CI run: 253 events
            # answered again with the models one learn ahead). Committed offsets at the end of the
            # events topic mean, by the commit order, that every event was processed and flushed.
            wait_for(caught_up(s, {"events": topic_ends(s, "events")}),
                     "the group's committed offsets at the end of the events", procs, log,
                     poll=lambda: reader.poll(0.3))
            wait_for(settled(reader), "the predictions to settle (re-answers after a kill included)", procs, log)
            replay(stream, s, topics=["labels"])
            wait_for(lambda: sum(consumed(c, "labels") for c in confs) >= n_labels_topic,
                     "every label consumed", procs, log, poll=lambda: time.sleep(0.2))
        wait_for(caught_up(s, {t: topic_ends(s, t) for t in ("events", "labels")}),
                 "the group's committed offsets at the end of the input", procs, log, poll=lambda: time.sleep(0.3))
        reader.poll(0.5)
        run.dlq = list(reader.dlq)
    finally:
        run.exit_codes = [stop_worker(p) for p in procs]
        reader.close()
    run.predictions = read_raw(s, "predictions", expect_ids=event_ids)
    run.wall_s = time.monotonic() - t0
    return run


def _assigned(s: Settings) -> float:
    try:
        return total(scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics"),
                     "streamscore_worker_assigned_partitions")
    except OSError:
        return 0.0


def proc_status_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a live process from ``/proc/PID/status`` in MiB (``VmRSS``, ``VmHWM``: peak RSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0     # kB
    raise KeyError(f"{field} not in /proc/{pid}/status")


# -- stream helpers -----------------------------------------------------------------
def stream_ids(path: Path, spec_name: str) -> tuple[set[str], int, list[dict[str, Any]]]:
    """(event ids, records on the labels topic, a probe set of feature dicts) of a stream file."""
    spec = load_spec(spec_name)
    ids: set[str] = set()
    labels = 0
    probe: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            v = rec["value"]
            if rec["topic"] == "labels":
                labels += 1
            elif any(f in v for f in spec.numeric):
                ids.add(v[spec.event_id])
                if len(probe) < 200:
                    probe.append(v)
    return ids, labels, probe


def numeric_probe(probe: list[dict[str, Any]], spec_name: str) -> list[dict[str, Any]]:
    """The probe set of :func:`stream_ids` reduced to the spec's numeric features, as floats.

    For pipelines whose River model is scored on these features only (elec2's
    linear model refuses a string such as ``event_id``): ``compare_snapshot``
    falls back to the probe whenever two snapshots' pickle bytes differ, and
    they can differ between processes while the models are equal.
    """
    spec = load_spec(spec_name)
    return [{f: float(v[f]) for f in spec.numeric if f in v} for v in probe]


def split_stream(path: Path, fractions: Iterable[float]) -> list[Path]:
    """Cut a recorded stream file at ``fractions`` of its lines: ``PATH.partN`` files, in order.

    For runs that replay a stream in parts with a fault in between (e.g. a
    broker restart); a cut can fall between an event and its inline label.
    """
    lines = path.read_bytes().splitlines(keepends=True)
    cuts = [0, *(int(f * len(lines)) for f in sorted(fractions)), len(lines)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = path.with_name(f"{path.name}.part{i}")
        part.write_bytes(b"".join(lines[a:b]))
        parts.append(part)
    return parts


# -- state ----------------------------------------------------------------------------
def state_dir(s: Settings, partition: int) -> Path:
    spec = load_spec(s.pipeline)
    return s.state_dir / s.app_id / spec.name / f"{s.topic('events')}-{partition}"


def dump_store(path: Path) -> dict[bytes, bytes]:
    """Every state key and value of a partition's RocksDB, opened read-only in raw mode.

    The store's bookkeeping (changelog offset and fence) is left out: the
    offset counts changelog records, which a killed run writes more of (work
    redone after the kill), and the fence counts the partition's owners,
    which a killed run has more of.
    """
    assert path.exists(), f"no state at {path}"
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return {k: v for k, v in db.items() if k not in BOOKKEEPING_KEYS}
    finally:
        db.close()


def changelog_state(s: Settings, partition: int, root: Path) -> dict[bytes, bytes]:
    """A partition's state rebuilt from nothing but its changelog topic (in a fresh store under ``root``)."""
    store = PartitionStore(root / f"from-changelog-{s.app_id}-{partition}")
    try:
        Changelog(s.changelog_topic(load_spec(s.pipeline).name), s.producer_config(),
                  s.consumer_config(group=f"{s.app_id}-changelog-check")).recover(store, partition, seed=False)
        return dict(store.items())
    finally:
        store.close()


def deep_equal(a: Any, b: Any, where: str = "") -> list[str]:
    """Differences between two nested structures; tensors and arrays equal when the same bits.

    NaN equals NaN in the same place: a missing feature is NaN in the torch
    model's buffered examples, and ``torch.equal`` alone says a tensor holding
    one differs from itself.
    """
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and (torch.equal(a, b) or (
                a.is_floating_point() and bool(torch.equal(a.isnan(), b.isnan()))
                and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))))
        return [] if ok else [where]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        equal_nan = all(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in (a, b))
        return [] if np.array_equal(a, b, equal_nan=equal_nan) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in deep_equal(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in deep_equal(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _deep_state(blob: bytes) -> dict[str, Any]:
    from models.deep import DeepModel

    return DeepModel.loads(blob, device="cpu").state()


def compare_snapshot(key: str, ref: bytes, got: bytes, volatile: set[str], probe: list[dict[str, Any]]) -> list[str]:
    """Differences between two signed model snapshots (``m:<model>:<hash>``)."""
    k = SNAPSHOT_KEY.encode()
    a, b = persistence.loads(ref, k), persistence.loads(got, k)
    name = key.split(":")[1]
    diffs: list[str] = []
    if "deep" in a:
        diffs += deep_equal(_deep_state(a["deep"]), _deep_state(b["deep"]), f"{key}.deep")
    elif "estimator" in a:
        if a["n_learned"] != b["n_learned"]:
            diffs.append(f"{key}.n_learned {a['n_learned']} != {b['n_learned']}")
        if pickle.dumps(a["estimator"]) != pickle.dumps(b["estimator"]):
            pa = [a["estimator"].predict_proba_one(x) for x in probe]
            pb = [b["estimator"].predict_proba_one(x) for x in probe]
            if pa != pb:
                diffs.append(f"{key}.estimator: different predictions on the probe set")
    elif "blend" in a:
        if pickle.dumps(a["blend"]) != pickle.dumps(b["blend"]):
            diffs.append(f"{key}.blend")
    pa, pb = a["prequential"].state(), b["prequential"].state()
    if name in volatile:     # figures of scores that depend on micro-batch boundaries: only the count
        pa, pb = {"n": pa.get("n")}, {"n": pb.get("n")}
    diffs += deep_equal(pa, pb, f"{key}.prequential")
    return diffs


def strip_volatile(doc: dict[str, Any], volatile: set[str], derived: tuple[str, ...]) -> dict[str, Any]:
    """A prediction (or feature snapshot) without what depends on micro-batch boundaries."""
    out = {k: v for k, v in doc.items() if k not in derived}
    for k in ("scores", "s"):
        if k in out:
            out[k] = {m: v for m, v in out[k].items() if m not in volatile}
    return out


def compare_states(ref: dict[bytes, bytes], got: dict[bytes, bytes], volatile: set[str],
                   probe: list[dict[str, Any]], derived: tuple[str, ...] = ()) -> list[str]:
    """Differences between two partitions' final state.

    Byte for byte: window state (``w``), label deadlines (``t:``), labelled
    markers (``y:``), pending labels (``l:``), anything else. Model snapshots
    (``m:``) by content. Stored predictions (``p:``) and feature snapshots
    (``e:``) without the scores of ``volatile`` models and the ``derived``
    fields of a prediction (published score, class, rules: they follow the
    blend, which follows the torch score).
    """
    diffs: list[str] = []
    if set(ref) != set(got):
        extra, missing = sorted(set(got) - set(ref))[:5], sorted(set(ref) - set(got))[:5]
        diffs.append(f"key sets differ: only in the killed run {extra}, only in the reference {missing}")
    for k in sorted(set(ref) & set(got)):
        a, b = ref[k], got[k]
        if a == b:
            continue
        ks = k.decode()
        if ks.startswith("m:"):
            diffs += compare_snapshot(ks, a, b, volatile, probe)
        elif ks.startswith(("p:", "e:")) and volatile:
            da, db = strip_volatile(orjson.loads(a), volatile, derived), strip_volatile(orjson.loads(b), volatile, derived)
            if da != db:
                diffs.append(f"{ks}: {da} != {db}")
        else:
            diffs.append(f"{ks}: {a[:120]!r} != {b[:120]!r}")
    return diffs


def check_outputs(run: Run, event_ids: set[str], state: dict[int, dict[bytes, bytes]]) -> dict[str, int]:
    """Every event answered; copies of an answer byte-identical, and equal to the stored prediction."""
    by_id: dict[str, bytes] = {}
    differing: dict[str, tuple[bytes, bytes]] = {}
    for raw in run.predictions:
        eid = orjson.loads(raw)["event_id"]
        first = by_id.setdefault(eid, raw)
        if first != raw:
            differing.setdefault(eid, (first, raw))
    dlq_ids = {d.get("event_id") for d in run.dlq}
    missing = event_ids - set(by_id) - dlq_ids
    assert not missing, f"{len(missing)} events never answered, e.g. {sorted(missing)[:5]}"
    assert set(by_id) <= event_ids, f"predictions for unknown events: {sorted(set(by_id) - event_ids)[:5]}"
    assert not differing, (f"{len(differing)} events answered with different bytes, e.g. "
                           + "; ".join(f"{e}: {a!r} vs {b!r}" for e, (a, b) in list(differing.items())[:2]))
    stored = {k[2:].decode(): v for st in state.values() for k, v in st.items() if k.startswith(b"p:")}
    unequal = [e for e, raw in by_id.items() if stored.get(e) != raw]
    if unequal:     # say how they differ: which fields, which models' versions (the open kill-sweep bug)
        e = unequal[0]
        pub, got = orjson.loads(by_id[e]), orjson.loads(stored[e]) if e in stored else {}
        fields = {k: (pub.get(k), got.get(k)) for k in set(pub) | set(got) if pub.get(k) != got.get(k)}
        raise AssertionError(f"{len(unequal)} published predictions differ from the stored ones, e.g. "
                             f"{unequal[:3]}; {e}: (published, stored) by field: {fields}")
    return {"answers": len(run.predictions), "duplicates": len(run.predictions) - len(by_id)}


def checkpoints(s: Settings) -> dict[str, Path]:
    """The torch checkpoint files a run saved (``MODEL/pN.pt`` -> path)."""
    root = s.checkpoints / load_spec(s.pipeline).name
    return {str(p.relative_to(root)): p for p in sorted(root.glob("*/p*.pt"))} if root.exists() else {}


def compare_checkpoints(ref: Settings, got: Settings) -> list[str]:
    a, b = checkpoints(ref), checkpoints(got)
    if set(a) != set(b):
        return [f"checkpoint files differ: {sorted(a)} vs {sorted(b)}"]
    return [d for k in a for d in deep_equal(_deep_state(a[k].read_bytes()), _deep_state(b[k].read_bytes()), k)]

"""The systems under test: how to start each one on a topic set and know when it is done.

Every target gets a fresh *instance* per measured run: fresh topics (input
and outputs), a fresh consumer group and a fresh state directory. An instance
creates its topics, starts its processes, reports when they consume
(``wait_ready``) and how many records they have processed (``progress``), and
names the topics its outputs are read back from.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.faust_naive import changelog_topic
from benchmarks.status import read_status
from benchmarks.workload import WindowDef
from streams.broker import create_topics, free_port
from streams.metrics import LAG_METRIC, scrape, total
from streams.settings import Settings

PIPELINES = Path(__file__).resolve().parent / "pipelines"


class RunFailed(RuntimeError):
    """A target could not be started or did not finish; the message says why."""


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    # faust writes terminal control sequences around its spinner
    text = text.replace("\x1b[?25l", "").replace("\x1b[?25h", "")
    return "\n".join(f"    | {line}" for line in text.strip().splitlines()[-lines:])


@dataclass
class Target:
    """One benchmark run kind."""

    name: str
    description: str
    workload: str                          # "events" | "events+labels"
    windows: tuple[WindowDef, ...]
    scored: bool = False                   # outputs carry a model score
    subset: bool = False                   # runs on the first --naive-events events only

    def instance(self, broker: str, tag: str, workdir: Path, partitions: int) -> Instance:
        raise NotImplementedError

    def precheck(self) -> None:
        """Raise :class:`RunFailed` early when the target cannot run here."""


@dataclass
class Instance:
    broker: str
    tag: str
    workdir: Path
    partitions: int
    input_topic: str = ""
    output_topics: tuple[str, ...] = ()
    dlq_topic: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def topics(self) -> list[str]:
        return [self.input_topic, *self.output_topics, *([self.dlq_topic] if self.dlq_topic else [])]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def create_topics(self) -> None:
        raise NotImplementedError

    def start(self, expected_records: int, expected_outputs: int) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 90.0) -> None:
        raise NotImplementedError

    def progress(self) -> tuple[int, bool]:
        """(records or outputs processed so far, done)."""
        raise NotImplementedError

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                raise RunFailed(f"{self.tag}: process exited with code {p.returncode}; log {log}:\n{log_tail(log)}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def extra(self) -> dict[str, Any]:
        """Per-instance figures worth keeping (e.g. records per worker)."""
        return {}


# -- (a) raw -------------------------------------------------------------------
class RawTarget(Target):
    def instance(self, broker: str, tag: str, workdir: Path, partitions: int) -> Instance:
        return _StatusInstance(broker, tag, workdir, partitions, input_topic=f"{tag}-events",
                               output_topics=(f"{tag}-out",), module="benchmarks.raw")


# -- (b) faust_naive -------------------------------------------------------------
class FaustNaiveTarget(Target):
    def instance(self, broker: str, tag: str, workdir: Path, partitions: int) -> Instance:
        return _StatusInstance(broker, tag, workdir, partitions, input_topic=f"{tag}-events",
                               output_topics=(f"{tag}-out",), module="benchmarks.faust_naive")


@dataclass
class _StatusInstance(Instance):
    """A benchmark subprocess that reports through a status file (raw, faust_naive)."""

    module: str = ""

    @property
    def status_path(self) -> Path:
        return self.workdir / f"{self.tag}.status"

    @property
    def app_id(self) -> str:
        return f"{self.tag}-app"

    def create_topics(self) -> None:
        topics = {self.input_topic: self.partitions, self.output_topics[0]: self.partitions}
        if self.module.endswith("faust_naive"):
            topics[changelog_topic(self.app_id)] = self.partitions
        create_topics(self.broker, topics)

    @property
    def topics(self) -> list[str]:
        extra = [changelog_topic(self.app_id)] if self.module.endswith("faust_naive") else []
        return [*super().topics, *extra]

    def start(self, expected_records: int, expected_outputs: int) -> None:
        log = self.workdir / f"{self.tag}.log"
        cmd = [sys.executable, "-m", self.module, "--broker", self.broker, "--topic", self.input_topic,
               "--out-topic", self.output_topics[0], "--partitions", str(self.partitions),
               "--expected", str(expected_outputs), "--status", str(self.status_path)]
        if self.module.endswith("faust_naive"):
            cmd += ["--app-id", self.app_id, "--datadir", str(self.workdir / f"{self.tag}-data"),
                    "--web-port", str(free_port())]
        else:
            cmd += ["--group", self.app_id]
        self.logs = [log]
        self.procs = [subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)]

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            st = read_status(self.status_path)
            if st is not None:
                return
            time.sleep(0.05)
        raise RunFailed(f"{self.tag}: not consuming within {timeout}s; log {self.logs[0]}:\n{log_tail(self.logs[0])}")

    def progress(self) -> tuple[int, bool]:
        st = read_status(self.status_path) or {"phase": "ready", "n": 0}
        if st["phase"] == "failed":
            raise RunFailed(f"{self.tag}: {st}")
        return int(st["n"]), st["phase"] == "done"


# -- (c)(d)(e) streamscore workers -------------------------------------------------
@dataclass
class WorkerTarget(Target):
    pipeline: str = ""                     # file name under benchmarks/pipelines
    workers: int = 1
    settings: tuple[tuple[str, str], ...] = ()   # worker Settings overrides, e.g. (("commit_interval_s", "1"),)
    #: the workers share one state directory, as ``streamscore worker --workers N`` runs them on one
    #: machine (streams/supervisor.py); False: a directory each, as workers on separate machines have
    shared_state: bool = False

    @property
    def pipeline_path(self) -> Path:
        return PIPELINES / self.pipeline

    def precheck(self) -> None:
        """Fail fast (with the reason) if this streamscore cannot load the spec."""
        try:
            from streams.spec import load_spec

            load_spec(self.pipeline_path)
        except Exception as exc:
            raise RunFailed(f"streamscore cannot load benchmarks/pipelines/{self.pipeline} "
                            f"({type(exc).__name__}: {exc})") from exc

    def instance(self, broker: str, tag: str, workdir: Path, partitions: int) -> Instance:
        return _WorkerInstance(broker, tag, workdir, partitions, pipeline=str(self.pipeline_path),
                               workers=self.workers, overrides=dict(self.settings), shared_state=self.shared_state)


@dataclass
class _WorkerInstance(Instance):
    pipeline: str = ""
    workers: int = 1
    overrides: dict[str, str] = field(default_factory=dict)
    shared_state: bool = False
    settings: list[Settings] = field(default_factory=list)
    _expected_records: int = 0
    _last: list[float] = field(default_factory=list)
    _owned: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from streams.spec import load_spec

        for i in range(self.workers):
            self.settings.append(Settings(
                broker=self.broker, app_id=f"{self.tag}-app", topic_prefix=f"{self.tag}-",
                pipeline=self.pipeline, partitions=self.partitions,
                state_dir=self.workdir / (f"{self.tag}-state" if self.shared_state else f"{self.tag}-state{i}"),
                web_port=free_port(),
                metrics_port=free_port(), session_timeout_s=6.0,
                checkpoint_dir=self.workdir / "checkpoints",
                **{"log_level": "warning", **self.overrides}))  # type: ignore[arg-type]  # strings, coerced
        s = self.settings[0]
        self.input_topic = s.topic("events")
        self.output_topics = (s.topic("predictions"),)
        self.dlq_topic = s.topic("dlq")
        self.changelog_topic = s.changelog_topic(load_spec(self.pipeline).name)

    @property
    def topics(self) -> list[str]:
        """Every topic of the run, the worker's state changelog included (deleted after it: the
        in-memory broker would otherwise hold each run's ~200 MB of changelog until it stops)."""
        from streams.demo import all_topics

        return [*all_topics(self.settings[0]), self.changelog_topic]

    def create_topics(self) -> None:
        from streams.demo import all_topics

        create_topics(self.broker, all_topics(self.settings[0]))

    def start(self, expected_records: int, expected_outputs: int) -> None:
        from benchmarks.pretrain import deploy_pretrained
        from streams.demo import start_worker

        # frozen torch models start from weights trained offline, as in production (once per work dir)
        deploy_pretrained(self.pipeline, self.settings[0].checkpoints)
        self._expected_records = expected_records
        self.logs = [self.workdir / f"{self.tag}-worker{i}.log" for i in range(self.workers)]
        self.procs = [start_worker(s, log) for s, log in zip(self.settings, self.logs)]
        self._last = [0.0] * self.workers
        self._owned = [[] for _ in range(self.workers)]

    def wait_ready(self, timeout: float = 90.0) -> None:
        from streams.demo import wait_ready

        for s, p, log in zip(self.settings, self.procs, self.logs):
            try:
                wait_ready(s, p, log, timeout=timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RunFailed(f"{self.tag}: {exc}\n{log_tail(log)}") from exc

    def _scrape(self, s: Settings) -> dict[str, Any]:
        """Records consumed from the events topic, and the events partitions held (the lag gauge's)."""
        samples = scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics")
        return {"events_in": total(samples, "streamscore_worker_events_in_total", topic="events"),
                "partitions": {int(labels["partition"]) for labels, _ in samples.get(LAG_METRIC, ())
                               if labels.get("topic") == "events"}}

    def progress(self) -> tuple[int, bool]:
        for i, s in enumerate(self.settings):
            try:
                page = self._scrape(s)
            except OSError:
                continue                  # keep the last value; check_alive catches a dead worker
            self._last[i] = page["events_in"]
            self._owned[i] = sorted(page["partitions"])
        n = int(sum(self._last))
        return n, n >= self._expected_records

    def extra(self) -> dict[str, Any]:
        if self.workers == 1:
            return {}
        # the partitions each worker held at the end (benchmarks.harness.worker_rates); none if a
        # worker reported none, or two claimed one (a rebalance at the end)
        owned = [p for ps in self._owned for p in ps]
        ok = all(self._owned) and len(owned) == len(set(owned)) == self.partitions
        return {"records_per_worker": [int(x) for x in self._last],
                **({"partitions_per_worker": [list(ps) for ps in self._owned]} if ok else {})}


def _user_window(size_ms: int) -> tuple[WindowDef, ...]:
    return (WindowDef("user", "amount", size_ms),)


FULL_WINDOWS = tuple(WindowDef(k, "amount", size) for k in ("user", "merchant", "country")
                     for size in (60_000, 600_000, 3_600_000))

TARGETS: dict[str, Target] = {
    "raw": RawTarget("raw", "confluent-kafka loop + orjson + dict, 1 process", "events", _user_window(60_000)),
    "faust_naive": FaustNaiveTarget(
        "faust_naive", "faust agent, per event, RocksDB table, await send()", "events",
        _user_window(60_000), subset=True),
    "windowed": WorkerTarget("windowed", "streamscore worker, 1 window, no model", "events",
                             _user_window(60_000), pipeline="windowed.toml"),
    "full": WorkerTarget("full", "streamscore worker, 9 windows + River LR + torch + blend + 2 rules, inline labels",
                         "events+labels", FULL_WINDOWS, scored=True, pipeline="full.toml"),
    "full_2workers": WorkerTarget("full_2workers", "2 streamscore workers of `full`, one group, one state directory "
                                  "(`streamscore worker --workers 2` on one machine)",
                                  "events+labels", FULL_WINDOWS, scored=True, pipeline="full.toml", workers=2,
                                  shared_state=True),
    "full_2machines": WorkerTarget("full_2machines", "2 streamscore workers of `full`, one group, a state directory "
                                   "each (two machines' workers on these cores: each keeps a standby copy)",
                                   "events+labels", FULL_WINDOWS, scored=True, pipeline="full.toml", workers=2),
    "full_online": WorkerTarget("full_online", "`full` with the torch model trained online too (a step / 256 labels)",
                                "events+labels", FULL_WINDOWS, scored=True, pipeline="full_online.toml"),
}

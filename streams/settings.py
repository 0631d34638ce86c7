"""One frozen, typed settings object for a streamscore process.

Why one object: every knob (broker address, topic names, batch sizes, ports,
security) is read in exactly one place, from ``STREAMSCORE_*`` environment
variables and CLI flags, validated once, and then passed down explicitly.
Nothing reads ``os.environ`` behind its back; faust gets its configuration
from here with an ``env_prefix`` of its own so stray ``WORKER_*``/``BROKER_*``
variables cannot override it.

Precedence: explicit keyword arguments (CLI flags) > ``STREAMSCORE_*``
environment variables > defaults.

>>> s = Settings(broker="127.0.0.1:19092", topic_prefix="t1-")
>>> s.topic("events")
't1-events'
>>> s.env_name("batch_max")
'STREAMSCORE_BATCH_MAX'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: ``fetch_linger_ms`` applies after a fetch round of fewer records than this
FETCH_LINGER_BELOW = 400

ENV_PREFIX = "STREAMSCORE_"

#: Logical topic names; the actual name is ``topic_prefix + logical``.
TOPICS: tuple[str, ...] = ("events", "labels", "predictions", "metrics", "dlq")


class Settings(BaseSettings):
    """Configuration of a streamscore worker, replayer or demo."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Kafka
    broker: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port].")
    app_id: str = Field("streamscore", description="Consumer group id and prefix of state/changelog names.")
    topic_prefix: str = Field("", description="Prefix of every topic name (one namespace per pipeline or test).")
    partitions: int = Field(4, ge=1, description="Partitions of the events and labels topics (co-partitioned).")
    session_timeout_s: float = Field(10.0, gt=0, description="Consumer-group session timeout in seconds.")
    security_protocol: str = Field("PLAINTEXT", description="Kafka security.protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL).")
    sasl_mechanism: str | None = Field(None, description="SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for TLS connections to Kafka.")

    # Pipeline and processing
    pipeline: str = Field("online_retail", description="Pipeline name (pipelines/NAME.toml) or path to a spec file.")
    fetcher: Literal["librdkafka", "aiokafka"] = Field(
        "librdkafka", description="Who fetches the events/labels records: librdkafka (fast) or faust's aiokafka.")
    batch_max: int = Field(10_000, ge=1, description="Most records handed over per fetch (micro-batch bound; split by partition).")
    fetch_wait_ms: int = Field(
        5, ge=1, le=60_000,
        description="Most milliseconds the broker may hold a fetch of the events/labels topics (librdkafka "
                    "fetch.wait.max.ms): the latency floor of a worker that keeps up. An embedded broker on "
                    "s3:// storage answers a fetch with no records when reading a partition's batches takes "
                    "longer: a worker that sees records waiting and none fetched for 3 s fetches with 500 ms "
                    "(then 5,000) from then on and logs it; start at 500 there to skip that stall.")
    fetch_linger_ms: float = Field(
        0.0, ge=0, le=1_000,
        description=f"After a fetch round of fewer than {FETCH_LINGER_BELOW} records, wait this long before "
                    "the next, so that "
                    "it brings more (0: never wait). A micro-batch has a fixed cost (a torch forward pass, a "
                    "kernel call per window definition, ~150 us in the full benchmark pipeline), and at a "
                    "moderate load each round brings a few dozen records a partition: waiting trades a few "
                    "milliseconds of median latency for CPU (librdkafka fetcher only). Measured at half of "
                    "peak on 2 cores: 4 ms lowered the worker's CPU by 2-7 points, raised p50 by ~6 ms and "
                    "did not lower p99, so it is off by default; at a light load it saves more.")
    commit_interval_s: float = Field(
        0.5, gt=0,
        description="Seconds between flushes (outputs delivered, then the changelog, then the local state; "
                    "then the offsets they cover are acknowledged, and faust commits them). A flush runs a "
                    "chunk at a time beside the batches that follow, so a longer interval mostly delays "
                    "commits (an offset is committed about two intervals after its record was scored, and a "
                    "restart re-reads that much) while it coalesces more writes per state key: 0.5 s cost "
                    "the benchmark's `full` worker less CPU and latency than 0.1 s (BENCHMARKS.md).")
    dedupe_ttl_s: float = Field(
        0.0, ge=0,
        description="Event-time seconds an event id is remembered after its event: its stored prediction "
                    "(the answer to a redelivery, and the proof of a label) is deleted once the partition's "
                    "newest event is this much later, so state stays bounded. A redelivery or label later "
                    "than that is treated as new. 0: remembered for ever.")
    standby_interval_s: float = Field(
        2.0, ge=0,
        description="Seconds between two refreshes of this worker's standby replicas: local copies of "
                    "partitions it does not own, caught up with their changelogs, so a takeover reads only "
                    "what was written since (0: no standbys; needs the changelog). How many: standby_replicas. "
                    "Each refresh costs ~13 ms of CPU plus a few µs per record applied (~5 for a 1 KB stored "
                    "prediction, RocksDB's compaction included), on a thread beside the "
                    "batches: 10 s of a busy partition applied at once stalled the scoring for up to a second "
                    "(BENCHMARKS.md, \"Standby refreshes\"), so refreshes are small and often.")
    standby_replicas: int = Field(
        1, ge=-1,
        description="Standby copies of each partition, on workers other than its owner (Kafka Streams' "
                    "num.standby.replicas), dealt by the group leader: 1 survives the loss of one worker "
                    "without a full changelog read. -1: every worker keeps every partition it does not own "
                    "(disk and changelog reads grow with the workers); 0: none.")
    state_cleanup_delay_s: float = Field(
        600.0, ge=0,
        description="Seconds a local copy of a partition may go unused (not owned, not dealt to this worker "
                    "as a standby, not opened) before it is deleted from disk (Kafka Streams' "
                    "state.cleanup.delay.ms). A copy another worker on this state directory has open is "
                    "never deleted. Only with the changelog on, which holds every partition's state: "
                    "without it a local copy is the only one. 0: keep every copy.")
    assign_by_backlog: bool = Field(
        True,
        description="Deal the events/labels partitions among the group's workers by backlog (records not yet "
                    "committed), not only by count, when the backlog is large: with keyed traffic one worker "
                    "can otherwise get most of the work (streams/assignment.py). Each worker still gets "
                    "faust's number of partitions.")
    delivery_timeout_s: float = Field(
        300.0, gt=0,
        description="Seconds a produced output or changelog record may wait for the broker (librdkafka "
                    "message.timeout.ms). A commit waits this long for its outputs: a broker outage shorter "
                    "than this delays commits; a longer one fails the delivery and stops the worker "
                    "(its supervisor restarts it) without losing anything.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd",
        description="Compression of what the worker produces (predictions, dlq, metrics, the state changelog; "
                    "librdkafka compression.type, applied in its own threads). A prediction carries its "
                    "features: ~1 KB of JSON, written twice (the output and its changelog copy); zstd makes "
                    "it ~130 bytes on the wire. The embedded broker's cost is per byte (2.4 µs per "
                    "uncompressed 1 KB record, 0.4 with zstd, 1.1 with lz4), and a broker on the worker's "
                    "machine takes that CPU from it (BENCHMARKS.md). Readers need the codec: librdkafka has "
                    "them all; aiokafka needs the zstandard or lz4 package.")
    compression_level: int = Field(
        1, ge=-1, le=12,
        description="librdkafka compression.level of --compression (-1: the codec's default, 3 for zstd). "
                    "zstd at 1 cost the producing client no more CPU than no compression at all here, and "
                    "compresses a prediction 7x (3: 6.9x).")
    max_event_bytes: int = Field(1_000_000, ge=1, description="Larger records go to the dlq as 'oversized'.")
    state_dir: Path = Field(Path("state"), description="Directory of the RocksDB state stores.")
    changelog: bool = Field(
        True, description="Mirror every partition's state to a compacted changelog topic (APP_ID-PIPELINE-changelog, "
                          "created by the worker) and recover from it when a partition is opened, so a partition "
                          "can move to a worker on another machine. Off: state lives only in STATE_DIR. Workers on "
                          "several machines also need the same --snapshot-key.")
    snapshot_key: SecretStr | None = Field(
        None, description="HMAC key of model snapshots (default: a random key file in the state directory).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where torch models run: auto (cuda when a GPU is visible, else cpu), cpu or cuda.")
    torch_threads: int = Field(
        1, ge=0, description="CPU threads of torch in a worker (0: torch's default). Scale out with workers "
                             "instead: on a shared 2-core box 2 threads made batched inference 10-30x slower.")
    checkpoint_dir: Path | None = Field(
        None, description="Torch checkpoints: the worker saves DIR/PIPELINE/MODEL/pN.pt and hot-swaps "
                          "DIR/PIPELINE/MODEL.pt when it changes (default: STATE_DIR/checkpoints).")
    checkpoint_interval_s: float = Field(30.0, gt=0, description="Least seconds between two saved torch checkpoints of a partition.")
    gc_gen0: int = Field(
        1_000_000, ge=0,
        description="Net allocations of container objects between two young-generation garbage collections "
                    "(Python's default: 700; 0: leave the collector as it is). A micro-batch keeps tens of "
                    "thousands of dicts alive at once; collecting in the middle of batches cost a worker "
                    "35-40 % of its throughput. Refcounting still frees everything but cycles.")

    # Ports and observability
    web_port: int = Field(6066, ge=0, le=65535, description="faust's web port (faust binds it even when disabled): one per process.")
    metrics_host: str = Field("127.0.0.1", description="Bind address of the Prometheus /metrics endpoint.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of /metrics; 0 disables the endpoint.")
    metrics_interval_s: float = Field(5.0, gt=0, description="Seconds between snapshots published to the metrics topic.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    def __init__(self, **values: Any) -> None:
        # drop None so "flag not given" falls back to env / default
        super().__init__(**{k: v for k, v in values.items() if v is not None})

    @property
    def checkpoints(self) -> Path:
        """The checkpoint directory (``checkpoint_dir`` or ``STATE_DIR/checkpoints``)."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.state_dir / "checkpoints"

    def topic(self, logical: str) -> str:
        """Actual topic name of a logical topic (``events``, ``labels``, ...)."""
        if logical not in TOPICS:
            raise ValueError(f"unknown logical topic {logical!r}; expected one of {TOPICS}")
        return self.topic_prefix + logical

    def changelog_topic(self, pipeline: str) -> str:
        """The state changelog topic of ``pipeline`` under this app id (streams/changelog.py).

        >>> Settings(topic_prefix="t1-", app_id="fraud").changelog_topic("elec2")
        't1-fraud-elec2-changelog'
        """
        return f"{self.topic_prefix}{self.app_id}-{pipeline}-changelog"

    def logical_topic(self, actual: str) -> str:
        """Inverse of :meth:`topic` (returns ``actual`` if it has no known name)."""
        if actual.startswith(self.topic_prefix):
            name = actual[len(self.topic_prefix):]
            if name in TOPICS:
                return name
        return actual

    @staticmethod
    def env_name(field: str) -> str:
        """Environment variable behind a field."""
        return ENV_PREFIX + field.upper()

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) config shared by every client we create."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.broker,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf

    def consumer_config(self, group: str | None = None, **extra: Any) -> dict[str, Any]:
        """librdkafka consumer config; ``fetch.queue.backoff.ms`` low for Tansu."""
        conf = {
            **self.kafka_client_config(),
            "group.id": group or f"{self.app_id}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 20,
            "session.timeout.ms": int(self.session_timeout_s * 1000),
        }
        conf.update(extra)
        return conf

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka producer config: batched, idempotent-safe defaults."""
        conf = {
            **self.kafka_client_config(),
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "none",
            "acks": "all",
            "message.timeout.ms": int(self.delivery_timeout_s * 1000),
            # a dead letter carries the whole bad record (base64 at worst: 4/3 of it) plus the reason
            "message.max.bytes": max(1_000_000, self.max_event_bytes * 4 // 3 + 65_536),
        }
        conf.update(extra)
        return conf

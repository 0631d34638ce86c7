"""``create_app(settings, spec)``: the faust application of a streamscore worker.

Why a factory: no app exists at import time, so tests, the demo and the
benchmarks build as many apps as they need, each from its own frozen
:class:`~streams.settings.Settings`. faust reads its own environment variables
only under ``STREAMSCORE_FAUST_`` so a stray ``BROKER_URL`` cannot redirect a
worker.

faust owns the consumer group, partition assignment, rebalancing, offset
commits and the worker lifecycle; the records of the events and labels topics
reach :class:`~streams.agents.BatchScorer` as whole partition-batches.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.sensors import Sensor

from streams import _faust_hooks
from streams.agents import BatchScorer
from streams.assignment import BacklogAssignor
from streams.settings import Settings
from streams.spec import PipelineSpec, load_spec


class StreamscoreApp(faust.App):
    """A faust App whose consumer hands the batch topics over whole."""

    scorer: BatchScorer
    fetcher: str = "librdkafka"
    #: each partition's backlog, for streams.assignment.BacklogAssignor (None: faust's own deal)
    partition_weights: Any = None
    #: standby copies of each partition the leader deals (streams.assignment.standbys)
    standby_replicas: int = 0
    #: told the fetcher's fetch.wait.max.ms whenever its librdkafka consumer is made (a gauge)
    on_fetch_wait: Any = None

    def _new_transport(self) -> Any:
        cls = (_faust_hooks.LibrdkafkaBatchTransport if self.fetcher == "librdkafka"
               else _faust_hooks.BatchTransport)
        return cls(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        await super().on_stop()
        self.scorer.close()  # outputs flushed, state written, stores closed
        close = getattr(self.partition_weights, "close", None)
        if close is not None:
            close()          # the assignor's client (backlogs)


class CommitSensor(Sensor):
    """Before faust commits: raise if the last flush failed, else start the next flush if due.

    faust commits only offsets the scorer acknowledged, and it acknowledges a
    batch's offsets once the flush that covers it has written the state (the
    commit order, docs/reliability.md §3), so a commit never waits on a flush.
    """

    def __init__(self, scorer: BatchScorer) -> None:
        super().__init__()
        self.scorer = scorer

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.scorer.on_commit()
        return None


def _faust_credentials(settings: Settings) -> Any:
    if settings.sasl_mechanism and settings.sasl_username and settings.sasl_password is not None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(settings.ssl_cafile)) if settings.ssl_cafile else None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=ctx,
        )
    if settings.ssl_cafile:
        import ssl

        return ssl.create_default_context(cafile=str(settings.ssl_cafile))
    return None


def create_app(settings: Settings, spec: PipelineSpec | None = None) -> StreamscoreApp:
    """Build a worker app for ``spec`` (default: the pipeline named in ``settings``)."""
    spec = spec or load_spec(settings.pipeline)
    (settings.state_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    app = StreamscoreApp(
        settings.app_id,
        broker=f"kafka://{settings.broker}",
        broker_credentials=_faust_credentials(settings),
        env_prefix="STREAMSCORE_FAUST_",
        store="memory://",
        datadir=str(settings.state_dir / settings.app_id / "faust"),
        web_port=settings.web_port,
        web_host="127.0.0.1",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,      # topics are created by us, with explicit configs
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        broker_commit_interval=settings.commit_interval_s,
        broker_commit_every=1_000_000,  # commit on the interval, not per N acks
        broker_max_poll_records=settings.batch_max,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        # faust uses its own assignor (ours subclasses it) only with standby replicas > 0 (the
        # default, 1) or changelog tables; with neither it falls back to aiokafka's round robin
        PartitionAssignor=BacklogAssignor,
    )
    app.fetcher = settings.fetcher
    if settings.assign_by_backlog:
        app.partition_weights = backlogs(settings)
    standbys_on = settings.changelog and settings.standby_interval_s > 0
    # how many standby copies of each partition the group leader deals (streams/assignment.py)
    app.standby_replicas = settings.standby_replicas if standbys_on else 0
    scorer = BatchScorer(settings, spec)
    app.scorer = scorer
    app.on_fetch_wait = scorer.metrics.fetch_wait_ms.set
    channel = app.topic(settings.topic("events"), settings.topic("labels"),
                        key_serializer="raw", value_serializer="raw")

    app.topics.add(channel)  # subscribe; the records reach scorer.handle, not a faust agent

    events_topic = settings.topic("events")

    lease = _faust_hooks.GroupLease(app, settings.session_timeout_s)
    scorer.lease = lease                  # expelled while not running: close() loses, not flushes
    scorer.generation = lambda: app.consumer_generation_id

    joined = asyncio.Event()              # set at the first assignment: the group has dealt partitions

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic in scorer.batch_topics}
        await scorer.opened(parts)        # a recovery in progress finishes before its store is closed
        scorer.close(parts)
        scorer.metrics.assigned.set(0)

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        lease.joined()
        joined.set()
        # recover every assigned partition's state now, together: "assigned" on /metrics means ready
        await scorer.open_partitions({tp.partition for tp in assigned if tp.topic in scorer.batch_topics})
        scorer.metrics.assigned.set(sum(1 for tp in assigned if tp.topic == events_topic))

    def owned() -> set[int]:
        """The events partitions this worker owns now."""
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == events_topic}

    def dealt_standbys() -> set[int]:
        """The events partitions the group leader dealt this worker standby copies of."""
        return {tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == events_topic}

    if standbys_on:
        @app.timer(settings.standby_interval_s)
        async def _standbys() -> None:
            if app.rebalancing:
                return
            await scorer.refresh_standbys(dealt_standbys() - owned())

    if settings.changelog and settings.state_cleanup_delay_s > 0:
        @app.timer(max(1.0, min(60.0, settings.state_cleanup_delay_s / 4)))
        async def _remove_stale() -> None:
            # only as a member of a settled group: what is "not here" is known then
            if not joined.is_set() or app.rebalancing or not lease.valid():
                return
            await scorer.remove_stale(owned() | (dealt_standbys() if standbys_on else set()))

    app.sensors.add(CommitSensor(scorer))
    rk_config = settings.consumer_config(group=settings.app_id, **{
        "client.id": f"{settings.app_id}-fetch",
        "enable.auto.offset.store": False,
        "queued.min.messages": 20_000,
        # the embedded broker answers an empty fetch only when fetch.wait.max.ms
        # expires (500 ms by default): that wait is the latency floor of a worker
        # that keeps up, so keep it short (but see Settings.fetch_wait_ms for s3://)
        "fetch.wait.max.ms": settings.fetch_wait_ms,
    })
    scorer.acker = _faust_hooks.install(app, scorer.batch_topics, scorer.handle, rk_config=rk_config,
                                        poll_max=settings.batch_max, defer_acks=True,
                                        linger_s=settings.fetch_linger_ms / 1000.0,
                                        round_handler=scorer.handle_round)
    return app


def backlogs(settings: Settings) -> Any:
    """``weights(topics, partitions)``: each partition's records between the group's committed
    offset (the log start if none) and the log end, summed over ``topics`` (see streams/assignment.py).

    Runs on the group leader at each assignment, on faust's consumer thread:
    one committed-offsets request and a watermark request per partition, on
    a client of our own (the fetching one belongs to the event loop). The
    log end is ListOffsets' answer, which the embedded broker can give a
    record batch short (issue 3): fine for a weight.
    """
    client: list[Any] = []

    def weights(topics: Any, partitions: int) -> list[float] | None:
        from confluent_kafka import Consumer, TopicPartition

        if not client:
            client.append(Consumer(settings.consumer_config(
                group=settings.app_id, **{"client.id": f"{settings.app_id}-assignor"})))
        c = client[0]
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        w = [0.0] * partitions
        for tp in c.committed(tps, timeout=5.0):
            lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5.0)
            w[tp.partition] += max(0, hi - (tp.offset if tp.offset >= 0 else lo))
        return w

    def close() -> None:
        while client:
            client.pop().close()

    weights.close = close  # type: ignore[attr-defined]
    return weights


def tune_gc(gen0: int) -> None:
    """Collect less often, and never scan what start-up built (modules, the app, the models).

    Why: a micro-batch keeps tens of thousands of dicts (decoded events,
    features, outputs) alive at once. With CPython's default threshold (a
    young collection every 700 net allocations) collections ran in the
    middle of every batch and promoted its objects to the older generations,
    whose scans then walked them again: 35-40 % of a worker's time on the
    windowed benchmark (56k -> 92k events/s at 1,000,000). Refcounting frees
    everything but reference cycles, which are rare here, so memory stays
    bounded with far fewer collections; ``gc.freeze`` moves what start-up
    built out of every later scan. ``gen0 = 0``: the collector is untouched.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> tune_gc(50_000); gc.get_threshold()[0]
    50000
    >>> gc.unfreeze(); gc.set_threshold(*before)
    """
    import gc

    if gen0 <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)


def run_worker(settings: Settings, spec: PipelineSpec | None = None) -> None:
    """Run a worker in this process until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = create_app(settings, spec)
    app.scorer.create_changelog_topic()
    app.scorer.metrics.serve(settings.metrics_host, settings.metrics_port)
    tune_gc(settings.gc_gen0)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()

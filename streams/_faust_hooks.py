"""The one place where streamscore reaches into faust's private consumer API.

Why: faust delivers every record through its per-message machinery
(``Consumer._drain_messages`` -> ``wait_first`` -> Conductor -> Event ->
Stream -> ack), about 200-250 µs of framework time per event, which caps any
faust agent at a few thousand events/s. streamscore keeps faust for what it
does well (consumer group membership, assignment, rebalancing, offset
bookkeeping and commits, the worker lifecycle) and replaces only the drain
loop: records of the *batch topics* (events, labels) are handed to a batch
handler one fetched partition-batch at a time, in offset order (or, on the
librdkafka path with a round handler, a fetch round's partition-batches at
once), and their offsets are acknowledged in bulk into faust's own bookkeeping, so faust's
normal commit logic commits them. Records of every other topic keep faust's
normal per-message path.

The private names used here are listed in :data:`PRIVATE_SURFACE`;
``tests/unit/test_faust_hooks.py`` fails loudly if a faust upgrade removes or
renames any of them, and pyproject.toml pins the faust version range.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import orjson
from aiokafka.consumer.group_coordinator import GroupCoordinator, OffsetCommitRequest
from faust.transport.consumer import ack_lock
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.settings import FETCH_LINGER_BELOW

#: (owner, attribute) pairs of faust's private surface we depend on.
PRIVATE_SURFACE: tuple[tuple[str, str], ...] = (
    ("Consumer", "_drain_messages"),
    ("Consumer", "_wait_next_records"),
    ("Consumer", "_read_offset"),
    ("Consumer", "_committed_offset"),
    ("Consumer", "_acked"),
    ("Consumer", "_acked_index"),
    ("Consumer", "_n_acked"),
    ("Consumer", "_commit_every"),
    ("Consumer", "_add_gap"),
    ("Consumer", "_to_message"),
    ("App", "_new_transport"),
)

#: (owner, attribute) pairs of aiokafka's and faust's consumer-thread surface that :class:`GroupLease` uses.
LEASE_SURFACE: tuple[tuple[str, str], ...] = (
    ("AIOKafkaConsumerThread", "_ensure_consumer"),
    ("GroupCoordinator", "_do_heartbeat"),
    ("GroupCoordinator", "reset_generation"),
    ("OffsetCommitRequest", "DEFAULT_GENERATION_ID"),
)

#: ``await handler(topic, partition, records, highwater)``; records are aiokafka
#: ``ConsumerRecord`` objects (``.offset``, ``.key``, ``.value``,
#: ``.timestamp`` in ms, ``.headers``) of one partition, in offset order;
#: ``highwater`` is the partition's high watermark from the fetch response.
BatchHandler = Callable[[str, int, Sequence[Any], int], Awaitable[None]]
#: ``await handler([(topic, partition, records, highwater), ...])``: a fetch round's batches
#: (as :data:`BatchHandler` gets them one by one), in fetch order
RoundHandler = Callable[[Sequence[tuple[str, int, Sequence[Any], int]]], Awaitable[None]]


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, with batches of selected topics handed over whole."""

    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None
    #: True: the batch handler acknowledges offsets itself (:meth:`ack_offsets`), once the
    #: state that covers them is written; False: each batch is acknowledged when handled
    defer_acks: bool = False

    def ack_offsets(self, topic: str, partition: int, offsets: Sequence[int]) -> None:
        """Acknowledge ``offsets`` of ``topic`` / ``partition`` (see :attr:`defer_acks`)."""
        self.ack_batch(self._new_topicpartition(topic, partition), offsets)

    def ack_batch(self, tp: Any, offsets: Sequence[int]) -> None:
        """Acknowledge ``offsets`` of ``tp`` in faust's bookkeeping, in one step."""
        if not offsets:
            return
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            acked = self._acked[tp]
            new = [o for o in dict.fromkeys(offsets)
                   if (committed is None or o >= committed) and o not in index]
            index.update(new)
            acked.extend(new)
            self._n_acked += len(new)

    async def _unseen(self, tp: Any, recs: Sequence[Any]) -> Sequence[Any]:
        """The records of ``tp`` not read yet; a hole before them becomes a faust gap.

        ``_read_offset[tp]`` is the next offset to read (faust's seek writes the
        committed offset there). A hole (compacted or aborted records) is
        recorded with ``_add_gap`` so faust's commit can move past it.
        """
        nxt = self._read_offset[tp]
        if nxt is None:
            return recs
        recs = [r for r in recs if r.offset >= nxt]
        if recs and recs[0].offset > nxt and self.app.topics.acks_enabled_for(tp.topic):
            await self._add_gap(tp, nxt, recs[0].offset)
        return recs

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901 - mirrors faust's loop
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        batch_topics = self.batch_topics
        handler = self.batch_handler
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                for tp, recs in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    recs = await self._unseen(tp, recs)
                    if not recs:
                        continue
                    highwater = self.highwater(tp)
                    self.app.monitor.track_tp_end_offset(tp, highwater)
                    if tp.topic in batch_topics and handler is not None:
                        await handler(tp.topic, tp.partition, recs, highwater)
                        if not self.defer_acks:
                            self.ack_batch(tp, [r.offset for r in recs])
                    else:
                        for r in recs:
                            await self.callback(self._to_message(tp, r))
                    read_offset[tp] = recs[-1].offset + 1
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class LibrdkafkaBatchConsumer(BatchConsumer):
    """:class:`BatchConsumer` whose batch topics are fetched by librdkafka.

    Why: faust's aiokafka fetch path delivers at most ~105,000 records/s to a
    no-op handler on one core here (record objects built in Python, handed over
    between threads); librdkafka fetches and decodes in its own C threads.
    faust's aiokafka consumer still owns group membership, assignment,
    rebalancing and offset commits: this class mirrors faust's assignment of the
    batch topics onto an *assign-only* (never subscribed) confluent-kafka
    consumer of the same group, which starts each partition at the group's
    committed offset; offsets are acknowledged into faust's bookkeeping exactly
    as in :class:`BatchConsumer`, so faust commits them.
    """

    rk_config: dict[str, Any] = {}
    poll_max: int = 10_000
    #: if set, called instead of the batch handler with each fetch round's batches at once
    #: (``await round_handler([(topic, partition, records, highwater), ...])``, in fetch order)
    round_handler: RoundHandler | None = None
    #: seconds to wait after a fetch round of fewer than :attr:`linger_below` records (Settings.fetch_linger_ms)
    linger_s: float = 0.0
    linger_below: int = FETCH_LINGER_BELOW
    #: seconds a partition may have records waiting while its fetches return none, before
    #: the fetch wait is raised (see :meth:`_fetch_longer`)
    stall_s: float = 3.0
    #: the fetch waits (``fetch.wait.max.ms``) tried in turn on such a stall
    longer_waits: tuple[int, ...] = (500, 5_000)
    _rk_warned: bool = False        # the longest wait stalled too, and that was logged

    def _handled(self, tp: Any, recs: Sequence[Any], handled: bool) -> None:
        """A batch went through the handler: acknowledge it (unless the handler does) and move on."""
        if not self.defer_acks or not handled:
            self.ack_batch(tp, [r.offset for r in recs])
        self._read_offset[tp] = recs[-1].offset + 1

    @property
    def fetch_wait_ms(self) -> int:
        """The fetch wait the librdkafka consumer is (or will be) made with."""
        return int(self.rk_config.get("fetch.wait.max.ms", 500))

    def _rk(self) -> Any:
        rk = getattr(self, "_rk_consumer", None)
        if rk is None:
            from confluent_kafka import Consumer

            # librdkafka's statistics (once a second): how long since a broker last answered
            rk = self._rk_consumer = Consumer({**self.rk_config, "statistics.interval.ms": 1000,
                                               "stats_cb": self._on_stats})
            self._rk_rxidle_s: float | None = None
            self._rk_assigned: set[tuple[str, int]] = set()
            self._rk_generation: int | None = None
            self._rk_behind: dict[tuple[str, int], tuple[int, float]] = {}   # since when at this offset
            self._rk_next_check = time.monotonic() + self.stall_s
            report = getattr(self.app, "on_fetch_wait", None)
            if report is not None:
                report(self.fetch_wait_ms)
        return rk

    def _on_stats(self, raw: str) -> None:
        """librdkafka's statistics: keep the seconds since the brokers last answered (``rxidle``)."""
        try:
            idle = [b["rxidle"] for b in orjson.loads(raw).get("brokers", {}).values()
                    if b.get("nodeid", -1) >= 0 and b.get("rxidle", -1) >= 0]
        except (ValueError, AttributeError, TypeError):
            return
        self._rk_rxidle_s = min(idle) / 1e6 if idle else None

    def _stalled(self, rk: Any) -> list[tuple[tuple[str, int], int, int]]:
        """``((topic, partition), offset, high watermark)`` of the partitions whose fetches have returned
        nothing for ``stall_s`` while the broker reports records after our offset (checked once a second,
        when a poll came back empty).

        Only while the broker answers: a broker that is down or frozen
        answers nothing (``rxidle`` in librdkafka's statistics grows), and
        that is an outage to wait out, not a fetch wait to lengthen.
        """
        now = time.monotonic()
        if now < self._rk_next_check or not self._rk_assigned:
            return []
        self._rk_next_check = now + 1.0
        if self._rk_rxidle_s is None or self._rk_rxidle_s > 1.0:
            self._rk_behind.clear()
            return []
        from confluent_kafka import TopicPartition

        stuck = []
        for tp in rk.position([TopicPartition(t, p) for t, p in sorted(self._rk_assigned)]):
            key = (tp.topic, tp.partition)
            lo, hw = rk.get_watermark_offsets(tp, cached=True)
            pos = tp.offset
            if pos < 0:
                # nothing consumed since the assignment: faust's next offset to read (the group's
                # committed offset), or, with none committed, the log start (auto.offset.reset)
                nxt = self._read_offset.get(self._new_topicpartition(*key))
                pos = nxt if nxt is not None and nxt >= 0 else max(lo, 0)
            if not 0 <= pos < hw:
                self._rk_behind.pop(key, None)
                continue
            at, since = self._rk_behind.setdefault(key, (pos, now))
            if at != pos:
                self._rk_behind[key] = (pos, now)
            elif now - since >= self.stall_s:
                stuck.append((key, pos, hw))
        return stuck

    def _fetch_longer(self, rk: Any, stuck: list[tuple[tuple[str, int], int, int]]) -> Any:
        """Fetch with the next longer wait of :attr:`longer_waits`: a new librdkafka consumer; the old one
        is closed and the partitions start again from the group's committed offsets (what was handled
        since is skipped, by offset, as after any reassignment).

        Why: a broker that needs longer than ``fetch.wait.max.ms`` to read a
        partition's record batches may answer the fetch with no records at
        all (Tansu on ``s3://`` storage does, for partitions of a few dozen
        batches), and the worker would never get further; no error says so.
        """
        wait = self.fetch_wait_ms
        longer = next((w for w in self.longer_waits if w > wait), None)
        parts = ", ".join(f"{t}[{p}] at {pos} of {hw}" for (t, p), pos, hw in stuck)
        if longer is None:
            if not self._rk_warned:
                self._rk_warned = True
                self.log.error("no records fetched for %.0fs while records wait (%s), even with "
                               "fetch.wait.max.ms=%d", self.stall_s, parts, wait)
            return rk
        self.log.warning("no records fetched for %.0fs while records wait (%s): the broker takes longer than "
                         "fetch.wait.max.ms=%d to read them and answers empty (Tansu on s3:// storage does); "
                         "fetching with %d ms from now on (--fetch-wait-ms starts there)",
                         self.stall_s, parts, wait, longer)
        self.rk_config = {**self.rk_config, "fetch.wait.max.ms": longer}
        self._rk_consumer = None
        rk.close()
        return self._rk()

    def _sync_assignment(self, rk: Any, want: set[tuple[str, int]]) -> None:
        from confluent_kafka import OFFSET_STORED, TopicPartition

        have = self._rk_assigned
        gone = have - want
        if gone:
            rk.incremental_unassign([TopicPartition(t, p) for t, p in gone])
            for t, p in gone:
                self._read_offset.pop(self._new_topicpartition(t, p), None)
        new = want - have
        if new:  # start at the group's committed offset (auto.offset.reset if none)
            rk.incremental_assign([TopicPartition(t, p, OFFSET_STORED) for t, p in new])
        self._rk_assigned = set(want)

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901
        from streams.processor import Record

        new = tuple.__new__       # Record from a tuple in C; Record(...) runs Python code per record

        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        batch_topics = self.batch_topics
        handler = self.batch_handler
        round_handler = self.round_handler if handler is not None else None
        loop = asyncio.get_running_loop()
        rk = self._rk()
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                active = self.flow_active and not self.should_stop
                want = ({(tp.topic, tp.partition) for tp in self.assignment() if tp.topic in batch_topics}
                        if active else set())
                if active and self.app.consumer_generation_id != self._rk_generation:
                    # a rebalance happened: records fetched but not handled were dropped, so
                    # restart every partition from the group's committed offsets (what was
                    # handled since is answered from state: effects are idempotent by event id)
                    self._sync_assignment(rk, set())
                    self._rk_generation = self.app.consumer_generation_id
                if want != self._rk_assigned:
                    self._sync_assignment(rk, want)
                if not want:
                    await asyncio.sleep(0.05)
                    continue
                generation = self.app.consumer_generation_id
                # what is already fetched, at once; else wait (off the loop) for the first record
                # only: consume(n, timeout) would hold a partial batch until n or the timeout
                await asyncio.sleep(0)  # yield: faust's commit timer and rebalance callbacks run here
                msgs = rk.consume(self.poll_max, 0)
                if not msgs:
                    first = await loop.run_in_executor(None, rk.poll, 0.05)
                    if first is None:
                        if stuck := self._stalled(rk):
                            rk = self._fetch_longer(rk, stuck)
                        continue
                    msgs = [first, *rk.consume(self.poll_max - 1, 0)]
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    continue
                batches: dict[tuple[str, int], list[Record]] = {}
                last_t, last_p, b = None, -1, []
                for m in msgs:
                    if m.error() is not None:
                        self.log.warning("fetch error: %s", m.error())
                        continue
                    t, p = m.topic(), m.partition()
                    if p != last_p or t != last_t:      # fetched records come in runs per partition
                        last_t, last_p = t, p
                        b = batches.get((t, p))
                        if b is None:
                            b = batches[(t, p)] = []
                    b.append(new(Record, (m.offset(), m.key(), m.value(), m.timestamp()[1])))
                todo: list[tuple[Any, str, int, list[Record], int]] = []
                for (topic, partition), recs in batches.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break     # a rebalance began while we were handling: its owner re-reads the rest
                    if (topic, partition) not in self._rk_assigned:
                        continue  # revoked while we fetched: the next owner reads it
                    tp = self._new_topicpartition(topic, partition)
                    recs = await self._unseen(tp, recs)
                    if not recs:
                        continue
                    highwater = rk.get_watermark_offsets(
                        _confluent_tp(topic, partition), cached=True)[1]
                    if round_handler is not None:
                        todo.append((tp, topic, partition, recs, highwater))
                        continue
                    if handler is not None:
                        await handler(topic, partition, recs, highwater)
                    self._handled(tp, recs, handler is not None)
                if todo and self.flow_active and self.app.consumer_generation_id == generation:
                    assert round_handler is not None
                    await round_handler([(t, p, r, h) for _, t, p, r, h in todo])
                    for tp, _, _, recs, _ in todo:
                        self._handled(tp, recs, True)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if self.linger_s and len(msgs) < self.linger_below:
                    # a small round: let the next one gather more (the flush steps run meanwhile)
                    await asyncio.sleep(self.linger_s)
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            rk_consumer = getattr(self, "_rk_consumer", None)
            if rk_consumer is not None:
                self._rk_consumer = None
                rk_consumer.close()


def _confluent_tp(topic: str, partition: int) -> Any:
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


class BatchTransport(faust_aiokafka.Transport):
    """aiokafka transport whose consumer is :class:`BatchConsumer`."""

    Consumer = BatchConsumer


class LibrdkafkaBatchTransport(faust_aiokafka.Transport):
    """aiokafka transport whose consumer is :class:`LibrdkafkaBatchConsumer`."""

    Consumer = LibrdkafkaBatchConsumer


def install(app: Any, topics: frozenset[str], handler: BatchHandler,
            rk_config: dict[str, Any] | None = None, poll_max: int = 10_000,
            defer_acks: bool = False, linger_s: float = 0.0,
            round_handler: RoundHandler | None = None) -> Callable[[str, int, Sequence[int]], None]:
    """Route ``topics`` of ``app``'s consumer to ``handler`` in batches; returns the function that
    acknowledges offsets (``ack(topic, partition, offsets)``), for a handler that defers its acks.

    Call before the app starts; the app must build its transport with
    :class:`BatchTransport` or :class:`LibrdkafkaBatchTransport` (see
    :func:`streams.app.create_app`); the latter needs ``rk_config``, a
    confluent-kafka consumer config with the app's ``group.id``. ``round_handler``
    (librdkafka path only): given each fetch round's batches at once, instead of
    ``handler`` one by one.
    """
    consumer = cast(BatchConsumer, app.consumer)
    if not isinstance(consumer, BatchConsumer):
        raise TypeError(f"app consumer is {type(consumer).__name__}, not BatchConsumer")
    consumer.batch_topics = topics
    consumer.batch_handler = handler
    consumer.defer_acks = defer_acks
    if isinstance(consumer, LibrdkafkaBatchConsumer):
        if not rk_config or "group.id" not in rk_config:
            raise ValueError("the librdkafka fetch path needs rk_config with the app's group.id")
        consumer.rk_config = dict(rk_config)
        consumer.poll_max = poll_max
        consumer.linger_s = linger_s
        consumer.round_handler = round_handler
    return consumer.ack_offsets


class GroupLease:
    """Whether this worker may still write state for its partitions: its group membership, as it knows it.

    Why: a worker that stops running for longer than the session timeout (a
    long GC or swap storm, a paused VM, SIGSTOP) is expelled from the group
    and its partitions go to another worker, which recovers their state from
    the changelog and carries on. When the paused worker runs again it does
    not know yet; its first heartbeat tells it, and faust then calls the
    partitions-revoked callback, as in an ordinary rebalance. Flushing there,
    as an ordinary revocation should, wrote the zombie's stale state into the
    changelog after the new owner's (tests/faults/test_zombie.py). Kafka's
    Java client calls this case ``onPartitionsLost``; aiokafka has no such
    callback, so this class tells the two apart:

    - *expelled*: a heartbeat was answered "unknown member" or "illegal
      generation" (aiokafka then resets the generation);
    - *expired*: no heartbeat that succeeded was *sent* within the last
      ``session_timeout_s`` (the broker counts the session from when it
      received one, which is later), so the broker may have expelled us.

    :meth:`valid` is False in either case, until the next assignment
    (:meth:`joined`). A graceful LeaveGroup (shutdown) is neither.

    >>> lease = GroupLease(app=None, session_timeout_s=10.0)
    >>> lease.joined(); lease.valid()
    True
    """

    def __init__(self, app: Any, session_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.session_timeout_s = session_timeout_s
        self.clock = clock
        self.renewed = clock()       # when the last heartbeat that succeeded (or the join) was sent
        self.expelled = False
        self._coordinator: Any = None

    def joined(self) -> None:
        """A new assignment: the join counts as a heartbeat; watch this generation's heartbeats."""
        self.renewed = self.clock()
        self.expelled = False
        self._watch()

    def valid(self) -> bool:
        return not self.expelled and self.clock() - self.renewed < self.session_timeout_s

    __call__ = valid      # the scorer's ``lease()``

    def why_not(self) -> str:
        """Why :meth:`valid` is False, in words for a log line."""
        if self.expelled:
            return "the group coordinator no longer knows this member"
        return f"no heartbeat succeeded for {self.clock() - self.renewed:.1f}s (session timeout {self.session_timeout_s}s)"

    def _watch(self) -> None:
        """Wrap the coordinator's heartbeat (once) to record successes and expulsions."""
        if self.app is None:
            return
        coordinator = self.app.consumer._thread._ensure_consumer()._coordinator
        if coordinator is self._coordinator:
            return
        if not isinstance(coordinator, GroupCoordinator):
            raise TypeError(f"unexpected group coordinator {type(coordinator).__name__}")
        heartbeat = coordinator._do_heartbeat
        unknown = OffsetCommitRequest.DEFAULT_GENERATION_ID

        async def _do_heartbeat() -> Any:     # runs on the consumer thread's loop
            sent = self.clock()
            ok = await heartbeat()
            if ok:
                self.renewed = max(self.renewed, sent)
            elif coordinator.generation == unknown:   # UnknownMemberId / IllegalGeneration: reset
                self.expelled = True
            return ok

        coordinator._do_heartbeat = _do_heartbeat
        self._coordinator = coordinator

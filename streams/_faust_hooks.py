"""The one place where streamscore reaches into faust's private consumer API.

Why: faust delivers every record through its per-message machinery
(``Consumer._drain_messages`` -> ``wait_first`` -> Conductor -> Event ->
Stream -> ack), about 200-250 µs of framework time per event, which caps any
faust agent at a few thousand events/s. streamscore keeps faust for what it
does well (consumer group membership, assignment, rebalancing, offset
bookkeeping and commits, the worker lifecycle) and replaces only the drain
loop: records of the *batch topics* (events, labels) are handed to a batch
handler one fetched partition-batch at a time, in offset order, and their
offsets are acknowledged in bulk into faust's own bookkeeping, so faust's
normal commit logic commits them. Records of every other topic keep faust's
normal per-message path.

The private names used here are listed in :data:`PRIVATE_SURFACE`;
``tests/unit/test_faust_hooks.py`` fails loudly if a faust upgrade removes or
renames any of them, and pyproject.toml pins the faust version range.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from faust.transport.consumer import ack_lock
from faust.transport.drivers import aiokafka as faust_aiokafka

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

#: ``await handler(topic, partition, records, highwater)``; records are aiokafka
#: ``ConsumerRecord`` objects (``.offset``, ``.key``, ``.value``,
#: ``.timestamp`` in ms, ``.headers``) of one partition, in offset order;
#: ``highwater`` is the partition's high watermark from the fetch response.
BatchHandler = Callable[[str, int, Sequence[Any], int], Awaitable[None]]


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, with batches of selected topics handed over whole."""

    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None

    def ack_batch(self, tp: Any, offsets: Sequence[int]) -> None:
        """Acknowledge ``offsets`` of ``tp`` in faust's bookkeeping, in one step."""
        if not offsets:
            return
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            acked = self._acked[tp]
            new = [o for o in offsets
                   if (committed is None or o >= committed) and o not in index]
            index.update(new)
            acked.extend(new)
            self._n_acked += len(new)

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901 - mirrors faust's loop
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        batch_topics = self.batch_topics
        handler = self.batch_handler
        acks_enabled_for = self.app.topics.acks_enabled_for
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
                    r_off = read_offset[tp]
                    if r_off is not None:
                        recs = [r for r in recs if r.offset > r_off]  # already seen: drop
                        if not recs:
                            continue
                        first = recs[0].offset
                        if first - r_off > 1 and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, r_off + 1, first)  # compacted/aborted hole
                    highwater = self.highwater(tp)
                    self.app.monitor.track_tp_end_offset(tp, highwater)
                    if tp.topic in batch_topics and handler is not None:
                        await handler(tp.topic, tp.partition, recs, highwater)
                        self.ack_batch(tp, [r.offset for r in recs])
                    else:
                        for r in recs:
                            await self.callback(self._to_message(tp, r))
                    read_offset[tp] = recs[-1].offset
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


class BatchTransport(faust_aiokafka.Transport):
    """aiokafka transport whose consumer is :class:`BatchConsumer`."""

    Consumer = BatchConsumer


def install(app: Any, topics: frozenset[str], handler: BatchHandler) -> None:
    """Route ``topics`` of ``app``'s consumer to ``handler`` in batches.

    Call before the app starts; the app must build its transport with
    :class:`BatchTransport` (see :func:`streams.app.create_app`).
    """
    consumer = cast(BatchConsumer, app.consumer)
    if not isinstance(consumer, BatchConsumer):
        raise TypeError(f"app consumer is {type(consumer).__name__}, not BatchConsumer")
    consumer.batch_topics = topics
    consumer.batch_handler = handler

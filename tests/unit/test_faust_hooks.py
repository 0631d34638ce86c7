"""Guards for streams/_faust_hooks.py: faust's private surface, the pinned range, ack_batch.

A faust consumer can be constructed without a broker (nothing connects until
the app starts), so ``ack_batch`` is tested on a real
:class:`~streams._faust_hooks.BatchConsumer` built by a faust App, against
faust's own ``_new_offset``, not on a stub.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator, OffsetCommitRequest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from packaging.requirements import Requirement
from packaging.version import Version

from streams import _faust_hooks
from streams._faust_hooks import LEASE_SURFACE, PRIVATE_SURFACE, BatchConsumer, BatchTransport, GroupLease

FAUST_VERSION = version("faust-streaming")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
OWNERS: dict[str, type] = {"Consumer": faust_aiokafka.Consumer, "App": faust.App}
TP0 = TP("events", 0)


class _BatchApp(faust.App):
    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


_APPS: list[Any] = []


def _app(cls: type = faust.App, name: str = "ss-unit") -> Any:
    app = cls(name, broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False,
              autodiscover=False)
    _APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def _event_loop() -> Any:
    """One loop per test; it and the never-started consumer threads' loops are closed after."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    while _APPS:
        app = _APPS.pop()
        consumer = app.__dict__.get("_consumer")
        thread = getattr(consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def consumer() -> BatchConsumer:
    c = _app(_BatchApp).consumer
    assert type(c) is BatchConsumer
    return c


@pytest.fixture
def plain_consumer() -> Any:
    """faust's own aiokafka consumer (not ours: our overrides must not hide a removal)."""
    c = _app(faust.App, "ss-unit-plain").consumer
    assert type(c) is faust_aiokafka.Consumer
    return c


# -- the private surface ---------------------------------------------------------------
@pytest.mark.parametrize(("owner", "attr"), PRIVATE_SURFACE, ids=[f"{o}.{a}" for o, a in PRIVATE_SURFACE])
def test_private_surface_exists(owner: str, attr: str, plain_consumer: Any) -> None:
    assert owner in OWNERS, f"PRIVATE_SURFACE names an unknown owner {owner!r}"
    cls = OWNERS[owner]
    # instance attributes (e.g. Consumer._acked) are only created in __init__
    where = plain_consumer if owner == "Consumer" else cls
    assert hasattr(cls, attr) or hasattr(where, attr), (
        f"faust-streaming {FAUST_VERSION}: {cls.__module__}.{cls.__qualname__} has no {attr!r}; "
        f"streams/_faust_hooks.py depends on it -- re-check the hook against this faust version "
        f"or tighten the faust-streaming pin in pyproject.toml")



LEASE_OWNERS: dict[str, type] = {"AIOKafkaConsumerThread": faust_aiokafka.AIOKafkaConsumerThread,
                                 "GroupCoordinator": GroupCoordinator, "OffsetCommitRequest": OffsetCommitRequest}


@pytest.mark.parametrize(("owner", "attr"), LEASE_SURFACE, ids=[f"{o}.{a}" for o, a in LEASE_SURFACE])
def test_lease_surface_exists(owner: str, attr: str) -> None:
    """GroupLease wraps the coordinator's heartbeat and reads its generation (see its docstring)."""
    assert hasattr(LEASE_OWNERS[owner], attr), (
        f"{owner} has no {attr!r} any more; streams/_faust_hooks.GroupLease depends on it")
    params = list(inspect.signature(GroupCoordinator._do_heartbeat).parameters)
    assert params == ["self"], f"GroupCoordinator._do_heartbeat{tuple(params)} changed"
    assert inspect.iscoroutinefunction(GroupCoordinator._do_heartbeat)


def test_group_lease_expires_a_session_after_the_last_heartbeat() -> None:
    now = [100.0]
    lease = GroupLease(app=None, session_timeout_s=6.0, clock=lambda: now[0])
    lease.joined()
    now[0] = 105.9
    assert lease.valid()
    now[0] = 106.1                 # the broker may have expelled us: write nothing
    assert not lease.valid() and "no heartbeat succeeded for 6.1s" in lease.why_not()
    lease.joined()                 # a new assignment renews it
    assert lease.valid()
    lease.expelled = True          # a heartbeat answered "unknown member"
    assert not lease.valid() and "no longer knows this member" in lease.why_not()

def test_drain_messages_is_faust_code_not_ours() -> None:
    # our override must replace a real faust method, not be the only definition
    fn = faust_aiokafka.Consumer._drain_messages
    assert fn.__module__.startswith("faust."), f"faust-streaming {FAUST_VERSION}: {fn.__module__}"
    assert BatchConsumer._drain_messages is not fn


@pytest.mark.parametrize(("attr", "params"), [
    ("_wait_next_records", ["self", "timeout"]),
    ("_add_gap", ["self", "tp", "offset_from", "offset_to"]),
    ("_to_message", ["self", "tp", "record"]),
    ("_drain_messages", ["self", "fetcher"]),
    ("_new_offset", ["self", "tp"]),
])
def test_private_method_signatures(attr: str, params: list[str]) -> None:
    got = list(inspect.signature(getattr(faust_aiokafka.Consumer, attr)).parameters)
    assert got == params, (f"faust-streaming {FAUST_VERSION}: Consumer.{attr}{tuple(got)} changed; "
                           f"streams/_faust_hooks.py calls it as {tuple(params)}")


def test_bookkeeping_types(plain_consumer: Any) -> None:
    c = plain_consumer
    assert isinstance(c._acked[TP("x", 0)], list), f"faust-streaming {FAUST_VERSION}"
    assert isinstance(c._acked_index[TP("x", 0)], set), f"faust-streaming {FAUST_VERSION}"
    assert c._committed_offset[TP("x", 0)] is None, f"faust-streaming {FAUST_VERSION}"
    assert c._read_offset[TP("x", 0)] is None, f"faust-streaming {FAUST_VERSION}"
    assert isinstance(c._n_acked, int)


def test_app_new_transport_is_overridable() -> None:
    app = _app(_BatchApp, "ss-unit-transport")
    assert isinstance(app.transport, BatchTransport)
    assert BatchTransport.Consumer is BatchConsumer
    assert issubclass(BatchConsumer, faust_aiokafka.Consumer)


# -- the pinned version range --------------------------------------------------------------
def test_installed_faust_within_pinned_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    (faust_req,) = [r for r in reqs if r.name == "faust-streaming"]
    assert str(faust_req.specifier), "faust-streaming must be pinned to a range"
    assert any(s.operator in ("<", "<=", "==", "~=") for s in faust_req.specifier), \
        "faust-streaming needs an upper bound: the private hook breaks silently otherwise"
    assert Version(FAUST_VERSION) in faust_req.specifier, (
        f"installed faust-streaming {FAUST_VERSION} is outside the pinned range {faust_req.specifier}")


# -- ack_batch -------------------------------------------------------------------------------
def test_ack_batch_feeds_faust_new_offset(consumer: BatchConsumer) -> None:
    consumer.ack_batch(TP0, list(range(10)))
    assert consumer._acked[TP0] == list(range(10))
    assert consumer._acked_index[TP0] == set(range(10))
    assert consumer._n_acked == 10
    assert consumer._new_offset(TP0) == 10          # last + 1
    assert consumer._acked[TP0] == [] and consumer._acked_index[TP0] == set()
    consumer.ack_batch(TP0, [10, 11, 12])
    assert consumer._new_offset(TP0) == 13


def test_ack_batch_empty_is_noop(consumer: BatchConsumer) -> None:
    consumer.ack_batch(TP0, [])
    assert consumer._n_acked == 0 and TP0 not in consumer._acked
    assert consumer._new_offset(TP0) is None


def test_ack_batch_skips_committed_and_already_acked(consumer: BatchConsumer) -> None:
    consumer._committed_offset[TP0] = 5
    consumer.ack_batch(TP0, [3, 4, 5, 6])
    assert consumer._acked[TP0] == [5, 6] and consumer._n_acked == 2
    consumer.ack_batch(TP0, [6, 7])                  # 6 again: ignored
    assert consumer._acked[TP0] == [5, 6, 7] and consumer._n_acked == 3
    assert consumer._new_offset(TP0) == 8


def test_ack_batch_gap_stops_new_offset(consumer: BatchConsumer) -> None:
    consumer.ack_batch(TP0, [0, 1, 2])
    consumer.ack_batch(TP0, [5, 6])
    assert consumer._new_offset(TP0) == 3            # 3 and 4 not acked yet
    consumer.ack_batch(TP0, [3, 4])
    assert consumer._new_offset(TP0) == 7


def test_ack_batch_partitions_are_independent(consumer: BatchConsumer) -> None:
    tp1 = TP("events", 1)
    consumer.ack_batch(TP0, [0, 1])
    consumer.ack_batch(tp1, [7, 8, 9])
    assert consumer._new_offset(TP0) == 2 and consumer._new_offset(tp1) == 10
    assert consumer._n_acked == 5


def test_ack_offsets_by_topic_name(consumer: BatchConsumer) -> None:
    consumer.ack_offsets("events", 0, [0, 1, 2])
    assert consumer._acked[TP0] == [0, 1, 2] and consumer._new_offset(TP0) == 3


def test_ack_batch_idempotent_within_one_call(consumer: BatchConsumer) -> None:
    consumer.ack_batch(TP0, [0, 1, 1, 2])
    assert consumer._n_acked == 3
    assert consumer._acked[TP0] == [0, 1, 2]


# -- install -------------------------------------------------------------------------------------
def test_install_routes_topics(consumer: BatchConsumer) -> None:
    async def handler(topic: str, partition: int, records: Any) -> None:
        return None

    app = consumer.app
    _faust_hooks.install(app, frozenset({"t-events", "t-labels"}), handler)
    assert app.consumer.batch_topics == frozenset({"t-events", "t-labels"})
    assert app.consumer.batch_handler is handler
    # class defaults untouched (install is per consumer)
    assert BatchConsumer.batch_topics == frozenset() and BatchConsumer.batch_handler is None


def test_install_refuses_plain_consumer() -> None:
    async def handler(topic: str, partition: int, records: Any) -> None:
        return None

    with pytest.raises(TypeError, match="not BatchConsumer"):
        _faust_hooks.install(_app(faust.App, "ss-unit-refuse"), frozenset({"e"}), handler)


def test_create_app_installs_batch_consumer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.app import create_app
    from streams.settings import Settings
    from streams.spec import load_spec

    for k in [k for k in __import__("os").environ if k.startswith("STREAMSCORE_")]:
        monkeypatch.delenv(k)
    s = Settings(state_dir=tmp_path, topic_prefix="u-", broker="127.0.0.1:1", metrics_port=0)
    app = create_app(s, load_spec("elec2"))
    _APPS.append(app)
    c = app.consumer
    assert isinstance(c, BatchConsumer)
    assert c.batch_topics == frozenset({"u-events", "u-labels"})
    assert c.batch_handler == app.scorer.handle
    # the scorer acknowledges a batch's offsets itself, once the flush that covers it is written
    assert c.defer_acks is True and app.scorer.acker == c.ack_offsets
    assert BatchConsumer.defer_acks is False


class _FakeRk:
    """The two librdkafka consumer calls the stall check makes: positions and cached watermarks."""

    def __init__(self, position: int, high: int) -> None:
        self.position_, self.high = position, high

    def position(self, tps: list[Any]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, self.position_) for tp in tps]

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        return 0, self.high


def _stall_checker(rxidle_us: int) -> Any:
    c = _faust_hooks.LibrdkafkaBatchConsumer.__new__(_faust_hooks.LibrdkafkaBatchConsumer)
    c.stall_s = 3.0
    c._rk_assigned = {("events", 0)}
    c._rk_behind = {}
    c._rk_next_check = 0.0
    c._read_offset = {}
    c._on_stats('{"brokers": {"127.0.0.1:9092/1": {"nodeid": 1, "rxidle": %d},'
                ' "127.0.0.1:9092/bootstrap": {"nodeid": -1, "rxidle": 99000000}}}' % rxidle_us)
    return c


@pytest.mark.parametrize("rxidle_us, stalls", [(2_000, True), (5_000_000, False)],
                         ids=["fetches-answered-empty", "broker-silent"])
def test_a_stalled_fetch_is_told_from_an_outage_by_the_brokers_answers(monkeypatch, rxidle_us, stalls):
    """Records wait (high watermark 90 > offset 10) and none come for longer than ``stall_s``: a stall
    to fetch more slowly for when the broker keeps answering (the s3:// quirk), an outage to wait
    out when it has answered nothing for seconds (librdkafka's ``rxidle``)."""
    now = [1000.0]
    monkeypatch.setattr(_faust_hooks.time, "monotonic", lambda: now[0])
    c, rk = _stall_checker(rxidle_us), _FakeRk(10, 90)
    seen = []
    for _ in range(5):                   # a check a second, the offset never moving
        seen.append(c._stalled(rk))
        now[0] += 1.0
    assert (seen[-1] == [(("events", 0), 10, 90)]) is stalls
    assert seen[:3] == [[], [], []]      # not before stall_s (3 s) at the same offset
    rk.position_ = 90                    # caught up: nothing waits, nothing stalls
    now[0] += 1.0
    assert c._stalled(rk) == []

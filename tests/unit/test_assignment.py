"""streams/assignment.py: partitions dealt by backlog, and the faust surface it stands on."""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.partition_assignor import PartitionAssignor
from faust.transport.drivers import aiokafka as faust_aiokafka
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams.assignment import MIN_BACKLOG, BacklogAssignor, balance, standbys

#: faust-streaming 0.15.3's PartitionAssignor._perform_assignment, which BacklogAssignor copies
FAUST_PERFORM_ASSIGNMENT_SHA256 = "1e0bf2c5c8f42574670a8ef7661a043919c8e03b59ec966ce8109a36fd20fa52"


def _load(deal, weights):
    return {c: sum(weights[p] for p in ps) for c, ps in deal.items()}


def test_the_benchmark_split_goes_from_59_to_53_percent():
    weights = [41_298, 66_722, 39_999, 51_981]          # benchmarks.workload, 200,000 events
    before = {"a": {0, 2}, "b": {1, 3}}
    after = balance(before, weights)
    assert sorted(map(sorted, after.values())) == [[0, 3], [1, 2]]
    assert max(_load(before, weights).values()) / sum(weights) > 0.59
    assert max(_load(after, weights).values()) / sum(weights) < 0.54


def test_a_small_backlog_or_a_small_gain_keeps_fausts_deal():
    before = {"a": {0, 2}, "b": {1, 3}}
    assert balance(before, [4, 6, 4, 5], min_total=MIN_BACKLOG) == before       # a group that keeps up
    assert balance(before, [100, 101, 100, 100]) == before                     # < 5 % to gain


@hsettings(max_examples=200, deadline=None)
@given(st.data())
def test_a_deal_keeps_counts_and_partitions_and_never_loads_more(data):
    n_clients = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(n_clients, 12))
    parts = data.draw(st.permutations(range(n)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=n_clients - 1, max_size=n_clients - 1)))
    bounds = [0, *cuts, n]
    before = {f"c{i}": set(parts[bounds[i]:bounds[i + 1]]) for i in range(n_clients)}
    weights = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    after = balance(before, weights)
    assert {c: len(ps) for c, ps in after.items()} == {c: len(ps) for c, ps in before.items()}
    assert sorted(p for ps in after.values() for p in ps) == list(range(n))
    assert max(_load(after, weights).values()) <= max(_load(before, weights).values())


def _assignor(weights, standby_replicas=None):
    app = SimpleNamespace(partition_weights=weights, standby_replicas=standby_replicas)
    a = BacklogAssignor.__new__(BacklogAssignor)   # no faust App needed for rebalance()
    a.app = app
    return a


@st.composite
def deals(draw):
    """client -> the partitions it owns (some clients may own none), a standby count, and earlier standbys."""
    clients = [f"c{i}" for i in range(draw(st.integers(1, 6)))]
    n = draw(st.integers(1, 24))
    owners = draw(st.lists(st.sampled_from(clients), min_size=n, max_size=n))
    actives = {c: {p for p, o in enumerate(owners) if o == c} for c in clients}
    before = {c: set(draw(st.lists(st.integers(0, n - 1), max_size=n))) for c in clients}
    return actives, draw(st.integers(-1, 3)), before


@given(deals())
@example(({"c0": {0, 2, 3, 4, 5}, "c1": set(), "c2": {1}}, 1, {"c0": set(), "c1": {1}, "c2": set()}))
@hsettings(max_examples=300, deadline=None)
def test_standbys_are_counted_spread_and_never_the_owners(deal):
    # the example: a deal where one client must keep more than an even share (c0 owns five of six,
    # so c1 and c2 hold their five copies), which a share cap on the kept copies moved again
    actives, replicas, before = deal
    out = standbys(actives, replicas, before)
    parts = {p for ps in actives.values() for p in ps}
    assert set(out) == set(actives)
    for c, ps in out.items():
        assert not ps & actives[c], f"{c} keeps a standby of a partition it owns"
    if replicas < 0:
        assert all(out[c] == parts - actives[c] for c in out)
        return
    want = min(replicas, len(actives) - 1) if replicas > 0 else 0
    for p in parts:
        assert sum(p in ps for ps in out.values()) == max(want, 0), p
    owner = {p: c for c, ps in actives.items() for p in ps}
    for x in out:                        # no copy could move to a client holding two fewer
        for y in out:
            if len(out[x]) > len(out[y]) + 1:
                assert all(owner[p] == y or p in out[y] for p in out[x]), (x, y, out)
    assert standbys(actives, replicas, out) == out     # dealt again from itself: nothing moves


def _backlogs(topics, partitions):
    return [41_298, 66_722, 39_999, 51_981]


def test_rebalance_moves_the_actives_and_deals_the_standbys_to_the_other_worker():
    seen = []

    def weights(topics, partitions):
        seen.append((list(topics), partitions))
        return _backlogs(topics, partitions)

    deal = {"a": CopartitionedAssignment({0, 2}, {1, 3}, {"e", "l"}),
            "b": CopartitionedAssignment({1, 3}, {0, 2}, {"e", "l"})}
    out = _assignor(weights, standby_replicas=1).rebalance(["e", "l"], 4, deal)
    assert seen == [(["e", "l"], 4)]
    assert sorted(sorted(a.actives) for a in out.values()) == [[0, 3], [1, 2]]
    assert out["a"].standbys == out["b"].actives and out["b"].standbys == out["a"].actives
    assert all(a.topics == {"e", "l"} for a in out.values())


def test_without_a_standby_count_faust_s_standbys_stay_but_never_what_a_worker_owns():
    deal = {"a": CopartitionedAssignment({0, 2}, {1, 3}, {"e"}), "b": CopartitionedAssignment({1, 3}, {0, 2}, {"e"})}
    out = _assignor(_backlogs).rebalance(["e"], 4, deal)
    assert {c: (a.actives, a.standbys) for c, a in out.items()} == {"a": ({0, 3}, {1}), "b": ({1, 2}, {0})}


@pytest.mark.parametrize("replicas, expected", [(0, [set(), set(), set()]), (1, [{2, 4}, {0, 5}, {1, 3}]),
                                                (2, [{2, 3, 4, 5}, {0, 1, 4, 5}, {0, 1, 2, 3}]),
                                                (-1, [{2, 3, 4, 5}, {0, 1, 4, 5}, {0, 1, 2, 3}])])
def test_three_workers_keep_the_standby_count_asked_for(replicas, expected):
    deal = {c: CopartitionedAssignment(ps, set(), {"e"}) for c, ps in zip("abc", [{0, 1}, {2, 3}, {4, 5}])}
    out = _assignor(None, standby_replicas=replicas).rebalance(["e"], 6, deal)
    assert [out[c].standbys for c in "abc"] == expected
    assert [out[c].actives for c in "abc"] == [{0, 1}, {2, 3}, {4, 5}]


@pytest.mark.parametrize("weights", [None, lambda t, n: None, lambda t, n: 1 / 0])
def test_without_backlogs_fausts_deal_stands(weights):
    deal = {"a": CopartitionedAssignment({0, 2}, {1, 3}, {"e"}), "b": CopartitionedAssignment({1, 3}, {0, 2}, {"e"})}
    out = _assignor(weights).rebalance(["e"], 4, deal)
    assert {c: (a.actives, a.standbys) for c, a in out.items()} == {"a": ({0, 2}, {1, 3}), "b": ({1, 3}, {0, 2})}


def test_perform_assignment_is_fausts_own_plus_the_deal():
    """BacklogAssignor._perform_assignment is a copy of faust's: a faust upgrade that changes
    faust's must fail here, so the copy is re-checked against it."""
    src = inspect.getsource(PartitionAssignor._perform_assignment)
    assert hashlib.sha256(src.encode()).hexdigest() == FAUST_PERFORM_ASSIGNMENT_SHA256, (
        "faust's PartitionAssignor._perform_assignment changed: re-check streams/assignment.py's copy")


def test_faust_uses_the_app_assignor_only_with_standby_replicas():
    """faust's aiokafka driver takes app.assignor only if table_standby_replicas > 0 (or changelog
    tables): streams.app keeps faust's default (1), else aiokafka's round robin deals the partitions."""
    src = inspect.getsource(faust_aiokafka)
    assert "self.app.conf.table_standby_replicas > 0 or has_changelog_tables" in src


def test_the_worker_app_deals_by_backlog(make_settings):
    from streams.app import create_app

    app = create_app(make_settings(create=False))
    assert isinstance(app.assignor, BacklogAssignor)
    assert app.conf.table_standby_replicas > 0
    assert callable(app.partition_weights) and callable(app.partition_weights.close)
    app.partition_weights.close()                       # no client yet: nothing to close, no error
    assert create_app(make_settings(create=False, assign_by_backlog=False)).partition_weights is None
    assert app.standby_replicas == 1                    # dealt by the leader, one copy by default
    assert create_app(make_settings(create=False, standby_replicas=-1)).standby_replicas == -1
    assert create_app(make_settings(create=False, standby_interval_s=0)).standby_replicas == 0
    assert create_app(make_settings(create=False, changelog=False)).standby_replicas == 0

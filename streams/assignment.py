"""Partition assignment by backlog: which worker gets which partitions.

Why: Kafka's assignors (faust's included) deal out partition *counts*
evenly and ignore how much work each partition holds. Keyed traffic is
rarely even: the benchmark's 4 partitions hold 41,298 / 66,722 / 39,999 /
51,981 of 200,000 events (users hashed by crc32, a few heavy users), and
faust's assignment gave one of two workers partitions 1 and 3, 59 % of the
work, so the pair could never run faster than 1 / 0.59 = 1.69x one worker.
:class:`BacklogAssignor` keeps faust's counts (and everything else faust
assigns) and only chooses *which* partitions of the events/labels group go
where, so that the heaviest worker's backlog (records between the group's
committed offset and the log end) is as small as possible: {1, 2} and
{0, 3} there, 53 %. When the backlogs are small (a group that keeps up)
faust's sticky assignment is kept as it is: moving a partition moves its
state, which costs more than a balance no backlog needs.

Standby replicas are dealt here too (:func:`standbys`): each partition gets
``standby_replicas`` standby workers besides its owner (Kafka Streams'
``num.standby.replicas``), which keep a local copy of its state caught up
with its changelog so that taking it over reads only the last few flushes.

The deal is greedy (heaviest partition first, to the least loaded worker
with room; ties to the worker that had it):

>>> balance({"a": {0, 2}, "b": {1, 3}}, [41_298, 66_722, 39_999, 51_981])
{'a': {0, 3}, 'b': {1, 2}}
>>> balance({"a": {0, 1}, "b": {2, 3}}, [41_298, 66_722, 39_999, 51_981])   # 54 %: under 5 % to gain
{'a': {0, 1}, 'b': {2, 3}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.cluster_assignment import ClusterAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.assignor.partition_assignor import PartitionAssignor

log = logging.getLogger(__name__)

#: Below this many records of backlog in all, faust's assignment is kept (see the module docstring).
MIN_BACKLOG = 10_000
#: A new deal must cut the heaviest worker's backlog by at least this fraction, or faust's is kept.
MIN_GAIN = 0.05

#: ``weights(topics, partitions)``: each partition's backlog, summed over the copartitioned
#: ``topics``; None when unknown (faust's assignment is kept).
Weights = Callable[[Sequence[str], int], "list[float] | None"]


def balance(assignment: Mapping[str, set[int]], weights: Sequence[float],
            min_total: float = 0.0, min_gain: float = MIN_GAIN) -> dict[str, set[int]]:
    """Re-deal the partitions of ``assignment`` (client -> partitions) so each client keeps its
    count and the heaviest client's total weight is least; ``assignment`` itself (copied) when
    the total weight is under ``min_total`` or the new deal gains less than ``min_gain``."""
    kept = {c: set(ps) for c, ps in assignment.items()}
    if sum(weights) <= max(0.0, min_total):
        return kept
    counts = {c: len(ps) for c, ps in kept.items()}
    new: dict[str, set[int]] = {c: set() for c in kept}
    load = {c: 0.0 for c in kept}
    for p in sorted((p for ps in kept.values() for p in ps), key=lambda p: (-weights[p], p)):
        c = min((c for c in new if len(new[c]) < counts[c]),
                key=lambda c: (load[c], p not in kept[c], c))
        new[c].add(p)
        load[c] += weights[p]
    before = max(sum(weights[p] for p in ps) for ps in kept.values())
    if max(load.values()) > before * (1.0 - min_gain):
        return kept
    return new


def standbys(actives: Mapping[str, set[int]], replicas: int,
             before: Mapping[str, set[int]] | None = None) -> dict[str, set[int]]:
    """Which partitions each client keeps a standby copy of: ``replicas`` copies of every partition, on
    clients other than its owner (fewer when there are not that many), as evenly spread as can be.

    ``replicas`` -1: every client keeps every partition it does not own; 0: none. ``before``: each
    client's standbys of the last assignment. Those copies are kept first (a kept copy is caught up,
    a new one starts from nothing); the rest is dealt to the clients with the fewest, the owners'
    partitions taken in turn; then copies move from the fullest clients to the emptiest until no
    two differ by more than one, or no move is allowed (a client never keeps a copy of what it
    owns). So a deal made again from itself moves nothing.

    >>> standbys({"a": {0, 1}, "b": {2, 3}, "c": {4, 5}}, 1)
    {'a': {2, 4}, 'b': {0, 5}, 'c': {1, 3}}
    >>> standbys({"a": {0, 1}, "b": {2, 3}, "c": {4, 5}}, 1, before={"a": {4, 5}, "c": {0, 2, 3}})
    {'a': {4, 5}, 'b': {0, 1}, 'c': {2, 3}}
    >>> standbys({"a": {0, 1}, "b": {2, 3}}, -1)
    {'a': {2, 3}, 'b': {0, 1}}
    """
    parts = sorted(p for ps in actives.values() for p in ps)
    if replicas < 0:
        return {c: set(parts) - set(ps) for c, ps in actives.items()}
    out: dict[str, set[int]] = {c: set() for c in actives}
    replicas = min(replicas, len(actives) - 1)
    if replicas <= 0:
        return out
    owner = {p: c for c, ps in actives.items() for p in ps}
    copies = dict.fromkeys(parts, 0)
    for c in sorted(out):                                       # the copies already there
        for p in sorted((before or {}).get(c, ())):
            if p in owner and owner[p] != c and copies[p] < replicas:
                out[c].add(p)
                copies[p] += 1
    # the owners' partitions in turn (a's first, b's first, ..., a's second, ...): dealt in plain order,
    # the partitions of the last owners would find only the clients already full
    by_owner = [sorted(actives[c]) for c in sorted(actives)]
    turns = [ps[i] for i in range(max(map(len, by_owner), default=0)) for ps in by_owner if i < len(ps)]
    for p in turns:
        while copies[p] < replicas:
            c = min((c for c in out if c != owner[p] and p not in out[c]), key=lambda c: (len(out[c]), c))
            out[c].add(p)
            copies[p] += 1
    while True:         # the copies kept can leave no room where the last ones had to go: even out
        move = next(((x, y, p) for x in sorted(out, key=lambda c: (-len(out[c]), c))
                     for y in sorted(out, key=lambda c: (len(out[c]), c)) if len(out[y]) + 1 < len(out[x])
                     for p in sorted(out[x]) if owner[p] != y and p not in out[y]), None)
        if move is None:
            return out
        x, y, p = move
        out[x].discard(p)
        out[y].add(p)


class BacklogAssignor(PartitionAssignor):
    """faust's assignor, with the events/labels group dealt by backlog (see the module docstring).

    ``app.partition_weights`` (a :data:`Weights`) gives the backlogs; without
    it, or when it fails, this is faust's assignor. :meth:`_perform_assignment`
    is faust-streaming 0.15.3's own (the range pyproject.toml pins is
    ``>=0.11,<0.16``) with one call added, :meth:`rebalance`, after each
    copartitioned group is assigned; ``tests/unit/test_assignment.py`` pins
    the hash of faust's source and fails if it changes.
    """

    def rebalance(self, topics: Sequence[str], num_partitions: int,
                  assignment: dict[str, Any]) -> dict[str, Any]:
        """Deal ``assignment`` (client -> faust CopartitionedAssignment) of ``topics`` by backlog, then
        its standby replicas (:func:`standbys`, ``app.standby_replicas`` of them; faust's own count,
        ``table_standby_replicas``, stays 1, or faust would not use this assignor at all)."""
        self._deal_actives(topics, num_partitions, assignment)
        replicas = getattr(self.app, "standby_replicas", None)
        if replicas is not None:
            # faust's standbys of these topics serve faust tables only (streamscore has none); a
            # worker follows the changelogs of the partitions named here (streams/agents.py)
            dealt = standbys({c: set(a.actives) for c, a in assignment.items()}, replicas,
                             {c: set(a.standbys) for c, a in assignment.items()})
            for c, a in assignment.items():
                a.standbys = dealt[c]
        return assignment

    def _deal_actives(self, topics: Sequence[str], num_partitions: int, assignment: dict[str, Any]) -> None:
        weights_of: Weights | None = getattr(self.app, "partition_weights", None)
        if weights_of is None:
            return
        try:
            weights = weights_of(list(topics), num_partitions)
        except Exception as exc:  # noqa: BLE001 - an assignment must not fail for want of a balance
            log.warning("partition backlogs unknown (%s): faust's assignment kept", exc)
            return
        if weights is None:
            return
        before = {c: set(a.actives) for c, a in assignment.items()}
        after = balance(before, weights, min_total=MIN_BACKLOG)
        if after != before:
            log.info("partitions of %s dealt by backlog %s: %s (was %s)", sorted(topics),
                     [int(w) for w in weights], {c: sorted(ps) for c, ps in after.items()},
                     {c: sorted(ps) for c, ps in before.items()})
            for c, a in assignment.items():
                a.actives = after[c]
                a.standbys = a.standbys - after[c]      # never a standby of what it owns

    # faust-streaming's PartitionAssignor._perform_assignment, with the rebalance() call added
    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:  # pragma: no cover - faust's
        cluster_assgn = ClusterAssignment()

        clients_metadata = {
            member_id: self._get_client_metadata(metadata)
            for member_id, metadata in member_metadata.items()
        }

        subscriptions = {
            member_id: cast(list[str], metadata.subscription)
            for member_id, metadata in member_metadata.items()
        }

        for member_id in member_metadata:
            cluster_assgn.add_client(
                member_id, subscriptions[member_id], clients_metadata[member_id]
            )
        topics = cluster_assgn.topics()

        copartitioned_groups = self._get_copartitioned_groups(
            topics, cluster, subscriptions
        )

        self._update_member_urls(clients_metadata)

        assignments = {
            member_id: ClientAssignment(actives={}, standbys={})
            for member_id in member_metadata
        }

        topic_to_group_id = {}
        partitions_by_topic = {}

        for group_id, (num_partitions, topic_groups) in enumerate(
            sorted(copartitioned_groups.items())
        ):
            for topics in topic_groups:
                for topic in topics:
                    topic_to_group_id[topic] = group_id
                    partitions_by_topic[topic] = num_partitions
                assert len(topics) > 0 and num_partitions > 0
                assgn = cluster_assgn.copartitioned_assignments(topics)
                assignor = CopartitionedAssignor(
                    topics=topics,
                    cluster_asgn=assgn,
                    num_partitions=num_partitions,
                    replicas=self.replicas,
                )
                dealt = self.rebalance(sorted(topics), num_partitions, assignor.get_assignment())
                for client, copart_assn in dealt.items():
                    assignments[client].add_copartitioned_assignment(copart_assn)

        assignments = self._global_table_standby_assignments(
            assignments, partitions_by_topic
        )

        changelog_distribution = self._get_changelog_distribution(assignments)
        external_topic_distribution = self._get_external_topic_distribution(assignments)
        return self._protocol_assignments(
            assignments,
            changelog_distribution,
            external_topic_distribution,
            topic_to_group_id,
        )

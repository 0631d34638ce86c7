"""The backlogs streams.assignment deals partitions by, read from the real broker."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.app import backlogs


def test_backlog_is_the_uncommitted_records_of_each_partition(make_settings):
    s = make_settings(partitions=4)
    events, labels = s.topic("events"), s.topic("labels")
    p = Producer(s.producer_config())
    # one record per produce request: the embedded broker's ListOffsets answers a multi-record
    # batch's base offset + 1 (issue 3), and these figures are exact
    for topic, counts in ((events, [6, 3, 0, 4]), (labels, [2, 0, 0, 1])):
        for part, n in enumerate(counts):
            for i in range(n):
                p.produce(topic, b"{}", f"k{i}".encode(), partition=part)
                assert p.flush(10) == 0
    c = Consumer(s.consumer_config(group=s.app_id))
    c.commit(offsets=[TopicPartition(events, 0, 2), TopicPartition(labels, 3, 1)], asynchronous=False)
    c.close()
    assert backlogs(s)([events, labels], 4) == [6 - 2 + 2, 3, 0, 4 + 1 - 1]

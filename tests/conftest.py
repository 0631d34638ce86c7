"""Shared fixtures: one embedded broker per test session, unique names per test."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, create_topics, free_port
from streams.settings import Settings

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real Tansu broker on a free loopback port, shared by the session."""
    b = EmbeddedBroker(log_path=os.environ.get("STREAMSCORE_TEST_BROKER_LOG"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def make_settings(broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest):
    """Settings with a unique topic prefix, app id, ports and state dir; topics created."""

    def make(pipeline: str = "elec2", partitions: int = 1, create: bool = True, **kw) -> Settings:
        n = next(_counter)
        name = f"{request.node.name[:40]}-{n}-{time.time_ns() % 10**6}".replace("[", "-").replace("]", "")
        s = Settings(broker=broker.bootstrap, app_id=f"t-{name}", topic_prefix=f"{name}-", pipeline=pipeline,
                     partitions=partitions, state_dir=tmp_path / f"state{n}", web_port=free_port(),
                     metrics_port=free_port(), session_timeout_s=6.0, commit_interval_s=0.5,
                     metrics_interval_s=1.0, **kw)
        if create:
            create_topics(broker.bootstrap,
                          {s.topic(t): partitions for t in ("events", "labels", "predictions", "dlq")}
                          | {s.topic("metrics"): 1})
        return s

    return make

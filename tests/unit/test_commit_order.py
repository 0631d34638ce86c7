"""The commit order, wired: faust commits no offset unless the scorer's flush succeeded first.

docs/reliability.md section 3: before offsets are committed, outputs and
changelog records are delivered and the local state is written
(``BatchScorer.flush``, called from ``CommitSensor.on_commit_initiated``).
These tests drive faust's own ``Consumer.force_commit`` on the worker's app
(no broker: the step that talks to Kafka, ``_commit_tps``, is recorded
instead) and check both halves: a flush that raises (an output or changelog
record not delivered) leaves faust with nothing committed, and a flush that
succeeds comes before the commit. A faust upgrade that moved the sensor
call after the commit would fail here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.agents import DeliveryError
from streams.app import create_app
from streams.settings import Settings
from streams.spec import load_spec


def _app(tmp_path: Path, flush_fails: bool) -> tuple[object, list[str]]:
    s = Settings(state_dir=tmp_path, broker="127.0.0.1:1", metrics_port=0, snapshot_key="k" * 32,
                 changelog=False)
    app = create_app(s, load_spec("elec2"))
    steps: list[str] = []

    def flush(*args: object, **kwargs: object) -> None:
        steps.append("flush")
        if flush_fails:
            raise DeliveryError("3 output records not delivered within 305.0s")

    async def commit_tps(tps: object, start_new_transaction: bool) -> bool:
        steps.append("commit")
        return True

    app.scorer.flush = flush                     # type: ignore[attr-defined]
    app.consumer._commit_tps = commit_tps        # type: ignore[attr-defined]
    return app, steps


def test_an_undelivered_flush_commits_nothing(tmp_path: Path) -> None:
    app, steps = _app(tmp_path, flush_fails=True)
    with pytest.raises(DeliveryError):
        asyncio.run(app.consumer.force_commit())   # type: ignore[attr-defined]
    assert steps == ["flush"]


def test_a_delivered_flush_comes_before_the_commit(tmp_path: Path) -> None:
    app, steps = _app(tmp_path, flush_fails=False)
    asyncio.run(app.consumer.force_commit())       # type: ignore[attr-defined]
    assert steps == ["flush", "commit"]

"""Fault injection at named points of a worker, for the fault suite: ``STREAMSCORE_FAILPOINT``.

Why: some states of a worker last microseconds, such as "this flush's state
is written and the offsets it covers are not yet acknowledged"; a SIGKILL
from outside cannot land there on purpose, so tests/faults could not prove
what a crash there does. With ``STREAMSCORE_FAILPOINT=NAME:N`` the worker
SIGKILLs itself the ``N``-th time it reaches point ``NAME``: a real kill -9,
at an exact place. Unset (always, outside the fault suite) a check costs one
attribute read. It is read from the environment, not from
:class:`~streams.settings.Settings`, so it never shows in ``--help``.

Points: ``after_state_write`` (a flush that covers input offsets has written
every partition's state and not yet acknowledged them; ``streams/agents.py``).

>>> fp = Failpoints.parse("after_state_write:2", action=lambda name: print("killed at", name))
>>> fp.reached("after_state_write"); fp.reached("after_state_write"); fp.reached("after_state_write")
killed at after_state_write
>>> Failpoints.parse(None).reached("after_state_write")
>>> Failpoints.parse("after_state_write:0")
Traceback (most recent call last):
ValueError: STREAMSCORE_FAILPOINT='after_state_write:0': expected NAME:N with N >= 1 and NAME one of after_state_write
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

ENV = "STREAMSCORE_FAILPOINT"
POINTS = ("after_state_write",)


def _sigkill(name: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Failpoints:
    """The armed point, if any, and how many more times it may be passed before it fires."""

    def __init__(self, name: str | None = None, at: int = 0,
                 action: Callable[[str], None] = _sigkill) -> None:
        self.name, self._left, self._action = name, at, action

    @classmethod
    def parse(cls, spec: str | None, action: Callable[[str], None] = _sigkill) -> Failpoints:
        """``NAME:N`` (or None/empty: nothing armed); a malformed value is an error, not ignored."""
        if not spec:
            return cls()
        name, _, n = spec.partition(":")
        if name not in POINTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{ENV}={spec!r}: expected NAME:N with N >= 1 and NAME one of {', '.join(POINTS)}")
        return cls(name, int(n), action)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Failpoints:
        return cls.parse(env.get(ENV))

    def reached(self, name: str) -> None:
        """Count a pass through ``name``; fire on the N-th."""
        if name != self.name:
            return
        self._left -= 1
        if self._left == 0:
            self._action(name)

"""``streamscore worker --workers N``: N worker processes in one consumer group.

Why processes and not threads: a worker is CPU-bound Python (River, decoding,
the event loop), so scale-out is Kafka's own: more consumers in the group,
each a process with its own GIL. The supervisor starts them with the same
settings and ports offset by their index (faust binds a web port per
process; each serves its own /metrics), forwards SIGTERM/SIGINT so each
flushes outputs and state before its last commit, and restarts a worker that
dies (its partitions are reassigned meanwhile, and it resumes from the
committed offsets and its state).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.settings import Settings

log = logging.getLogger(__name__)


def worker_settings(settings: Settings, index: int) -> Settings:
    """Settings of worker ``index``: the same group and state, ports offset by ``index``."""
    update: dict[str, Any] = {"web_port": settings.web_port + index}
    if settings.metrics_port:
        update["metrics_port"] = settings.metrics_port + index
    return settings.model_copy(update=update)


def supervise(settings: Settings, n: int, *, log_path: Path | None = None, max_restarts: int = 5,
              start: Callable[[Settings, Path | None], subprocess.Popen[bytes]] | None = None) -> int:
    """Run ``n`` workers until SIGTERM/SIGINT; restart a crashed one (at most ``max_restarts`` a minute)."""
    from streams.demo import start_worker

    def spawn(s: Settings) -> subprocess.Popen[bytes]:
        return (start or start_worker)(s, log_path)

    confs = [worker_settings(settings, i) for i in range(n)]
    procs = [spawn(c) for c in confs]
    stopping = False
    restarts: list[float] = []

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            if stopping:
                return max((p.wait() for p in procs), default=0)
            for i, p in enumerate(procs):
                if p.poll() is not None and not stopping:
                    now = time.monotonic()
                    restarts[:] = [t for t in restarts if now - t < 60.0] + [now]
                    if len(restarts) > max_restarts:
                        log.error("worker %d exited with %s; too many restarts, stopping", i, p.returncode)
                        stop(signal.SIGTERM, None)
                        break
                    log.warning("worker %d exited with %s; restarting it", i, p.returncode)
                    procs[i] = spawn(confs[i])
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


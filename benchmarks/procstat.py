"""CPU time and peak memory of processes, from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set size) of ``pid`` in MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@dataclass
class CpuWindow:
    """CPU seconds of a set of processes over their busy window.

    :meth:`start` at the moment they may begin working, :meth:`sample` often
    (every ~50 ms) while they run, :meth:`stop` when the work is done. The
    window starts at the last sample before the first interval in which they
    used more than ``busy_share`` of a core, so start-up idle time (the first
    fetch) does not dilute the figure; the CPU of the whole run is kept too.
    """

    pids: list[int]
    busy_share: float = 0.2
    t0: float = 0.0
    c0: float = 0.0
    t_busy: float | None = None
    c_busy: float = 0.0
    _t_prev: float = 0.0
    _c_prev: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    total_cpu_s: float = 0.0

    def _cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def start(self, now: float) -> None:
        self.t0 = self._t_prev = now
        self.c0 = self._c_prev = self._cpu()

    def sample(self, now: float) -> None:
        if self.t_busy is not None:
            return
        c = self._cpu()
        if now > self._t_prev and (c - self._c_prev) >= self.busy_share * (now - self._t_prev):
            self.t_busy, self.c_busy = self._t_prev, self._c_prev
        else:
            self._t_prev, self._c_prev = now, c

    def stop(self, now: float) -> None:
        c = self._cpu()
        t_b, c_b = (self.t_busy, self.c_busy) if self.t_busy is not None else (self.t0, self.c0)
        self.wall_s = now - t_b
        self.cpu_s = c - c_b
        self.total_cpu_s = c - self.c0

    @property
    def cpu_pct(self) -> float | None:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else None

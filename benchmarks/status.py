"""A tiny status file shared by a benchmark subprocess and the harness.

The subprocess writes ``{"phase": "ready" | "running" | "done", "n": outputs}``
atomically (write + rename); the harness polls it. Cheaper than scraping the
output topic while the run is being measured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def write_status(path: str | os.PathLike[str], phase: str, n: int, **extra: Any) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"phase": phase, "n": n, **extra}))
    os.replace(tmp, p)


def read_status(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None

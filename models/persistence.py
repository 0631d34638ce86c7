"""Authenticated model snapshots: HMAC-SHA256 over the pickled bytes, checked before unpickling.

Why: River models are Python objects and pickle is their only complete
serialisation, but unpickling runs code. A snapshot is therefore written as
``MAGIC | hmac(key, payload) | payload`` and :func:`loads` verifies the tag
(in constant time) before it unpickles anything; an unsigned, truncated or
tampered snapshot, or one signed with another key, is refused with
:class:`SnapshotError`. Keep the key secret (``STREAMSCORE_SNAPSHOT_KEY``, or
the per-state-directory key file the worker creates with mode 0600).

>>> blob = dumps({"w": [1.0, 2.0]}, b"k" * 32)
>>> loads(blob, b"k" * 32)
{'w': [1.0, 2.0]}
>>> loads(blob[:-1] + b"x", b"k" * 32)
Traceback (most recent call last):
...
models.persistence.SnapshotError: snapshot refused: authentication tag does not match (tampered, truncated, or signed with another key)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
from pathlib import Path
from typing import Any

MAGIC = b"SSNAP1"
_TAG = hashlib.sha256().digest_size


class SnapshotError(ValueError):
    """A snapshot is not authentic, or not a snapshot at all."""


def dumps(obj: Any, key: bytes) -> bytes:
    """Pickle ``obj`` and sign it with ``key``."""
    if len(key) < 16:
        raise ValueError("snapshot key must be at least 16 bytes")
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def loads(blob: bytes, key: bytes) -> Any:
    """Verify ``blob``'s tag with ``key``, then unpickle it; :class:`SnapshotError` if not authentic."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _TAG:
        raise SnapshotError("snapshot refused: not a signed streamscore snapshot")
    tag = blob[len(MAGIC):len(MAGIC) + _TAG]
    payload = blob[len(MAGIC) + _TAG:]
    if not hmac.compare_digest(tag, hmac.new(key, payload, hashlib.sha256).digest()):
        raise SnapshotError("snapshot refused: authentication tag does not match "
                            "(tampered, truncated, or signed with another key)")
    return pickle.loads(payload)  # noqa: S301 - authenticated above


def key_file(path: Path) -> bytes:
    """The key stored at ``path``, created (32 random bytes, mode 0600) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key

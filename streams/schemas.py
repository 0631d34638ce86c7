"""Wire formats: decoding and validating events and labels, encoding outputs.

Why hand-checked dicts and not model classes: decoding is on the hot path, and
``orjson.loads`` plus a few ``isinstance`` checks per field costs a few
microseconds, where building a pydantic or faust Record per event costs tens.
Every way a record can be bad maps to one :class:`Reason` code, which is what
the dead-letter record and the dlq metric carry.

>>> from streams.spec import load_spec
>>> codec = Codec(load_spec("elec2"))
>>> rec = codec.decode(b'{"event_id":"e1","ts":1,"period":0.1,"nswprice":0.2,"nswdemand":0.3,'
...                    b'"vicprice":0.4,"vicdemand":0.5,"transfer":0.6}', b"nsw")
>>> rec.kind, rec.event_id, rec.x["period"]
('event', 'e1', 0.1)
>>> codec.decode(b'{"event_id":"e1","ts":1}', b"nsw").reason
'missing_field'
"""

from __future__ import annotations

import base64
import math
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from streams.spec import PipelineSpec


class Reason(StrEnum):
    """Why a record went to the dead-letter topic."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    OVERSIZED = "oversized"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    BAD_LABEL = "bad_label"
    DUPLICATE_LABEL = "duplicate_label"
    OUT_OF_RANGE = "out_of_range"


#: Accepted event time, epoch ms: what a ``datetime`` can hold (years 1 to 9999).
#: Far outside it a timestamp is a bug upstream, and beyond int64 it cannot be
#: stored, windowed (int64 kernels) or published (orjson writes 64-bit ints only).
TS_MIN_MS = -62_135_596_800_000      # 0001-01-01T00:00:00Z
TS_MAX_MS = 253_402_300_799_999      # 9999-12-31T23:59:59.999Z
#: Largest accepted magnitude of a numeric feature. Finite is not enough: a
#: value near 1e160 overflows the squares of a running variance (standard
#: scaling) to inf, every later score becomes NaN, and NaN is published as
#: null. Nothing measured is anywhere near 1e100.
MAX_ABS_NUMBER = 1e100
_NUM_LO, _NUM_HI = -MAX_ABS_NUMBER, MAX_ABS_NUMBER


class Decoded(NamedTuple):
    """One decoded record: an event, a label, or an error (a NamedTuple: cheap to build)."""

    kind: str                       # "event" | "label" | "error"
    event_id: str = ""
    key: str = ""
    ts: int = 0
    x: dict[str, float | str] | None = None
    y: float | None = None
    doc: dict[str, Any] | None = None   # the decoded event (window keys live here)
    reason: str = ""
    detail: str = ""


#: ``_new(Decoded, fields)`` builds a Decoded from a tuple of all its fields in C; the
#: NamedTuple's own ``__new__`` is a Python function (~0.25 µs, per record on the hot path)
_new = tuple.__new__


def _err(reason: Reason, detail: str) -> Decoded:
    return Decoded("error", reason=reason.value, detail=detail)


class Codec:
    """Decodes events and labels of one pipeline; encodes predictions and dlq records."""

    def __init__(self, spec: PipelineSpec, max_bytes: int = 1_000_000) -> None:
        self.spec = spec
        self.max_bytes = max_bytes
        self._numeric = spec.numeric
        self._numeric_set = frozenset(spec.numeric)   # isdisjoint(doc): a label carries none of them
        self._categorical = spec.categorical
        self._optional = spec.optional
        self._entity_keys = tuple(dict.fromkeys(w.key for w in spec.windows))
        self._eid_f, self._ts_f, self._key_f, self._label_f = spec.event_id, spec.timestamp, spec.key, spec.label

    def decode(self, value: bytes | None, key: bytes | None) -> Decoded:
        """Decode one record of the events or labels topic."""
        if value is None:
            return _err(Reason.MALFORMED_JSON, "empty value (tombstone)")
        if len(value) > self.max_bytes:
            return _err(Reason.OVERSIZED, f"{len(value)} bytes > limit {self.max_bytes}")
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return _err(Reason.MALFORMED_JSON, str(exc))
        if not isinstance(doc, dict):
            return _err(Reason.NOT_AN_OBJECT, f"JSON {type(doc).__name__}, expected an object")
        return self.decode_doc(doc, key)

    def decode_doc(self, doc: dict[str, Any], key: bytes | None) -> Decoded:
        """Validate a decoded JSON object: a fast path for well-formed events,
        the checked path (:meth:`_decode_checked`) for anything else."""
        try:
            eid = doc[self._eid_f]
            ts = doc[self._ts_f]
        except KeyError:
            return self._decode_checked(doc, key)
        if type(ts) is not int or not TS_MIN_MS <= ts <= TS_MAX_MS:
            return self._decode_checked(doc, key)
        if self._label_f in doc:
            return self._decode_label(doc, key, eid, ts)
        t = type(eid)
        if t is str:
            if not eid:
                return self._decode_checked(doc, key)
        elif t is int:
            eid = str(eid)
        else:
            return self._decode_checked(doc, key)
        if self._key_f is not None:
            k = doc.get(self._key_f)
            t = type(k)
            if t is str:
                kstr = k
            elif t is int:
                kstr = str(k)
            else:
                return self._decode_checked(doc, key)
        else:
            kstr = key.decode("utf-8", "replace") if key else ""
        x: dict[str, float | str] = {}
        lo, hi = _NUM_LO, _NUM_HI
        for f in self._numeric:
            v = doc.get(f)
            t = type(v)
            if t is float and lo <= v <= hi:    # in range, so finite too (NaN fails)
                x[f] = v
            elif t is int and lo <= v <= hi:
                x[f] = float(v)
            else:
                return self._decode_checked(doc, key)
        for f in self._categorical:
            v = doc.get(f)
            if type(v) is str:
                x[f] = v
            else:
                return self._decode_checked(doc, key)
        for f in self._entity_keys:
            t = type(doc.get(f))
            if t is not str and t is not int:
                return self._decode_checked(doc, key)
        return _new(Decoded, ("event", eid, kstr, ts, x, None, doc, "", ""))

    def _decode_label(self, doc: dict[str, Any], key: bytes | None, eid: Any, ts: int) -> Decoded:
        """The fast path of a well-formed label (string id, int ts, finite number); the rest is checked."""
        y = doc[self._label_f]
        ty = type(y)
        if (type(eid) is not str or not eid or not (ty is int or (ty is float and math.isfinite(y)))
                or not self._numeric_set.isdisjoint(doc)):
            return self._decode_checked(doc, key)
        k = doc.get(self._key_f) if self._key_f is not None else None
        if k is None:
            kstr = key.decode("utf-8", "replace") if key else ""
        elif type(k) is str:
            kstr = k
        else:
            return self._decode_checked(doc, key)
        return _new(Decoded, ("label", eid, kstr, ts, None, float(y), None, "", ""))

    def _decode_checked(self, doc: dict[str, Any], key: bytes | None) -> Decoded:
        spec = self.spec
        eid = doc.get(spec.event_id)
        if eid is None or eid == "":     # an empty id would make every such event one event
            return _err(Reason.MISSING_FIELD, f"field {spec.event_id!r} is missing or empty")
        if not isinstance(eid, (str, int)) or isinstance(eid, bool):
            return _err(Reason.WRONG_TYPE, f"field {spec.event_id!r} must be a string or integer")
        eid = str(eid)
        ts = doc.get(spec.timestamp)
        if ts is None:
            return _err(Reason.MISSING_FIELD, f"field {spec.timestamp!r} is missing")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            return _err(Reason.WRONG_TYPE, f"field {spec.timestamp!r} must be epoch milliseconds")
        if not math.isfinite(ts):
            return _err(Reason.NOT_FINITE, f"field {spec.timestamp!r} is not finite")
        if not TS_MIN_MS <= ts <= TS_MAX_MS:
            return _err(Reason.OUT_OF_RANGE, f"field {spec.timestamp!r} is {ts!r}: outside epoch "
                                             "milliseconds of years 1 to 9999")
        is_label = spec.label in doc and not any(f in doc for f in self._numeric)
        k = doc.get(spec.key) if spec.key is not None else None
        if k is not None:
            if not isinstance(k, (str, int)) or isinstance(k, bool):  # str() of a deep list would recurse
                return _err(Reason.WRONG_TYPE, f"field {spec.key!r} must be a string or integer")
            kstr = str(k)
        elif spec.key is not None and not is_label:  # labels may omit it: the record key is the same
            return _err(Reason.MISSING_FIELD, f"field {spec.key!r} is missing")
        else:
            kstr = key.decode("utf-8", "replace") if key else ""
        if is_label:
            y = doc[spec.label]
            if not isinstance(y, (int, float)) or not math.isfinite(y):  # bool is an int: fine
                return _err(Reason.BAD_LABEL, f"label {_short(y)} is not a finite number")
            return Decoded("label", eid, kstr, int(ts), y=float(y))
        x: dict[str, float | str] = {}
        for f in self._numeric:
            v = doc.get(f)
            if v is None:
                if f in self._optional:
                    continue
                return _err(Reason.MISSING_FIELD, f"feature {f!r} is missing")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return _err(Reason.WRONG_TYPE, f"feature {f!r} must be a number, got {type(v).__name__}")
            if not math.isfinite(v):
                return _err(Reason.NOT_FINITE, f"feature {f!r} is {v}")
            if not -MAX_ABS_NUMBER <= v <= MAX_ABS_NUMBER:
                return _err(Reason.OUT_OF_RANGE, f"feature {f!r} is {v:.6g}: beyond +-{MAX_ABS_NUMBER:g}")
            x[f] = float(v)
        for f in self._categorical:
            v = doc.get(f)
            if v is None:
                if f in self._optional:
                    continue
                return _err(Reason.MISSING_FIELD, f"feature {f!r} is missing")
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                return _err(Reason.WRONG_TYPE, f"feature {f!r} must be a string, got {type(v).__name__}")
            x[f] = str(v)
        for f in self._entity_keys:
            v = doc.get(f)
            if v is None:
                return _err(Reason.MISSING_FIELD, f"window key {f!r} is missing")
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                return _err(Reason.WRONG_TYPE, f"window key {f!r} must be a string or integer")
        return Decoded("event", eid, kstr, int(ts), x=x, doc=doc)

    @staticmethod
    def dlq_record(reason: str, detail: str, *, topic: str, partition: int, offset: int,
                   key: bytes | None, value: bytes | None, event_id: str = "") -> bytes:
        """The dead-letter record: the reason plus the original bytes, lossless.

        Key and value are kept as text when they are valid UTF-8 and JSON
        escaping does not inflate them much, else as base64;
        ``key_encoding``/``value_encoding`` say which. Either way each takes at
        most 4/3 of the original bytes (plus 64), and ``detail`` is short, so a
        bad record of control characters (``\\u0001`` is 6 bytes in JSON) cannot
        become a dead letter many times its size.

        >>> orjson.loads(Codec.dlq_record("malformed_json", "x", topic="events", partition=0,
        ...              offset=7, key=b"k", value=bytes([255])))["value_encoding"]
        'base64'
        """
        k, kenc = _text_or_base64(key)
        v, venc = _text_or_base64(value)
        return orjson.dumps({
            "reason": reason,
            "detail": detail,
            "event_id": event_id,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": k,
            "key_encoding": kenc,
            "value": v,
            "value_encoding": venc,
        })


def _short(v: Any, limit: int = 80) -> str:
    """A short ``repr`` of a JSON value for a detail: never huge, never recursing into containers."""
    if isinstance(v, (list, dict)):
        return f"a JSON {'array' if isinstance(v, list) else 'object'}"
    r = repr(v[:limit] if isinstance(v, str) else v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _text_or_base64(b: bytes | None) -> tuple[str | None, str]:
    if b is None:
        return None, "utf-8"
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii"), "base64"
    # as JSON, '"' and '\\' take 2 bytes and control characters 6: beyond base64's 4/3, use base64
    if len(orjson.dumps(text)) - 2 <= len(b) * 4 // 3 + 64:
        return text, "utf-8"
    return base64.b64encode(b).decode("ascii"), "base64"

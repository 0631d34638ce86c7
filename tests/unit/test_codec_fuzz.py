"""Property tests of :class:`~streams.schemas.Codec` on the bundled pipelines: no input stops it.

For arbitrary bytes, and for JSON documents grown from valid events and
labels (fields dropped, replaced by random JSON values, extra fields, number
literals orjson refuses, truncation, deep nesting), ``decode``:

* never raises;
* returns an event or a label whose fields have the declared types, finite
  values within the accepted ranges, and that can be published (orjson) and
  windowed (int64 timestamps); or an error whose reason is a
  :class:`~streams.schemas.Reason` value and whose detail is short;
* agrees with the checked path: the fast path never accepts what the checked
  path would refuse or decode differently;

and the dead letter of an error is valid JSON, carries the reason, and gives
back the exact input key and value bytes, at most 4/3 of their size (plus a
little).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.schemas import MAX_ABS_NUMBER, TS_MAX_MS, TS_MIN_MS, Codec, Decoded, Reason
from streams.spec import load_spec

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CODECS = {name: Codec(load_spec(name)) for name in ("elec2", "online_retail")}

VALID: dict[str, list[dict[str, Any]]] = {
    "elec2": [
        {"event_id": "elec2-7", "ts": 831427200000, "period": 0.125, "nswprice": 0.05, "nswdemand": 0.4,
         "vicprice": 0.003, "vicdemand": 0.42, "transfer": 0.41},
        {"event_id": "elec2-7", "ts": 831427200000, "label": 1},
    ],
    "online_retail": [
        {"event_id": "536365-0", "ts": 1291191960000, "customer_id": "17850", "stock_code": "85123A",
         "invoice_no": "536365", "country": "United Kingdom", "quantity": 6, "unit_price": 2.55,
         "amount": 15.3, "hour": 8.0, "weekday": 2.0},
        {"event_id": "536365-0", "ts": 1291191960000, "label": 0},
        {"event_id": "536365-0", "ts": 1291191960000, "customer_id": 17850, "label": 1},
    ],
}
REASONS = {r.value for r in Reason}

# -- strategies -------------------------------------------------------------------------------
INT64 = st.integers(-(2**63), 2**64 - 1)          # what JSON numbers decode to (orjson: i64 and u64)
EDGE_NUMBERS = st.sampled_from([
    0, -1, 1, 2**53, 2**63 - 1, -(2**63), 2**64 - 1, TS_MAX_MS, TS_MAX_MS + 1, TS_MIN_MS, TS_MIN_MS - 1,
    0.5, -0.0, 1e15, 1e100, -1e100, 1.0000001e100, 1e154, 1e300, -1e300, 1.7976931348623157e308,
    float(TS_MAX_MS), TS_MAX_MS + 0.5, 5e-324,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), INT64, EDGE_NUMBERS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", "0", "1", "NaN", "true", "null", "\x00", "\ud7ff"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
#: literals spliced into an otherwise valid document: most are refused by orjson
BAD_LITERALS = st.sampled_from([b"NaN", b"-Infinity", b"Infinity", b"1e999", b"-1e400", b"01", b"+1",
                                b".5", b"0x10", b"'s'", b"undefined", b"[" * 1100 + b"]" * 1100,
                                # valid JSON, but nested nearly as deep as orjson allows (1024)
                                b"[" * 1020 + b"]" * 1020, b'{"a":' * 1000 + b"1" + b"}" * 1000,
                                b"1e300", b"-1e200", b"99999999999999999999", b"18446744073709551615"])


@st.composite
def documents(draw: st.DrawFn, pipeline: str) -> dict[str, Any]:
    """A valid event or label of ``pipeline`` with a few fields dropped, replaced or added.

    Few mutations per document, so that most documents get past the first
    checks and exercise the later ones (one bad field among valid ones).
    """
    spec = CODECS[pipeline].spec
    doc = dict(draw(st.sampled_from(VALID[pipeline])))
    names = [spec.event_id, spec.timestamp, spec.label, *spec.numeric, *spec.categorical,
             *([spec.key] if spec.key else []), *(w.key for w in spec.windows)]
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(set(doc) | set(names))) | st.text(max_size=6))
        if draw(st.integers(0, 3)) == 0:
            doc.pop(field, None)
        else:
            doc[field] = draw(JSON_VALUES)
    return doc


@st.composite
def document_bytes(draw: st.DrawFn, pipeline: str) -> bytes:
    """A mutated document as JSON, sometimes with a literal spliced in (refused by orjson, or
    valid but extreme), or cut short."""
    doc = draw(documents(pipeline))
    marker = "\x00splice\x00"
    if doc and draw(st.booleans()):
        doc[draw(st.sampled_from(sorted(doc)))] = marker
    raw = orjson.dumps(doc)
    raw = raw.replace(orjson.dumps(marker), draw(BAD_LITERALS))
    cut = draw(st.sampled_from(["whole", "whole", "whole", "cut", "append"]))
    if cut == "cut" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == "append":
        raw += draw(st.binary(max_size=8))
    return raw


KEYS = st.none() | st.binary(max_size=12) | st.sampled_from([b"nsw", b"17850", b"\xff\xfe", b""])


# -- checks ----------------------------------------------------------------------------------
def check_decoded(codec: Codec, d: Decoded) -> None:
    """The contract of a decode result (see the module docstring)."""
    spec = codec.spec
    assert isinstance(d, Decoded)
    assert d.kind in ("event", "label", "error")
    if d.kind == "error":
        assert d.reason in REASONS
        assert isinstance(d.detail, str) and 0 < len(d.detail) <= 300
        assert d.x is None and d.y is None
        return
    assert d.reason == ""
    assert type(d.event_id) is str and d.event_id
    assert type(d.key) is str
    assert type(d.ts) is int and TS_MIN_MS <= d.ts <= TS_MAX_MS
    np.int64(d.ts)                                      # the window kernels take int64
    # what the processor publishes and stores about a record must encode
    orjson.dumps({"event_id": d.event_id, "key": d.key, "ts": d.ts, "x": d.x, "y": d.y})
    if d.kind == "label":
        assert type(d.y) is float and np.isfinite(d.y)
        assert d.x is None
        return
    assert d.y is None and d.x is not None and d.doc is not None
    for f in spec.numeric:
        if f not in d.x:
            assert f in spec.optional
            continue
        v = d.x[f]
        assert type(v) is float and np.isfinite(v) and abs(v) <= MAX_ABS_NUMBER, (f, v)
    for f in spec.categorical:
        if f not in d.x:
            assert f in spec.optional
            continue
        assert type(d.x[f]) is str
    assert set(d.x) <= set(spec.numeric) | set(spec.categorical)
    for w in spec.windows:                              # window keys are str or int
        v = d.doc.get(w.key)
        assert type(v) in (str, int), (w.key, v)


def check_dead_letter(d: Decoded, key: bytes | None, value: bytes | None) -> None:
    raw = Codec.dlq_record(d.reason, d.detail, topic="events", partition=3, offset=41, key=key, value=value)
    doc = orjson.loads(raw)
    assert doc["reason"] == d.reason and doc["detail"] == d.detail
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("events", 3, 41)
    for field, orig in (("key", key), ("value", value)):
        got = doc[field]
        if orig is None:
            assert got is None
            continue
        enc = doc[f"{field}_encoding"]
        assert enc in ("utf-8", "base64")
        back = base64.b64decode(got, validate=True) if enc == "base64" else got.encode("utf-8")
        assert back == orig
    size = len(value or b"") + len(key or b"")
    assert len(raw) <= size * 4 // 3 + 128 + 512        # both encodings, plus the fixed fields


def agrees_with_checked_path(codec: Codec, doc: dict[str, Any], key: bytes | None) -> None:
    fast = codec.decode_doc(doc, key)
    checked = codec._decode_checked(doc, key)
    assert fast == checked, (fast, checked)


# -- properties --------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", sorted(CODECS))
@FUZZ
@given(value=st.none() | st.binary(max_size=300), key=KEYS)
def test_arbitrary_bytes(pipeline: str, value: bytes | None, key: bytes | None) -> None:
    codec = CODECS[pipeline]
    d = codec.decode(value, key)
    check_decoded(codec, d)
    if d.kind == "error":
        check_dead_letter(d, key, value)


@pytest.mark.parametrize("pipeline", sorted(CODECS))
@FUZZ
@given(data=st.data(), key=KEYS)
def test_mutated_documents(pipeline: str, data: st.DataObject, key: bytes | None) -> None:
    codec = CODECS[pipeline]
    raw = data.draw(document_bytes(pipeline))
    d = codec.decode(raw, key)
    check_decoded(codec, d)
    if d.kind == "error":
        check_dead_letter(d, key, raw)
    else:
        doc = orjson.loads(raw)
        agrees_with_checked_path(codec, doc, key)
        assert d.event_id == str(doc[codec.spec.event_id])


@pytest.mark.parametrize("pipeline", sorted(CODECS))
@FUZZ
@given(data=st.data(), key=KEYS)
def test_mutated_documents_via_decode_doc(pipeline: str, data: st.DataObject, key: bytes | None) -> None:
    """``decode_doc`` (public, for already-parsed objects) keeps the same contract."""
    codec = CODECS[pipeline]
    doc = data.draw(documents(pipeline))
    d = codec.decode_doc(doc, key)
    check_decoded(codec, d)
    if d.kind != "error":
        agrees_with_checked_path(codec, doc, key)


@pytest.mark.parametrize("pipeline", sorted(CODECS))
def test_unmutated_templates_decode(pipeline: str) -> None:
    """The fuzz starts from records that are valid (else it would only test the error paths)."""
    codec = CODECS[pipeline]
    kinds = [codec.decode(orjson.dumps(doc), b"k").kind for doc in VALID[pipeline]]
    assert kinds == ["event"] + ["label"] * (len(kinds) - 1)


@pytest.mark.parametrize("pipeline", sorted(CODECS))
def test_regressions(pipeline: str) -> None:
    """Inputs that once crashed a worker (fixed in streams/schemas.py); each must stay a dead letter."""
    codec = CODECS[pipeline]
    event = orjson.dumps(VALID[pipeline][0])
    cases = {
        # ts that became an int beyond 64 bits: orjson.dumps of the prediction raised
        event.replace(b'"ts":', b'"ts":1e300,"x":', 1): Reason.OUT_OF_RANGE,
        event.replace(b'"ts":', b'"ts":99999999999999999999,"x":', 1): Reason.OUT_OF_RANGE,
        # a finite feature whose square overflows: NaN scores, then a TypeError at the next label
        orjson.dumps({**VALID[pipeline][0], codec.spec.numeric[0]: 1e300}): Reason.OUT_OF_RANGE,
        # repr() of a deeply nested label in the detail: RecursionError
        b'{"event_id":"e","ts":1,"label":' + b"[" * 1020 + b"]" * 1020 + b"}": Reason.BAD_LABEL,
        # an empty event id: every such event would have been one event
        orjson.dumps({**VALID[pipeline][0], "event_id": ""}): Reason.MISSING_FIELD,
    }
    if codec.spec.key is not None:   # str() of a deeply nested key field: RecursionError
        cases[b'{"event_id":"e","ts":1,"label":1,"' + codec.spec.key.encode() + b'":'
              + b"[" * 1020 + b"]" * 1020 + b"}"] = Reason.WRONG_TYPE
    for raw, reason in cases.items():
        d = codec.decode(raw, b"k")
        assert (d.kind, d.reason) == ("error", reason.value), (raw[:80], d)
        check_dead_letter(d, b"k", raw)


def test_dead_letter_of_control_characters_stays_small() -> None:
    """As JSON text a control character takes 6 bytes: such values go as base64 (4/3)."""
    value = b"\x01" * 30_000
    doc = orjson.loads(Codec.dlq_record("malformed_json", "x", topic="events", partition=0, offset=0,
                                        key=None, value=value))
    assert doc["value_encoding"] == "base64" and base64.b64decode(doc["value"]) == value
    text = b'{"event_id": "e", "ts": oops'                 # ordinary text stays readable
    doc = orjson.loads(Codec.dlq_record("malformed_json", "x", topic="events", partition=0, offset=0,
                                        key=None, value=text))
    assert doc["value_encoding"] == "utf-8" and doc["value"] == text.decode()

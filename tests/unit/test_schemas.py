"""Unit tests for streams.schemas: decoding/validating events and labels, dlq records.

No broker needed. Every bad input must map to exactly one documented
:class:`~streams.schemas.Reason`.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest

from streams.schemas import Codec, Decoded, Reason
from streams.spec import load_spec

ELEC2_EVENT: dict[str, Any] = {
    "event_id": "elec2-7", "ts": 831427200000, "period": 0.125, "nswprice": 0.05, "nswdemand": 0.4,
    "vicprice": 0.003, "vicdemand": 0.42, "transfer": 0.41,
}
RETAIL_EVENT: dict[str, Any] = {
    "event_id": "536365-0", "ts": 1291191960000, "customer_id": "17850", "stock_code": "85123A",
    "invoice_no": "536365", "country": "United Kingdom", "quantity": 6, "unit_price": 2.55,
    "amount": 15.3, "hour": 8.0, "weekday": 2.0,
}
EVENTS = {"elec2": ELEC2_EVENT, "online_retail": RETAIL_EVENT}


@pytest.fixture(scope="module", params=["elec2", "online_retail"])
def pipeline(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def codec(pipeline: str) -> Codec:
    return Codec(load_spec(pipeline))


@pytest.fixture
def event(pipeline: str) -> dict[str, Any]:
    return dict(EVENTS[pipeline])


def enc(doc: Any) -> bytes:
    return orjson.dumps(doc)


def assert_error(d: Decoded, reason: Reason) -> None:
    assert d.kind == "error", d
    assert d.reason == reason.value, d
    assert d.detail, "an error must carry a human-readable detail"
    assert d.x is None and d.y is None


# -- valid events ----------------------------------------------------------------
def test_valid_event_decodes_typed_features(codec: Codec, event: dict[str, Any]) -> None:
    spec = codec.spec
    d = codec.decode(enc(event), b"kafka-key")
    assert d.kind == "event"
    assert d.event_id == event["event_id"]
    assert d.ts == event["ts"]
    assert d.reason == ""
    assert d.x is not None
    assert set(d.x) == set(spec.numeric) | set(spec.categorical)
    for f in spec.numeric:
        assert type(d.x[f]) is float, f          # ints (quantity=6) are widened to float
        assert d.x[f] == float(event[f])
    for f in spec.categorical:
        assert type(d.x[f]) is str
        assert d.x[f] == str(event[f])
    # extra fields (stock_code, invoice_no, the entity field) are not features
    assert "stock_code" not in d.x and "customer_id" not in d.x


def test_key_comes_from_record_key_or_key_field() -> None:
    elec2, retail = Codec(load_spec("elec2")), Codec(load_spec("online_retail"))
    assert elec2.decode(enc(ELEC2_EVENT), b"nsw").key == "nsw"
    assert elec2.decode(enc(ELEC2_EVENT), None).key == ""
    # online_retail names a key field: the value's customer_id wins over the Kafka key
    assert retail.decode(enc(RETAIL_EVENT), b"other").key == "17850"
    assert retail.decode(enc({**RETAIL_EVENT, "customer_id": 17850}), None).key == "17850"


def test_integer_event_id_is_normalised_to_str(codec: Codec, event: dict[str, Any]) -> None:
    d = codec.decode(enc({**event, "event_id": 42}), b"k")
    assert d.kind == "event" and d.event_id == "42"


def test_categorical_int_is_stringified() -> None:
    c = Codec(load_spec("online_retail"))
    d = c.decode(enc({**RETAIL_EVENT, "country": 7}), None)
    assert d.kind == "event" and d.x is not None and d.x["country"] == "7"


def test_float_ts_is_truncated_to_int_ms(codec: Codec, event: dict[str, Any]) -> None:
    d = codec.decode(enc({**event, "ts": 1000.9}), b"k")
    assert d.kind == "event" and d.ts == 1000 and type(d.ts) is int


# -- labels ----------------------------------------------------------------------
def test_inline_label_record_elec2() -> None:
    c = Codec(load_spec("elec2"))
    d = c.decode(enc({"event_id": "elec2-7", "ts": 5, "label": 1}), b"nsw")
    assert d.kind == "label"
    assert (d.event_id, d.ts, d.y, d.key) == ("elec2-7", 5, 1.0, "nsw")
    assert type(d.y) is float and d.x is None
    d0 = c.decode(enc({"event_id": "elec2-8", "ts": 5, "label": 0}), b"nsw")
    assert d0.kind == "label" and d0.y == 0.0
    assert c.decode(enc({"event_id": "e", "ts": 5, "label": True}), b"nsw").y == 1.0


def test_label_record_online_retail_without_key_field() -> None:
    c = Codec(load_spec("online_retail"))
    d = c.decode(enc({"event_id": "536488-884", "ts": 1291207080000, "label": 1}), b"17897")
    # regression: the key-field check used to run before label detection (missing_field)
    assert d.kind == "label", d
    assert (d.event_id, d.y, d.key) == ("536488-884", 1.0, "17897")   # key from the record key


def test_label_record_online_retail_with_key_field() -> None:
    c = Codec(load_spec("online_retail"))
    d = c.decode(enc({"event_id": "536488-884", "ts": 3, "customer_id": "17897", "label": 0}), None)
    assert d.kind == "label" and d.y == 0.0 and d.key == "17897"


def test_event_carrying_a_label_field_is_still_an_event(codec: Codec, event: dict[str, Any]) -> None:
    d = codec.decode(enc({**event, "label": 1}), b"k")
    assert d.kind == "event"


@pytest.mark.parametrize("bad", ["yes", None, [1], {"v": 1}])
def test_bad_label_values(bad: Any) -> None:
    c = Codec(load_spec("elec2"))
    d = c.decode(enc({"event_id": "e", "ts": 1, "label": bad}), b"nsw")
    assert_error(d, Reason.BAD_LABEL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_label_via_decode_doc(bad: float) -> None:
    c = Codec(load_spec("elec2"))
    assert_error(c.decode_doc({"event_id": "e", "ts": 1, "label": bad}, b"nsw"), Reason.BAD_LABEL)


# -- bad input: one documented reason each ----------------------------------------
@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"event_id": "e",}', b"\xff\xfe{}",
                                 b'{"event_id":"e","ts":1,"period":NaN}',
                                 b'{"event_id":"e","ts":1,"period":Infinity}'])
def test_malformed_json(codec: Codec, raw: bytes) -> None:
    assert_error(codec.decode(raw, b"k"), Reason.MALFORMED_JSON)


def test_tombstone_is_malformed(codec: Codec) -> None:
    assert_error(codec.decode(None, b"k"), Reason.MALFORMED_JSON)


def test_huge_float_literal_is_rejected_by_orjson_as_malformed(codec: Codec, event: dict[str, Any]) -> None:
    # orjson refuses to parse 1e400 (it would be inf): it never reaches the finiteness check
    raw = enc(event).replace(b'"ts":', b'"ts":1e400,"x_ts":', 1)
    assert_error(codec.decode(raw, b"k"), Reason.MALFORMED_JSON)
    f = (codec.spec.numeric[0]).encode()
    raw = re.sub(b'"' + f + b'":[^,}]+', b'"' + f + b'":-1e400', enc(event))
    assert b"-1e400" in raw
    assert_error(codec.decode(raw, b"k"), Reason.MALFORMED_JSON)


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b"3", b"3.5", b'"s"', b"null", b"true"])
def test_not_an_object(codec: Codec, raw: bytes) -> None:
    assert_error(codec.decode(raw, b"k"), Reason.NOT_AN_OBJECT)


def test_oversized(event: dict[str, Any], pipeline: str) -> None:
    raw = enc(event)
    small = Codec(load_spec(pipeline), max_bytes=len(raw) - 1)
    assert_error(small.decode(raw, b"k"), Reason.OVERSIZED)
    exact = Codec(load_spec(pipeline), max_bytes=len(raw))
    assert exact.decode(raw, b"k").kind == "event"
    # size is checked before parsing: oversized garbage is oversized, not malformed
    assert_error(small.decode(b"{" * (len(raw) + 10), b"k"), Reason.OVERSIZED)


@pytest.mark.parametrize("field", ["event_id", "ts"])
def test_missing_id_or_ts(codec: Codec, event: dict[str, Any], field: str) -> None:
    del event[field]
    assert_error(codec.decode(enc(event), b"k"), Reason.MISSING_FIELD)
    event2 = {**EVENTS[codec.spec.name], field: None}
    assert_error(codec.decode(enc(event2), b"k"), Reason.MISSING_FIELD)


def test_missing_key_field_online_retail() -> None:
    c = Codec(load_spec("online_retail"))
    ev = dict(RETAIL_EVENT)
    del ev["customer_id"]
    d = c.decode(enc(ev), b"17850")
    assert_error(d, Reason.MISSING_FIELD)
    assert "customer_id" in d.detail


def test_missing_each_feature(codec: Codec, event: dict[str, Any]) -> None:
    for f in codec.spec.numeric + codec.spec.categorical:
        ev = {k: v for k, v in event.items() if k != f}
        d = codec.decode(enc(ev), b"k")
        assert_error(d, Reason.MISSING_FIELD)
        assert repr(f) in d.detail


@pytest.mark.parametrize("bad", ["0.5", True, False, [0.5], {"v": 0.5}])
def test_wrong_type_numeric_feature(codec: Codec, event: dict[str, Any], bad: Any) -> None:
    f = codec.spec.numeric[-1]
    d = codec.decode(enc({**event, f: bad}), b"k")
    assert_error(d, Reason.WRONG_TYPE)
    assert repr(f) in d.detail


@pytest.mark.parametrize("bad", [True, 1.5, [], {"c": "UK"}])
def test_wrong_type_categorical_feature(bad: Any) -> None:
    c = Codec(load_spec("online_retail"))
    assert_error(c.decode(enc({**RETAIL_EVENT, "country": bad}), None), Reason.WRONG_TYPE)


@pytest.mark.parametrize("bad", [{"id": 1}, [1], 1.5, True])
def test_wrong_type_event_id(codec: Codec, event: dict[str, Any], bad: Any) -> None:
    assert_error(codec.decode(enc({**event, "event_id": bad}), b"k"), Reason.WRONG_TYPE)


@pytest.mark.parametrize("bad", ["2020-01-01", True, [1], {"ms": 1}])
def test_wrong_type_ts(codec: Codec, event: dict[str, Any], bad: Any) -> None:
    assert_error(codec.decode(enc({**event, "ts": bad}), b"k"), Reason.WRONG_TYPE)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_feature_and_ts_via_decode_doc(codec: Codec, event: dict[str, Any], bad: float) -> None:
    # not reachable through JSON bytes (orjson rejects NaN/Infinity/1e400), but decode_doc is public
    f = codec.spec.numeric[0]
    assert_error(codec.decode_doc({**event, f: bad}, b"k"), Reason.NOT_FINITE)
    assert_error(codec.decode_doc({**event, "ts": bad}, b"k"), Reason.NOT_FINITE)


def test_first_failing_check_wins(codec: Codec) -> None:
    # missing event_id is reported even when everything else is wrong too
    assert_error(codec.decode(enc({"ts": "x", "period": "y"}), b"k"), Reason.MISSING_FIELD)
    assert "event_id" in codec.decode(enc({"ts": "x"}), b"k").detail


def test_empty_object_is_missing_field(codec: Codec) -> None:
    assert_error(codec.decode(b"{}", b"k"), Reason.MISSING_FIELD)


# -- optional features -------------------------------------------------------------
def _with_optional(pipeline: str, optional: set[str]) -> Codec:
    spec = load_spec(pipeline)
    from dataclasses import replace

    return Codec(replace(spec, optional=frozenset(optional)))


def test_optional_features_may_be_absent() -> None:
    c = _with_optional("online_retail", {"hour", "country"})
    ev = {k: v for k, v in RETAIL_EVENT.items() if k not in {"hour", "country"}}
    d = c.decode(enc(ev), None)
    assert d.kind == "event" and d.x is not None
    assert "hour" not in d.x and "country" not in d.x
    assert d.x["quantity"] == 6.0
    # null is "absent" too
    d2 = c.decode(enc({**RETAIL_EVENT, "hour": None}), None)
    assert d2.kind == "event" and d2.x is not None and "hour" not in d2.x
    # present optional features are still validated
    assert_error(c.decode(enc({**RETAIL_EVENT, "hour": "8"}), None), Reason.WRONG_TYPE)
    # non-optional features are still required
    ev3 = {k: v for k, v in RETAIL_EVENT.items() if k != "amount"}
    assert_error(c.decode(enc(ev3), None), Reason.MISSING_FIELD)


# -- dead-letter records ----------------------------------------------------------
def test_dlq_record_fields_and_utf8_value_roundtrip() -> None:
    value = '{"event_id": "é✓", "ts": oops'.encode()
    raw = Codec.dlq_record("malformed_json", "bad", topic="events", partition=3, offset=99,
                           key=b"nsw", value=value, event_id="e1")
    doc = orjson.loads(raw)
    assert doc == {"reason": "malformed_json", "detail": "bad", "event_id": "e1", "topic": "events",
                   "partition": 3, "offset": 99, "key": "nsw", "key_encoding": "utf-8",
                   "value": value.decode(), "value_encoding": "utf-8"}
    assert doc["value"].encode("utf-8") == value


def test_dlq_record_non_utf8_value_recoverable() -> None:
    value = b'{"a":"\xff\xfe\x80", "b": 1}\x00\x01'
    raw = Codec.dlq_record(Reason.MALFORMED_JSON.value, "x", topic="events", partition=0, offset=1,
                           key=None, value=value)
    doc = orjson.loads(raw)
    assert doc["reason"] == "malformed_json"
    assert doc["key"] is None
    assert doc["value_encoding"] == "base64"
    assert base64.b64decode(doc["value"]) == value


def test_dlq_record_none_value() -> None:
    doc = orjson.loads(Codec.dlq_record("malformed_json", "tombstone", topic="labels", partition=1,
                                        offset=0, key=b"k", value=None))
    assert doc["value"] is None and doc["key"] == "k" and doc["topic"] == "labels"


def test_dlq_record_reason_from_decode_roundtrip(codec: Codec) -> None:
    value = b"[1,2]"
    d = codec.decode(value, b"k")
    doc = orjson.loads(Codec.dlq_record(d.reason, d.detail, topic="events", partition=0, offset=5,
                                        key=b"k", value=value))
    assert doc["reason"] == "not_an_object" and doc["detail"] == d.detail
    assert doc["value"].encode() == value


def test_dlq_record_value_is_injective() -> None:
    invalid = b'{"a":"\xff"}'
    literal = b'{"a":"\\xff"}'
    assert invalid != literal
    kw = dict(topic="events", partition=0, offset=1, key=None)
    assert (Codec.dlq_record("malformed_json", "", value=invalid, **kw)
            != Codec.dlq_record("malformed_json", "", value=literal, **kw))


def test_dlq_record_non_utf8_key_recoverable() -> None:
    kw = dict(topic="events", partition=0, offset=1, value=b"{}")
    a = orjson.loads(Codec.dlq_record("malformed_json", "", key=b"\xff", **kw))["key"]
    b = orjson.loads(Codec.dlq_record("malformed_json", "", key=b"\xfe", **kw))["key"]
    assert a != b

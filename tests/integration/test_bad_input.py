"""Bad input against a real worker process on the real broker: one stream, one worker.

One stream interleaves valid events with one record per bad-input case (the
``CASES`` table), then valid edge cases, redeliveries, and 300 seeded random
records (bytes and mutated JSON) whose fate the Codec and the dedupe rules
decide. Acceptance (issue 7): every bad case yields exactly one dlq record
carrying its documented :class:`~streams.schemas.Reason` and the original key
and value bytes (lossless); every valid event around them gets exactly one
prediction; the worker never crashes and its ``/metrics`` counts the dead
letters by reason.

The worker is started once for the whole table (a consumer-group join takes
seconds): the module fixture ``run`` produces the stream, collects every output
and the worker's metrics, stops the worker, and the tests below check one case
each. Pipeline: elec2 (labels inline on the events topic, entity = Kafka key).

Decisions this suite pins down (see docs/reliability.md, "Bad input"):

* a tombstone (null value) is ``malformed_json``: input topics are not
  compacted, so a null value means nothing and is dead-lettered like b"";
* a label for an event never seen waits in state ("pending", no output); a
  second label for the same event, before or after its event, is
  ``duplicate_label``;
* a redelivered event id gets the stored prediction again, byte for byte,
  even when the new record's fields differ: not a dead letter;
* a record key that is not UTF-8 does not make a valid event bad: the
  prediction keeps the key bytes as its Kafka key (its ``key`` field holds
  them decoded with replacement characters);
* an event time before 1970 (negative epoch ms) is valid; beyond years
  1..9999 it is ``out_of_range``.
"""

from __future__ import annotations

import base64
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.broker import create_topics, free_port
from streams.demo import all_topics, start_worker, stop_worker, wait_ready
from streams.metrics import scrape, total
from streams.schemas import Codec, Reason
from streams.settings import Settings
from streams.spec import load_spec

pytestmark = pytest.mark.integration

#: The worker's max_event_bytes in the table run (the default, 1,000,000, is
#: covered by test_oversized_record_with_default_limits_does_not_stop_the_worker).
MAX_EVENT_BYTES = 700_000
FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
KEY = b"nsw"


def event(eid: str, i: int, **over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"event_id": eid, "ts": 1_000 * i,
                         **{f: round(0.1 * (i % 7) + 0.01 * k, 4) for k, f in enumerate(FEATURES)}}
    v.update(over)
    return v


def enc(doc: Any) -> bytes:
    return orjson.dumps(doc)


def without(doc: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != field}


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


GOOD = event("g", 1)
GOOD_RAW = enc(GOOD)


@dataclass(frozen=True)
class Case:
    """One bad record: what is produced where, and the reason its dead letter must carry."""

    name: str
    value: bytes | None
    reason: Reason
    key: bytes | None = KEY
    topic: str = "events"             # logical topic
    before: tuple[tuple[str, bytes], ...] = ()   # (topic, value) records produced just before it


def _replace_number(raw: bytes, field: str, literal: bytes) -> bytes:
    doc = orjson.loads(raw)
    marker = b"__N__"
    doc[field] = marker.decode()
    out = orjson.dumps(doc).replace(b'"' + marker + b'"', literal)
    assert literal in out
    return out


CASES: list[Case] = [
    # -- not JSON at all (orjson refuses): malformed_json --------------------------------------
    Case("not_json", b"not json", Reason.MALFORMED_JSON),
    Case("truncated_json", GOOD_RAW[:-7], Reason.MALFORMED_JSON),
    Case("invalid_utf8", b'{"event_id":"bad-\xff\xfe","ts":1}', Reason.MALFORMED_JSON),
    Case("utf8_bom_prefix", b"\xef\xbb\xbf" + GOOD_RAW, Reason.MALFORMED_JSON),
    Case("lone_surrogate_escape", b'{"event_id":"\\ud800","ts":1}', Reason.MALFORMED_JSON),
    Case("whitespace_only", b" \n\t ", Reason.MALFORMED_JSON),
    Case("empty_value", b"", Reason.MALFORMED_JSON),
    Case("tombstone_null_value", None, Reason.MALFORMED_JSON),
    Case("nan_literal", _replace_number(GOOD_RAW, "nswprice", b"NaN"), Reason.MALFORMED_JSON),
    Case("infinity_literal", _replace_number(GOOD_RAW, "nswprice", b"-Infinity"), Reason.MALFORMED_JSON),
    Case("huge_literal_1e999", _replace_number(GOOD_RAW, "nswprice", b"1e999"), Reason.MALFORMED_JSON),
    Case("deep_array_5000", nested(5000), Reason.MALFORMED_JSON),
    Case("deep_feature_over_depth_limit", _replace_number(GOOD_RAW, "period", nested(1100)),
         Reason.MALFORMED_JSON),
    # 600 kB of control characters (valid UTF-8, not JSON): as JSON text each is 6 bytes, so before
    # the dead letter chose base64 this became a 3.6 MB record the worker could not publish (crash)
    Case("control_chars_600k", b"\x01" * 600_000, Reason.MALFORMED_JSON),
    Case("non_utf8_key_and_bad_value", b"{oops", Reason.MALFORMED_JSON, key=b"\xff\x00k\x80"),
    Case("null_key_and_bad_value", b"[oops", Reason.MALFORMED_JSON, key=None),
    # -- JSON, but not an object: not_an_object -------------------------------------------------
    Case("json_array", b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
    Case("json_string", b'"an event"', Reason.NOT_AN_OBJECT),
    Case("json_number", b"42", Reason.NOT_AN_OBJECT),
    Case("json_null", b"null", Reason.NOT_AN_OBJECT),
    Case("json_true", b"true", Reason.NOT_AN_OBJECT),
    # -- over max_event_bytes (checked before parsing): oversized -------------------------------
    Case("oversized_valid_event", enc(event("big", 2, pad="x" * MAX_EVENT_BYTES)), Reason.OVERSIZED),
    Case("oversized_binary", bytes(range(256)) * (MAX_EVENT_BYTES // 256 + 1), Reason.OVERSIZED),
    # -- fields missing (null counts as missing; an empty event id too): missing_field ----------
    Case("missing_event_id", enc(without(GOOD, "event_id")), Reason.MISSING_FIELD),
    Case("empty_event_id", enc({**GOOD, "event_id": ""}), Reason.MISSING_FIELD),
    Case("missing_ts", enc(without(GOOD, "ts")), Reason.MISSING_FIELD),
    Case("null_ts", enc({**GOOD, "ts": None}), Reason.MISSING_FIELD),
    Case("missing_feature", enc(without(event("mf", 3), "nswprice")), Reason.MISSING_FIELD),
    Case("null_feature", enc(event("nf", 3, vicdemand=None)), Reason.MISSING_FIELD),
    Case("empty_object", b"{}", Reason.MISSING_FIELD),
    # -- wrong JSON types: wrong_type ----------------------------------------------------------
    Case("string_feature", enc(event("sf", 4, nswdemand="high")), Reason.WRONG_TYPE),
    Case("bool_feature", enc(event("bf", 4, transfer=True)), Reason.WRONG_TYPE),
    Case("object_feature", enc(event("of", 4, period={"v": 0.5})), Reason.WRONG_TYPE),
    Case("array_feature", enc(event("af", 4, period=[0.5])), Reason.WRONG_TYPE),
    Case("nested_feature_depth_200", _replace_number(GOOD_RAW, "period", nested(200)), Reason.WRONG_TYPE),
    Case("string_ts", enc(event("st", 4, ts="2020-01-01T00:00:00Z")), Reason.WRONG_TYPE),
    Case("bool_ts", enc(event("bt", 4, ts=True)), Reason.WRONG_TYPE),
    Case("bool_event_id", enc(event("x", 4, event_id=True)), Reason.WRONG_TYPE),
    Case("float_event_id", enc(event("x", 4, event_id=1.5)), Reason.WRONG_TYPE),
    Case("object_event_id", enc(event("x", 4, event_id={"id": 1})), Reason.WRONG_TYPE),
    # -- numbers the pipeline cannot hold: out_of_range (each crashed the worker before) --------
    Case("ts_1e300", _replace_number(enc(event("t1", 5)), "ts", b"1e300"), Reason.OUT_OF_RANGE),
    Case("ts_beyond_uint64", _replace_number(enc(event("t2", 5)), "ts", b"99999999999999999999"),
         Reason.OUT_OF_RANGE),
    Case("ts_far_future", enc(event("t3", 5, ts=10**15)), Reason.OUT_OF_RANGE),
    Case("ts_far_past", enc(event("t4", 5, ts=-(10**15))), Reason.OUT_OF_RANGE),
    Case("feature_1e300", enc(event("f1", 5, nswprice=1e300)), Reason.OUT_OF_RANGE),
    Case("feature_minus_1e200", enc(event("f2", 5, vicprice=-1e200)), Reason.OUT_OF_RANGE),
    # -- labels --------------------------------------------------------------------------------
    Case("inline_label_string", enc({"event_id": "g", "ts": 1, "label": "yes"}), Reason.BAD_LABEL),
    Case("inline_label_null", enc({"event_id": "g", "ts": 1, "label": None}), Reason.BAD_LABEL),
    Case("inline_label_object", enc({"event_id": "g", "ts": 1, "label": {"y": 1}}), Reason.BAD_LABEL),
    Case("inline_label_deep_array",  # the detail used repr(): RecursionError, a crash, before
         b'{"event_id":"g","ts":1,"label":' + nested(1020) + b"}", Reason.BAD_LABEL),
    Case("inline_label_twice", enc({"event_id": "dl-inline", "ts": 9, "label": 1}), Reason.DUPLICATE_LABEL,
         before=(("events", enc(event("dl-inline", 9))),
                 ("events", enc({"event_id": "dl-inline", "ts": 9, "label": 0})))),
    Case("labels_topic_not_json", b"label?", Reason.MALFORMED_JSON, topic="labels"),
    Case("labels_topic_bad_value", enc({"event_id": "lb", "ts": 1, "label": "1"}), Reason.BAD_LABEL,
         topic="labels", before=(("events", enc(event("lb", 10))),)),
    Case("labels_topic_missing_event_id", enc({"ts": 1, "label": 1}), Reason.MISSING_FIELD, topic="labels"),
    Case("labels_topic_label_twice", enc({"event_id": "dl-topic", "ts": 11, "label": 1}),
         Reason.DUPLICATE_LABEL, topic="labels",
         before=(("events", enc(event("dl-topic", 11))),
                 ("labels", enc({"event_id": "dl-topic", "ts": 11, "label": 1})))),
    Case("labels_topic_unseen_event_twice", enc({"event_id": "never-seen", "ts": 12, "label": 0}),
         Reason.DUPLICATE_LABEL, topic="labels",
         before=(("labels", enc({"event_id": "never-seen", "ts": 12, "label": 1})),)),
]
assert len({c.name for c in CASES}) == len(CASES)

#: Valid records that are no dead letter: (name, topic, key, value).
GHOST_LABEL = enc({"event_id": "ghost", "ts": 13, "label": 1})    # never-seen event: pending, no output
NON_UTF8_KEY = b"\xff\xfe-nsw"
SPECIAL_VALID: list[tuple[str, str, bytes | None, bytes]] = [
    ("negative_ts_event", "events", KEY, enc(event("neg-ts", 14, ts=-86_400_000))),
    ("non_utf8_key_event", "events", NON_UTF8_KEY, enc(event("bin-key", 15))),
    ("null_key_event", "events", None, enc(event("no-key", 16))),
    ("int_event_id", "events", KEY, enc(event("x", 17, event_id=424242))),
    ("extra_fields_event", "events", KEY, enc(event("extra", 18, note={"free": ["form"]}, label_hint=None))),
    ("label_on_labels_topic", "labels", KEY, enc({"event_id": "v3", "ts": 3, "label": 1})),
    ("label_for_unseen_event", "labels", KEY, GHOST_LABEL),
]
#: Redeliveries: answered with the stored prediction, byte for byte.
DUPLICATE_EVENTS: list[tuple[str, bytes]] = [
    ("v0", enc(event("v0", 0))),                                      # the very same bytes
    ("v1", enc(event("v1", 1, nswprice=0.99, transfer=0.01))),        # same id, other fields
]

# -- seeded random records (issue 7: random byte strings and random JSON at the worker) ----------
#: What each must become is decided by the Codec (fuzzed on its own in
#: tests/unit/test_codec_fuzz.py) and the dedupe rules; the worker must agree, record by record.
RANDOM_SEED = 20240607
N_RANDOM = 300
POOL: list[Any] = [None, True, False, 0, -1, 1, 7, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0, 1e100, 1.5e100,
                   1e300, -1e300, 253_402_300_799_999, 253_402_300_800_000, "", "0", "7", "x", "\x00", "é✓",
                   [], {}, [1, "a"], {"a": {"b": [None]}}, "NaN"]
SPLICE: list[bytes] = [b"NaN", b"Infinity", b"1e999", b"01", b"[" * 1100 + b"]" * 1100,
                       b"[" * 1020 + b"]" * 1020, b"99999999999999999999"]


def _random_record(rng: random.Random, n: int) -> tuple[bytes | None, bytes | None]:
    key = rng.choice([KEY, KEY, None, b"\xff\xfe", bytes(rng.randrange(256) for _ in range(rng.randrange(6)))])
    if rng.random() < 0.25:                                     # bytes
        return key, bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
    if rng.random() < 0.65:          # an event (sometimes reusing an id), or a label for some random event
        doc: dict[str, Any] = event(f"rnd-{n if rng.random() < 0.8 else rng.randrange(n + 1)}", 1_000 + n)
    else:
        doc = {"event_id": f"rnd-{rng.randrange(n + 1)}", "ts": n, "label": rng.choice([0, 1])}
    for _ in range(rng.randrange(4)):
        field = rng.choice([*doc, "event_id", "ts", "label", *FEATURES, "extra"])
        if rng.random() < 0.25:
            doc.pop(field, None)
        else:
            doc[field] = rng.choice(POOL)
    raw = enc(doc)
    r = rng.random()
    if r < 0.1:
        raw = raw[:-1] + (b"," if doc else b"") + b'"zz":' + rng.choice(SPLICE) + b"}"
    elif r < 0.2:
        raw = raw[: rng.randrange(len(raw))]
    return key, raw


@dataclass
class Sent:
    """One produced record, what it must become, and (once delivered) its offset."""

    name: str
    topic: str
    key: bytes | None
    value: bytes | None
    expect: str | None = None       # a Reason value (one dead letter), "prediction", "duplicate", or None
    event_id: str = ""              # of an expected prediction
    offset: int = -1


@dataclass
class Outcome:
    sent: list[Sent]
    dlq: dict[tuple[str, int], list[tuple[bytes | None, dict[str, Any]]]]   # (topic, offset) -> records
    predictions: dict[str, list[tuple[bytes | None, bytes]]]               # event id -> (key, raw value)
    metrics: dict[str, list[tuple[dict[str, str], float]]]
    alive_at_end: bool
    exit_code: int
    log: str

    def expected(self, what: str) -> list[Sent]:
        return [r for r in self.sent if r.expect == what]


def _stream() -> list[Sent]:
    """Valid events v0, v1, ... with one bad case (and its set-up records) between each two;
    then valid edge cases, redeliveries, and the seeded random records."""
    sent: list[Sent] = []
    i = 0

    def valid_event() -> None:
        nonlocal i
        sent.append(Sent(f"v{i}", "events", KEY, enc(event(f"v{i}", i)), "prediction", f"v{i}"))
        i += 1

    def valid(name: str, topic: str, key: bytes | None, value: bytes) -> None:
        doc = orjson.loads(value)
        if topic == "events" and "label" not in doc:
            sent.append(Sent(name, topic, key, value, "prediction", str(doc["event_id"])))
        else:
            sent.append(Sent(name, topic, key, value))

    for case in CASES:
        valid_event()
        for n, (topic, value) in enumerate(case.before):
            valid(f"{case.name}/before{n}", topic, KEY, value)
        sent.append(Sent(case.name, case.topic, case.key, case.value, case.reason.value))
    for name, topic, key, value in SPECIAL_VALID:
        valid_event()
        valid(name, topic, key, value)
    valid_event()
    for eid, value in DUPLICATE_EVENTS:
        sent.append(Sent(f"redelivered/{eid}", "events", KEY, value, "duplicate", eid))
    valid_event()

    # the random records: the Codec's verdict, then the processor's dedupe rules, in offset order
    table_ids = {r.event_id for r in sent if r.event_id} | {"g", "lb", "dl-inline", "dl-topic", "never-seen", "ghost"}
    codec = Codec(load_spec("elec2"), MAX_EVENT_BYTES)
    scored: set[str] = set()
    labelled: set[str] = set()
    rng = random.Random(RANDOM_SEED)
    while sum(r.name.startswith("random/") for r in sent) < N_RANDOM:
        n = sum(r.name.startswith("random/") for r in sent)
        key, value = _random_record(rng, n)
        d = codec.decode(value, key)
        if d.event_id in table_ids:
            continue
        name = f"random/{n}"
        if d.kind == "error":
            sent.append(Sent(name, "events", key, value, d.reason))
        elif d.kind == "event":
            sent.append(Sent(name, "events", key, value, "duplicate" if d.event_id in scored else "prediction",
                             d.event_id))
            scored.add(d.event_id)
        elif d.event_id in labelled:
            sent.append(Sent(name, "events", key, value, Reason.DUPLICATE_LABEL.value))
        else:                                                   # joined, or pending until its event
            labelled.add(d.event_id)
            sent.append(Sent(name, "events", key, value))
    valid_event()
    return sent


def _settings(broker: Any, tmp: Path, name: str, **kw: Any) -> Settings:
    tag = f"{name}-{time.time_ns() % 10**9}"
    s = Settings(broker=broker.bootstrap, app_id=f"t-{tag}", topic_prefix=f"{tag}-", pipeline="elec2",
                 partitions=1, state_dir=tmp / "state", web_port=free_port(), metrics_port=free_port(),
                 session_timeout_s=6.0, commit_interval_s=0.5, metrics_interval_s=1.0, **kw)
    create_topics(broker.bootstrap, all_topics(s))
    return s


def _produce(settings: Settings, records: list[Sent]) -> None:
    """Produce in order to partition 0; record each offset from its delivery report."""
    p = Producer(settings.producer_config(**{"message.max.bytes": 4_000_000,
                                             "max.in.flight.requests.per.connection": 1}))
    errors: list[str] = []

    def report(rec: Sent) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{rec.name}: {err}")
            else:
                rec.offset = msg.offset()
        return cb

    for rec in records:
        p.produce(settings.topic(rec.topic), rec.value, rec.key, partition=0, on_delivery=report(rec))
        p.poll(0)
    assert p.flush(30) == 0 and not errors, errors


def _scrape(settings: Settings) -> dict[str, Any]:
    return scrape(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")


def _alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}"


def _wait_consumed(settings: Settings, n: int, proc: subprocess.Popen[bytes], log: Path,
                   timeout: float = 90.0) -> None:
    """Until the worker has counted ``n`` input records (events and labels)."""
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        _alive(proc, log)
        try:
            seen = total(_scrape(settings), "streamscore_worker_events_in_total")
        except OSError:    # not serving (yet, or any more): the liveness check says which
            time.sleep(0.3)
            continue
        if seen >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"the worker consumed {seen:.0f} of {n} records within {timeout}s")


def _read_outputs(settings: Settings, want_dlq: int, want_predictions: int, proc: subprocess.Popen[bytes],
                  log: Path, timeout: float = 120.0, settle: float = 3.0) -> tuple[list[Any], list[Any]]:
    """Every prediction and dead letter, raw: read until the wanted counts, then ``settle`` s more."""
    c = Consumer(settings.consumer_config(group=f"{settings.app_id}-check",
                                          **{"fetch.message.max.bytes": 8_000_000}))
    c.assign([TopicPartition(settings.topic(t), 0, OFFSET_BEGINNING) for t in ("predictions", "dlq")])
    preds: list[Any] = []
    dlq: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    (preds if m.topic() == settings.topic("predictions") else dlq).append((m.key(), m.value()))
            _alive(proc, log)
            if len(dlq) >= want_dlq and len(preds) >= want_predictions:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:   # extra (unwanted) outputs show up here
                    break
    finally:
        c.close()
    return preds, dlq


@pytest.fixture(scope="module")
def run(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("bad-input")
    s = _settings(broker, tmp, "bad-input", max_event_bytes=MAX_EVENT_BYTES)
    log = tmp / "worker.log"
    sent = _stream()
    n_dlq = sum(r.expect not in (None, "prediction", "duplicate") for r in sent)
    n_pred = sum(r.expect in ("prediction", "duplicate") for r in sent)
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log)
        _produce(s, sent)
        _wait_consumed(s, len(sent), proc, log)
        preds, dlq = _read_outputs(s, n_dlq, n_pred, proc, log)
        samples = _scrape(s)
        alive = proc.poll() is None
    finally:
        code = stop_worker(proc)
    by_offset: dict[tuple[str, int], list[tuple[bytes | None, dict[str, Any]]]] = {}
    for key, raw in dlq:
        doc = orjson.loads(raw)
        by_offset.setdefault((doc["topic"], doc["offset"]), []).append((key, doc))
    by_id: dict[str, list[tuple[bytes | None, bytes]]] = {}
    for key, raw in preds:
        by_id.setdefault(orjson.loads(raw)["event_id"], []).append((key, raw))
    return Outcome(sent, by_offset, by_id, samples, alive, code, log.read_text(errors="replace"))


def _recover(doc: dict[str, Any], field: str) -> bytes | None:
    """The original bytes of a dead letter's key or value."""
    v = doc[field]
    if v is None:
        return None
    return base64.b64decode(v, validate=True) if doc[f"{field}_encoding"] == "base64" else v.encode("utf-8")


def _one_lossless_dead_letter(run: Outcome, rec: Sent) -> dict[str, Any]:
    letters = run.dlq.get((rec.topic, rec.offset), [])
    assert len(letters) == 1, f"{rec.name}: {len(letters)} dead letters for {rec.topic}@{rec.offset}"
    kafka_key, doc = letters[0]
    assert doc["reason"] == rec.expect, doc["detail"]
    assert doc["detail"] and len(doc["detail"]) < 500
    assert (doc["topic"], doc["partition"], doc["offset"]) == (rec.topic, 0, rec.offset)
    assert _recover(doc, "value") == rec.value                  # lossless: the exact original bytes
    assert _recover(doc, "key") == rec.key
    assert kafka_key == rec.key                                 # and keyed like the original
    return doc


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_record_yields_exactly_one_lossless_dead_letter(run: Outcome, case: Case) -> None:
    rec = next(r for r in run.sent if r.name == case.name)
    doc = _one_lossless_dead_letter(run, rec)
    assert doc["reason"] == case.reason.value
    if case.reason is Reason.DUPLICATE_LABEL:
        assert doc["event_id"] == orjson.loads(case.value or b"{}")["event_id"]


def test_random_records_each_get_the_codec_verdict(run: Outcome) -> None:
    randoms = [r for r in run.sent if r.name.startswith("random/")]
    verdicts = {r.expect for r in randoms}
    assert {"prediction", "duplicate", None, Reason.MALFORMED_JSON.value} <= verdicts   # the mix is varied
    assert len(verdicts) >= 8, verdicts
    for rec in randoms:
        if rec.expect in (None, "prediction", "duplicate"):
            assert (rec.topic, rec.offset) not in run.dlq, rec.name
        else:
            _one_lossless_dead_letter(run, rec)


def test_no_other_dead_letters(run: Outcome) -> None:
    stray = [(r.name, r.topic, r.offset) for r in run.sent
             if r.expect in (None, "prediction", "duplicate") and run.dlq.get((r.topic, r.offset))]
    assert stray == []
    n_expected = sum(r.expect not in (None, "prediction", "duplicate") for r in run.sent)
    assert sum(len(v) for v in run.dlq.values()) == n_expected


def test_every_valid_event_scored_exactly_once(run: Outcome) -> None:
    want: dict[str, int] = {}
    for r in run.sent:
        if r.expect in ("prediction", "duplicate"):
            want[r.event_id] = want.get(r.event_id, 0) + 1
    assert sum(r.expect == "prediction" for r in run.sent) == len(want)    # one first prediction per id
    got = {eid: len(v) for eid, v in run.predictions.items()}
    assert {e: (got.get(e, 0), n) for e, n in want.items() if got.get(e, 0) != n} == {}
    assert set(got) == set(want)                                 # no prediction for anything else
    for eid, outs in run.predictions.items():                   # redelivery: the stored bytes again
        assert len({raw for _, raw in outs}) == 1, eid


def test_valid_edge_cases(run: Outcome) -> None:
    [(key, raw)] = run.predictions["bin-key"]
    assert key == NON_UTF8_KEY                                   # the Kafka key is kept byte for byte
    assert orjson.loads(raw)["key"] == NON_UTF8_KEY.decode("utf-8", "replace")
    [(key, raw)] = run.predictions["no-key"]
    assert key is None and orjson.loads(raw)["key"] == ""
    assert orjson.loads(run.predictions["neg-ts"][0][1])["ts"] == -86_400_000
    assert "424242" in run.predictions
    assert "ghost" not in run.predictions and "never-seen" not in run.predictions
    for eid, _ in DUPLICATE_EVENTS:
        assert [k for k, _ in run.predictions[eid]] == [KEY, KEY]


def test_worker_survives_and_metrics_count_dead_letters_by_reason(run: Outcome) -> None:
    assert run.alive_at_end, run.log[-4000:]
    assert run.exit_code == 0, run.log[-4000:]                   # a clean stop: zero crashes
    assert "Traceback" not in run.log, run.log[-4000:]
    m = run.metrics
    want: dict[str, int] = {r.value: 0 for r in Reason}
    for r in run.sent:
        if r.expect not in (None, "prediction", "duplicate"):
            want[r.expect] += 1
    got = {labels["reason"]: int(v) for labels, v in m["streamscore_worker_dlq_total"]}
    assert got == want
    assert all(want[c.reason.value] for c in CASES)
    assert total(m, "streamscore_worker_events_in_total") == len(run.sent)
    assert total(m, "streamscore_worker_predictions_total") == len(run.expected("prediction"))
    assert total(m, "streamscore_worker_duplicate_events_total") == len(run.expected("duplicate"))
    # "ghost" (never seen) and the first label of "never-seen" wait in state
    assert total(m, "streamscore_labels_joined_total", outcome="pending") >= 2


def test_oversized_record_with_default_limits_does_not_stop_the_worker(broker: Any, tmp_path: Path) -> None:
    """A dead letter is larger than its record: the producer's message.max.bytes allows for it (regression)."""
    s = _settings(broker, tmp_path, "oversized-default")
    log = tmp_path / "worker.log"
    sent = [Sent("before", "events", KEY, enc(event("a", 1))),
            Sent("oversized", "events", KEY, enc(event("big", 2, pad="x" * 1_200_000))),
            Sent("after", "events", KEY, enc(event("b", 3)))]
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log)
        _produce(s, sent)
        preds, dlq = _read_outputs(s, 1, 2, proc, log, timeout=30.0, settle=0.5)
    finally:
        stop_worker(proc)
    assert [orjson.loads(v)["reason"] for _, v in dlq] == ["oversized"]
    assert sorted(orjson.loads(v)["event_id"] for _, v in preds) == ["a", "b"]

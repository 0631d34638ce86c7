"""Unit tests for streams.datasets: the converters of the recorded datasets in data/.

No broker needed.  Full-file checks are limited to the cheap ones (elec2 and
online_retail); the other converters are checked on a prefix via ``limit``.
"""

from __future__ import annotations

import csv
import doctest
import gzip
import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import datasets
from streams.datasets import DATA_DIR, DATASETS, RETURN_HORIZON_MS, convert, iter_records

Record = dict[str, Any]
PREFIX = 20_000  # records checked for the converters that are not read in full here


@pytest.fixture(scope="module")
def retail() -> list[Record]:
    return list(iter_records("online_retail"))


@pytest.fixture(scope="module")
def beijing() -> list[Record]:
    return list(iter_records("beijing_air_quality", limit=PREFIX))


@pytest.fixture(scope="module")
def elec2() -> list[Record]:
    return list(iter_records("elec2"))


def _is_label(record: Record) -> bool:
    return "label" in record["value"]


def _check_stream(records: list[Record]) -> None:
    assert records
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts), "records must be in non-decreasing ts"
    event_ids = [r["value"]["event_id"] for r in records if not _is_label(r)]
    assert len(event_ids) == len(set(event_ids)), "event ids must be unique"
    for r in records:
        assert list(r) == ["topic", "key", "ts", "value"]
        assert r["topic"] in ("events", "labels")
        assert isinstance(r["key"], str) and r["key"]
        assert isinstance(r["ts"], int)
        value = r["value"]
        assert list(value)[:2] == ["event_id", "ts"]
        assert value["ts"] == r["ts"]
        if _is_label(r):
            assert list(value) == ["event_id", "ts", "label"]
            assert isinstance(value["label"], (int, float))


# --------------------------------------------------------------------------- shipped data


def test_data_dir_is_in_repository() -> None:
    assert DATA_DIR == Path(datasets.__file__).resolve().parent.parent / "data"
    assert "shared" not in DATA_DIR.parts


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shipped_files_match_source_md(name: str) -> None:
    spec = DATASETS[name]
    folder = DATA_DIR / spec.folder
    source_md = (folder / "SOURCE.md").read_text(encoding="utf-8")
    assert "## In this repository" in source_md
    for file in spec.files:
        assert file.endswith(".gz")
        digest = hashlib.sha256(gzip.decompress((folder / file).read_bytes())).hexdigest()
        assert digest in source_md, f"{file}: sha256 of the uncompressed file not in SOURCE.md"


def test_registry_is_read_only() -> None:
    assert set(DATASETS) == {"elec2", "online_retail", "online_retail_returns", "beijing_air_quality", "xwines", "otto"}
    with pytest.raises(TypeError):
        DATASETS["x"] = DATASETS["otto"]  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown dataset"):
        iter_records("nope")


def test_doctests() -> None:
    result = doctest.testmod(datasets)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- every converter


@pytest.mark.parametrize("name", ["xwines", "otto"])
def test_stream_invariants_small(name: str) -> None:
    _check_stream(list(iter_records(name)))


@pytest.mark.parametrize("name", ["xwines", "otto"])
def test_label_right_after_event(name: str) -> None:
    records = list(iter_records(name))
    assert len(records) % 2 == 0
    for event, label in zip(records[::2], records[1::2]):
        assert event["topic"] == "events" and not _is_label(event)
        assert label["topic"] == "labels"
        assert label["value"]["event_id"] == event["value"]["event_id"]
        assert label["ts"] == event["ts"] and label["key"] == event["key"]


def test_limit() -> None:
    assert list(iter_records("otto", limit=0)) == []
    assert len(list(iter_records("otto", limit=7))) == 7
    with pytest.raises(ValueError):
        iter_records("otto", limit=-1)


# --------------------------------------------------------------------------- elec2


def test_elec2_full(elec2: list[Record]) -> None:
    _check_stream(elec2)
    events = elec2[::2]
    labels = elec2[1::2]
    assert len(events) == len(labels) == 45_312
    for i, (event, label) in enumerate(zip(events, labels)):
        assert event["topic"] == label["topic"] == "events"
        assert event["key"] == label["key"] == "nsw"
        assert event["value"]["event_id"] == label["value"]["event_id"] == f"elec2-{i}"
        assert event["ts"] == label["ts"] == 831_427_200_000 + i * 1_800_000  # 1996-05-07 UTC + 30 min * i
        assert "label" not in event["value"]
        assert label["value"]["label"] in (0, 1)
    assert list(events[0]["value"]) == [
        "event_id", "ts", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer",
    ]
    assert Counter(r["value"]["label"] for r in labels) == {0: 26_075, 1: 19_237}


def test_elec2_reproduces_progressive_val_score() -> None:
    """A predict-on-event / learn-on-inline-label consumer equals river's evaluator."""
    river = pytest.importorskip("river")
    from river import compose, evaluate, linear_model, metrics, preprocessing

    n = 3_000

    def model() -> Any:
        return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())

    with gzip.open(DATA_DIR / "elec2" / "elec2.csv.gz", "rt", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1 : n + 1]
    dataset = [
        ({c: float(v) for c, v in zip(header, row) if c != "class"}, row[header.index("class")] == "1")
        for row in body
    ]
    reference = evaluate.progressive_val_score(dataset, model(), metrics.Accuracy())

    consumer, metric, pending = model(), metrics.Accuracy(), {}
    for record in iter_records("elec2", limit=2 * n):
        value = record["value"]
        if "label" in value:
            x, y_pred = pending.pop(value["event_id"])
            y = bool(value["label"])
            metric.update(y, y_pred)
            consumer.learn_one(x, y)
        else:
            x = {k: v for k, v in value.items() if k not in ("event_id", "ts")}
            pending[value["event_id"]] = (x, consumer.predict_one(x))
    assert not pending
    assert metric.get() == reference.get()
    assert river.__version__


def test_elec2_malformed_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "elec2"
    folder.mkdir()
    text = (
        "period,nswprice,nswdemand,vicprice,vicdemand,transfer,class\n"
        "0.0,0.1,0.2,0.3,0.4,0.5,1\n"
        "0.021277,oops,0.2,0.3,0.4,0.5,0\n"
        "0.042553,0.1,0.2\n"
        "0.06383,0.1,0.2,0.3,0.4,0.5,0\n"
    )
    (folder / "elec2.csv.gz").write_bytes(gzip.compress(text.encode()))
    skipped: dict[str, int] = {}
    records = list(iter_records("elec2", data_dir=tmp_path, skipped=skipped))
    assert skipped == {"elec2.csv.gz": 2}
    assert [r["value"]["event_id"] for r in records] == ["elec2-0"] * 2 + ["elec2-3"] * 2
    assert records[2]["ts"] - records[0]["ts"] == 3 * 1_800_000  # row index keeps ts exact


# --------------------------------------------------------------------------- online_retail


def _return_lines() -> set[tuple[str, str, int]]:
    """(customer, stock code, ts) of every return line, read independently from the csvs."""
    out = set()
    for file in DATASETS["online_retail"].files:
        with gzip.open(DATA_DIR / "online_retail" / file, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["InvoiceNo"].startswith("C") and row["CustomerID"]:
                    ts = datasets._parse_utc_ms(row["InvoiceDate"])
                    out.add((str(int(float(row["CustomerID"]))), row["StockCode"], ts))
    return out


def test_online_retail_full(retail: list[Record]) -> None:
    _check_stream(retail)
    events = {r["value"]["event_id"]: r for r in retail if r["topic"] == "events"}
    labels = [r for r in retail if r["topic"] == "labels"]
    assert all(not _is_label(r) for r in events.values())
    assert len(events) == len(labels) == 67_320
    per_event = Counter(r["value"]["event_id"] for r in labels)
    assert set(per_event) == set(events) and set(per_event.values()) == {1}

    returns = _return_lines()
    position = {id(r): i for i, r in enumerate(retail)}
    positives = 0
    for label in labels:
        event = events[label["value"]["event_id"]]
        assert label["key"] == event["key"]
        assert position[id(label)] > position[id(event)], "label must come after its event"
        v = event["value"]
        if label["value"]["label"] == 1:
            positives += 1
            assert (v["customer_id"], v["stock_code"], label["ts"]) in returns
            assert 0 <= label["ts"] - event["ts"] <= RETURN_HORIZON_MS
        else:
            assert label["value"]["label"] == 0
            assert label["ts"] == event["ts"] + RETURN_HORIZON_MS
    assert 0 < positives < len(labels) // 10


def test_online_retail_event_fields(retail: list[Record]) -> None:
    event = next(r for r in retail if r["topic"] == "events")
    v = event["value"]
    assert list(v) == [
        "event_id", "ts", "customer_id", "stock_code", "invoice_no", "country",
        "quantity", "unit_price", "amount", "hour", "weekday",
    ]
    assert event["key"] == v["customer_id"] == "17850"
    assert v["event_id"] == "536365-0" and v["invoice_no"] == "536365"
    assert v["quantity"] == 6.0 and v["unit_price"] == 2.55 and v["amount"] == 6.0 * 2.55
    assert v["hour"] == 8.0 and v["weekday"] == 2.0  # 2010-12-01 08:26 was a Wednesday
    assert not any(r["value"]["invoice_no"].startswith("C") for r in retail if r["topic"] == "events")


def _write_retail(root: Path, rows: list[str]) -> None:
    folder = root / "online_retail"
    folder.mkdir()
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    files = DATASETS["online_retail"].files
    (folder / files[0]).write_bytes(gzip.compress((header + "".join(r + "\n" for r in rows)).encode()))
    for file in files[1:]:
        (folder / file).write_bytes(gzip.compress(header.encode()))


def test_online_retail_return_window(tmp_path: Path) -> None:
    _write_retail(tmp_path, [
        '1,A,"x, y",2,2011-01-01 10:00:00,1.5,7.0,UK',    # returned exactly 30 days later -> 1
        "2,B,x,1,2011-01-01 10:00:00,1.0,7.0,UK",          # returned 1 min too late -> 0
        "3,A,x,1,2011-01-02 10:00:00,1.0,8.0,UK",          # other customer, never returned -> 0
        "4,A,x,1,2011-01-03 10:00:00,1.0,,UK",             # no customer: dropped
        "5,A,x,0,2011-01-03 10:00:00,1.0,7.0,UK",          # quantity 0: not a purchase
        "6,A,x,1,2011-01-04 10:00:00,1.0,7.0,UK",          # returned by the same return -> 1
        "7,A,x,notanumber,2011-01-04 10:00:00,1.0,7.0,UK",  # malformed
        "C9,A,x,-2,2011-01-31 10:00:00,1.0,7.0,UK",
        "C10,B,x,-1,2011-01-31 10:01:00,1.0,7.0,UK",
        "11,A,x,1,2011-02-01 10:00:00,1.0,7.0,UK",         # after the return -> 0
    ])
    skipped: dict[str, int] = {}
    records = list(iter_records("online_retail", data_dir=tmp_path, skipped=skipped))
    _check_stream(records)
    assert skipped == {DATASETS["online_retail"].files[0]: 1}
    got = [(r["topic"], r["ts"], r["value"]["event_id"], r["value"].get("label")) for r in records]
    day, t0 = 86_400_000, datasets._parse_utc_ms("2011-01-01 10:00:00")
    ret = t0 + 30 * day
    assert got == [
        ("events", t0, "1-0", None),
        ("events", t0, "2-1", None),
        ("events", t0 + day, "3-2", None),
        ("events", t0 + 3 * day, "6-5", None),
        ("labels", ret, "2-1", 0),  # equal-ts labels: by emitting row (a label 0 is emitted by its purchase)
        ("labels", ret, "1-0", 1),
        ("labels", ret, "6-5", 1),
        ("events", t0 + 31 * day, "11-9", None),
        ("labels", t0 + 31 * day, "3-2", 0),
        ("labels", t0 + 61 * day, "11-9", 0),
    ]
    assert records[0]["key"] == "7" and records[0]["value"]["amount"] == 3.0


# --------------------------------------------------------------------------- beijing_air_quality


def test_beijing_prefix(beijing: list[Record]) -> None:
    records = beijing
    _check_stream(records)
    assert len(records) == PREFIX
    events = {r["value"]["event_id"]: r for r in records if r["topic"] == "events"}
    assert {r["key"] for r in events.values()} == {"Aotizhongxin", "Changping"}
    first = events["Aotizhongxin-1"]
    assert first["ts"] == 1_362_067_200_000  # 2013-03-01 00:00 UTC+8
    nxt = events["Aotizhongxin-2"]
    label = next(r for r in records if r["topic"] == "labels" and r["value"]["event_id"] == "Aotizhongxin-1")
    assert label["ts"] == nxt["ts"] == first["ts"] + 3_600_000
    assert label["value"]["label"] == nxt["value"]["PM2.5"]
    for r in records:
        if r["topic"] == "labels":
            assert r["ts"] == events[r["value"]["event_id"]]["ts"] + 3_600_000
        else:
            assert "NA" not in r["value"].values()


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize("name", ["elec2", "xwines"])
def test_convert_is_byte_deterministic(tmp_path: Path, name: str) -> None:
    a, b = tmp_path / "a" / "out.jsonl.gz", tmp_path / "b" / "other-name.jsonl.gz"
    assert convert(name, a, limit=2_000) == 2_000
    assert convert(name, b, limit=2_000) == 2_000
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime


def test_convert_gz_and_plain_agree(tmp_path: Path) -> None:
    gz, plain = tmp_path / "otto.jsonl.gz", tmp_path / "otto.jsonl"
    n = convert("otto", gz)
    assert convert("otto", plain) == n == 2 * 862
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    lines = plain.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == list(iter_records("otto"))
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_convert_plain_is_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "xw.jsonl"
    assert convert("xwines", out) == 2_000
    with io.open(out, encoding="utf-8") as fh:
        first = orjson.loads(fh.readline())
    assert first == next(iter_records("xwines"))

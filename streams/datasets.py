"""Convert the recorded public datasets shipped in ``data/`` to the recorded-stream format.

Why this module exists
----------------------
Replay tests, benchmarks and demos need *real*, time-ordered event streams with
labels, and they must work for anyone who clones the repository (no network, no
shared drive).  The five datasets in ``data/`` (see ``data/README.md`` and each
folder's ``SOURCE.md``) are gzip-compressed, byte-identical copies of public
files, each with its own schema.  This module turns every one of them into the
single format the rest of the project replays, one JSON object per line::

    {"topic": "events" | "labels", "key": str, "ts": epoch_ms, "value": {...}}

* An *event* value starts with ``event_id`` (unique within the dataset) and
  ``ts`` (equal to the record's ``ts``), then the entity field(s), then features.
* A *label* value is ``{"event_id", "ts", "label"}``.  Labels usually travel on
  the ``labels`` topic; elec2 carries them *inline* on the ``events`` topic,
  directly after their event, so that a consumer can reproduce
  ``river.evaluate.progressive_val_score`` exactly (predict event *i*, then
  learn label *i*).

Conversion is deterministic: records are yielded in non-decreasing ``ts``
(stable: ties keep a documented source order, events before labels unless a
label is defined to follow its own event), dict key order is fixed, and
:func:`convert` writes byte-identical output on every run (gzip with
``mtime=0`` and no file name in the header).

Malformed source rows are skipped, never fatal; pass a ``skipped`` mapping to
:func:`iter_records` / :func:`convert` to learn how many were skipped per
source file.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = [
    "DATA_DIR",
    "DATASETS",
    "RETURN_HORIZON_MS",
    "Dataset",
    "convert",
    "iter_records",
    "online_retail_records",
]

#: The repository's ``data/`` directory (resolved relative to this file, so it
#: works from any working directory in a source checkout / editable install).
DATA_DIR: Final[Path] = Path(__file__).resolve().parent.parent / "data"

#: online_retail: a purchase line counts as returned (label 1) when a return line
#: of the same (customer, stock code) follows it within this many milliseconds.
RETURN_HORIZON_MS: Final[int] = 30 * 86_400_000

Record = dict[str, Any]
Skipped = MutableMapping[str, int]
# (sort key, record); the sort key is unique per record within a dataset.
_Keyed = tuple[tuple[int, ...], Record]

_UTC: Final = timezone.utc
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=_UTC)
_MS: Final = timedelta(milliseconds=1)
_HOUR_MS: Final[int] = 3_600_000
_EVENTS: Final = "events"
_LABELS: Final = "labels"


# --------------------------------------------------------------------------- helpers


def _epoch_ms(dt: datetime) -> int:
    """Exact integer epoch milliseconds of an aware datetime."""
    return (dt - _EPOCH) // _MS


def _parse_utc_ms(text: str) -> int:
    """Parse ``YYYY-MM-DD HH:MM:SS`` (naive, read as UTC) to epoch ms.

    >>> _parse_utc_ms("1970-01-02 00:00:00")
    86400000
    """
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return _epoch_ms(dt)


def _count(skipped: Skipped | None, source: str) -> None:
    if skipped is not None:
        skipped[source] = skipped.get(source, 0) + 1


def _open_text(path: Path) -> io.TextIOWrapper:
    """Open a data file as UTF-8 text (transparently gunzipping ``*.gz``)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file {path} not found; the files ship gzip-compressed in the "
            "repository's data/ directory (see data/README.md)"
        )
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a whole CSV file: its header and (0-based data row index, fields) pairs."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        return header, list(enumerate(reader))


def _event(key: str, ts: int, value: Record) -> Record:
    return {"topic": _EVENTS, "key": key, "ts": ts, "value": value}


def _label(topic: str, key: str, ts: int, event_id: str, label: float | int) -> Record:
    return {"topic": topic, "key": key, "ts": ts, "value": {"event_id": event_id, "ts": ts, "label": label}}


def _sorted(items: list[_Keyed]) -> Iterator[Record]:
    items.sort(key=itemgetter(0))
    return (record for _, record in items)


def _clean_id(text: str) -> str:
    """Canonical string form of a numeric id written as float by the source.

    >>> _clean_id("17850.0"), _clean_id(" 12 "), _clean_id("A17")
    ('17850', '12', 'A17')
    """
    s = text.strip()
    if s.endswith(".0") and s[:-2].isdigit():
        s = s[:-2]
    return s


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {text!r}")
    return value


# --------------------------------------------------------------------------- elec2

_ELEC2_T0_MS: Final[int] = _epoch_ms(datetime(1996, 5, 7, tzinfo=_UTC))
_ELEC2_STEP_MS: Final[int] = 30 * 60_000
_ELEC2_CLASSES: Final[Mapping[str, int]] = MappingProxyType({"1": 1, "0": 0, "UP": 1, "DOWN": 0})


def _elec2(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    """elec2: one event per half hour, its class label inline right after it.

    Row ``i`` (0-based, counting malformed rows too, so ``ts`` stays exact) is
    at ``1996-05-07 00:00 UTC + 30 min * i`` (``SOURCE.md``: derived from row
    order).  Key is the constant ``"nsw"`` (single market, no entity field).
    Features are every column except ``class``, parsed with ``float()``.
    """
    name = "elec2.csv.gz"
    header, rows = _read_csv(data_dir / "elec2" / name)
    try:
        cls = header.index("class")
    except ValueError:
        raise ValueError(f"{name}: no 'class' column in header {header!r}") from None
    features = [(j, col) for j, col in enumerate(header) if j != cls]
    width = len(header)
    for i, row in rows:
        try:
            if len(row) != width:
                raise ValueError("wrong field count")
            label = _ELEC2_CLASSES[row[cls].strip().upper()]
            x = {col: _float(row[j]) for j, col in features}
        except (ValueError, KeyError):
            _count(skipped, name)
            continue
        ts = _ELEC2_T0_MS + _ELEC2_STEP_MS * i
        event_id = f"elec2-{i}"
        yield _event("nsw", ts, {"event_id": event_id, "ts": ts, **x})
        yield _label(_EVENTS, "nsw", ts, event_id, label)


# --------------------------------------------------------------------------- online_retail

_RETAIL_FILES: Final = (
    "online_retail_2010-12.csv.gz",
    "online_retail_2011-01.csv.gz",
    "online_retail_2011-02.csv.gz",
)
_RETAIL_COLUMNS: Final = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)


def online_retail_records(
    data_dir: Path = DATA_DIR,
    *,
    horizon_ms: int = RETURN_HORIZON_MS,
    skipped: Skipped | None = None,
    deadline_labels: bool = True,
) -> Iterator[Record]:
    """online_retail "returns" stream: purchase lines and will-it-be-returned labels.

    Parameters
    ----------
    data_dir
        Directory holding ``online_retail/online_retail_YYYY-MM.csv.gz``.
    horizon_ms
        A purchase is labelled 1 if returned within this many ms (inclusive).
    skipped
        Optional mapping; incremented per source file for each malformed row.
    deadline_labels
        ``False``: emit no label 0 at the deadline; only returns are labelled
        (the ``online_retail_returns`` stream), and the worker's label timeout
        (``[labels] timeout_ms`` and ``default = 0`` in the pipeline) supplies
        the negatives, as in production where nobody sends "not returned".

    Notes
    -----
    * ``InvoiceDate`` is UK local time in the source; it is read as **UTC**
      (the 3 months are all GMT, so this is exact for Dec 2010 - Feb 2011).
    * Rows with an empty ``CustomerID`` are dropped (not counted as malformed).
    * Purchase line (``InvoiceNo`` not starting with ``C`` and ``Quantity > 0``):
      an event, key = customer id (``"17850"``), ``event_id`` =
      ``f"{InvoiceNo}-{row}"`` with ``row`` the 0-based data row index over the
      three files concatenated in month order (unique).
    * Return line (``InvoiceNo`` starting with ``C``): not an event.  Every
      still-unlabelled purchase line of the same (customer, stock code) that
      precedes it in time order with ``ts >= return_ts - horizon_ms`` gets
      label 1 on ``labels`` at the return's ts.
    * Every other purchase line gets label 0 at ``event ts + horizon_ms``
      (possibly after the last source row).  So each event has exactly one label.
    * Order: by ts; at equal ts events (source order) come before labels; labels
      at equal ts are ordered by (emitting row, purchase row).
    * Non-``C`` lines with ``Quantity <= 0`` (stock adjustments) are ignored.

    All rows are read before the first record is yielded (labels need the future).
    """
    if horizon_ms < 0:
        raise ValueError(f"horizon_ms must be >= 0, got {horizon_ms}")
    # (ts, global row, fields, quantity, unit_price)
    rows: list[tuple[int, int, list[str], float, float]] = []
    offset = 0
    for name in _RETAIL_FILES:
        header, it = _read_csv(data_dir / "online_retail" / name)
        if tuple(header) != _RETAIL_COLUMNS:
            raise ValueError(f"{name}: unexpected header {header!r}")
        ts_cache: dict[str, int] = {}
        n_rows = 0
        for n, row in it:
            n_rows = n + 1
            if len(row) != len(_RETAIL_COLUMNS):
                _count(skipped, name)
                continue
            if not row[6].strip():  # no customer: guest / unknown, dropped by design
                continue
            date = row[4]
            try:
                ts = ts_cache.get(date)
                if ts is None:
                    ts = ts_cache[date] = _parse_utc_ms(date)
                quantity = _float(row[3])
                unit_price = _float(row[5])
            except ValueError:
                _count(skipped, name)
                continue
            rows.append((ts, offset + n, row, quantity, unit_price))
        offset += n_rows
    rows.sort(key=itemgetter(0, 1))

    out: list[_Keyed] = []
    # (customer, stock) -> unlabelled purchases [(ts, row, event_id)] in time order
    open_lines: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    labelled: set[int] = set()
    purchases: list[tuple[int, int, str, str]] = []  # (ts, row, event_id, customer)
    for ts, g, row, quantity, unit_price in rows:
        invoice, stock, _desc, _qty, _date, _price, cust_s, country = row
        invoice = invoice.strip()
        customer = _clean_id(cust_s)
        pair = (customer, stock)
        if invoice.startswith("C"):
            pending = open_lines.get(pair)
            if pending:
                cutoff = ts - horizon_ms
                for p_ts, p_row, p_id in pending:
                    if p_ts >= cutoff:
                        labelled.add(p_row)
                        out.append(((ts, 1, g, p_row), _label(_LABELS, customer, ts, p_id, 1)))
                del open_lines[pair]  # labelled now, or expired (they get 0 below)
            continue
        if quantity <= 0:
            continue
        dt = datetime.fromtimestamp(ts / 1000, tz=_UTC)
        event_id = f"{invoice}-{g}"
        value = {
            "event_id": event_id,
            "ts": ts,
            "customer_id": customer,
            "stock_code": stock,
            "invoice_no": invoice,
            "country": country,
            "quantity": quantity,
            "unit_price": unit_price,
            "amount": quantity * unit_price,
            "hour": float(dt.hour),
            "weekday": float(dt.weekday()),
        }
        out.append(((ts, 0, g, 0), _event(customer, ts, value)))
        open_lines.setdefault(pair, []).append((ts, g, event_id))
        purchases.append((ts, g, event_id, customer))
    for ts, g, event_id, customer in purchases if deadline_labels else ():
        if g not in labelled:
            due = ts + horizon_ms
            out.append(((due, 1, g, g), _label(_LABELS, customer, due, event_id, 0)))
    return _sorted(out)


def _online_retail(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    return online_retail_records(data_dir, skipped=skipped)


def _online_retail_returns(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    return online_retail_records(data_dir, skipped=skipped, deadline_labels=False)


# --------------------------------------------------------------------------- beijing_air_quality

_BEIJING_FILES: Final = (
    "PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz",
    "PRSA_Data_Changping_20130301-20170228.csv.gz",
)
_BEIJING_FLOATS: Final = ("PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
_BEIJING_TZ: Final = timezone(timedelta(hours=8))
_NA: Final = "NA"


def _beijing(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    """beijing_air_quality: hourly station readings; label = next hour's PM2.5.

    ``year/month/day/hour`` are Beijing local time (UTC+8), converted to UTC
    epoch ms.  Key = station.  ``NA`` features (and ``wd``) are omitted from the
    event value.  The label for the reading at hour *h* is the same station's
    PM2.5 at *h + 1*, emitted on ``labels`` at *h + 1*'s ts; it is skipped when
    that reading is missing, malformed or ``NA``.  Both stations are merged by
    ts; at equal ts: events before labels, then file order (Aotizhongxin first).
    """
    out: list[_Keyed] = []
    for f_idx, name in enumerate(_BEIJING_FILES):
        header, it = _read_csv(data_dir / "beijing_air_quality" / name)
        col = {c: j for j, c in enumerate(header)}
        missing = {"No", "year", "month", "day", "hour", "wd", "station", *_BEIJING_FLOATS} - col.keys()
        if missing:
            raise ValueError(f"{name}: missing columns {sorted(missing)}")
        idx = [(c, col[c]) for c in _BEIJING_FLOATS]
        by_ts: dict[tuple[str, int], float | None] = {}
        events: list[tuple[int, int, str, str]] = []  # (ts, row, station, event_id)
        for r, row in it:
            try:
                if len(row) != len(header):
                    raise ValueError("wrong field count")
                station = row[col["station"]].strip()
                if not station or station == _NA:
                    raise ValueError("no station")
                dt = datetime(
                    int(row[col["year"]]), int(row[col["month"]]), int(row[col["day"]]),
                    int(row[col["hour"]]), tzinfo=_BEIJING_TZ,
                )
                number = int(row[col["No"]])
                x: Record = {c: _float(row[j]) for c, j in idx if row[j] != _NA}
            except ValueError:
                _count(skipped, name)
                continue
            ts = _epoch_ms(dt)
            wd = row[col["wd"]].strip()
            if wd and wd != _NA:
                x["wd"] = wd
            event_id = f"{station}-{number}"
            value = {"event_id": event_id, "ts": ts, "station": station, **x}
            out.append(((ts, 0, f_idx, r), _event(station, ts, value)))
            by_ts.setdefault((station, ts), x.get("PM2.5"))
            events.append((ts, r, station, event_id))
        for ts, r, station, event_id in events:
            nxt = ts + _HOUR_MS
            target = by_ts.get((station, nxt))
            if target is not None:
                out.append(((nxt, 1, f_idx, r), _label(_LABELS, station, nxt, event_id, target)))
    return _sorted(out)


# --------------------------------------------------------------------------- xwines

_XW_RATINGS: Final = "XWines_Test_1K_ratings.csv.gz"
_XW_WINES: Final = "XWines_Test_100_wines.csv.gz"


def _xwines(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    """xwines: ratings sorted by ``Date`` (read as UTC; stable), label right after.

    Key = ``str(UserID)``.  Item metadata (type, abv, body, acidity,
    country_code) is joined from the wines file; fields are omitted if the
    wine is unknown.  The label (``Rating``, float) follows its event on
    ``labels`` at the same ts.
    """
    folder = data_dir / "xwines_test"
    header, it = _read_csv(folder / _XW_WINES)
    wcol = {c: j for j, c in enumerate(header)}
    wines: dict[str, Record] = {}
    for _, row in it:
        try:
            if len(row) != len(header):
                raise ValueError("wrong field count")
            wines[_clean_id(row[wcol["WineID"]])] = {
                "type": row[wcol["Type"]],
                "abv": _float(row[wcol["ABV"]]),
                "body": row[wcol["Body"]],
                "acidity": row[wcol["Acidity"]],
                "country_code": row[wcol["Code"]],
            }
        except (ValueError, KeyError):
            _count(skipped, _XW_WINES)

    header, it = _read_csv(folder / _XW_RATINGS)
    rcol = {c: j for j, c in enumerate(header)}
    out: list[_Keyed] = []
    for r, row in it:
        try:
            if len(row) != len(header):
                raise ValueError("wrong field count")
            rating_id = _clean_id(row[rcol["RatingID"]])
            user = _clean_id(row[rcol["UserID"]])
            wine = _clean_id(row[rcol["WineID"]])
            if not (rating_id and user and wine):
                raise ValueError("empty id")
            rating = _float(row[rcol["Rating"]])
            ts = _parse_utc_ms(row[rcol["Date"]])
        except (ValueError, KeyError):
            _count(skipped, _XW_RATINGS)
            continue
        event_id = f"xw-{rating_id}"
        value = {
            "event_id": event_id,
            "ts": ts,
            "user_id": user,
            "wine_id": wine,
            "vintage": row[rcol["Vintage"]].strip(),
            **wines.get(wine, {}),
        }
        out.append(((ts, r, 0), _event(user, ts, value)))
        out.append(((ts, r, 1), _label(_LABELS, user, ts, event_id, rating)))
    return _sorted(out)


# --------------------------------------------------------------------------- otto

_OTTO_FILE: Final = "otto_train_first20_sessions.jsonl.gz"
_OTTO_TYPES: Final = frozenset({"clicks", "carts", "orders"})
_OTTO_POSITIVE: Final = frozenset({"carts", "orders"})


def _otto(data_dir: Path, skipped: Skipped | None) -> Iterator[Record]:
    """otto: session events flattened and sorted by ts (stable), label right after.

    Key = ``str(session)``; ``event_id`` = ``f"otto-{session}-{index}"`` with
    ``index`` the event's position in its session.  Label (on ``labels``, same
    ts) is 1 for ``carts``/``orders`` and 0 for ``clicks``.  A malformed line
    or event is skipped and counted (one count per line / event).
    """
    out: list[_Keyed] = []
    with _open_text(data_dir / "otto_sessions_sample" / _OTTO_FILE) as fh:
        for line_no, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                session = obj["session"]
                events = obj["events"]
                if not isinstance(session, int) or not isinstance(events, list):
                    raise TypeError("bad session")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                _count(skipped, _OTTO_FILE)
                continue
            sid = str(session)
            for index, ev in enumerate(events):
                try:
                    aid, ts, kind = ev["aid"], ev["ts"], ev["type"]
                    if not (isinstance(aid, int) and isinstance(ts, int) and kind in _OTTO_TYPES):
                        raise TypeError("bad event")
                except (KeyError, TypeError):
                    _count(skipped, _OTTO_FILE)
                    continue
                event_id = f"otto-{sid}-{index}"
                value = {"event_id": event_id, "ts": ts, "session": sid, "aid": str(aid), "type": kind}
                out.append(((ts, line_no, index, 0), _event(sid, ts, value)))
                out.append(((ts, line_no, index, 1), _label(_LABELS, sid, ts, event_id, int(kind in _OTTO_POSITIVE))))
    return _sorted(out)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Dataset:
    """One converter in :data:`DATASETS`.

    Attributes
    ----------
    name
        Converter name (``streamscore convert NAME``).
    folder
        Sub-directory of ``data/`` holding the gzip-compressed source files.
    files
        Source file names inside ``folder``.
    task
        Short description of the stream and its label.
    licence
        Licence of the source data (details in ``folder/SOURCE.md``).
    reader
        ``reader(data_dir, skipped)`` returning the full, time-ordered records;
        use :func:`iter_records` rather than calling it directly.
    """

    name: str
    folder: str
    files: tuple[str, ...]
    task: str
    licence: str
    reader: Callable[[Path, Skipped | None], Iterator[Record]]


#: Read-only registry of the converters, by name.
DATASETS: Final[Mapping[str, Dataset]] = MappingProxyType({
    "elec2": Dataset(
        "elec2", "elec2", ("elec2.csv.gz",),
        "binary classification (price UP/DOWN), labels inline on events", "no formal licence; public benchmark",
        _elec2,
    ),
    "online_retail": Dataset(
        "online_retail", "online_retail", _RETAIL_FILES,
        "binary classification: purchase line returned within 30 days", "CC BY 4.0 (UCI)",
        _online_retail,
    ),
    "online_retail_returns": Dataset(
        "online_retail_returns", "online_retail", _RETAIL_FILES,
        "binary classification: returned within 30 days; only returns are labelled (the worker's "
        "label timeout gives 0)", "CC BY 4.0 (UCI)",
        _online_retail_returns,
    ),
    "beijing_air_quality": Dataset(
        "beijing_air_quality", "beijing_air_quality", _BEIJING_FILES,
        "regression: next hour's PM2.5 per station", "CC BY 4.0 (UCI)",
        _beijing,
    ),
    "xwines": Dataset(
        "xwines", "xwines_test", (_XW_RATINGS, _XW_WINES),
        "regression / recommendation: user's wine rating", "CC0 1.0",
        _xwines,
    ),
    "otto": Dataset(
        "otto", "otto_sessions_sample", (_OTTO_FILE,),
        "binary classification: event is a cart/order", "CC BY 4.0 (OTTO)",
        _otto,
    ),
})


def _lookup(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------- public API


def iter_records(
    name: str,
    *,
    limit: int | None = None,
    data_dir: Path = DATA_DIR,
    skipped: Skipped | None = None,
) -> Iterator[Record]:
    """Yield the recorded-stream records of dataset ``name`` in time order.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    limit
        Stop after this many records (events and labels both count).
    data_dir
        Root holding the dataset folders (default: the repository's ``data/``).
    skipped
        Optional mapping, incremented per source file name for every malformed
        source row that was skipped (only rows read so far are counted).

    Returns
    -------
    Iterator[dict]
        ``{"topic", "key", "ts", "value"}`` dicts, ``ts`` non-decreasing.
        Each record is a fresh object.

    Examples
    --------
    >>> event, label = iter_records("elec2", limit=2)
    >>> event["topic"], event["key"], event["ts"], list(event["value"])[:4]
    ('events', 'nsw', 831427200000, ['event_id', 'ts', 'period', 'nswprice'])
    >>> label
    {'topic': 'events', 'key': 'nsw', 'ts': 831427200000, 'value': {'event_id': 'elec2-0', 'ts': 831427200000, 'label': 1}}
    """
    spec = _lookup(name)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records = spec.reader(Path(data_dir), skipped)
    return records if limit is None else itertools.islice(records, limit)


def _write_lines(fh: Any, records: Iterable[Record], chunk: int = 4096) -> int:
    """Write records as orjson lines in chunks of ``chunk`` records; return the count."""
    n = 0
    dumps = orjson.dumps
    it = iter(records)
    while batch := list(itertools.islice(it, chunk)):
        fh.write(b"".join([dumps(record) + b"\n" for record in batch]))
        n += len(batch)
    return n


def convert(
    name: str,
    out: Path,
    *,
    limit: int | None = None,
    data_dir: Path = DATA_DIR,
    skipped: Skipped | None = None,
) -> int:
    """Write dataset ``name`` as JSON Lines to ``out``; return the record count.

    The file is gzip-compressed when ``out`` ends with ``.gz`` (``mtime=0`` and
    no file name in the header, so the bytes do not depend on time or path).
    Output is written to a temporary sibling and renamed into place.  The
    parameters ``limit``, ``data_dir`` and ``skipped`` are as for
    :func:`iter_records`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     convert("otto", Path(d) / "otto.jsonl.gz", limit=4)
    4
    """
    records = iter_records(name, limit=limit, data_dir=data_dir, skipped=skipped)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            if out.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                    n = _write_lines(gz, records)
            else:
                n = _write_lines(raw, records)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n

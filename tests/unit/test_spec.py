"""Unit tests for streams.spec: loading and validating pipeline spec files."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from models.base import ModelSpec
from streams.spec import PIPELINES_DIR, PipelineSpec, SpecError, load_spec, parse_spec

BUNDLED = sorted(PIPELINES_DIR.glob("*.toml"))

BASE_TOML = """
[pipeline]
name = "t"
task = "classification"

[fields]
event_id = "id"
timestamp = "time"
key = "user"
label = "y"

[features]
numeric = ["a", "b"]
categorical = ["c"]
optional = ["b"]

[[models]]
name = "lr"
kind = "logistic_regression"
params = { lr = 0.05, l2 = 0 }

[[models]]
name = "hat"
kind = "hoeffding_adaptive_tree"
params = { grace_period = 50 }

[decision]
threshold = 0.7

[labels]
timeout_ms = 1000

[extra_section]
foo = 1
"""


def base() -> dict[str, Any]:
    return tomllib.loads(BASE_TOML)


def test_bundled_pipelines_exist() -> None:
    assert {p.stem for p in BUNDLED} >= {"elec2", "online_retail"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_every_bundled_spec_loads(path: Path) -> None:
    by_name = load_spec(path.stem)
    by_path = load_spec(path)
    assert isinstance(by_name, PipelineSpec)
    assert by_name == by_path
    assert by_name.name == path.stem
    assert by_name.task in ("classification", "regression", "bandit", "features")
    if by_name.task == "features":
        assert not by_name.models and by_name.windows
    else:
        assert by_name.models and by_name.champion is by_name.models[0]
    assert by_name.numeric or by_name.categorical
    assert by_name.optional <= set(by_name.numeric) | set(by_name.categorical)
    assert 0.0 < by_name.threshold < 1.0


def test_online_retail_values() -> None:
    s = load_spec("online_retail")
    assert s.key == "customer_id" and s.label == "label" and s.event_id == "event_id"
    assert s.categorical == ("country",)
    assert s.label_timeout_ms == 30 * 86_400_000
    assert s.models[0] == ModelSpec(name="lr", kind="logistic_regression", params={"lr": 0.01})
    assert load_spec("elec2").key is None


def test_parse_full_document() -> None:
    s = parse_spec(base(), "t.toml")
    assert (s.name, s.dataset, s.event_id, s.timestamp, s.key, s.label) == ("t", "t", "id", "time", "user", "y")
    assert s.numeric == ("a", "b") and s.categorical == ("c",) and s.optional == frozenset({"b"})
    assert [m.name for m in s.models] == ["lr", "hat"] and s.champion.name == "lr"
    assert s.models[0].params == {"lr": 0.05, "l2": 0}
    assert s.threshold == 0.7 and s.label_timeout_ms == 1000
    assert dict(s.extra) == {"extra_section": {"foo": 1}}


def test_defaults() -> None:
    doc = {"pipeline": {"name": "m"}, "fields": {}, "features": {"numeric": ["a"]},
           "models": [{"name": "lr", "kind": "logistic_regression"}]}
    s = parse_spec(doc)
    assert (s.task, s.dataset, s.event_id, s.timestamp, s.key, s.label) == (
        "classification", "m", "event_id", "ts", None, "label")
    assert s.threshold == 0.5 and s.label_timeout_ms is None and s.optional == frozenset()


# -- errors ----------------------------------------------------------------------------
def _without(section: str) -> dict[str, Any]:
    d = base()
    del d[section]
    return d


@pytest.mark.parametrize("section", ["pipeline", "fields", "features", "models"])
def test_missing_section(section: str) -> None:
    with pytest.raises(SpecError, match=rf"t\.toml: missing required key '{section}'"):
        parse_spec(_without(section), "t.toml")


def test_missing_pipeline_name() -> None:
    d = base()
    del d["pipeline"]["name"]
    with pytest.raises(SpecError, match=r"\[pipeline\].*'name'"):
        parse_spec(d, "t.toml")


@pytest.mark.parametrize("key", ["name", "kind"])
def test_model_missing_name_or_kind(key: str) -> None:
    d = base()
    del d["models"][1][key]
    with pytest.raises(SpecError, match=rf"\[\[models\]\].*'{key}'"):
        parse_spec(d, "t.toml")


@pytest.mark.parametrize("models", [[], {}])
def test_empty_models(models: Any) -> None:
    d = base()
    d["models"] = models
    with pytest.raises(SpecError, match=r"at least one model"):
        parse_spec(d, "t.toml")


def test_no_features() -> None:
    d = base()
    d["features"] = {"numeric": [], "categorical": []}
    with pytest.raises(SpecError, match="no numeric or categorical feature"):
        parse_spec(d, "t.toml")


def test_unknown_model_kind() -> None:
    d = base()
    d["models"][1]["kind"] = "xgboost"
    with pytest.raises(SpecError) as ei:
        parse_spec(d, "t.toml")
    msg = str(ei.value)
    assert "t.toml" in msg and "'hat'" in msg and "'xgboost'" in msg
    assert "logistic_regression" in msg  # lists what is registered


def test_unknown_model_param() -> None:
    d = base()
    d["models"][0]["params"]["learning_rate"] = 0.1
    with pytest.raises(SpecError) as ei:
        parse_spec(d, "t.toml")
    msg = str(ei.value)
    assert "'lr'" in msg and "learning_rate" in msg and "known" in msg
    assert isinstance(ei.value.__cause__, ValueError)


@pytest.mark.parametrize(("model", "param", "value"), [
    (0, "lr", "0.1"),            # str for float
    (0, "lr", True),             # bool is not a float
    (1, "grace_period", 50.5),   # float for int
    (1, "grace_period", True),   # bool is not an int
    (1, "delta", [1e-7]),
])
def test_wrongly_typed_model_param(model: int, param: str, value: Any) -> None:
    d = base()
    d["models"][model]["params"][param] = value
    with pytest.raises(SpecError, match=rf"parameter '{param}' .* must be"):
        parse_spec(d, "t.toml")


def test_int_accepted_for_float_param() -> None:
    d = base()
    d["models"][0]["params"] = {"lr": 1}
    assert parse_spec(d).models[0].params == {"lr": 1}


def test_duplicate_model_names() -> None:
    d = base()
    d["models"][1]["name"] = "lr"
    with pytest.raises(SpecError, match="model names must be unique"):
        parse_spec(d, "t.toml")


def test_optional_feature_not_listed() -> None:
    d = base()
    d["features"]["optional"] = ["b", "zz"]
    with pytest.raises(SpecError, match=r"optional features \['zz'\] are not listed"):
        parse_spec(d, "t.toml")


@pytest.mark.parametrize("task", ["Classification", "multiclass", "ranking"])
def test_unsupported_task(task: str) -> None:
    d = base()
    d["pipeline"]["task"] = task
    with pytest.raises(SpecError, match=rf"task '{task}' is not supported"):
        parse_spec(d, "t.toml")


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_parse_does_not_mutate_document() -> None:
    d = base()
    before = copy.deepcopy(d)
    parse_spec(d)
    assert d == before


@pytest.mark.parametrize("section", ["numeric", "categorical"])
def test_feature_list_given_as_string(section: str) -> None:
    d = base()
    d["features"][section] = "abc"
    with pytest.raises(SpecError):
        parse_spec(d, "t.toml")


def test_params_not_a_table() -> None:
    d = base()
    d["models"][0]["params"] = "lr=0.1"
    with pytest.raises(SpecError, match="'lr'"):
        parse_spec(d, "t.toml")


# -- load_spec ---------------------------------------------------------------------------
def test_load_unknown_name_lists_bundled() -> None:
    with pytest.raises(SpecError, match=r"no pipeline spec 'nope'.*elec2.*online_retail"):
        load_spec("nope")


def test_load_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no pipeline spec"):
        load_spec(tmp_path / "absent.toml")


def test_load_malformed_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[pipeline\nname = 1\n")
    with pytest.raises(SpecError, match=str(p)):
        load_spec(p)


def test_load_from_path(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text(BASE_TOML)
    s = load_spec(p)
    assert s.name == "t" and len(s.models) == 2
    p.write_text(BASE_TOML.replace('kind = "hoeffding_adaptive_tree"', 'kind = "nope"'))
    with pytest.raises(SpecError, match=str(p)):
        load_spec(p)


# -- [[windows]] -----------------------------------------------------------------------
def _with_windows(*windows: dict[str, Any]) -> dict[str, Any]:
    d = base()
    d["windows"] = [dict(w) for w in windows]
    return d


def test_windows_of_every_kind_parse() -> None:
    s = parse_spec(_with_windows(
        {"key": "user", "field": "a", "size_ms": 60_000, "aggs": ["count", "sum"]},
        {"key": "user", "field": "a", "kind": "sliding", "size_ms": 60_000, "grace_ms": 100,
         "aggs": ["std", "last", "since"]},
        {"key": "user", "field": "a", "kind": "hopping", "size_ms": 3_600_000, "hop_ms": 600_000,
         "aggs": ["mean", "distinct"]},
        {"key": "user", "field": "item", "kind": "hopping", "size_ms": 86_400_000, "hop_ms": 3_600_000,
         "aggs": ["distinct"], "distinct_exact_max": 200},
        {"key": "user", "field": "a", "kind": "session", "gap_ms": 1_800_000, "half_life_ms": 600_000,
         "aggs": ["count", "since", "duration", "decay_sum", "decay_mean"]},
    ), "t.toml")
    assert [w.kind for w in s.windows] == ["tumbling", "sliding", "hopping", "hopping", "session"]
    assert s.model_numeric[2:] == (
        "a_count_1m_by_user", "a_sum_1m_by_user", "a_std_1m_by_user", "a_last_1m_by_user", "a_since_1m_by_user",
        "a_mean_1h_by_user", "a_distinct_1h_by_user", "item_distinct_1d_by_user",
        "a_count_session30m_by_user", "a_since_session30m_by_user", "a_duration_session30m_by_user",
        "a_decay10m_sum_session30m_by_user", "a_decay10m_mean_session30m_by_user")
    assert s.windows[3].distinct_exact_max == 200


@pytest.mark.parametrize("window,match", [
    ({"kind": "hopping", "size_ms": 60_000}, "hop_ms > 0"),
    ({"kind": "hopping", "size_ms": 60_000, "hop_ms": 7_000}, "dividing size_ms"),
    ({"kind": "hopping", "size_ms": 60_000, "hop_ms": 1}, "exceeds"),
    ({"kind": "hopping", "size_ms": 60_000, "hop_ms": 6_000, "aggs": ["last"]}, "not supported for hopping"),
    ({"kind": "hopping", "hop_ms": 6_000}, "missing required key 'size_ms'"),
    ({"kind": "session"}, "gap_ms > 0"),
    ({"kind": "session", "gap_ms": 10, "size_ms": 10}, "no size_ms"),
    ({"kind": "session", "gap_ms": 10, "grace_ms": -1}, "grace_ms must be a non-negative integer"),
    ({"kind": "session", "gap_ms": 10, "aggs": ["decay_mean"]}, "half_life_ms > 0"),
    ({"kind": "session", "gap_ms": "10m"}, "gap_ms must be an integer"),
    ({"kind": "tumbling", "size_ms": 10, "aggs": ["last"]}, "not supported for tumbling"),
    ({"kind": "sliding", "size_ms": 10, "hop_ms": 5}, "hop_ms is for hopping"),
    ({"kind": "tumbling", "size_ms": 10, "gap_ms": 5}, "gap_ms is for session"),
    ({"kind": "weekly", "size_ms": 10}, "not supported"),
    ({"kind": "session", "gap_ms": 10, "aggs": ["median"]}, "unknown aggregation"),
    ({"kind": "session", "gap_ms": 10, "gap": 10}, "unknown key"),
])
def test_bad_windows_are_spec_errors(window: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=rf"t\.toml: \[\[windows\]\]: .*{match}"):
        parse_spec(_with_windows({"key": "user", "field": "a", **window}), "t.toml")


def test_window_field_must_be_numeric_only_when_its_value_is_read() -> None:
    ok = parse_spec(_with_windows(
        {"key": "user", "field": "c", "kind": "session", "gap_ms": 10, "aggs": ["since", "count", "distinct"]},
        {"key": "user", "field": "sku", "kind": "hopping", "size_ms": 20, "hop_ms": 10, "aggs": ["distinct"]},
        {"key": "user", "field": "sku", "kind": "sliding", "size_ms": 30, "aggs": ["count", "since", "distinct"]}))
    assert [w.field for w in ok.windows] == ["c", "sku", "sku"]
    for window in ({"kind": "session", "gap_ms": 10, "aggs": ["sum"]},
                   {"kind": "hopping", "size_ms": 20, "hop_ms": 10, "aggs": ["count", "max"]},
                   {"kind": "sliding", "size_ms": 20, "aggs": ["since", "last"]},
                   {"kind": "tumbling", "size_ms": 20, "aggs": ["count"]}):
        with pytest.raises(SpecError, match="must be a numeric feature"):
            parse_spec(_with_windows({"key": "user", "field": "sku", **window}), "t.toml")


def test_colliding_window_names_are_rejected() -> None:
    doc = _with_windows({"key": "user", "field": "a", "size_ms": 60_000, "aggs": ["sum"]},
                        {"key": "user", "field": "a", "kind": "hopping", "size_ms": 60_000, "hop_ms": 10_000,
                         "aggs": ["sum", "mean"]})
    with pytest.raises(SpecError, match=r"t\.toml: \[\[windows\]\]: feature names collide: \['a_sum_1m_by_user'\]"):
        parse_spec(doc, "t.toml")

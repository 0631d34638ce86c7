"""PartitionProcessor with several kinds of model: torch, blend, rules, shadows, label timeouts.

Real River, real torch (CPU), real RocksDB; no broker. Each test states the
semantics it pins (see the processor's and models' docstrings).
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.processor import Output, PartitionProcessor, Record
from streams.spec import SpecError, parse_spec
from streams.state import PartitionStore

KEY = b"k"

BASE = """
[pipeline]
name = "t"
[fields]
event_id = "event_id"
timestamp = "ts"
label = "label"
[features]
numeric = ["a", "b"]
categorical = ["c"]
"""


def spec_of(extra: str) -> Any:
    return parse_spec(tomllib.loads(BASE + extra), "<test>")


_off = itertools.count()


def ev(i: int, ts: int | None = None, **over: Any) -> dict[str, Any]:
    v = {"event_id": f"e{i}", "ts": i * 10 if ts is None else ts, "a": (i % 7) / 7, "b": float(i % 3),
         "c": "xy"[i % 2]}
    v.update(over)
    return v


def lab(i: int, y: int, ts: int = 0) -> dict[str, Any]:
    return {"event_id": f"e{i}", "ts": ts, "label": y}


def recs(*docs: dict[str, Any]) -> list[Record]:
    return [Record(next(_off), KEY, orjson.dumps(d), 0) for d in docs]


def preds(outs: list[Output]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outs if o.topic == "predictions"]


def proc(spec: Any, path: Path, key: bytes | None = b"0123456789abcdef-test") -> PartitionProcessor:
    return PartitionProcessor(spec, PartitionStore(path), 0, snapshot_key=key, clock=lambda: 0.0)


LR = """
[[models]]
name = "lr"
kind = "logistic_regression"
"""
DEEP = """
[[models]]
name = "deep"
kind = "wide_deep"
params = { batch_size = 4, hidden = 8, embed_dim = 2, buckets = 64, device = "cpu" }
"""


# -- label timeouts --------------------------------------------------------------
TIMEOUT = LR + """
[labels]
timeout_ms = 100
default = 0
"""


def test_timeout_fires_when_events_and_labels_both_pass_the_deadline(tmp_path: Path) -> None:
    p = proc(spec_of(TIMEOUT), tmp_path / "s")
    p.process("events", recs(ev(0, ts=0), ev(1, ts=50), ev(2, ts=100)))
    p.process("labels", recs(lab(2, 1, ts=101)))
    assert p.models[0].n_learned == 1          # e2's label; deadline 100 is not before min(100, 101)
    p.process("events", recs(ev(3, ts=101)))
    assert p.models[0].n_learned == 2 and p.last_stats.labels_timed_out == 1   # e0
    p.process("events", recs(ev(4, ts=151)))
    assert p.last_stats.labels_timed_out == 0  # labels are still at 101: e1 (deadline 150) may yet get one
    p.process("labels", recs(lab(4, 0, ts=151)))
    assert p.last_stats.labels_timed_out == 1 and p.models[0].n_learned == 4
    # labels train at once; the metrics count an event at its deadline (e2, e4: not yet)
    assert p.prequential["lr"].state()["n"] == 2


def test_idle_labels_delay_timeouts_by_one_timeout_at_most(tmp_path: Path) -> None:
    p = proc(spec_of(TIMEOUT), tmp_path / "s")
    p.process("events", recs(ev(0, ts=0), ev(1, ts=200)))
    assert p.last_stats.labels_timed_out == 0
    p.process("events", recs(ev(2, ts=201)))   # no label ever: watermark = 201 - 100 > deadline 100
    assert p.last_stats.labels_timed_out == 1


def test_labels_before_the_deadline_train_now_and_count_at_the_deadline(tmp_path: Path) -> None:
    p = proc(spec_of(TIMEOUT), tmp_path / "s")
    p.process("events", recs(ev(0, ts=0), ev(1, ts=0)))
    p.process("labels", recs(lab(0, 1)))
    assert p.models[0].n_learned == 1 and p.prequential["lr"].state()["n"] == 0
    out = p.process("labels", recs(lab(0, 1)))
    assert [orjson.loads(o.value)["reason"] for o in out if o.topic == "dlq"] == ["duplicate_label"]
    p.process("events", recs(ev(2, ts=500)))
    assert p.last_stats.labels_timed_out == 1  # only e1: e0 had its label
    preq = p.prequential["lr"].state()
    assert preq["n"] == 2 and preq["auc_pos"] and preq["auc_neg"]    # e0 counted as 1, e1 as 0
    out = p.process("labels", recs(lab(1, 1), lab(0, 1)))   # after the deadline: late, not dead letters
    assert out == [] and p.last_stats.labels_late == 2 and p.models[0].n_learned == 2


def test_pending_timeouts_survive_a_restart(tmp_path: Path) -> None:
    spec = spec_of(TIMEOUT)
    p = proc(spec, tmp_path / "s")
    p.process("events", recs(ev(0, ts=0), ev(1, ts=10)))
    p.flush()
    p.close()
    q = proc(spec, tmp_path / "s")
    q.process("events", recs(ev(2, ts=1000)))
    assert q.last_stats.labels_timed_out == 2 and q.models[0].n_learned == 2
    q.flush()
    assert q.store.scan("t:") == [("t:e2", b"1100")]   # bounded: only the open deadline is left
    assert q.store.get("w:event") == b"1000"


def test_default_label_needs_a_timeout() -> None:
    with pytest.raises(SpecError, match="timeout_ms"):
        spec_of(LR + "\n[labels]\ndefault = 0\n")


# -- torch model -------------------------------------------------------------------
def test_torch_scores_once_per_batch_and_learns_from_labels(tmp_path: Path) -> None:
    spec = spec_of(LR + DEEP)
    p = proc(spec, tmp_path / "s")
    out = p.process("events", recs(*[ev(i) for i in range(8)]))
    ps = preds(out)
    assert [d["event_id"] for d in ps] == [f"e{i}" for i in range(8)]
    assert all(set(d["scores"]) == {"lr", "deep"} for d in ps)
    assert all(0.0 < d["scores"]["deep"] < 1.0 for d in ps)
    assert p.last_stats.inference_s and "deep" in p.last_stats.inference_s
    deep = p.batch_models[0]
    assert deep.version == "deep@0"
    p.process("labels", recs(*[lab(i, i % 2) for i in range(8)]))
    assert deep.version == "deep@2"            # 8 labels, a step every 4
    # the champion (first model) makes the decision without a [blend]
    assert ps[0]["model"] == "lr" and ps[0]["score"] == ps[0]["scores"]["lr"]


def test_torch_model_snapshot_restores_exactly(tmp_path: Path) -> None:
    spec = spec_of(LR + DEEP)
    p = proc(spec, tmp_path / "s")
    p.process("events", recs(*[ev(i) for i in range(10)]))
    p.process("labels", recs(*[lab(i, i % 2) for i in range(10)]))
    p.flush()
    before = p.process("events", recs(ev(100), ev(101)))
    p.close()
    q = proc(spec, tmp_path / "s")
    assert q.batch_models[0].version == p.batch_models[0].version
    # e100/e101 were not flushed: scored again after the restart, with the same weights -> same bytes
    after = q.process("events", recs(ev(100), ev(101)))
    assert [o.value for o in after] == [o.value for o in before]


def test_hot_swap_changes_weights_and_version_between_batches(tmp_path: Path) -> None:
    spec = spec_of(DEEP)
    trained = proc(spec, tmp_path / "a")
    trained.process("events", recs(*[ev(i) for i in range(40)]))
    trained.process("labels", recs(*[lab(i, 1) for i in range(40)]))
    ckpt = trained.batch_models[0].state()
    live = proc(spec, tmp_path / "b")
    s0 = preds(live.process("events", recs(ev(1000))))[0]
    version = live.swap_weights("deep", ckpt)
    s1 = preds(live.process("events", recs(ev(1001, **{k: ev(1000)[k] for k in ("a", "b", "c")}))))[0]
    assert version == "deep@10" and s1["model_version"] == "deep@10" and s0["model_version"] == "deep@0"
    assert s1["score"] > s0["score"]          # trained on positives only
    with pytest.raises(KeyError):
        live.swap_weights("nope", ckpt)


def test_a_frozen_model_scores_and_is_evaluated_but_learns_only_from_a_deployed_checkpoint(tmp_path: Path) -> None:
    """``learn = false``: the stream's labels evaluate the model and train the others, never it."""
    frozen = (LR + DEEP).replace('kind = "wide_deep"', 'kind = "wide_deep"\nlearn = false')
    spec = spec_of(frozen + "\n[blend]\npolicy = \"weighted\"\n")
    assert [m.learn for m in spec.models] == [True, False]
    p = proc(spec, tmp_path / "s")
    deep = p.batch_models[0]
    before = {k: v.clone() for k, v in deep.module.state_dict().items()}
    s0 = preds(p.process("events", recs(ev(1000))))[0]["scores"]["deep"]
    for lo in range(0, 40, 10):
        p.process("events", recs(*[ev(i) for i in range(lo, lo + 10)]))
        p.process("labels", recs(*[lab(i, 1) for i in range(lo, lo + 10)]))
    assert deep.steps == 0 and deep.n_learned == 0 and deep.n_pending == 0
    assert all((deep.module.state_dict()[k] == v).all() for k, v in before.items())
    assert p.models[0].n_learned == 40                      # the River model learns as usual
    assert p.prequential["deep"].state()["n"] == 40         # and the frozen one is evaluated on every label
    same = preds(p.process("events", recs(ev(1001, **{k: ev(1000)[k] for k in ("a", "b", "c")}))))[0]
    assert same["scores"]["deep"] == s0 and same["model_version"].startswith("lr@40+deep@0")
    # its weights come from a checkpoint trained elsewhere (streamscore train), swapped in between batches
    trainer = proc(spec_of(LR + DEEP), tmp_path / "t")
    trainer.process("events", recs(*[ev(i) for i in range(40)]))
    trainer.process("labels", recs(*[lab(i, 1) for i in range(40)]))
    assert p.swap_weights("deep", trainer.batch_models[0].state()) == "deep@10"
    after = preds(p.process("events", recs(ev(1002, **{k: ev(1000)[k] for k in ("a", "b", "c")}))))[0]
    assert after["scores"]["deep"] > s0
    p.process("labels", recs(lab(1002, 1)))
    assert p.batch_models[0].steps == 10 and p.batch_models[0].n_pending == 0   # still frozen after the swap


def test_a_frozen_model_scores_a_whole_batch_in_one_pass_with_the_same_bits(tmp_path: Path) -> None:
    """No step can come, so one forward pass per batch: the scores of events one at a time, bit for bit."""
    spec = spec_of((LR + DEEP).replace('kind = "wide_deep"', 'kind = "wide_deep"\nlearn = false'))
    trainer = proc(spec_of(LR + DEEP), tmp_path / "t")
    trainer.process("events", recs(*[ev(i) for i in range(40)]))
    trainer.process("labels", recs(*[lab(i, i % 2) for i in range(40)]))
    ckpt = trainer.batch_models[0].state()
    docs = [ev(i, a=(i % 97) / 9.0, b=float(i % 13)) for i in range(100, 1300)]
    whole, single = proc(spec, tmp_path / "w"), proc(spec, tmp_path / "s")
    for p in (whole, single):
        p.swap_weights("deep", ckpt)
    passes = []
    model = whole.batch_models[0]
    real = model.predict_proba_many
    model.predict_proba_many = lambda xs, num=None: passes.append(len(xs)) or real(xs, num)  # type: ignore[method-assign]
    at_once = preds(whole.process("events", recs(*docs)))
    one_by_one = [d for doc in docs for d in preds(single.process("events", recs(doc)))]
    assert passes == [len(docs)]
    assert [d["scores"]["deep"] for d in at_once] == [d["scores"]["deep"] for d in one_by_one]
    assert len({d["scores"]["deep"] for d in at_once}) > 100        # the weights are not a constant


def test_streamscore_train_trains_a_model_the_stream_does_not(tmp_path: Path) -> None:
    """``learn = false`` freezes a model in the stream only: offline training is where its weights come from."""
    from streams.train import train

    spec = spec_of((LR + DEEP).replace('kind = "wide_deep"', 'kind = "wide_deep"\nlearn = false'))
    data = tmp_path / "s.jsonl"
    lines = [{"topic": "events", "key": "k", "value": ev(i)} for i in range(40)]
    lines += [{"topic": "labels", "key": "k", "value": lab(i, 1)} for i in range(40)]
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    report = train(spec, data, out=tmp_path / "deep.pt")
    assert report["models"]["deep"]["version"] == "deep@10" and (tmp_path / "deep.pt").exists()
    assert spec.models[1].learn is False                    # the caller's spec is left as it was


def test_learn_must_be_a_boolean() -> None:
    with pytest.raises(SpecError, match="learn must be true or false"):
        spec_of(LR.replace('kind = "logistic_regression"', 'kind = "logistic_regression"\nlearn = "no"'))


# -- blend, rules, shadows --------------------------------------------------------------
BLEND = LR + DEEP + """
[[models]]
name = "hat"
kind = "hoeffding_adaptive_tree"
shadow = true

[blend]
policy = "weighted"
weights = { lr = 3.0, deep = 1.0 }
"""


def test_weighted_blend_publishes_the_blend_and_keeps_shadows_out(tmp_path: Path) -> None:
    spec = spec_of(BLEND)
    assert spec.decision_name == "blend" and [m.name for m in spec.deciders] == ["lr", "deep"]
    p = proc(spec, tmp_path / "s")
    d = preds(p.process("events", recs(ev(1))))[0]
    s = d["scores"]
    assert d["model"] == "blend" and set(s) == {"lr", "deep", "hat", "blend"}
    assert d["score"] == pytest.approx((3 * s["lr"] + s["deep"]) / 4)
    assert d["model_version"] == "lr@0+deep@0+blend@0"
    p.process("labels", recs(lab(1, 1)))
    figures = p.snapshot()["models"]
    assert set(figures) == {"lr", "deep", "hat", "blend"} and figures["hat"]["n"] == 1


def test_rules_floor_cap_override_and_reasons(tmp_path: Path) -> None:
    spec = spec_of(LR + """
[[rules]]
name = "big_a"
when = "a > 0.5"
reason = "large_a"
action = "floor"
value = 0.9

[[rules]]
name = "c_is_y"
when = "c == 'y' and score_lr < 0.99"
reason = "category_y"
action = "flag"
""")
    p = proc(spec, tmp_path / "s")
    out = preds(p.process("events", recs(ev(6, a=0.8, c="x"), ev(2, a=0.1, c="y"), ev(3, a=0.1, c="x"))))
    assert out[0]["score"] == 0.9 and out[0]["class"] == 1 and out[0]["reasons"] == ["large_a"]
    assert out[0]["scores"]["lr"] == 0.5      # the model's own score is kept
    assert out[1]["rules"] == ["c_is_y"] and out[1]["score"] == 0.5
    assert "rules" not in out[2]
    assert p.last_stats.rule_hits == {"big_a": 1, "c_is_y": 1}


def test_rules_read_the_decision_score_and_every_models_own_score(tmp_path: Path) -> None:
    """``score`` is the decision's (the blend's), ``score_<model>`` each model's, shadows included."""
    spec = spec_of(BLEND + """
[[rules]]
name = "blended"
when = "score > 0.4 and score < 0.6"
reason = "b"
action = "flag"

[[rules]]
name = "models"
when = "score_lr == 0.5 and score_deep == 0.5 and score_hat < 0.6 and b >= 0"
reason = "m"
action = "flag"

[[rules]]
name = "never"
when = "score_lr > 0.6"
reason = "n"
action = "flag"
""")
    p = proc(spec, tmp_path / "s")
    out = preds(p.process("events", recs(ev(1))))
    assert out[0]["rules"] == ["blended", "models"] and p.last_stats.rule_hits == {"blended": 1, "models": 1}


def test_a_rule_over_an_unknown_field_is_refused_at_load() -> None:
    with pytest.raises(SpecError, match="rules"):
        spec_of(LR + '\n[[rules]]\nname = "r"\nwhen = "nope > 1"\nreason = "x"\n')


def test_every_model_a_shadow_is_refused() -> None:
    with pytest.raises(SpecError, match="shadow"):
        spec_of(LR.replace('kind = "logistic_regression"', 'kind = "logistic_regression"\nshadow = true'))


def test_a_features_only_pipeline_needs_no_model(tmp_path: Path) -> None:
    spec = parse_spec(tomllib.loads(BASE.replace('name = "t"', 'name = "t"\ntask = "features"') + """
[[windows]]
key = "c"
field = "a"
size_ms = 1000
aggs = ["count"]
"""), "<test>")
    p = proc(spec, tmp_path / "s")
    d = preds(p.process("events", recs(ev(1), ev(3))))
    assert [x["features"]["a_count_1s_by_c"] for x in d] == [1.0, 2.0] and p.decision == "features"


def test_torch_scores_do_not_depend_on_micro_batch_boundaries(tmp_path: Path) -> None:
    """Real elec2 with inline labels: training steps land inside batches; every event must
    still be scored by the weights after every record before it, as with one record per batch."""
    from streams.datasets import iter_records
    from streams.spec import load_spec

    spec = load_spec("elec2_deep")
    rows = [Record(i, r["key"].encode(), orjson.dumps(r["value"]), 0)
            for i, r in enumerate(iter_records("elec2", limit=1200))]
    outs = {}
    for size in (1, 7, 500):
        p = PartitionProcessor(spec, PartitionStore(tmp_path / f"b{size}"), 0, clock=lambda: 0.0)
        outs[size] = [o.value for i in range(0, len(rows), size) for o in p.process("events", rows[i:i + size])]
        assert p.batch_models[0].steps >= 10
    assert outs[7] == outs[1] and outs[500] == outs[1]


def test_torch_inputs_from_the_window_matrix_score_and_train_as_the_dicts(tmp_path: Path) -> None:
    """The worker hands torch models the window kernels' matrix instead of each event's dict
    (PartitionProcessor._model_rows): on real online_retail (windows, a categorical field,
    labels on their own topic, label timeouts, flushes between batches so some labels find
    their event on disk) the published bytes and the trained weights must be the same."""
    import torch

    from streams.datasets import iter_records
    from streams.spec import load_spec

    spec = load_spec("online_retail")
    rows = [(r["topic"], Record(i, r["key"].encode(), orjson.dumps(r["value"]), 0))
            for i, r in enumerate(iter_records("online_retail_returns", limit=3000))]
    outs, weights = {}, {}
    for matrix in (True, False):
        p = PartitionProcessor(spec, PartitionStore(tmp_path / str(matrix)), 0, clock=lambda: 0.0)
        assert p._rows_ok                       # this pipeline takes the matrix path
        p._rows_ok = matrix
        got = []
        for n, (topic, group) in enumerate(itertools.groupby(rows, key=lambda tr: tr[0])):
            got += [o.value for o in p.process(topic, [r for _, r in group])]
            if n % 3 == 2:
                p.flush()
        deep = p.batch_models[0]
        assert deep.steps >= 5
        outs[matrix] = got
        weights[matrix] = [t.clone() for t in deep.module.state_dict().values()]
        assert any(k in p._rows for k in p._open) or not matrix or not p._open
    assert outs[True] == outs[False]
    assert all(torch.equal(a, b) for a, b in zip(weights[True], weights[False]))

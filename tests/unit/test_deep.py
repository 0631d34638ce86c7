"""DeepModel (models/deep.py): learning, purity of predict, determinism, checkpoints, hot swap.

Real torch on the CPU (and a CUDA variant when a GPU exists); no mocks.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.base import Classifier
from models.deep import (
    CUDA_PASS_ROWS,
    DeepModel,
    DeepParams,
    load_checkpoint,
    resolve_device,
)

NUMERIC = [f"n{i}" for i in range(12)]
CATEGORICAL = ["country"]
COUNTRIES = ["fr", "de", "us", "jp", "br"]
CPU = "cpu"


def make_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """A linearly separable problem (with a margin) over 12 numeric features and a country.

    Numeric features have non-zero means and unequal scales, so standardisation matters.
    """
    rng = random.Random(seed)
    w = [1.5, -2.0, 1.0, 0.5, -0.5, 0, 0, 0, 0, 0, 0, 0]
    scale = [1.0, 10.0, 0.1, 2.0, 5.0, 1, 1, 1, 1, 1, 1, 1]
    shift = {"fr": 2.0, "de": -2.0, "us": 0.0, "jp": 1.0, "br": -1.0}
    xs: list[dict[str, Any]] = []
    ys: list[int] = []
    while len(xs) < n:
        u = [rng.gauss(0, 1) for _ in NUMERIC]
        c = rng.choice(COUNTRIES)
        score = sum(wi * ui for wi, ui in zip(w, u, strict=True)) + shift[c]
        if abs(score) < 0.3:          # keep a margin: separable
            continue
        x: dict[str, Any] = {f: 100.0 + s * ui for f, s, ui in zip(NUMERIC, scale, u, strict=True)}
        x["country"] = c
        xs.append(x)
        ys.append(int(score > 0))
    return xs, ys


def model(seed: int = 42, **kw: Any) -> DeepModel:
    params = DeepParams(**{"device": CPU, "seed": seed, "buckets": 1024, "batch_size": 32, "lr": 0.01} | kw)
    return DeepModel("wd", NUMERIC, CATEGORICAL, params)


def log_loss(ps: list[float], ys: list[int]) -> float:
    eps = 1e-7
    return -sum(math.log(min(max(p if y else 1 - p, eps), 1.0)) for p, y in zip(ps, ys, strict=True)) / len(ys)


def snapshot(m: DeepModel) -> dict[str, Any]:
    """Everything that defines the model's behaviour, deep-copied."""
    return copy.deepcopy(m.state())


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact (bitwise for tensors) equality of two nested state structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"tensor differs at {path}"
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"keys differ at {path}"
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{path}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {path}"


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]], list[int]]:
    xs, ys = make_rows(5000, seed=1)
    return xs[:4000], ys[:4000], xs[4000:], ys[4000:]


@pytest.fixture(scope="module")
def trained(data: Any) -> DeepModel:
    xs, ys, _, _ = data
    m = model()
    m.learn_many(xs[:2000 + 7], ys[:2000 + 7])   # 62 steps, 23 pending
    return m


# ---------------------------------------------------------------------- basics

def test_untrained_model_predicts_one_half_and_is_a_classifier() -> None:
    m = model()
    assert isinstance(m, Classifier)
    assert m.predict_proba_one({"n0": 1.0, "country": "fr"}) == 0.5
    assert m.version == "wd@0" and m.n_learned == 0 and m.steps == 0
    assert m.predict_proba_many([]) == []


def test_params_are_simple_scalars_and_validated() -> None:
    for f in dataclasses.fields(DeepParams):
        assert type(f.default) in (int, float, str), f.name
    with pytest.raises(ValueError, match="batch_size"):
        DeepParams(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        DeepParams(lr=float("nan"))
    with pytest.raises(ValueError, match="at least one"):
        DeepModel("x", [], [], DeepParams(device=CPU))
    with pytest.raises(ValueError, match="more than once"):
        DeepModel("x", ["a"], ["a"], DeepParams(device=CPU))


def test_construction_does_not_touch_the_global_rng() -> None:
    before = torch.get_rng_state()
    model(seed=7)
    assert torch.equal(before, torch.get_rng_state())


def test_version_counts_steps_and_predictions_change_only_on_steps(data: Any) -> None:
    xs, ys, test_xs, _ = data
    m = model(batch_size=10)
    m.learn_many(xs[:10], ys[:10])
    assert (m.version, m.n_learned, m.n_pending) == ("wd@1", 10, 0)
    before = m.predict_proba_many(test_xs[:50])
    m.learn_many(xs[10:19], ys[10:19])              # 9 buffered: no step, no statistics update
    assert (m.version, m.n_learned, m.n_pending) == ("wd@1", 19, 9)
    assert m.predict_proba_many(test_xs[:50]) == before
    m.learn_one(xs[19], ys[19])
    assert (m.version, m.n_learned, m.n_pending) == ("wd@2", 20, 0)
    assert m.predict_proba_many(test_xs[:50]) != before


def test_learn_many_checks_lengths() -> None:
    with pytest.raises(ValueError, match="labels"):
        model().learn_many([{"n0": 1.0}], [1, 0])


# ---------------------------------------------------------------------- learning

def test_learns_a_separable_problem(data: Any) -> None:
    xs, ys, test_xs, test_ys = data
    m = model()
    m.learn_many(xs, ys)
    assert m.steps == len(xs) // 32
    ps = m.predict_proba_many(test_xs)
    base_rate = sum(ys) / len(ys)
    baseline = log_loss([base_rate] * len(test_ys), test_ys)
    loss = log_loss(ps, test_ys)
    accuracy = sum((p > 0.5) == bool(y) for p, y in zip(ps, test_ys, strict=True)) / len(test_ys)
    assert baseline > 0.6
    assert loss < 0.5 * baseline, (loss, baseline)
    assert accuracy > 0.9, accuracy


def test_running_statistics_are_the_learned_datas_moments(data: Any) -> None:
    xs, ys, _, _ = data
    m = model(batch_size=50)
    rows = [dict(x) for x in xs[:500]]
    rows[3]["n0"] = None                    # missing and non-finite values are not counted
    rows[4]["n0"] = float("inf")
    del rows[5]["n1"]
    m.learn_many(rows, ys[:500])
    stats = m.state()["stats"]
    assert stats["mean"].dtype == torch.float64
    raw = np.array([[x.get(f) if x.get(f) is not None else np.nan for f in NUMERIC] for x in rows], dtype=float)
    raw[~np.isfinite(raw)] = np.nan
    np.testing.assert_allclose(stats["count"].numpy(), np.sum(np.isfinite(raw), axis=0))
    np.testing.assert_allclose(stats["mean"].numpy(), np.nanmean(raw, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["m2"].numpy() / stats["count"].numpy(), np.nanvar(raw, axis=0), rtol=1e-9)


# ---------------------------------------------------------------------- predict is pure

def test_predict_mutates_neither_inputs_nor_model(trained: DeepModel, data: Any) -> None:
    _, _, test_xs, _ = data
    rows = [dict(x) for x in test_xs[:100]]
    rows[0]["n0"] = None
    rows[1]["country"] = None
    del rows[2]["n3"]
    rows_before = copy.deepcopy(rows)
    state_before = snapshot(trained)
    rng_before = torch.get_rng_state()
    first = trained.predict_proba_many(rows)
    trained.predict_proba_one(rows[5])
    assert rows == rows_before
    assert_same(trained.state(), state_before)
    assert torch.equal(rng_before, torch.get_rng_state())
    assert not trained.module.training
    assert trained.predict_proba_many(rows) == first


def test_batch_prediction_equals_per_row_prediction(trained: DeepModel, data: Any) -> None:
    _, _, test_xs, _ = data
    rows = test_xs[:300]
    batch = trained.predict_proba_many(rows)
    single = [trained.predict_proba_one(x) for x in rows]
    assert len(batch) == len(rows)
    assert max(abs(a - b) for a, b in zip(batch, single, strict=True)) <= 1e-6
    assert len({round(p, 6) for p in batch}) > 100        # not a constant model


def _scores_by_cut(m: DeepModel, rows: list[dict[str, Any]], cuts: list[int]) -> list[list[float]]:
    """Each row's score when the rows are cut into batches of each size in ``cuts``."""
    return [[p for i in range(0, len(rows), c) for p in m.predict_proba_many(rows[i:i + c])] for c in cuts]


def test_a_rows_score_is_the_same_bits_in_any_batch(trained: DeepModel, data: Any) -> None:
    """Replays and restarts cut micro-batches elsewhere, and a fetch round scores several
    partitions in one pass: a row's score must not move with the rows beside it."""
    rows = data[2][:700]
    first, *others = _scores_by_cut(trained, rows, [700, 1, 5, 16, 17, 64, 333])
    for other in others:
        assert other == first                       # float equality: the same bits


def test_fixed_size_passes_give_the_scores_of_one_pass(trained: DeepModel, data: Any) -> None:
    """The bookkeeping of CUDA's fixed-shape passes (padding, slices, the rows put back in
    order), run on the CPU with 32-row passes: the same bits as one pass over the batch."""
    rows = data[2][:300]
    whole = trained.predict_proba_many(rows)
    sliced = copy.deepcopy(trained)
    sliced._pass_rows = 32
    assert sliced.predict_proba_many(rows) == whole                  # 300 rows: 10 passes, 20 padded
    assert sliced.predict_proba_many(rows[:32]) == whole[:32]        # exactly one pass
    assert sliced.predict_proba_many(rows[7:8]) == whole[7:8]
    assert trained._pass_rows is None and model()._pass_rows is None   # the CPU runs one pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_rows_score_is_the_same_bits_in_any_batch(trained: DeepModel, data: Any) -> None:
    gpu = DeepModel.loads(trained.dumps(), device="cuda")
    assert gpu._pass_rows == CUDA_PASS_ROWS
    rows = (data[2] * 3)[:2 * CUDA_PASS_ROWS + 300]
    first, *others = _scores_by_cut(gpu, rows, [len(rows), 1, 17, 64, 700, CUDA_PASS_ROWS, CUDA_PASS_ROWS + 1])
    for other in others:
        assert other == first


def test_forward_is_the_layers_called_as_modules_bit_for_bit(trained: DeepModel, data: Any) -> None:
    """forward() calls F.linear/F.relu/F.embedding itself (faster than each submodule's __call__):
    outputs and gradients must equal those of the network run through its modules."""
    _, _, test_xs, test_ys = data
    num, cat = trained._encode(test_xs[:64])
    dense, cat_t = trained._inputs(num, cat, trained._mean, trained._inv_std)
    net = copy.deepcopy(trained.module).train()

    def through_modules() -> torch.Tensor:
        logit = net.bias.expand(dense.shape[0], 1) + net.wide_dense(dense) + net.wide_embed(cat_t).sum(dim=1)
        deep_in = torch.cat([dense, net.deep_embed(cat_t).flatten(1)], dim=1)
        return (logit + net.deep(deep_in)).squeeze(1)

    y = torch.tensor(test_ys[:64], dtype=torch.float32)
    grads = []
    for run in (lambda: net(dense, cat_t), through_modules):
        net.zero_grad(set_to_none=True)
        out = run()
        torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
        grads.append((out.detach().clone(), [p.grad.clone() for p in net.parameters()]))
    (out_a, grad_a), (out_b, grad_b) = grads
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grad_a, grad_b, strict=True))
    assert len({round(v, 6) for v in out_a.tolist()}) > 10     # a trained, non-constant network


# ---------------------------------------------------------------------- missing values

def test_missing_numeric_is_the_mean_and_missing_categorical_has_its_own_bucket(trained: DeepModel) -> None:
    mean = trained.state()["stats"]["mean"].tolist()
    at_mean = dict(zip(NUMERIC, mean, strict=True)) | {"country": "fr"}
    p_mean = trained.predict_proba_one(at_mean)
    for bad in (None, float("nan"), float("inf"), -float("inf"), "not a number", [1, 2], [3], 10**400):
        row = dict(at_mean)
        row["n1"] = bad
        assert trained.predict_proba_one(row) == p_mean, bad
    row = dict(at_mean)
    del row["n1"]
    assert trained.predict_proba_one(row) == p_mean
    assert trained.predict_proba_one({"country": "fr"}) == p_mean     # every numeric missing
    every_value_a_list = {f: [1.0] for f in NUMERIC} | {"country": "fr"}
    assert trained.predict_proba_one(every_value_a_list) == p_mean
    assert trained.predict_proba_many([at_mean | {"n1": "7"}]) == trained.predict_proba_many([at_mean | {"n1": 7}])
    absent = trained.predict_proba_one({k: v for k, v in at_mean.items() if k != "country"})
    assert trained.predict_proba_one(at_mean | {"country": None}) == absent
    assert trained.predict_proba_one(at_mean | {"country": float("nan")}) == absent
    assert absent != p_mean
    assert 0.0 < absent < 1.0


def test_learning_from_rows_with_missing_values_stays_finite(data: Any) -> None:
    xs, ys, test_xs, _ = data
    rows = []
    for i, x in enumerate(xs[:256]):
        r = dict(x)
        if i % 3 == 0:
            del r["country"]
        if i % 5 == 0:
            r["n0"] = None
        if i % 7 == 0:
            r["n2"] = float("nan")
        rows.append(r)
    m = model()
    m.learn_many(rows, ys[:256])
    assert all(torch.isfinite(t).all() for t in m.module.state_dict().values())
    assert all(math.isfinite(p) for p in m.predict_proba_many(test_xs[:20] + rows[:20]))


# ---------------------------------------------------------------------- determinism

def test_same_examples_give_identical_weights_however_they_are_split(data: Any) -> None:
    xs, ys, _, _ = data
    n = 1000
    a, b, other_seed = model(), model(), model(seed=43)
    for x, y in zip(xs[:n], ys[:n], strict=True):
        a.learn_one(x, y)
    i = 0
    for size in [1, 7, 100, 3, 250, 31, 32, 33, 64, 500]:
        b.learn_many(xs[i:min(i + size, n)], ys[i:min(i + size, n)])
        i = min(i + size, n)
    assert i == n
    other_seed.learn_many(xs[:n], ys[:n])
    assert (a.steps, a.n_learned, a.n_pending) == (n // 32, n, n % 32)
    assert_same(a.state(), b.state())
    assert not all(torch.equal(u, v) for u, v in zip(a.module.state_dict().values(),
                                                     other_seed.module.state_dict().values(), strict=True))


# ---------------------------------------------------------------------- checkpoints

def continue_and_compare(original: DeepModel, restored: DeepModel, data: Any) -> None:
    xs, ys, test_xs, _ = data
    assert restored.version == original.version
    assert restored.n_learned == original.n_learned and restored.n_pending == original.n_pending
    assert restored.predict_proba_many(test_xs) == original.predict_proba_many(test_xs)
    more_x, more_y = xs[3000:3000 + 301], ys[3000:3000 + 301]
    original.learn_many(more_x, more_y)
    for x, y in zip(more_x, more_y, strict=True):
        restored.learn_one(x, y)
    assert_same(restored.state(), original.state())
    assert restored.predict_proba_many(test_xs) == original.predict_proba_many(test_xs)


def test_state_only_holds_weights_only_types(trained: DeepModel) -> None:
    d = torch.load(io.BytesIO(trained.dumps()), weights_only=True)
    assert_same(d, trained.state())
    assert d["format_version"] == 1 and d["steps"] == trained.steps and d["pending"]["labels"]


def test_dumps_loads_round_trip_continues_identically(data: Any) -> None:
    xs, ys, _, _ = data
    m = model()
    m.learn_many(xs[:1000], ys[:1000])
    assert m.n_pending > 0
    restored = DeepModel.loads(m.dumps(), device=CPU)
    continue_and_compare(m, restored, data)
    restored_from_dict = DeepModel.from_state(copy.deepcopy(m.state()))
    assert_same(restored_from_dict.state(), m.state())


def test_dumps_is_kept_while_the_model_is_unchanged_and_follows_every_change(data: Any) -> None:
    """A frozen model is snapshotted at every flush: its bytes are serialised once, not each time."""
    xs, ys, _, _ = data
    m = model()
    m.learn_many(xs[:300], ys[:300])
    first = m.dumps()
    assert m.dumps() is first                              # nothing changed: the same bytes
    m.learn_one(xs[300], ys[300])                          # a buffered example
    second = m.dumps()
    assert second != first and DeepModel.loads(second, device=CPU).n_pending == m.n_pending
    m.learn_many(xs[301:600], ys[301:600])                 # steps
    third = m.dumps()
    assert DeepModel.loads(third, device=CPU).steps == m.steps > 0
    other = model(seed=7)
    other.learn_many(xs[:600], ys[:600])
    m.load_weights_from(other.state())                     # a hot swap: same steps, new weights
    swapped = DeepModel.loads(m.dumps(), device=CPU)
    assert_same(swapped.module.state_dict(), other.module.state_dict())


def test_save_load_checkpoint_round_trip_continues_identically(data: Any, tmp_path: Path) -> None:
    xs, ys, _, _ = data
    m = model()
    m.learn_many(xs[:777], ys[:777])
    path = tmp_path / "wd.pt"
    model(seed=1).save(path)            # overwritten atomically below
    m.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wd.pt"]     # no temporary left behind
    assert torch.load(path, weights_only=True)["steps"] == m.steps
    restored = load_checkpoint(path, device=CPU)
    continue_and_compare(m, restored, data)


def test_a_checkpoint_of_an_unfused_optimizer_continues_with_this_models_adam(data: Any) -> None:
    """Loading keeps this model's optimizer implementation (fused on the CPU), as it keeps its lr:
    load_state_dict alone would take the checkpoint's ``fused: None`` and run Adam's slow loop."""
    xs, ys, _, _ = data
    m = model()
    m.learn_many(xs[:100], ys[:100])
    state = m.state()
    for group in state["optimizer"]["param_groups"]:      # as saved by an unfused Adam
        group["fused"] = None
        group["foreach"] = None
    restored = DeepModel.from_state(state)
    assert [g["fused"] for g in restored._opt.param_groups] == [True]
    restored.learn_many(xs[100:200], ys[100:200])           # and it steps
    assert restored.steps == m.steps + 3


def test_from_state_rejects_foreign_dicts() -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        DeepModel.from_state({"format": "something else"})
    state = model().state()
    state["format_version"] = 99
    with pytest.raises(ValueError, match="format_version"):
        DeepModel.from_state(state)


# ---------------------------------------------------------------------- hot swap

def test_load_weights_from_swaps_predictions_to_the_checkpoints(data: Any) -> None:
    xs, ys, test_xs, _ = data
    live, trainer = model(seed=1), model(seed=2)
    live.learn_many(xs[:300], ys[:300])
    trainer.learn_many(xs[:2000], ys[:2000])
    assert live.predict_proba_many(test_xs) != trainer.predict_proba_many(test_xs)
    n_learned, pending = live.n_learned, live.n_pending
    live.load_weights_from(torch.load(io.BytesIO(trainer.dumps()), weights_only=True))
    assert live.predict_proba_many(test_xs) == trainer.predict_proba_many(test_xs)
    assert live.version == f"wd@{trainer.steps}"
    assert (live.n_learned, live.n_pending) == (n_learned, pending)
    live.learn_many(xs[:64], ys[:64])                   # keeps learning from the swapped weights
    assert all(math.isfinite(p) for p in live.predict_proba_many(test_xs[:10]))


@pytest.mark.parametrize("change", [
    {"numeric": NUMERIC[:-1]},
    {"categorical": ["city"]},
    {"params": {"hidden": 32}},
    {"params": {"layers": 1}},
    {"params": {"embed_dim": 4}},
    {"params": {"buckets": 2048}},
])
def test_load_weights_from_rejects_mismatched_inputs(change: dict[str, Any]) -> None:
    params = DeepParams(**{"device": CPU, "buckets": 1024, "batch_size": 32, "lr": 0.01} | change.get("params", {}))
    other = DeepModel("other", change.get("numeric", NUMERIC), change.get("categorical", CATEGORICAL), params)
    live = model()
    before = snapshot(live)
    with pytest.raises(ValueError, match="cannot load weights"):
        live.load_weights_from(other.state())
    assert_same(live.state(), before)


def test_load_weights_from_accepts_different_training_hyper_parameters() -> None:
    live = model(lr=0.001, batch_size=16)
    live.load_weights_from(model(seed=9, lr=0.5, batch_size=64).state())
    assert live.params.lr == 0.001
    assert live.state()["optimizer"]["param_groups"][0]["lr"] == 0.001


# ---------------------------------------------------------------------- devices

@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU exists: 'cuda' is valid here")
def test_cuda_without_a_gpu_raises_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        DeepModel("x", ["a"], [], DeepParams(device="cuda"))
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid device"):
        DeepModel("x", ["a"], [], DeepParams(device="tpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_matches_cpu_and_checkpoints_move_between_devices(data: Any) -> None:
    xs, ys, test_xs, _ = data
    cpu = model()
    cpu.learn_many(xs[:1000], ys[:1000])
    gpu = DeepModel.loads(cpu.dumps(), device="cuda")
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.predict_proba_many(test_xs), cpu.predict_proba_many(test_xs), atol=1e-5)
    gpu.learn_many(xs[1000:2000], ys[1000:2000])
    cpu.learn_many(xs[1000:2000], ys[1000:2000])
    # CUDA embedding backward sums with atomics: training agrees with the CPU's only to rounding.
    np.testing.assert_allclose(gpu.predict_proba_many(test_xs), cpu.predict_proba_many(test_xs), atol=1e-2)
    assert gpu.version == cpu.version
    back = DeepModel.loads(gpu.dumps(), device=CPU)
    np.testing.assert_allclose(back.predict_proba_many(test_xs), gpu.predict_proba_many(test_xs), atol=1e-5)
    batch = gpu.predict_proba_many(test_xs[:200])
    single = [gpu.predict_proba_one(x) for x in test_xs[:200]]
    assert max(abs(a - b) for a, b in zip(batch, single, strict=True)) <= 1e-6

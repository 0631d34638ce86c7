"""ext.ScaledLogistic / models.linear: the same bits as River's StandardScaler | LogisticRegression."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import optim, preprocessing

from ext_backends import DISABLE_NATIVE, nat, ref, require_native
from models.linear import ScaledLogisticRegression
from models.registry import LogisticRegression

FEATURES = ("a", "b", "c", "d")
VALUE = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000).map(float),
                  st.sampled_from([0.0, 1.0, -1.0, 1e-300, 123456.789]))
ROW = st.tuples(st.dictionaries(st.sampled_from(FEATURES), VALUE, min_size=1), st.booleans())


BACKENDS = [ref] if DISABLE_NATIVE or nat is None else [ref, nat]


def test_native_is_built_when_required():
    if not DISABLE_NATIVE:
        require_native()


def river(lr: float, l2: float, intercept_lr: float):  # what models.registry built before the kernel
    return preprocessing.StandardScaler() | LogisticRegression(optimizer=optim.SGD(lr), l2=l2, intercept_lr=intercept_lr)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(ROW, min_size=1, max_size=60), lr=st.sampled_from([0.01, 0.1, 0.5]),
       l2=st.sampled_from([0.0, 0.001]), intercept_lr=st.sampled_from([0.01, 0.05]))
def test_same_bits_as_river(backend, rows, lr, l2, intercept_lr):
    ref = river(lr, l2, intercept_lr)
    fast = backend.ScaledLogistic(lr, l2, intercept_lr)
    for x, y in rows:
        assert fast.predict_proba_one(dict(x)) == ref.predict_proba_one(dict(x)).get(True, 0.0)
        ref.learn_one(dict(x), y)
        fast.learn_one(dict(x), y)
    lr_model = ref["LogisticRegression"]
    state = fast.state()
    assert state["intercept"] == lr_model.intercept
    assert dict(zip(state["names"], state["weights"])) == {k: lr_model.weights.get(k, 0.0) for k in state["names"]}
    scaler = ref["StandardScaler"]
    assert dict(zip(state["names"], state["means"])) == {k: scaler.means[k] for k in state["names"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_round_trip_continues_identically(backend):
    a = backend.ScaledLogistic(0.05, 0.0, 0.01)
    rows = [({"a": float(i % 7), "b": float(i % 3) - 1.0}, i % 4 == 0) for i in range(200)]
    for x, y in rows[:100]:
        a.learn_one(x, y)
    b = backend.ScaledLogistic.from_state(a.state())
    for x, y in rows[100:]:
        assert a.predict_proba_one(x) == b.predict_proba_one(x)
        a.learn_one(x, y)
        b.learn_one(x, y)
    assert a.state() == b.state()


def test_backends_agree_on_a_long_stream():
    if len(BACKENDS) < 2:
        pytest.skip("one backend only")
    import random
    rnd = random.Random(3)
    models = [b.ScaledLogistic(0.01, 0.0, 0.01) for b in BACKENDS]
    for _ in range(5000):
        x = {f: rnd.lognormvariate(0, 2) for f in FEATURES if rnd.random() < 0.9}
        y = rnd.random() < 0.3
        assert len({m.predict_proba_one(x) for m in models}) == 1
        for m in models:
            m.learn_one(x, y)
    assert models[0].state() == models[1].state()


@pytest.mark.parametrize("backend", BACKENDS)
def test_names_as_new_string_objects_and_past_the_name_cache(backend):
    """The native kernel finds a feature's slot by the name object's address first (a
    pipeline passes the same str objects every event): an equal name in a new object, and
    names past the cache's 4,096, must still find the same slot."""
    import random
    rnd = random.Random(5)
    names = [f"feature_with_a_long_name_{i}" for i in range(5000)]
    same, fresh = backend.ScaledLogistic(0.05, 0.0, 0.01), backend.ScaledLogistic(0.05, 0.0, 0.01)
    for i in range(4600):
        picked = rnd.sample(names[:30], 5) + [names[30 + i]]
        x = {n: rnd.uniform(-3, 3) for n in picked}
        x_new = {"".join(list(n)): v for n, v in x.items()}      # equal names, other objects
        assert all(a is not b for a, b in zip(x, x_new))
        assert same.predict_proba_one(x) == fresh.predict_proba_one(x_new)
        same.learn_one(x, i % 3 == 0)
        fresh.learn_one(x_new if i % 2 else x, i % 3 == 0)
    assert same.state() == fresh.state()
    assert len(same.state()["names"]) == 4630


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_are_clear(backend):
    m = backend.ScaledLogistic(0.01, 0.0, 0.01)
    with pytest.raises(TypeError):
        m.learn_one({"a": "x"}, True)


def test_model_pickles_as_plain_data_and_answers_like_river():
    m, ref = ScaledLogisticRegression(lr=0.02), river(0.02, 0.0, 0.01)
    for i in range(50):
        x = {"a": float(i % 5), "b": float(i)}
        m.learn_one(x, i % 2)
        ref.learn_one(x, bool(i % 2))
    blob = pickle.dumps(m)
    assert b"ext." not in blob and b"_native" not in blob          # plain lists and floats, no kernel object
    back = pickle.loads(blob)
    x = {"a": 2.0, "b": 10.0}
    assert back.predict_proba_one(x) == m.predict_proba_one(x) == ref.predict_proba_one(x)

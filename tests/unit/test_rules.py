"""models.rules: parsing, compilation errors and the semantics of each action."""

from __future__ import annotations

import math
import pickle

import pytest

from models.rules import ACTIONS, NO_HITS, RuleOutcome, RuleSet, RuleSpec, rule_fields

FIELDS = rule_fields(["amount", "country", "opt"], ["lr", "hat"])


def rs(*rules: RuleSpec) -> RuleSet:
    return RuleSet(rules, FIELDS)


def ev(amount: float = 10.0, country: str = "UK", score: float = 0.3, lr: float = 0.3, hat: float = 0.3, **kw):
    return {"amount": amount, "country": country, "score": score, "score_lr": lr, "score_hat": hat, **kw}


# -- parsing -----------------------------------------------------------------


def test_parse_full_table():
    r = RuleSpec.parse({"name": "big", "when": "amount > 1000", "reason": "large_order", "action": "floor", "value": 1})
    assert r == RuleSpec("big", "amount > 1000", "large_order", "floor", 1.0)
    assert isinstance(r.value, float)
    assert RuleSpec.parse({"name": "f", "when": "true", "reason": "r"}).action == "flag"


@pytest.mark.parametrize(("doc", "match"), [
    ({"name": "x", "when": "true", "reason": "r", "action": "block"}, "unknown action 'block'"),
    ({"name": "x", "when": "true", "reason": "r", "action": "floor"}, "needs a value"),
    ({"name": "x", "when": "true", "reason": "r", "action": "cap"}, "needs a value"),
    ({"name": "x", "when": "true", "reason": "r", "action": "override"}, "needs a value"),
    ({"name": "x", "when": "true", "reason": "r", "value": 0.5}, "'flag' takes no value"),
    ({"name": "x", "when": "true", "reason": "r", "action": "floor", "value": 1.5}, r"in \[0, 1\]"),
    ({"name": "x", "when": "true", "reason": "r", "action": "cap", "value": -0.1}, r"in \[0, 1\]"),
    ({"name": "x", "when": "true", "reason": "r", "action": "override", "value": 2}, "0 or 1"),
    ({"name": "x", "when": "true", "reason": "r", "action": "override", "value": 0.5}, "0 or 1"),
    ({"name": "x", "when": "true", "reason": "r", "colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"name": "x", "reason": "r"}, "missing required key 'when'"),
    ({"name": "x", "when": "true"}, "missing required key 'reason'"),
    ({"when": "true", "reason": "r"}, "missing required key 'name'"),
    ({"name": "x", "when": " ", "reason": "r"}, "when must not be empty"),
])
def test_parse_errors(doc, match):
    with pytest.raises(ValueError, match=match):
        RuleSpec.parse(doc)


@pytest.mark.parametrize("doc", [
    {"name": "x", "when": "true", "reason": "r", "action": "floor", "value": "0.5"},
    {"name": "x", "when": "true", "reason": "r", "action": "floor", "value": True},
    {"name": "x", "when": 5, "reason": "r"},
])
def test_parse_type_errors(doc):
    with pytest.raises(TypeError):
        RuleSpec.parse(doc)


@pytest.mark.parametrize(("when", "match"), [
    ("amount > 5 and colour == 'red'", "rule 'r': unknown name 'colour'"),
    ("amount >", "rule 'r': syntax error"),
    ("amount > 5 )", "rule 'r': syntax error"),
    ("'a' > 5", "rule 'r': invalid expression"),
    ("country =~ '('", "rule 'r': invalid expression"),
    ("$now > $today", r"rule 'r': \$now is not allowed"),
    ("score > $random()", r"rule 'r': \$random is not allowed"),
])
def test_compile_errors_name_the_rule(when, match):
    ok = RuleSpec("ok", "amount > 1", "fine")
    with pytest.raises(ValueError, match=match):
        rs(ok, RuleSpec("r", when, "x"))


def test_duplicate_rule_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        rs(RuleSpec("a", "true", "x"), RuleSpec("a", "false", "y"))


def test_rule_fields():
    assert rule_fields(["a"], ["lr"]) == ("a", "score", "score_lr")
    with pytest.raises(ValueError, match="clash"):
        rule_fields(["score_lr"], ["lr"])


# -- each action ---------------------------------------------------------------


def test_flag_only_reports():
    r = rs(RuleSpec("big", "amount > 1000", "large_order"))
    score, cls, out = r.apply(0.3, 0.5, ev(amount=2000.0))
    assert (score, cls) == (0.3, 0)
    assert out == RuleOutcome(("big",), ("large_order",), None, None, None)
    assert r.apply(0.3, 0.5, ev(amount=5.0)) == (0.3, 0, NO_HITS)


def test_floor_raises_but_never_lowers():
    r = rs(RuleSpec("big", "amount > 1000", "large_order", "floor", 0.8))
    assert r.apply(0.3, 0.5, ev(amount=2000.0))[:2] == (0.8, 1)
    assert r.apply(0.95, 0.5, ev(amount=2000.0))[:2] == (0.95, 1)
    assert r.apply(0.3, 0.5, ev(amount=10.0))[:2] == (0.3, 0)


def test_cap_lowers_but_never_raises():
    r = rs(RuleSpec("small", "amount < 5", "tiny_order", "cap", 0.2))
    assert r.apply(0.9, 0.5, ev(amount=1.0))[:2] == (0.2, 0)
    assert r.apply(0.1, 0.5, ev(amount=1.0))[:2] == (0.1, 0)
    assert r.apply(0.9, 0.5, ev(amount=10.0))[:2] == (0.9, 1)


def test_override_sets_the_class_not_the_score():
    r = rs(RuleSpec("vip", "country == 'UK'", "trusted", "override", 0))
    assert r.apply(0.99, 0.5, ev(country="UK"))[:2] == (0.99, 0)
    assert r.apply(0.99, 0.5, ev(country="FR"))[:2] == (0.99, 1)
    r1 = rs(RuleSpec("watch", "country == 'FR'", "watchlist", "override", 1))
    assert r1.apply(0.01, 0.5, ev(country="FR"))[:2] == (0.01, 1)


def test_threshold_tie_is_class_0():
    assert rs(RuleSpec("f", "true", "x", "floor", 0.5)).apply(0.1, 0.5, ev())[:2] == (0.5, 0)


# -- combination and order -----------------------------------------------------


def test_floors_combine_by_max_and_caps_by_min():
    r = rs(RuleSpec("f1", "true", "a", "floor", 0.7), RuleSpec("f2", "true", "b", "floor", 0.6),
           RuleSpec("c1", "false", "c", "cap", 0.1))
    assert r.apply(0.0, 0.5, ev())[:2] == (0.7, 1)
    r = rs(RuleSpec("c1", "true", "a", "cap", 0.3), RuleSpec("c2", "true", "b", "cap", 0.4))
    assert r.apply(1.0, 0.5, ev())[:2] == (0.3, 0)


@pytest.mark.parametrize("cap_first", [True, False])
def test_cap_below_floor_wins_whatever_the_order(cap_first):
    floor, cap = RuleSpec("f", "true", "a", "floor", 0.8), RuleSpec("c", "true", "b", "cap", 0.2)
    r = rs(cap, floor) if cap_first else rs(floor, cap)
    for s in (0.0, 0.5, 1.0):
        assert r.apply(s, 0.5, ev())[:2] == (0.2, 0)


def test_cap_above_floor_clamps_into_the_band():
    r = rs(RuleSpec("f", "true", "a", "floor", 0.2), RuleSpec("c", "true", "b", "cap", 0.6))
    assert [r.apply(s, 0.5, ev())[0] for s in (0.0, 0.4, 1.0)] == [0.2, 0.4, 0.6]


def test_last_matching_override_in_spec_order_wins():
    o0, o1 = RuleSpec("o0", "true", "a", "override", 0), RuleSpec("o1", "true", "b", "override", 1)
    assert rs(o0, o1).apply(0.1, 0.5, ev())[1] == 1
    assert rs(o1, o0).apply(0.9, 0.5, ev())[1] == 0
    miss = RuleSpec("o_miss", "false", "c", "override", 0)
    assert rs(o1, miss).apply(0.1, 0.5, ev())[1] == 1


def test_all_rules_evaluated_hits_in_spec_order():
    r = rs(RuleSpec("z", "amount > 1", "rz"), RuleSpec("m", "amount > 1000", "rm"),
           RuleSpec("a", "country == 'UK'", "ra", "floor", 0.4), RuleSpec("b", "score > 0.1", "rb"))
    out = r.evaluate(ev(amount=50.0))
    assert out.hits == ("z", "a", "b")
    assert out.reasons == ("rz", "ra", "rb")
    assert out.floor == 0.4


# -- missing fields and run-time errors ------------------------------------------


def test_missing_field_is_null_and_does_not_crash():
    r = rs(RuleSpec("absent", "opt == null", "no_opt"), RuleSpec("guarded", "opt != null and opt > 5", "big_opt"))
    assert r.evaluate(ev()).hits == ("absent",)
    assert r.evaluate(ev(opt=7.0)).hits == ("guarded",)
    assert r.evaluate({}).hits == ("absent",)
    assert r.evaluate(ev(opt=math.nan)).hits == ("absent",)   # NaN reads as null
    assert r.errors == {"absent": 0, "guarded": 0}


def test_runtime_error_counts_and_does_not_match():
    r = rs(RuleSpec("unguarded", "opt > 5", "big_opt", "floor", 0.9), RuleSpec("after", "amount > 1", "ok"))
    score, cls, out = r.apply(0.1, 0.5, ev())          # opt missing: null > 5
    assert (score, cls, out.hits) == (0.1, 0, ("after",))
    assert r.errors == {"unguarded": 1, "after": 0}
    assert "EvaluationError" in r.last_error["unguarded"]
    r.evaluate(ev(opt="FR"))                              # 'FR' > 5
    r.evaluate(ev(opt=math.nan))                          # NaN reads as null
    assert r.errors["unguarded"] == 3
    assert r.evaluate(ev(opt=6.0)).hits == ("unguarded", "after")
    assert r.errors["unguarded"] == 3


def test_division_by_zero_is_a_counted_miss():
    r = rs(RuleSpec("ratio", "amount / opt > 2", "x"))
    assert r.evaluate(ev(amount=5.0, opt=0.0)) is NO_HITS
    assert r.errors["ratio"] == 1


# -- categorical strings and scores --------------------------------------------


def test_categorical_string_comparisons():
    r = rs(RuleSpec("abroad", "country != 'UK'", "a"), RuleSpec("eu", "country in ['FR', 'DE']", "b"),
           RuleSpec("re", "country =~ 'N.*'", "c"), RuleSpec("num", "country == 5", "d"))
    assert r.evaluate(ev(country="UK")).hits == ()
    assert r.evaluate(ev(country="FR")).hits == ("abroad", "eu")
    assert r.evaluate(ev(country="NL")).hits == ("abroad", "re")
    assert r.errors == dict.fromkeys(["abroad", "eu", "re", "num"], 0)


def test_rules_over_scores():
    r = rs(RuleSpec("lr_sure", "score_lr > 0.8", "lr_confident", "floor", 0.8),
           RuleSpec("disagree", "score_lr > 0.8 and score_hat < 0.2", "models_disagree"),
           RuleSpec("low", "score < 0.05", "very_low", "cap", 0.01))
    score, cls, out = r.apply(0.5, 0.5, ev(score=0.5, lr=0.9, hat=0.1))
    assert (score, cls, out.hits) == (0.8, 1, ("lr_sure", "disagree"))
    assert r.evaluate(ev(lr=0.8)).hits == ()                # decimal comparison: 0.8 is not > 0.8
    assert r.apply(0.01, 0.5, ev(score=0.01))[:2] == (0.01, 0)


def test_pickle_round_trip_keeps_rules_and_counts():
    r = rs(RuleSpec("unguarded", "opt > 5", "x", "cap", 0.1))
    r.evaluate(ev())
    r2 = pickle.loads(pickle.dumps(r))
    assert r2.errors == {"unguarded": 1}
    assert r2.apply(0.9, 0.5, ev(opt=6.0))[:2] == (0.1, 0)


def test_actions_constant():
    assert ACTIONS == ("flag", "floor", "cap", "override")


# -- the compiled fast path agrees with rule-engine ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rule_engine  # noqa: E402

from models.rules import _Context, _fast_matches  # noqa: E402

FAST_CASES = [
    "amount > 400", "amount >= 0.1", "3.5 < amount", "amount == 2", "amount != 2",
    "amount > 1000 and country != 'UK'", "country == 'UK' or score_lr < 0.2",
    "not (amount <= 3.5 or opt == 2)", "score_lr > score_hat", "amount > 0.30000000000000001",
    "amount > 1e308 * 10", "amount in [1, 2]", "opt == null",
]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 60, max_value=2 ** 60),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.1, 0.3, 2.0, 3.5, 400.0, 1000.0]),
    st.sampled_from(["UK", "FR", ""]),
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({f: VALUES for f in ("amount", "country", "opt", "score_lr", "score_hat")}))
def test_fast_path_matches_rule_engine(ctx):
    context = _Context(FIELDS)
    for when in FAST_CASES:
        rule = rule_engine.Rule(when, context=context)
        fast = _fast_matches(rule)
        try:
            want: object = rule.matches(ctx)
        except Exception as exc:  # noqa: BLE001
            want = type(exc)
        try:
            got: object = fast(ctx)
        except Exception as exc:  # noqa: BLE001
            got = type(exc)
        assert got == want, (when, ctx)


def test_fast_path_compiles_the_common_shapes():
    context = _Context(FIELDS)
    compiled = {w for w in FAST_CASES if "_fast_matches" in _fast_matches(rule_engine.Rule(w, context=context)).__qualname__}
    # literals that are not a float's shortest repr, arithmetic and membership stay on rule-engine
    assert compiled == set(FAST_CASES) - {"amount > 0.30000000000000001", "amount > 1e308 * 10",
                                          "amount in [1, 2]", "opt == null"}

"""Declarative business rules over an event's features and its model scores.

Why rules next to models: some decisions are policy, not statistics (a large
order from abroad is always reviewed; a known-good segment is never blocked),
and a model that has learned little must not be the only safeguard. A rule is
data in the pipeline spec, like a model: its condition is a `rule-engine
<https://zerosteiner.github.io/rule-engine/>`_ expression, parsed by that
library's own grammar and evaluated over its own AST. Nothing is handed to
Python's ``eval``, and an expression can only read the fields it is given.

Semantics (what :meth:`RuleSet.evaluate` and :meth:`RuleOutcome.apply` do):

* Every rule is evaluated for every event, in spec order; all that match are
  reported (``hits`` and their ``reasons``, in spec order).
* ``flag`` only reports. ``floor`` raises the score to at least ``value``;
  ``cap`` lowers it to at most ``value``. Several floors combine by ``max``,
  several caps by ``min``; the final score is ``min(max(score, floor), cap)``,
  so a cap below a floor wins.
* The class is ``int(final > threshold)`` (a tie is 0, as in
  :class:`~models.evaluate.Prequential`) unless an ``override`` rule matched:
  then it is that rule's ``int(value)``; when several match, the last one in
  spec order wins.
* A missing field reads as ``null``. A rule whose evaluation fails at run time
  (``null > 5``, ``'FR' > 5``, a NaN value, division by zero) does not match
  and adds one to :attr:`RuleSet.errors` for that rule; the event is still
  scored. Guard optional fields explicitly: ``amount != null and amount > 5``.

>>> rs = RuleSet([
...     RuleSpec("big_abroad", "amount > 1000 and country != 'UK'", "large_foreign_order", "floor", 0.9),
...     RuleSpec("trusted", "country == 'UK' and score_lr < 0.2", "trusted_segment", "override", 0),
... ], fields=rule_fields(["amount", "country"], ["lr"]))
>>> score, cls, out = rs.apply(0.3, 0.5, {"amount": 1500.0, "country": "FR", "score": 0.3, "score_lr": 0.3})
>>> score, cls, out.reasons
(0.9, 1, ('large_foreign_order',))
>>> rs.apply(0.6, 0.5, {"amount": 10.0, "country": "UK", "score": 0.6, "score_lr": 0.1})[:2]
(0.6, 0)
"""

from __future__ import annotations

import decimal
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rule_engine

#: What a matching rule does; see the module docstring.
ACTIONS = ("flag", "floor", "cap", "override")

#: Builtins (``$now``, ``$today``, ``$random()``) whose value is not a function
#: of the event: a rule using them would break exact replay.
_NONDETERMINISTIC_BUILTINS = frozenset({"now", "today", "random"})

_KEYS = ("name", "when", "reason", "action", "value")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class RuleSpec:
    """One ``[[rules]]`` entry of a pipeline spec, validated on construction.

    >>> RuleSpec.parse({"name": "vip", "when": "country == 'UK'", "reason": "vip", "action": "cap", "value": 0.1}).value
    0.1
    >>> RuleSpec.parse({"name": "x", "when": "true", "reason": "r", "action": "floor"})
    Traceback (most recent call last):
    ...
    ValueError: rule 'x': action 'floor' needs a value
    """

    name: str
    when: str              # rule-engine expression over features and scores
    reason: str            # reason code published with the prediction
    action: str = "flag"   # see ACTIONS
    value: float | None = None   # floor/cap: a score in [0, 1]; override: the class, 0 or 1; flag: none

    def __post_init__(self) -> None:
        for key in ("name", "when", "reason", "action"):
            v = getattr(self, key)
            if not isinstance(v, str):
                raise TypeError(f"rule {self.name!r}: {key} must be a string, got {v!r}")
            if not v.strip():
                raise ValueError(f"rule {self.name!r}: {key} must not be empty")
        if self.action not in ACTIONS:
            raise ValueError(f"rule {self.name!r}: unknown action {self.action!r}; known: {list(ACTIONS)}")
        if self.action == "flag":
            if self.value is not None:
                raise ValueError(f"rule {self.name!r}: action 'flag' takes no value (got {self.value!r})")
            return
        if self.value is None:
            raise ValueError(f"rule {self.name!r}: action {self.action!r} needs a value")
        if not _number(self.value):
            raise TypeError(f"rule {self.name!r}: value must be a number, got {self.value!r}")
        if self.action in ("floor", "cap") and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"rule {self.name!r}: a {self.action} is a score in [0, 1], got {self.value!r}")
        if self.action == "override" and self.value not in (0, 1):
            raise ValueError(f"rule {self.name!r}: an override is a class, 0 or 1, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> RuleSpec:
        """A rule from its TOML table; ``ValueError`` on unknown or missing keys or bad values."""
        if not isinstance(doc, Mapping):
            raise TypeError(f"a rule must be a table, got {doc!r}")
        name = doc.get("name", "?")
        if unknown := set(doc) - set(_KEYS):
            raise ValueError(f"rule {name!r}: unknown key(s) {sorted(unknown)}; known: {list(_KEYS)}")
        for key in ("name", "when", "reason"):
            if key not in doc:
                raise ValueError(f"rule {name!r}: missing required key {key!r}")
        return cls(**dict(doc))


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules said about one event."""

    hits: tuple[str, ...] = ()      # names of the rules that matched, in spec order
    reasons: tuple[str, ...] = ()   # their reason codes
    floor: float | None = None      # max of the matching floors
    cap: float | None = None        # min of the matching caps
    override: int | None = None     # class of the last matching override

    def score(self, score: float) -> float:
        """``min(max(score, floor), cap)``: a cap below a floor wins."""
        if self.floor is not None and score < self.floor:
            score = self.floor
        if self.cap is not None and score > self.cap:
            score = self.cap
        return score

    def apply(self, score: float, threshold: float) -> tuple[float, int]:
        """``(final score, class)``; the class is the override's, else ``int(final > threshold)``."""
        final = self.score(score)
        return final, (self.override if self.override is not None else int(final > threshold))


#: The outcome when no rule matched (shared: outcomes are immutable).
NO_HITS = RuleOutcome()


def score_name(model: str) -> str:
    """The name under which rules read model ``model``'s own score.

    >>> score_name("lr")
    'score_lr'
    """
    return f"score_{model}"


def rule_fields(features: Iterable[str], models: Iterable[str]) -> tuple[str, ...]:
    """The names a rule may use: the features, ``score`` and ``score_<model>`` per model.

    ``score`` is the published (blended) score before the rules; ``score_lr``
    is model ``lr``'s own score.

    >>> rule_fields(["amount"], ["lr", "hat"])
    ('amount', 'score', 'score_lr', 'score_hat')
    """
    features = tuple(features)
    scores = ("score",) + tuple(score_name(m) for m in models)
    if clash := set(features) & set(scores):
        raise ValueError(f"feature name(s) {sorted(clash)} clash with the score names rules use")
    return features + scores


def _resolve(thing: Mapping[str, Any], name: str) -> Any:
    """``thing[name]``; missing or NaN reads as null.

    Why not rule-engine's default resolver: on a missing key it builds a
    spelling suggestion over every key, per rule and per event (a 5-rule set
    with one absent optional field ran at ~100 µs an event, ~40 µs with this).
    """
    v = thing.get(name)
    return None if isinstance(v, float) and math.isnan(v) else v


class _Context(rule_engine.Context):
    """Missing fields are null; names outside ``fields`` and nondeterministic builtins fail to compile."""

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(
            default_value=None,
            resolver=_resolve,
            type_resolver=rule_engine.type_resolver_from_dict({f: rule_engine.DataType.UNDEFINED for f in fields}),
        )
        #: the fields the compiled expressions read (a caller may pass just these)
        self.used: set[str] = set()

    def resolve_type(self, name: str, scope: str | None = None) -> Any:
        if scope is not None and name in _NONDETERMINISTIC_BUILTINS:
            raise _Nondeterministic(f"${name} is not allowed: a rule must give the same answer on replay")
        found = super().resolve_type(name, scope=scope)
        if scope is None:
            self.used.add(name)
        return found


class _Nondeterministic(ValueError):
    pass


class _Slow(Exception):
    """A value the compiled fast path does not decide: rule-engine evaluates the rule instead."""


_EXACT_INT = 2 ** 53
_ORDER = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
          "eq": operator.eq, "ne": operator.ne}


def _fast_matches(rule: rule_engine.Rule) -> Callable[[Mapping[str, Any]], bool]:
    """``rule.matches`` with the common shapes compiled to closures, and the same answers.

    Why: rule-engine walks its AST with Decimal arithmetic, ~8 µs per rule and
    event, a tenth of the whole pipeline's budget. Most rules are comparisons of
    a field with a number (or a string) joined by ``and``/``or``/``not``; those
    compile to plain float comparisons. They are exact: rule-engine compares
    ``Decimal(repr(value))`` with the literal, and shortest reprs order like the
    floats they stand for, so a float comparison agrees whenever the literal is
    a float's shortest repr (checked at compile time; ints up to 2**53 are
    exact floats). Any other value met at run time (null, NaN, a string where a
    number is expected, a huge int) raises :class:`_Slow`, and rule-engine
    evaluates the whole rule, errors included. Shapes that do not compile run
    on rule-engine alone. ``tests/unit/test_rules.py`` checks both agree on
    random contexts.
    """
    fast = _compile_node(rule.statement.expression)
    slow = rule.matches
    if fast is None:
        return slow

    def matches(ctx: Mapping[str, Any]) -> bool:
        try:
            return fast(ctx)
        except _Slow:
            return slow(ctx)

    return matches


def _as_float(v: Any) -> float:
    t = type(v)
    if t is float:
        if v != v:                   # NaN reads as null
            raise _Slow
        return v
    if t is int and -_EXACT_INT <= v <= _EXACT_INT:
        return float(v)
    raise _Slow


def _compile_node(node: Any) -> Callable[[Mapping[str, Any]], bool] | None:  # noqa: C901 - one case per shape
    """A closure equal to ``bool(node.evaluate(ctx))`` where it decides, or None for shapes it does not know."""
    from rule_engine import ast

    kind = type(node)
    if kind is ast.LogicExpression and node.type in ("and", "or"):
        left, right = _compile_node(node.left), _compile_node(node.right)
        if left is None or right is None:
            return None
        if node.type == "and":
            return lambda ctx: left(ctx) and right(ctx)
        return lambda ctx: left(ctx) or right(ctx)
    if kind is ast.UnaryExpression and node.type == "not":
        inner = _compile_node(node.right)
        return None if inner is None else (lambda ctx: not inner(ctx))
    if kind not in (ast.ComparisonExpression, ast.ArithmeticComparisonExpression) or node.type not in _ORDER:
        return None
    op = _ORDER[node.type]
    a, b = node.left, node.right
    swapped = False
    if type(a) is not ast.SymbolExpression and type(b) is ast.SymbolExpression:
        a, b, swapped = b, a, True
    if type(a) is not ast.SymbolExpression or a.scope is not None:
        return None
    name = a.name
    if type(b) is ast.SymbolExpression and b.scope is None:        # field OP field, both numbers
        other = b.name
        if swapped:
            name, other = other, name
        return lambda ctx: op(_as_float(ctx.get(name)), _as_float(ctx.get(other)))
    if type(b) is ast.FloatExpression:
        lit = b.value
        flit = float(lit)
        if not lit.is_finite() or decimal.Decimal(repr(flit)) != lit:
            return None
        if swapped:
            return lambda ctx: op(flit, _as_float(ctx.get(name)))
        return lambda ctx: op(_as_float(ctx.get(name)), flit)
    if type(b) is ast.StringExpression and node.type in ("eq", "ne"):
        text = b.value

        def string_eq(ctx: Mapping[str, Any]) -> bool:
            v = ctx.get(name)
            if type(v) is not str:
                raise _Slow
            return op(v, text)
        return string_eq
    return None


class RuleSet:
    """Compiled rules, evaluated in spec order for each event.

    ``fields`` are the names an expression may read (see :func:`rule_fields`).
    rule-engine symbols are identifiers (``[A-Za-z_][A-Za-z0-9_]*``) and not one
    of its keywords (``and or not in if for true false null inf nan``): a field
    with any other name can be listed but no expression can refer to it.
    Values are floats, ints and strings; numbers compare as decimals, so a
    score of ``0.9`` is not ``> 0.9``. Strings compare with ``==``, ``!=``,
    ``in ['FR', 'DE']`` and regex ``=~``.

    ``errors[name]`` counts the events on which a rule failed at run time
    (and so did not match); ``last_error[name]`` says why, for the logs.

    >>> RuleSet([RuleSpec("r", "amount > 5 and colour == 'red'", "x")], fields=["amount"])
    Traceback (most recent call last):
    ...
    ValueError: rule 'r': unknown name 'colour' in "amount > 5 and colour == 'red'"; known: ['amount']
    """

    def __init__(self, rules: Sequence[RuleSpec], fields: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.fields = tuple(fields)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        self.errors: dict[str, int] = dict.fromkeys(names, 0)
        self.last_error: dict[str, str] = {}
        self._compile()

    def _compile(self) -> None:
        context = _Context(self.fields)
        compiled = []
        for r in self.rules:
            try:
                rule = rule_engine.Rule(r.when, context=context)
            except rule_engine.SymbolResolutionError as exc:
                raise ValueError(f"rule {r.name!r}: unknown name {exc.symbol_name!r} in {r.when!r}; "
                                 f"known: {sorted(self.fields)}") from None
            except rule_engine.RuleSyntaxError as exc:
                raise ValueError(f"rule {r.name!r}: syntax error in {r.when!r}: {exc.message}") from None
            except _Nondeterministic as exc:
                raise ValueError(f"rule {r.name!r}: {exc}") from None
            except rule_engine.EngineError as exc:    # e.g. a type error between literals: 'a' > 5
                raise ValueError(f"rule {r.name!r}: invalid expression {r.when!r}: {exc.message}") from None
            compiled.append((r.name, r.reason, r.action, r.value, _fast_matches(rule)))
        self._compiled = tuple(compiled)
        #: the fields the rules read, in ``fields`` order: a context needs no other key
        self.used = tuple(f for f in self.fields if f in context.used)

    def __getstate__(self) -> dict[str, Any]:
        return {"rules": self.rules, "fields": self.fields, "errors": self.errors, "last_error": self.last_error}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile()

    def __len__(self) -> int:
        return len(self.rules)

    def evaluate(self, ctx: Mapping[str, Any]) -> RuleOutcome:
        """Evaluate every rule on ``ctx`` (features and scores, by name)."""
        hits: list[str] = []
        reasons: list[str] = []
        floor = cap = None
        override = None
        for name, reason, action, value, matches in self._compiled:
            try:
                if not matches(ctx):
                    continue
            except Exception as exc:           # noqa: BLE001 - a bad rule must not stop scoring
                self.errors[name] += 1
                self.last_error[name] = f"{type(exc).__name__}: {exc}"
                continue
            hits.append(name)
            reasons.append(reason)
            if action == "floor":
                floor = value if floor is None or value > floor else floor
            elif action == "cap":
                cap = value if cap is None or value < cap else cap
            elif action == "override":
                override = int(value)
        if not hits:
            return NO_HITS
        return RuleOutcome(tuple(hits), tuple(reasons), floor, cap, override)

    def apply(self, score: float, threshold: float, ctx: Mapping[str, Any]) -> tuple[float, int, RuleOutcome]:
        """``(final score, class, outcome)`` for ``score`` under the rules; see the module docstring."""
        outcome = self.evaluate(ctx)
        return (*outcome.apply(score, threshold), outcome)


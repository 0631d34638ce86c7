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

import math
from collections.abc import Iterable, Mapping, Sequence
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


def rule_fields(features: Iterable[str], models: Iterable[str]) -> tuple[str, ...]:
    """The names a rule may use: the features, ``score`` and ``score_<model>`` per model.

    ``score`` is the published (blended) score before the rules; ``score_lr``
    is model ``lr``'s own score.

    >>> rule_fields(["amount"], ["lr", "hat"])
    ('amount', 'score', 'score_lr', 'score_hat')
    """
    features = tuple(features)
    scores = ("score",) + tuple(f"score_{m}" for m in models)
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

    def resolve_type(self, name: str, scope: str | None = None) -> Any:
        if scope is not None and name in _NONDETERMINISTIC_BUILTINS:
            raise _Nondeterministic(f"${name} is not allowed: a rule must give the same answer on replay")
        return super().resolve_type(name, scope=scope)


class _Nondeterministic(ValueError):
    pass


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
            compiled.append((r.name, r.reason, r.action, r.value, rule.matches))
        self._compiled = tuple(compiled)

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


"""Pipeline spec files: what an event looks like and which models score it.

Why a file and not code: an ML engineer changes features and models without
touching the worker, and a spec is data (TOML), so nothing in it is executed.
One file per pipeline lives in ``pipelines/NAME.toml``; the format is
documented in README.md ("Pipeline spec").

>>> spec = load_spec("elec2")
>>> spec.name, spec.task, spec.models[0].kind
('elec2', 'classification', 'logistic_regression')
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.base import ModelSpec
from streams.features import WindowSpec

#: Where the bundled pipeline specs live.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


#: Pipeline tasks: a probability per event, a value per event, or window features only.
TASKS = ("classification", "regression", "bandit", "features")


class SpecError(ValueError):
    """A pipeline spec file is missing a section or has a wrong value."""


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed, validated pipeline spec."""

    name: str
    task: str
    dataset: str
    description: str
    event_id: str
    timestamp: str
    key: str | None                      # field of the entity key; None: the Kafka record key
    label: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    optional: frozenset[str] = frozenset()  # features that may be absent (missing != invalid)
    models: tuple[ModelSpec, ...] = ()
    windows: tuple[WindowSpec, ...] = ()
    threshold: float = 0.5
    label_timeout_ms: int | None = None   # with label_default: the worker emits that label at the deadline
    label_default: float | None = None    # the label of an event with none ``label_timeout_ms`` after it
    label_provisional: bool = False       # learn label_default at scoring time; a real label corrects it
    user: str | None = None               # recommendation: the user and item fields of an event
    item: str | None = None
    bandit_arm: str | None = None         # bandit: the field holding the logged action of an event
    bandit_arms: tuple[str, ...] = ()     # bandit: the actions a policy chooses from
    reward_at_least: float | None = None  # bandit: reward = 1 if label >= this else 0 (None: the label)
    hit_rate_k: int | None = None         # recommenders: report hit-rate@k over ...
    hit_candidates: int = 200             # ... the most recent distinct items of the partition ...
    relevant_at_least: float = 4.0        # ... for events whose label reaches this
    rules: tuple[Any, ...] = ()           # models.rules.RuleSpec, in spec order
    blend: Any = None                     # models.blend.BlendSpec, or None: the champion alone
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_numeric(self) -> tuple[str, ...]:
        """Numeric model inputs: raw numeric features, then window features."""
        return self.numeric + tuple(n for w in self.windows for n in w.names)

    @property
    def scores(self) -> bool:
        """False for a features-only pipeline (task "features")."""
        return bool(self.models)

    @property
    def champion(self) -> ModelSpec:
        """The first non-shadow model (the decision itself when there is no blend)."""
        for m in self.models:
            if not m.shadow:
                return m
        raise ValueError(f"pipeline {self.name!r} has no model to decide with")

    @property
    def deciders(self) -> tuple[ModelSpec, ...]:
        """The models whose scores make the published decision.

        With ``[blend]``: every non-shadow model. Without: the champion alone
        (the other models are then challengers, as if marked ``shadow``).
        """
        if self.blend is None:
            return (self.champion,)
        return tuple(m for m in self.models if not m.shadow)

    def all_learning(self) -> PipelineSpec:
        """This spec with every model learning, frozen ones (``learn = false``) included.

        Offline training (``streamscore train``, the benchmarks' pre-training)
        is where a frozen model's weights come from.
        """
        return replace(self, models=tuple(replace(m, learn=True) for m in self.models))

    @property
    def blended(self) -> bool:
        """True when the decision is a blend of models (a ``[blend]`` table)."""
        return self.blend is not None

    @property
    def decision_name(self) -> str:
        """Name of the published decision's model: ``blend`` or the champion's."""
        return "blend" if self.blended else self.champion.name

    @property
    def rule_fields(self) -> tuple[str, ...]:
        """Names a rule expression may use: features, ``score`` and ``score_<model>``."""
        from models.rules import score_name

        return (self.model_numeric + self.categorical + ("score",)
                + tuple(score_name(m.name) for m in self.models))


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise SpecError(f"{where}: missing required key {key!r}")
    return d[key]


def parse_spec(doc: Mapping[str, Any], source: str = "<spec>") -> PipelineSpec:
    """Validate a spec document (the parsed TOML)."""
    p = _require(doc, "pipeline", source)
    f = _require(doc, "fields", source)
    feats = _require(doc, "features", source)
    task = p.get("task", "classification")
    if task not in TASKS:
        raise SpecError(f"{source}: task {task!r} is not supported; choose one of {', '.join(TASKS)}")
    models_doc = doc.get("models", []) if task == "features" else _require(doc, "models", source)
    if not isinstance(models_doc, list) or (task != "features" and not models_doc):
        raise SpecError(f"{source}: [[models]] must list at least one model")
    for m in models_doc:
        if not isinstance(m.get("params", {}), dict):
            raise SpecError(f"{source}: model {m.get('name')!r}: params must be a table, e.g. params = {{ lr = 0.01 }}")
    for m in models_doc:
        if unknown := set(m) - {"name", "kind", "params", "shadow", "learn"}:
            raise SpecError(f"{source}: model {m.get('name')!r}: unknown key(s) {sorted(unknown)}")
        for flag in ("shadow", "learn"):
            if not isinstance(m.get(flag, flag == "learn"), bool):
                raise SpecError(f"{source}: model {m.get('name')!r}: {flag} must be true or false")
    models = tuple(
        ModelSpec(name=_require(m, "name", f"{source} [[models]]"),
                  kind=_require(m, "kind", f"{source} [[models]]"),
                  params=dict(m.get("params", {})),
                  shadow=m.get("shadow", False),
                  learn=m.get("learn", True))
        for m in models_doc
    )
    if len({m.name for m in models}) != len(models):
        raise SpecError(f"{source}: model names must be unique")
    if "blend" in {m.name for m in models}:
        raise SpecError(f"{source}: 'blend' is reserved for the blended decision; rename that model")
    if models and all(m.shadow for m in models):
        raise SpecError(f"{source}: every model is a shadow: at least one must make the decision")
    for section in ("numeric", "categorical", "optional"):
        names = feats.get(section, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SpecError(f"{source}: [features] {section} must be a list of field names")
    numeric = tuple(feats.get("numeric", ()))
    categorical = tuple(feats.get("categorical", ()))
    optional = frozenset(feats.get("optional", ()))
    if not numeric and not categorical:
        raise SpecError(f"{source}: [features] lists no numeric or categorical feature")
    if unknown := optional - set(numeric) - set(categorical):
        raise SpecError(f"{source}: optional features {sorted(unknown)} are not listed as features")
    try:
        windows = tuple(WindowSpec.parse(w) for w in doc.get("windows", []))
    except (KeyError, ValueError, TypeError) as exc:
        raise SpecError(f"{source}: [[windows]]: {exc}") from exc
    names = [n for w in windows for n in w.names]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise SpecError(f"{source}: [[windows]]: feature names collide: {dup} (windows that differ only in kind, "
                        "hop or grace; or the same window twice)")
    for w in windows:
        if w.reads_values and w.field not in numeric:
            raise SpecError(f"{source}: window field {w.field!r} must be a numeric feature: {w.kind} windows with "
                            f"aggs {list(w.aggs)} read its value (only count, distinct, since and duration of "
                            "hopping or session windows take any event field)")
    spec = PipelineSpec(
        name=_require(p, "name", f"{source} [pipeline]"),
        task=task,
        dataset=p.get("dataset", p["name"]),
        description=p.get("description", ""),
        event_id=f.get("event_id", "event_id"),
        timestamp=f.get("timestamp", "ts"),
        key=f.get("key"),
        label=f.get("label", "label"),
        numeric=numeric,
        categorical=categorical,
        optional=optional,
        models=models,
        windows=windows,
        threshold=float(doc.get("decision", {}).get("threshold", 0.5)),
        label_timeout_ms=doc.get("labels", {}).get("timeout_ms"),
        label_default=doc.get("labels", {}).get("default"),
        label_provisional=doc.get("labels", {}).get("provisional", False),
        user=f.get("user"),
        item=f.get("item"),
        hit_rate_k=doc.get("evaluation", {}).get("hit_rate_k"),
        hit_candidates=doc.get("evaluation", {}).get("candidates", 200),
        relevant_at_least=doc.get("evaluation", {}).get("relevant_at_least", 4.0),
        bandit_arm=doc.get("bandit", {}).get("arm"),
        bandit_arms=tuple(doc.get("bandit", {}).get("arms", ())),
        reward_at_least=doc.get("bandit", {}).get("reward_at_least"),
        extra={k: v for k, v in doc.items()
               if k not in {"pipeline", "fields", "features", "models", "windows", "decision", "labels", "rules",
                            "blend", "bandit", "evaluation"}},
    )
    spec = _with_rules_and_blend(spec, doc, source)
    labels_doc = doc.get("labels", {})
    if unknown := set(labels_doc) - {"timeout_ms", "default", "provisional"}:
        raise SpecError(f"{source}: [labels]: unknown key(s) {sorted(unknown)}; known: default, provisional, timeout_ms")
    if not isinstance(spec.label_provisional, bool) or (spec.label_provisional and spec.label_default is None):
        raise SpecError(f"{source}: [labels] provisional must be true or false, and needs default and timeout_ms")
    if spec.label_default is not None:
        if isinstance(spec.label_default, bool) or not isinstance(spec.label_default, (int, float)):
            raise SpecError(f"{source}: [labels] default must be a number")
        if task == "classification" and spec.label_default not in (0, 1):
            raise SpecError(f"{source}: [labels] default must be 0 or 1 for a classification pipeline")
        if not isinstance(spec.label_timeout_ms, int) or spec.label_timeout_ms <= 0:
            raise SpecError(f"{source}: [labels] default needs a positive integer timeout_ms")
    from models.registry import REGISTRY, check_model, task_of  # validate kinds and params now, not mid-stream

    for m in models:
        try:
            check_model(m, spec.model_numeric, spec.categorical)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{source}: model {m.name!r}: {exc}") from exc
        if task_of(m.kind) != task:
            raise SpecError(f"{source}: model {m.name!r} ({m.kind}) is a {task_of(m.kind)} model; "
                            f"this pipeline's task is {task}")
        if REGISTRY.get(m.kind) is not None and REGISTRY[m.kind].reco:
            for role in ("user", "item"):
                name = getattr(spec, role)
                if name is None or name not in spec.categorical:
                    raise SpecError(f"{source}: model {m.name!r} ({m.kind}) needs [fields] {role} naming "
                                    "a categorical feature")
    ev = doc.get("evaluation", {})
    if unknown := set(ev) - {"hit_rate_k", "candidates", "relevant_at_least"}:
        raise SpecError(f"{source}: [evaluation]: unknown key(s) {sorted(unknown)}")
    if spec.hit_rate_k is not None:
        if not (isinstance(spec.hit_rate_k, int) and spec.hit_rate_k > 0 and isinstance(spec.hit_candidates, int)
                and spec.hit_candidates >= spec.hit_rate_k):
            raise SpecError(f"{source}: [evaluation] hit_rate_k must be a positive integer <= candidates")
        if not any(REGISTRY.get(m.kind) is not None and REGISTRY[m.kind].reco for m in models):
            raise SpecError(f"{source}: [evaluation] hit_rate_k needs a recommender model (biased_mf, funk_mf)")
    if task == "bandit":
        b = doc.get("bandit", {})
        if unknown := set(b) - {"arm", "arms", "reward_at_least"}:
            raise SpecError(f"{source}: [bandit]: unknown key(s) {sorted(unknown)}")
        if spec.bandit_arm not in spec.categorical:
            raise SpecError(f"{source}: [bandit] arm must name a categorical feature (the logged action)")
        if not spec.bandit_arms or not all(isinstance(a, str) for a in spec.bandit_arms):
            raise SpecError(f"{source}: [bandit] arms must be a non-empty list of action names")
        if spec.rules or spec.blend is not None:
            raise SpecError(f"{source}: [[rules]] and [blend] apply to scores, not to a bandit's actions")
        if spec.label_default is not None:
            raise SpecError(f"{source}: [labels] default is not supported for bandits yet (rewards must arrive)")
    if spec.blend is not None and spec.blend.policy == "stacked" and task != "classification":
        raise SpecError(f"{source}: [blend] policy 'stacked' blends probabilities; use weighted or max")
    return spec


def _with_rules_and_blend(spec: PipelineSpec, doc: Mapping[str, Any], source: str) -> PipelineSpec:
    """Parse ``[[rules]]`` and ``[blend]``; compile the rules now so a bad one fails at load."""
    rules_doc, blend_doc = doc.get("rules", []), doc.get("blend")
    if not rules_doc and blend_doc is None:
        return spec
    if not spec.models:
        raise SpecError(f"{source}: [[rules]] and [blend] need [[models]]")
    from models.blend import Blend, BlendSpec
    from models.rules import RuleSet, RuleSpec

    try:
        rules = tuple(RuleSpec.parse(r) for r in rules_doc)
        RuleSet(rules, spec.rule_fields)
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError(f"{source}: [[rules]]: {exc}") from exc
    blend = None
    if blend_doc is not None:
        try:
            blend = BlendSpec.parse(blend_doc)
            Blend(blend, [m.name for m in spec.models if not m.shadow])
        except (ValueError, TypeError, KeyError) as exc:
            raise SpecError(f"{source}: [blend]: {exc}") from exc
    return replace(spec, rules=rules, blend=blend)


def load_spec(name_or_path: str | Path) -> PipelineSpec:
    """Load ``pipelines/NAME.toml`` or a spec file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PIPELINES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PIPELINES_DIR.glob("*.toml"))
        raise SpecError(f"no pipeline spec {str(name_or_path)!r}; bundled pipelines: {known}")
    with path.open("rb") as fh:
        try:
            doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: {exc}") from exc
    return parse_spec(doc, str(path))

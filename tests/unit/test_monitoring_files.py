"""The shipped monitoring and deployment files are valid and agree with the code.

* Prometheus: ``promtool check config``, ``promtool check rules`` and
  ``promtool test rules`` pass, and every alert has a firing and a not-firing
  unit test (skipped only when promtool is missing and ``CI`` is unset; under
  CI a missing promtool fails: ``.ci/run`` installs it).
* Grafana: the dashboard has a title, uid and panels; every panel but a row
  uses the datasource uid ``prometheus`` (the provisioned one) and has targets
  with a non-empty expr; panels do not overlap; every metric name in every
  dashboard and rule expr exists in :class:`streams.metrics.Metrics` (or is
  Prometheus' own ``up``; the GPU gauges count, though only a CUDA worker
  exposes them).
* docker-compose.yml: every service has an image or build, mounted files exist,
  every ``STREAMSCORE_*`` variable is a field of Settings with a valid value,
  worker ports are the Settings defaults, Prometheus scrapes exactly the worker
  services; ``docker compose config -q`` runs when a docker client with compose
  is installed (it needs no engine).
* streams.metrics: the scrape-time collector (lag, state size) is duck-typed
  and never reports a revoked partition; the GPU collector reports nothing and
  imports nothing without torch and CUDA; binding creates the swap and rule
  hit series at zero.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import (
    GPU_ALLOCATED_METRIC,
    GPU_METRICS,
    GPU_RESERVED_METRIC,
    LAG_METRIC,
    STATE_KEYS_METRIC,
    GPUCollector,
    Metrics,
)
from streams.settings import ENV_PREFIX, Settings
from tests.system_tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
PROM_CONFIG = MON / "prometheus" / "prometheus.yml"
RULES = sorted((MON / "rules").glob("*.yml"))
RULE_TESTS = sorted((MON / "rules" / "tests").glob("*.yml"))
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))
COMPOSE = ROOT / "docker-compose.yml"

#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                     "scrape_series_added"}
DEFAULT_METRICS_PORT = Settings.model_fields["metrics_port"].default
DEFAULT_WEB_PORT = Settings.model_fields["web_port"].default


# -- helpers ----------------------------------------------------------------------------------
def promtool() -> str:
    return require_binary("promtool")


def run_promtool(*args: str) -> str:
    proc = subprocess.run([promtool(), *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                 "topk", "quantile", "limitk", "limit_ratio"}
_KEYWORDS = _AGGREGATIONS | {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                             "unless", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, durations excluded)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)    # string literals
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    e = re.sub(r"\{[^{}]*\}", " ", e)                                           # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                                         # ranges, subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)  # label lists
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_names_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{job="x", le!="1e3"}[$__rate_interval])))'
            ' / on (job) group_left (model) sum without (instance) (b_total offset 5m) > bool 1e-3'
            ' and max_over_time(c[1h:1m]) unless up == 0')
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "up"}


def known_names() -> set[str]:
    return Metrics().names() | set(GPU_METRICS) | PROMETHEUS_SERIES


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def rules() -> list[dict[str, Any]]:
    return [r for path in RULES for g in load_yaml(path)["groups"] for r in g["rules"]]


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def worker_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if command_of(s).split()[:1] == ["worker"]}


def container_port(spec: Any) -> int:
    """Container side of a compose ports/expose entry ("9465:9464", "9464/tcp", 9464, {target: ...})."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


# -- Prometheus -------------------------------------------------------------------------------
def test_files_are_there() -> None:
    assert PROM_CONFIG.is_file() and RULES and RULE_TESTS and DASHBOARDS and COMPOSE.is_file()


def test_promtool_check_config() -> None:
    out = run_promtool("check", "config", str(PROM_CONFIG.relative_to(ROOT)))
    assert "SUCCESS" in out and "rule files found" in out and "0 rule files found" not in out


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", *(str(p.relative_to(ROOT)) for p in RULES))
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    out = run_promtool("test", "rules", *(str(p.relative_to(ROOT)) for p in RULE_TESTS))
    assert "SUCCESS" in out and "FAILED" not in out


def test_required_alerts_and_recordings_exist() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert {"ConsumerLagGrowing", "DeadLetterRateHigh", "ModelAccuracyDropped", "NoPredictions",
            "TorchInferenceSlow", "WorkerDown"} <= alerts
    recorded = " ".join(r["expr"] for r in rules() if "record" in r)
    for name in ("streamscore_worker_events_in_total", "streamscore_worker_predictions_total",
                 "streamscore_worker_dlq_total", "streamscore_worker_processing_latency_seconds_bucket",
                 "streamscore_worker_end_to_end_latency_seconds_bucket"):
        assert name in recorded, f"no recording rule over {name}"
    assert "histogram_quantile(0.5," in recorded and "histogram_quantile(0.99," in recorded


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for t in case.get("alert_rule_test") or ():
                (firing if t.get("exp_alerts") else silent).add(t["alertname"])
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - silent == set(), "alerts without a not-firing test"


def test_rules_only_use_exported_metrics() -> None:
    known = known_names() | {r["record"] for r in rules() if "record" in r}
    for r in rules():
        unknown = metric_names(r["expr"]) - known
        assert not unknown, f"{r.get('alert') or r.get('record')}: unknown metrics {unknown}"


def test_prometheus_scrapes_the_compose_workers_on_the_default_port() -> None:
    cfg = load_yaml(PROM_CONFIG)
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "streamscore")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{DEFAULT_METRICS_PORT}" for name in worker_services()}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert cfg["rule_files"], "no rule_files"
    for pattern in cfg["rule_files"]:
        matched = sorted(PROM_CONFIG.parent.glob(pattern))
        assert matched and {p.resolve() for p in matched} == {p.resolve() for p in RULES}, pattern


# -- Grafana ----------------------------------------------------------------------------------
def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels") or ())  # collapsed rows
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_uses_exported_metrics(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert isinstance(dash.get("title"), str) and dash["title"]
    assert isinstance(dash.get("uid"), str) and dash["uid"]
    assert isinstance(dash.get("panels"), list) and dash["panels"]
    known = known_names()
    ids = [p.get("id") for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in all_panels(dash):
        where = f"{path.name}: panel {p.get('title')!r}"
        assert "gridPos" in p, where
        if p.get("type") == "row":   # a row header: no query of its own
            assert not p.get("targets"), where
            continue
        assert isinstance(p.get("datasource"), dict) and p["datasource"].get("uid") == "prometheus", where
        targets = p.get("targets") or []
        assert targets, f"{where}: no targets"
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), f"{where}: empty expr"
            if "datasource" in t:
                assert t["datasource"].get("uid") == "prometheus", where
            unknown = metric_names(t["expr"]) - known
            assert not unknown, f"{where}: metrics not exported by streams.metrics.Metrics: {unknown}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_do_not_overlap(path: Path) -> None:
    dash = json.loads(path.read_text())
    boxes = []
    for p in dash["panels"]:   # top level; a collapsed row's panels are laid out when it opens
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        for title, o in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                       and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, f"{path.name}: {p['title']!r} overlaps {title!r}"
        boxes.append((p["title"], g))


def test_gpu_only_panels_are_the_gpu_metrics_panels() -> None:
    """Panels tagged "GPU only" (skipped by the integration test's data check) query only GPU series."""
    for path in DASHBOARDS:
        for p in all_panels(json.loads(path.read_text())):
            names = {n for t in p.get("targets") or () for n in metric_names(t["expr"])}
            gpu_only = "GPU only" in (p.get("description") or "")
            assert gpu_only == bool(names & set(GPU_METRICS)), p["title"]


def test_dashboard_covers_the_worker() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for p in all_panels(json.loads(path.read_text())):
            for t in p.get("targets") or ():
                used |= metric_names(t["expr"])
    for name in ("streamscore_worker_events_in_total", "streamscore_worker_predictions_total",
                 "streamscore_worker_processing_latency_seconds_bucket",
                 "streamscore_worker_end_to_end_latency_seconds_bucket", LAG_METRIC, "streamscore_worker_dlq_total",
                 "streamscore_model_prequential", STATE_KEYS_METRIC, "streamscore_worker_batch_size_records_bucket",
                 "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "streamscore_model_batch_inference_seconds_bucket", "streamscore_rule_hits_total",
                 "streamscore_labels_joined_total", "streamscore_model_checkpoint_swaps_total", *GPU_METRICS):
        assert name in used, f"no panel shows {name}"


def test_grafana_provisioning_matches_compose() -> None:
    ds = load_yaml(MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    prov = load_yaml(MON / "grafana" / "provisioning" / "dashboards" / "streamscore.yml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    mounts = dict(bind_mounts(compose()["services"]["grafana"]))
    assert mounts.get(provider["options"]["path"]) == "monitoring/grafana/dashboards"
    assert mounts.get("/etc/grafana/provisioning") == "monitoring/grafana/provisioning"


# -- docker-compose.yml -----------------------------------------------------------------------
def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(container path, repo-relative source) of the bind mounts of a service."""
    out = []
    for v in service.get("volumes") or ():
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["target"], os.path.normpath(v["source"])))
            continue
        parts = str(v).split(":")
        if parts[0].startswith((".", "/")):
            out.append((parts[1], os.path.normpath(parts[0])))
    return out


def test_compose_services_have_an_image_or_a_build() -> None:
    services = compose()["services"]
    assert services
    for name, s in services.items():
        assert s.get("image") or s.get("build"), name
        build = s.get("build")
        if build:
            ctx = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ctx / dockerfile).is_file(), f"{name}: {ctx / dockerfile} missing"


def test_compose_mounted_files_exist() -> None:
    n = 0
    for name, s in compose()["services"].items():
        for target, source in bind_mounts(s):
            assert not os.path.isabs(source), f"{name}: absolute host path {source}"
            assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repo"
            n += 1
    assert n >= 4


def test_compose_streamscore_env_vars_are_settings_fields() -> None:
    seen = 0
    for name, s in compose()["services"].items():
        values: dict[str, str] = {}
        for var, value in env_of(s).items():
            if not var.startswith(ENV_PREFIX):
                continue
            field = var[len(ENV_PREFIX):].lower()
            assert field in Settings.model_fields, f"{name}: {var} is not a Settings field"
            values[field] = value
            seen += 1
        Settings(**values)  # values valid for their fields
    assert seen


def test_compose_topology() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kenv = env_of(kafka)
    assert "controller" in kenv["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in kenv  # KRaft
    topics = [n for n, s in services.items() if command_of(s).split()[:1] == ["topics"]]
    assert topics, "no `streamscore topics` service"
    workers = worker_services()
    assert len(workers) >= 2
    for name, s in workers.items():
        deps = s.get("depends_on") or {}
        assert isinstance(deps, dict) and deps[topics[0]]["condition"] == "service_completed_successfully", name
        assert env_of(s)["STREAMSCORE_BROKER"].split(":")[0] == "kafka", name
    replay = " ".join(command_of(s) for s in services.values())
    assert "streamscore convert online_retail --out" in replay and "streamscore replay" in replay
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")


def test_compose_worker_ports_match_settings_defaults() -> None:
    for name, s in worker_services().items():
        env = env_of(s)
        assert int(env.get("STREAMSCORE_METRICS_PORT", DEFAULT_METRICS_PORT)) == DEFAULT_METRICS_PORT, name
        assert int(env.get("STREAMSCORE_WEB_PORT", DEFAULT_WEB_PORT)) == DEFAULT_WEB_PORT, name
        assert env.get("STREAMSCORE_METRICS_HOST") == "0.0.0.0", f"{name}: /metrics must not bind loopback"
        for spec in [*(s.get("ports") or ()), *(s.get("expose") or ())]:
            assert container_port(spec) in {DEFAULT_METRICS_PORT, DEFAULT_WEB_PORT}, f"{name}: {spec}"
    host_ports = [str(p).rsplit(":", 1)[0] for s in worker_services().values() for p in s.get("ports") or ()]
    assert len(host_ports) == len(set(host_ports)), "two workers publish the same host port"
    exposed = re.findall(r"^EXPOSE\s+(.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert {int(p.split("/")[0]) for line in exposed for p in line.split()} == {DEFAULT_METRICS_PORT,
                                                                               DEFAULT_WEB_PORT}


def test_compose_prometheus_sees_the_shipped_config_and_rules() -> None:
    s = compose()["services"]["prometheus"]
    mounts = dict(bind_mounts(s))
    cfg_path = next(a.split("=", 1)[1] for a in s["command"] if a.startswith("--config.file="))
    assert mounts[cfg_path] == "monitoring/prometheus/prometheus.yml"
    for pattern in load_yaml(PROM_CONFIG)["rule_files"]:   # resolved as Prometheus does, in the container
        rules_dir = os.path.normpath(os.path.join(os.path.dirname(cfg_path), os.path.dirname(pattern)))
        assert mounts.get(rules_dir) == "monitoring/rules", f"{pattern} -> {rules_dir} not mounted from monitoring/rules"


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client installed")
    if subprocess.run([docker, "compose", "version"], check=False, capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker client has no compose plugin")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- streams.metrics --------------------------------------------------------------------------
class _Store:
    def __init__(self, n: int | Exception) -> None:
        self.n = n

    def estimate_keys(self) -> int:
        if isinstance(self.n, Exception):
            raise self.n
        return self.n


def _scorer() -> types.SimpleNamespace:
    spec = types.SimpleNamespace(name="elec2", models=[types.SimpleNamespace(name="lr")])
    return types.SimpleNamespace(spec=spec, lag={}, processors={})


def test_metrics_bind_reads_lag_and_state_at_scrape_time() -> None:
    m = Metrics()
    assert m.value(LAG_METRIC, topic="events", partition="0") is None   # unbound: family, no samples
    sc = _scorer()
    m.bind(sc)
    from importlib.metadata import version

    assert m.value("streamscore_build_info", pipeline="elec2", version=version("streamscore")) == 1.0
    assert m.value("streamscore_worker_predictions_total", model="lr") == 0.0
    sc.processors[0] = types.SimpleNamespace(store=_Store(42))
    sc.processors[1] = types.SimpleNamespace(store=_Store(RuntimeError("closed")))
    sc.lag[("events", 0)] = 7
    sc.lag[("labels", 0)] = 0
    sc.lag[("events", 3)] = 99            # partition 3 was revoked: no processor
    assert m.value(LAG_METRIC, topic="events", partition="0") == 7.0
    assert m.value(LAG_METRIC, topic="labels", partition="0") == 0.0
    assert m.value(LAG_METRIC, topic="events", partition="3") is None
    assert m.value(STATE_KEYS_METRIC, partition="0") == 42.0
    assert m.value(STATE_KEYS_METRIC, partition="1") is None      # a failing store is skipped
    sc.lag[("events", 0)] = 3                                     # read again at the next scrape
    assert m.value(LAG_METRIC, topic="events", partition="0") == 3.0


def test_metrics_bind_with_a_real_store(tmp_path: Path) -> None:
    from streams.state import PartitionStore

    store = PartitionStore(tmp_path / "p0")
    for i in range(10):
        store.put(f"k{i}", b"v")
    store.flush()
    sc = _scorer()
    sc.processors[0] = types.SimpleNamespace(store=store)
    m = Metrics()
    m.bind(sc)
    assert m.value(STATE_KEYS_METRIC, partition="0") == 10.0
    store.close()
    m.value(STATE_KEYS_METRIC, partition="0")  # a closed store does not break a scrape


def test_metrics_process_build_and_preinitialised_series() -> None:
    names = Metrics().names()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
                 "streamscore_build_info", LAG_METRIC, STATE_KEYS_METRIC,
                 "streamscore_worker_processing_latency_seconds_bucket"):
        assert name in names
    m = Metrics()
    assert m.value("streamscore_worker_dlq_total", reason="malformed_json") == 0.0
    assert m.value("streamscore_worker_events_in_total", topic="labels") == 0.0
    assert m.value("streamscore_labels_joined_total", outcome="joined") == 0.0
    for family in m.registry.collect():
        if family.name.startswith("streamscore_"):
            assert not family.name.endswith("_total")


def test_observe_many_equals_repeated_observe() -> None:
    a, b = Metrics(), Metrics()
    for amount, n in ((0.0003, 7), (0.002, 1), (20.0, 3), (0.0001, 2)):
        a.observe_many(a.processing_latency, amount, n)
        for _ in range(n):
            b.processing_latency.observe(amount)
    a.observe_many(a.processing_latency, 1.0, 0)
    fam = "streamscore_worker_processing_latency_seconds"
    sa = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in a.registry.collect() if f.name == fam
          for s in f.samples if not s.name.endswith("_created")}
    sb = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in b.registry.collect() if f.name == fam
          for s in f.samples if not s.name.endswith("_created")}
    assert sa.keys() == sb.keys() and all(sa[k] == pytest.approx(sb[k]) for k in sa)


def test_metrics_module_does_not_import_the_worker() -> None:
    src = (ROOT / "streams" / "metrics.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+streams\.(agents|app)\b", src, re.MULTILINE)


def test_metrics_bind_creates_swap_and_rule_series_at_zero() -> None:
    spec = types.SimpleNamespace(
        name="online_retail",
        models=[types.SimpleNamespace(name="lr", kind="logistic_regression"),
                types.SimpleNamespace(name="deep", kind="wide_deep")],
        rules=(types.SimpleNamespace(name="bulk_order"), types.SimpleNamespace(name="large_amount")))
    m = Metrics()
    m.bind(types.SimpleNamespace(spec=spec, lag={}, processors={}))
    assert m.value("streamscore_model_checkpoint_swaps_total", model="deep") == 0.0
    assert m.value("streamscore_model_checkpoint_swaps_total", model="lr") is None   # not a torch model
    assert m.value("streamscore_rule_hits_total", rule="bulk_order") == 0.0
    assert m.value("streamscore_rule_hits_total", rule="large_amount") == 0.0
    m.bind(_scorer())   # no kind, no rules: nothing else
    assert m.value("streamscore_worker_predictions_total", model="lr") == 0.0


# -- GPU collector ----------------------------------------------------------------------------
class _FakeCuda:
    def __init__(self, available: bool, devices: int = 2, fail: bool = False) -> None:
        self.available, self.devices, self.fail = available, devices, fail

    def is_available(self) -> bool:
        if self.fail:
            raise RuntimeError("driver gone")
        return self.available

    def device_count(self) -> int:
        return self.devices

    def memory_allocated(self, i: int) -> int:
        return 1000 * (i + 1)

    def memory_reserved(self, i: int) -> int:
        return 4096 * (i + 1)


def _gpu_samples(m: Metrics) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["device"]): s.value for f in m.registry.collect() if f.name in GPU_METRICS
            for s in f.samples}


def test_gpu_collector_reports_nothing_and_imports_nothing_without_torch() -> None:
    """In a fresh interpreter (this one may have imported torch): no torch import, no GPU families."""
    code = ("import sys\n"
            "from prometheus_client import generate_latest\n"
            "from streams.metrics import Metrics, GPU_METRICS\n"
            "m = Metrics()\n"
            "text = generate_latest(m.registry).decode()\n"
            "assert not any(n in text for n in GPU_METRICS), text\n"
            "assert not (m.names() & set(GPU_METRICS))\n"
            "assert 'torch' not in sys.modules, 'streams.metrics imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_gpu_collector_with_torch_but_no_cuda_or_a_broken_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cuda in (_FakeCuda(available=False), _FakeCuda(available=True, fail=True)):
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
        m = Metrics()
        assert _gpu_samples(m) == {}
        assert not (m.names() & set(GPU_METRICS))
        assert m.value("process_resident_memory_bytes") is not None   # the rest of the scrape is intact


def test_gpu_collector_reads_every_device_at_scrape_time(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _FakeCuda(available=True, devices=2)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    m = Metrics()
    assert _gpu_samples(m) == {
        (GPU_ALLOCATED_METRIC, "cuda:0"): 1000.0, (GPU_ALLOCATED_METRIC, "cuda:1"): 2000.0,
        (GPU_RESERVED_METRIC, "cuda:0"): 4096.0, (GPU_RESERVED_METRIC, "cuda:1"): 8192.0,
    }
    cuda.devices = 1
    assert m.value(GPU_ALLOCATED_METRIC, device="cuda:0") == 1000.0
    assert m.value(GPU_ALLOCATED_METRIC, device="cuda:1") is None
    assert isinstance(m.gpu, GPUCollector)


def test_gpu_collector_with_the_real_torch() -> None:
    torch = pytest.importorskip("torch")
    m = Metrics()
    samples = _gpu_samples(m)
    if not torch.cuda.is_available():
        assert samples == {}
    else:   # a CUDA machine: one sample per device and figure, reserved >= allocated
        n = torch.cuda.device_count()
        assert len(samples) == 2 * n
        for i in range(n):
            assert samples[(GPU_RESERVED_METRIC, f"cuda:{i}")] >= samples[(GPU_ALLOCATED_METRIC, f"cuda:{i}")] >= 0

"""Acceptance: the shipped dashboards and rules have data in a real Prometheus scraping a real worker.

A worker process runs the ``online_retail`` pipeline (River logistic regression
and a torch Wide & Deep model blended, a Hoeffding tree shadow, two rules, label
deadlines of 30 days of event time) on the first 30,000 records of the real
``online_retail_returns`` stream (39 days: purchases, and a label only for
returns, so most labels are the worker's timeout default) plus a few malformed
events. After the replay, the checkpoint the worker saved of its own deep model
is deployed where workers hot-swap from (as a promoted checkpoint would be). A
real Prometheus (the ``prometheus`` binary) scrapes its ``/metrics`` every
second and evaluates the shipped rules every second. Then, through the HTTP API:

* every target expr of every panel of ``monitoring/grafana/dashboards/*.json``
  (``$__rate_interval``/``$__interval`` replaced by ``1m``) returns data, with
  at least one finite sample; panels whose description says "GPU only" are
  exempt (their series exist only on a worker that uses CUDA), their exprs are
  still checked to be valid PromQL;
* every recording rule returns data, both its expr and the recorded series;
* every alert expr: the expression is split at its top-level set operators
  (``and``/``or``/``unless``, modifiers dropped) and every comparison in each
  operand is made a ``bool`` comparison, so each operand returns a sample per
  input series whether or not the alert would fire; each operand must return
  data. This exercises every metric, matcher and function of the alert without
  needing a lagging, failing or dead worker;
* ``DeadLetterRateHigh`` must be firing (``/api/v1/alerts``) for the injected
  bad records' reasons, its unmodified expr returning data;
* the new model figures are real, not just zero-initialised: labels timed
  out, both rules hit, torch inference observed, the blend evaluated, one
  checkpoint swap.

The scrape job is the shipped ``streamscore`` job with its target replaced by the
worker's loopback port. The rules file is the shipped one with each ``for:``
capped at 2 s (expressions, labels and annotations unchanged); the ``for:``
durations themselves are covered by the promtool unit tests.

Skipped only when the prometheus binary is missing and ``CI`` is unset.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Producer

from streams.broker import free_port
from streams.datasets import convert
from streams.demo import start_worker, stop_worker, wait_ready
from streams.replay import replay
from tests.system_tools import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
RULES = sorted((MON / "rules").glob("*.yml"))
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))
PIPELINE = "online_retail"
DATASET = "online_retail_returns"
N_RECORDS = 30_000      # 39 days of event time: the 30-day label deadlines of the first week pass
GPU_ONLY = "GPU only"   # in a panel's description: no data required (only a CUDA worker has the series)
FOR_CAP_S = 2
DEADLINE_S = 45.0   # from the end of the replay until every query has data


def prometheus_binary() -> str:
    return require_binary("prometheus")


# -- PromQL helpers -----------------------------------------------------------------------------
def _duration_s(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", d))


def _top_level_spans(expr: str) -> list[tuple[int, int, str]]:
    """(start, end, keyword) of the and/or/unless operators outside (), {}, [] and strings."""
    spans, depth, i, quote = [], 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(?<![\w:])(and|or|unless)(?![\w:])", expr[i:])
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
                spans.append((i, i + m.end(), m.group(1)))
                i += m.end()
                continue
        i += 1
    return spans


def set_operands(expr: str) -> list[str]:
    """The operands of the top-level and/or/unless of ``expr`` (itself if it has none)."""
    parts, last = [], 0
    for start, end, _ in _top_level_spans(expr):
        parts.append(expr[last:start])
        last = end
    parts.append(expr[last:])
    out = []
    for p in parts:
        p = re.sub(r"^\s*(?:on|ignoring)\s*\([^()]*\)", "", p)
        p = re.sub(r"^\s*group_(?:left|right)\s*(?:\([^()]*\))?", "", p)
        out.append(p.strip())
    return out


def bool_comparisons(expr: str) -> str:
    """Every comparison (outside label matchers and strings) made a ``bool`` one: filters become 0/1."""
    out, depth, i, quote = [], 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(==|!=|>=|<=|>|<)(\s*bool\b)?", expr[i:])
            if m:
                out.append(m.group(1) + " bool ")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def test_promql_helpers() -> None:
    e = 'a{x!="1",y=~"<"} > 1000\nand on (job) group_left (m) deriv(b[5m]) >= 0 unless (c or d) == bool 0'
    assert set_operands(e) == ['a{x!="1",y=~"<"} > 1000', "deriv(b[5m]) >= 0", "(c or d) == bool 0"]
    assert bool_comparisons('up{job="s"} == 0') == 'up{job="s"} == bool  0'
    assert bool_comparisons("(x - y) > 0.05 and z<1") == "(x - y) > bool  0.05 and z< bool 1"
    assert bool_comparisons("a == bool 1") == "a == bool  1"
    assert _duration_s("1h30m") == 5400 and _duration_s("2s") == 2


# -- Prometheus ---------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, binary: str, workdir: Path, metrics_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        rule_files = [self._capped_rules(p) for p in RULES]
        shipped = yaml.safe_load((MON / "prometheus" / "prometheus.yml").read_text())
        job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "streamscore")
        job = {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
               "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files], "scrape_configs": [job]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=workdir)

    def _capped_rules(self, path: Path) -> Path:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule and _duration_s(str(rule["for"])) > FOR_CAP_S:
                    rule["for"] = f"{FOR_CAP_S}s"
        out = self.workdir / path.name
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
        return out

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.25)
        raise TimeoutError(f"no data for {expr!r} within {timeout}s")

    @staticmethod
    def wait_until(check: Any, timeout: float = 10.0) -> Any:
        """The first truthy result of ``check()``, polled until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result or time.monotonic() > deadline:
                assert result, f"{check} still false after {timeout}s"
                return result
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- what must have data --------------------------------------------------------------------------
def dashboard_queries(gpu_only: bool = False) -> list[tuple[str, str]]:
    """(name, expr) of every panel target; with ``gpu_only`` those of the "GPU only" panels instead."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        panels = [p for top in dash["panels"] for p in (top, *(top.get("panels") or ()))]
        for p in panels:
            if (GPU_ONLY in (p.get("description") or "")) != gpu_only:
                continue
            for t in p.get("targets") or ():
                expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "1m",
                              t["expr"])
                out.append((f"{path.name} / {p['title']} / {t.get('refId')}", expr))
    return out


def rule_queries() -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    queries, alerts = [], []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    queries.append((f"record {rule['record']} (expr)", rule["expr"]))
                    queries.append((f"record {rule['record']} (series)", rule["record"]))
                else:
                    alerts.append(rule)
                    for i, operand in enumerate(set_operands(rule["expr"])):
                        queries.append((f"alert {rule['alert']} operand {i}", bool_comparisons(operand)))
    return queries, alerts


def missing_data(prom: Prometheus, queries: list[tuple[str, str]], finite: set[str]) -> list[str]:
    bad = []
    for name, expr in queries:
        result = prom.query(expr)
        if not result:
            bad.append(f"{name}: no data for {expr}")
        elif name in finite:
            values = [float(r["value"][1]) for r in result if "value" in r]
            if not any(math.isfinite(v) for v in values):
                bad.append(f"{name}: only non-finite values {values} for {expr}")
    return bad


def purchase(event_id: str, ts: int, **overrides: Any) -> dict[str, Any]:
    """A valid online_retail event (customer ``99999``)."""
    return {"event_id": event_id, "ts": ts, "customer_id": "99999", "stock_code": "TEST", "invoice_no": "T1",
            "country": "United Kingdom", "quantity": 2.0, "unit_price": 1.25, "amount": 2.5, "hour": 10.0,
            "weekday": 2.0, **overrides}


def produce_bad_events(settings: Any, ts: int) -> dict[str, int]:
    good = purchase("bad", ts)
    bad = [
        (b'{"event_id": "bad-json", "ts": 1,', "malformed_json"),
        (orjson.dumps({**{k: v for k, v in good.items() if k != "unit_price"}, "event_id": "bad-missing"}),
         "missing_field"),
        (orjson.dumps({**good, "event_id": "bad-type", "quantity": "high"}), "wrong_type"),
        (orjson.dumps({"event_id": "bad-json-2", "ts": 1}) + b"}", "malformed_json"),
    ]
    p = Producer(settings.producer_config())
    for value, _ in bad:
        p.produce(settings.topic("events"), value, b"99999")
    assert p.flush(10) == 0
    counts: dict[str, int] = {}
    for _, reason in bad:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def last_ts(stream: Path) -> int:
    with gzip.open(stream, "rb") as fh:
        return max(orjson.loads(line)["ts"] for line in fh)


def deploy_own_checkpoint(settings: Any, timeout: float = 20.0) -> None:
    """Promote the worker's own checkpoint of partition 0's deep model: copy it, atomically, to
    CHECKPOINT_DIR/PIPELINE/deep.pt, where workers watch for a checkpoint to hot-swap."""
    checkpoint = settings.checkpoints / PIPELINE / "deep" / "p0.pt"   # saved every checkpoint_interval_s
    deadline = time.monotonic() + timeout
    while not checkpoint.is_file():
        assert time.monotonic() < deadline, f"the worker saved no checkpoint at {checkpoint}"
        time.sleep(0.2)
    target = settings.checkpoints / PIPELINE / "deep.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(checkpoint.read_bytes())
    tmp.replace(target)


def scalar(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


# -- the acceptance test --------------------------------------------------------------------------
def test_dashboards_and_rules_have_data_in_a_real_prometheus(make_settings, tmp_path: Path) -> None:
    binary = prometheus_binary()
    t0 = time.monotonic()
    s = make_settings(pipeline=PIPELINE, partitions=1, checkpoint_dir=tmp_path / "checkpoints",
                      checkpoint_interval_s=2.0)
    stream = tmp_path / f"{DATASET}.jsonl.gz"
    assert convert(DATASET, stream, limit=N_RECORDS) == N_RECORDS
    end_ts = last_ts(stream)
    log = tmp_path / "worker.log"
    worker = start_worker(s, log)
    prom: Prometheus | None = None
    try:
        prom = Prometheus(binary, tmp_path / "prometheus", s.metrics_port)   # starts while the worker does
        wait_ready(s, worker, log)
        prom.wait_ready()
        # the zero-initialised dlq series must be scraped before the first bad record, so rate() sees it
        prom.wait_for('up{job="streamscore"} == 1')
        prom.wait_for('streamscore_worker_dlq_total{job="streamscore", reason="malformed_json"}')

        assert replay(stream, s) == N_RECORDS
        expected = produce_bad_events(s, end_ts)
        n_bad = sum(expected.values())
        deadline = time.monotonic() + 60
        while scalar(prom, 'sum(streamscore_worker_events_in_total{job="streamscore"})') < N_RECORDS + n_bad:
            assert worker.poll() is None, f"worker exited; see {log}"
            assert time.monotonic() < deadline, f"worker did not consume the stream; see {log}"
            time.sleep(0.5)
        # hot-swap a checkpoint: the worker polls for it before each batch (at most once a second) ...
        deploy_own_checkpoint(s)
        # ... and a last batch after metrics_interval_s, so the prequential gauges are published with every label
        time.sleep(max(s.metrics_interval_s, 1.0))
        p = Producer(s.producer_config())
        p.produce(s.topic("events"), orjson.dumps(purchase("last", end_ts + 1)), b"99999")
        assert p.flush(10) == 0

        dash = dashboard_queries()
        for name, expr in dashboard_queries(gpu_only=True):   # no data without CUDA, but valid PromQL
            prom.query(expr)
        rules, alerts = rule_queries()
        assert dash and rules and alerts
        dlq_alert = next(a for a in alerts if a["alert"] == "DeadLetterRateHigh")
        queries = dash + rules + [("alert DeadLetterRateHigh (as shipped)", dlq_alert["expr"])]
        finite = {name for name, _ in dash}
        deadline = time.monotonic() + DEADLINE_S
        while True:
            bad = missing_data(prom, queries, finite)
            firing = {a["labels"].get("reason") for a in prom.api("alerts")["alerts"]
                      if a["labels"].get("alertname") == "DeadLetterRateHigh" and a["state"] == "firing"}
            if not bad and set(expected) <= firing:
                break
            if time.monotonic() > deadline:
                if any("streamscore_consumer_lag_records" in b for b in bad):
                    bad.append("hint: lag/state are read at scrape time only once BatchScorer.__init__ "
                               "calls self.metrics.bind(self)")
                pytest.fail(f"after {DEADLINE_S}s: DeadLetterRateHigh firing for {sorted(firing)} "
                            f"(expected {sorted(expected)}); queries without data:\n  " + "\n  ".join(bad))
            assert worker.poll() is None, f"worker exited; see {log}"
            time.sleep(1.0)

        # the alert carries the shipped labels and annotations
        alert = prom.wait_until(lambda: next(
            (a for a in prom.api("alerts")["alerts"] if a["labels"].get("alertname") == "DeadLetterRateHigh"
             and a["labels"].get("reason") == "wrong_type" and a["state"] == "firing"), None))
        assert alert["labels"]["severity"] == dlq_alert["labels"]["severity"]
        assert "wrong_type" in alert["annotations"]["summary"]
        # conditions, not single reads: one slow scrape of a busy worker makes every series stale for a moment
        for condition in (
            f'sum(streamscore_worker_dlq_total{{job="streamscore"}}) == {n_bad}',
            'count(streamscore_consumer_lag_records{job="streamscore"}) >= 1',
            'sum(streamscore_state_estimated_keys{job="streamscore"}) > 0',
            'max(streamscore_model_prequential{job="streamscore", metric="accuracy"}) > 0.5',
            # the new panels show real figures, not only zero-initialised series: every model and the blend
            # evaluated, label deadlines passed, both rules hit, torch inference timed, the checkpoint swapped
            'count(streamscore_model_prequential{job="streamscore", metric="accuracy", model=~"lr|deep|hat|blend"}) == 4',
            'sum(streamscore_labels_joined_total{job="streamscore", outcome="timed_out"}) > 1000',
            'count(streamscore_rule_hits_total{job="streamscore", rule=~"bulk_order|large_amount"} > 0) == 2',
            'sum(streamscore_model_batch_inference_seconds_count{job="streamscore", model="deep"}) > 0',
            'sum(streamscore_model_checkpoint_swaps_total{job="streamscore", model="deep"}) == 1',
        ):
            prom.wait_for(condition, timeout=10.0)
        assert time.monotonic() - t0 < 90, "acceptance test too slow"
    finally:
        if prom is not None:
            prom.stop()
        stop_worker(worker)

"""Monitoring (deploy/prometheus, deploy/grafana): promtool accepts the scrape config and the alert
rules and their unit tests pass; the Grafana dashboard parses, queries exactly the metrics a live
Tessera exports (every metric DESIGN.md names among them), and each of its queries and alert
rules evaluates on a real Prometheus scraping that live Tessera."""
import json
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy_support import Prometheus, dashboard_queries, need_program, vector_selectors
from gateway_cluster import free_port

DASHBOARD = "deploy/grafana/tessera-dashboard.json"
# The metrics DESIGN.md ("Metrics") promises; the dashboard must chart each.
DESIGN_METRICS = {
    "tessera_num_requests_running", "tessera_num_requests_waiting", "tessera_kv_cache_usage_ratio",
    "tessera_prompt_tokens_total", "tessera_generation_tokens_total", "tessera_request_success_total",
    "tessera_num_preemptions_total", "tessera_prefix_cache_queries_total", "tessera_prefix_cache_hits_total",
    "tessera_time_to_first_token_seconds", "tessera_inter_token_latency_seconds",
    "tessera_e2e_request_latency_seconds", "tessera_request_queue_time_seconds", "tessera_step_duration_seconds",
    "tessera_step_batch_tokens",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard(repo_root):
    return json.loads((repo_root / DASHBOARD).read_text())


def family_of(sample_name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def dashboard_metric_names(dashboard) -> set[str]:
    return {s.name for _, expr in dashboard_queries(dashboard) for s in vector_selectors(expr)}


@pytest.fixture(scope="module")
def live(gateway_cluster):
    """The session's live cluster after a few finished requests, with each tier's /metrics port."""
    for i in range(3):
        body = json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 6, "temperature": 0,
                           "ignore_eos": True, "messages": [{"role": "user", "content": f"Count to {i + 3}."}]})
        request = urllib.request.Request(f"{gateway_cluster.base_url}/v1/chat/completions", body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
    return {"gateway": gateway_cluster.gateway_port, "router": gateway_cluster.router_metrics_port,
            "worker": gateway_cluster.worker_metrics_port}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_scrape_config_and_alert_rules_pass_promtool(repo_root):
    promtool = need_program("promtool")
    for args in (["check", "config", "deploy/prometheus/prometheus.yml"],
                 ["check", "rules", "deploy/prometheus/alerts.yml"],
                 ["test", "rules", "tests/deploy/alerts_test.yml"]):
        r = subprocess.run([promtool, *args], cwd=repo_root, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"


def test_dashboard_is_grafana_json_with_promql_targets(dashboard):
    assert dashboard["uid"] and dashboard["title"] == "Tessera"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    queries = dashboard_queries(dashboard)
    assert len(queries) >= len(panels)
    for title, expr in queries:
        assert vector_selectors(expr), f"{title}: {expr} reads no metric"


def test_dashboard_charts_exactly_the_metrics_a_live_tessera_exports(dashboard, live):
    exported = {}  # family -> tier
    for tier, port in live.items():
        for family in text_string_to_metric_families(scrape(port)):
            for sample in family.samples:
                if sample.name.startswith("tessera_"):
                    exported[family_of(sample.name)] = tier
    queried = dashboard_metric_names(dashboard)
    queried_families = {family_of(n) for n in queried}
    missing = DESIGN_METRICS - {n for n in exported}
    assert not missing, f"DESIGN.md metrics a live Tessera does not export: {sorted(missing)}"
    assert not queried_families - set(exported), f"the dashboard queries metrics nobody exports: " \
                                                  f"{sorted(queried_families - set(exported))}"
    assert not set(exported) - queried_families, f"exported metrics the dashboard does not chart: " \
                                                 f"{sorted(set(exported) - queried_families)}"
    assert DESIGN_METRICS <= queried_families


def test_dashboard_queries_and_alert_rules_evaluate_on_a_live_prometheus(dashboard, live, repo_root, tmp_path):
    """A real Prometheus scrapes the live cluster every second with alerts.yml loaded. Every dashboard
    query evaluates; every metric a query selects has series there, with the label names its
    matchers use; every alert rule evaluates without error."""
    prometheus = Prometheus(tmp_path / "prometheus",
                            {f"tessera-{tier}": [f"127.0.0.1:{port}"] for tier, port in live.items()},
                            [repo_root / "deploy/prometheus/alerts.yml"], free_port())
    try:
        prometheus.wait_scraped(num_jobs=3)
        for title, expr in dashboard_queries(dashboard, rate_interval="10s"):
            answer = prometheus.api("query", query=expr)
            assert answer["status"] == "success", f"{title}: {expr}: {answer}"
            for selector in vector_selectors(expr):
                series = prometheus.api("series", **{"match[]": selector.name})["data"]
                assert series, f"{title}: no series of {selector.name}"
                label_names = set().union(*(s.keys() for s in series))
                for matcher in selector.matchers.matchers:
                    assert matcher.name in label_names, f"{title}: {selector.name} has no label {matcher.name}"
                    if matcher.name == "tier":
                        assert any(s.get("tier") == matcher.value for s in series), f"{title}: {selector}"
        # Wait until every rule has been evaluated since the scrapes began, then read its health.
        deadline = time.time() + 15
        while True:
            rules = [r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]
            if rules and all(r["health"] != "unknown" for r in rules):
                break
            assert time.time() < deadline, f"alert rules were not evaluated: {rules}"
            time.sleep(0.25)
        assert len(rules) >= 10
        for r in rules:
            assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
        # A healthy cluster under no load fires nothing.
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        assert not firing, firing
    finally:
        prometheus.stop()

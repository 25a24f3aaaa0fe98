"""The Helm chart (helm/tessera), rendered by Helm's own engine for each values file, yields
manifests that the Kubernetes schemas accept, a ConfigMap and command lines that Tessera's own
config parser accepts, and wiring that holds together: workers dial their replica's router
Service, gateways list every router, probes and ports match the configuration, grace periods
cover the drain timeouts, and scaling is a values change."""
import copy

import pytest

from deploy_support import (
    NAMESPACE, by_kind, host_port, need, one, render_chart, tessera_config, validate_manifest,
    validate_service_monitor, values_file,
)

VALUES_FILES = [None, "values-cpu.yaml", "values-gpu-tp2.yaml", "values-two-replicas.yaml"]
IDS = ["default", "cpu", "gpu-tp2", "two-replicas"]


@pytest.fixture(scope="module")
def rendered(repo_root):
    return {name: render_chart(repo_root, values_file(repo_root, name)) for name in VALUES_FILES}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_chart_passes_helm_lint_strict(repo_root):
    helm = need("helm_python")
    for name in VALUES_FILES:
        report = helm.lint(str(repo_root / "helm/tessera"), values_file(repo_root, name), strict=True,
                           namespace=NAMESPACE, kube_version="v1.27.0")
        # Severity 1 is INFO ("icon is recommended"); warnings (2) and errors (3) fail.
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"helm lint ({name or 'values.yaml'}): {problems}"


@pytest.mark.parametrize("name", VALUES_FILES, ids=IDS)
def test_every_manifest_is_valid_for_kubernetes(rendered, name):
    docs = rendered[name]
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= kinds
    for doc in docs:
        try:
            validate_manifest(doc)
        except Exception as e:  # noqa: BLE001 - the validators' own error types, reported whole
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} ({name or 'values.yaml'}): {e}")


def test_the_validators_reject_broken_manifests(rendered):
    """The validation above can fail: an unknown field, a wrong type and a bad ServiceMonitor
    interval are each caught."""
    kv = need("kubernetes_validate")
    deployment = copy.deepcopy(one(rendered[None], "Deployment", "demo-tessera-gateway"))
    pod_spec(deployment)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        validate_manifest(deployment)
    statefulset = copy.deepcopy(by_kind(rendered[None], "StatefulSet")[0])
    statefulset["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        validate_manifest(statefulset)
    monitor = copy.deepcopy(by_kind(rendered["values-gpu-tp2.yaml"], "ServiceMonitor")[0])
    validate_service_monitor(monitor)
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError):
        validate_service_monitor(monitor)
    monitor = copy.deepcopy(by_kind(rendered["values-gpu-tp2.yaml"], "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    with pytest.raises(ValueError, match="scrapeEvery"):
        validate_service_monitor(monitor)


@pytest.mark.parametrize("name", VALUES_FILES, ids=IDS)
def test_configmap_and_command_lines_load_with_the_real_parser(rendered, name, binary, tmp_path):
    """Each container's arguments, with the ConfigMap where the pod mounts it, pass `tessera config
    check`; the effective configuration then agrees with the manifests around it."""
    docs = rendered[name]
    (configmap,) = by_kind(docs, "ConfigMap")
    config_file = tmp_path / "tessera.yaml"
    config_file.write_text(configmap["data"]["tessera.yaml"])
    services = by_kind(docs, "Service")
    routers = [d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "router"]
    router_services = [s for s in services if s["metadata"]["labels"]["app.kubernetes.io/component"] == "router"]
    assert len(routers) == len(router_services) >= 1
    tessera = binary("tessera")

    num_checked = 0
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        spec = pod_spec(workload)
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        assert mounts_by_volume["config"]["configMap"]["name"] == configmap["metadata"]["name"]
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        drain_key = "gateway" if component == "gateway" else "router"
        for container in spec["containers"]:
            mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
            args = []
            for a in container["args"]:
                a = a.replace(f"{mount['mountPath']}/tessera.yaml", str(config_file))
                # Kubernetes expands $(POD_NAME) from the container's env (the downward API).
                a = a.replace("$(POD_NAME)", f"{workload['metadata']['name']}-0")
                args.append(a)
            assert "$(" not in " ".join(args)
            config = tessera_config(tessera, config_file, args)
            num_checked += 1
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            probe_ports = {container[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/health"
            model_mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
            assert config["model"]["path"].startswith(model_mount["mountPath"] + "/")
            # The pod gets its drain timeout plus the preStop sleep before SIGTERM's kill.
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["", "0"])
            assert spec["terminationGracePeriodSeconds"] > config[drain_key]["drain_timeout_s"] + int(pre_stop[-1])

            if component == "gateway":
                assert ports == {"http": config["gateway"]["port"]} and probe_ports == {"http"}
                assert sorted(config["gateway"]["routers"]) == sorted(
                    f"{s['metadata']['name']}:{next(p['port'] for p in s['spec']['ports'] if p['name'] == 'grpc')}"
                    for s in router_services)
            elif component == "router":
                assert ports["grpc"] == host_port(config["router"]["listen"])[1]
                assert ports["metrics"] == config["router"]["metrics_port"] and probe_ports == {"metrics"}
            else:
                worker = config["worker"]
                rank = int(container["name"].removeprefix("rank-"))
                assert worker["rank"] == rank and worker["group"] == f"{workload['metadata']['name']}-0"
                assert len(spec["containers"]) == worker["tensor_parallel_size"] * worker["pipeline_parallel_size"]
                assert ports == {f"metrics-{rank}": worker["metrics_port"]} and probe_ports == {f"metrics-{rank}"}
                # Dials a router Service of this release, on its gRPC port, whose pods are the
                # router of the same model replica.
                host, port = host_port(worker["router_address"])
                service = one(docs, "Service", host)
                assert port == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
                assert service["spec"]["publishNotReadyAddresses"] is True
                (router,) = [r for r in routers if selects(service["spec"]["selector"], r["spec"]["template"]["metadata"]["labels"])]
                assert router["metadata"]["labels"]["tessera-replica"] == workload["metadata"]["labels"]["tessera-replica"]
                assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
                assert mounts_by_volume["dshm"]["emptyDir"]["medium"] == "Memory"
                gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
                assert gpus == (None if worker["device"] == "cpu" else 1)
    assert num_checked >= 3

    # Every Service selects the pods of a workload of this release.
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")]
    for service in services:
        assert any(selects(service["spec"]["selector"], labels) for labels in pod_labels), service["metadata"]["name"]


def test_two_replicas_have_a_router_and_workers_each(rendered):
    docs = rendered["values-two-replicas.yaml"]
    statefulsets = by_kind(docs, "StatefulSet")
    assert [s["metadata"]["name"] for s in statefulsets] == ["demo-tessera-worker-0", "demo-tessera-worker-1"]
    assert [s["spec"]["replicas"] for s in statefulsets] == [2, 2]
    dialled = [next(a for a in pod_spec(s)["containers"][0]["args"] if a.startswith("worker.router_address="))
               for s in statefulsets]
    assert dialled == ["worker.router_address=demo-tessera-router-0:50051",
                       "worker.router_address=demo-tessera-router-1:50051"]
    hpa = one(docs, "HorizontalPodAutoscaler", "demo-tessera-gateway")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert "replicas" not in one(docs, "Deployment", "demo-tessera-gateway")["spec"]  # the HPA owns it


def test_tensor_parallel_group_is_one_pod_with_a_gpu_per_rank(rendered):
    docs = rendered["values-gpu-tp2.yaml"]
    (statefulset,) = by_kind(docs, "StatefulSet")
    containers = pod_spec(statefulset)["containers"]
    assert [c["name"] for c in containers] == ["rank-0", "rank-1"]
    assert [c["resources"]["limits"]["nvidia.com/gpu"] for c in containers] == [1, 1]
    assert pod_spec(statefulset)["nodeSelector"] and pod_spec(statefulset)["tolerations"]
    (monitor,) = by_kind(docs, "ServiceMonitor")
    worker_service = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert worker_service["spec"]["clusterIP"] == "None"
    service_ports = {p["name"] for s in by_kind(docs, "Service") for p in s["spec"]["ports"]}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert {"metrics-0", "metrics-1", "http", "metrics"} == endpoint_ports
    assert endpoint_ports <= service_ports
    (ingress,) = by_kind(docs, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "demo-tessera-gateway"


def test_adding_gateways_and_worker_groups_is_only_a_values_change(repo_root, rendered):
    """More gateways and more worker groups change replica counts and nothing else: the
    configuration stays the same (new workers attach to the router they dial)."""
    scaled = render_chart(repo_root, {"gateway": {"autoscaling": {"enabled": False}, "replicas": 5},
                                      "worker": {"groups": 3}})
    base = render_chart(repo_root, {"gateway": {"autoscaling": {"enabled": False}}})
    assert one(scaled, "Deployment", "demo-tessera-gateway")["spec"]["replicas"] == 5
    assert one(scaled, "StatefulSet", "demo-tessera-worker-0")["spec"]["replicas"] == 3
    assert by_kind(scaled, "ConfigMap") == by_kind(base, "ConfigMap")
    for kind, name in [("Deployment", "demo-tessera-gateway"), ("StatefulSet", "demo-tessera-worker-0")]:
        a, b = copy.deepcopy(one(scaled, kind, name)), copy.deepcopy(one(base, kind, name))
        a["spec"].pop("replicas"), b["spec"].pop("replicas")
        assert a == b


def test_values_schema_rejects_misspelt_values(repo_root):
    """values.schema.json makes Helm refuse a misspelt value instead of ignoring it."""
    helm = need("helm_python")
    for bad, where in [({"worker": {"grups": 2}}, "grups"), ({"replicas": 0}, "replicas"),
                       ({"ports": {"http": "eighty"}}, "http")]:
        with pytest.raises(helm.HelmError, match=where):
            render_chart(repo_root, bad)

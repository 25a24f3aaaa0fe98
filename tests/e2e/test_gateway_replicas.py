"""One gateway in front of two router replicas (each with its own worker), all real
processes on the test model: prompts that share a prefix go to the same replica (its
prefix cache holds them), unrelated concurrent requests spread over both, and a replica
that dies is skipped while the gateway stays healthy and ready."""
import concurrent.futures
import re
import urllib.request

import openai
import pytest

from gateway_cluster import Process, free_port, http_status, wait_ready

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def metric_sum(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def replicas(binary, test_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("replicas")
    routers, processes = [], []
    try:
        for name in ("a", "b"):
            grpc_port, metrics_port, worker_port = free_port(), free_port(), free_port()
            router = Process(f"router-{name}", [binary("tessera-router"), "--set", f"router.listen=127.0.0.1:{grpc_port}",
                                                "--set", f"router.metrics_port={metrics_port}"], logs / f"router-{name}.log")
            worker = Process(f"worker-{name}", [binary("tessera-worker"), "--set", f"model.path={test_model}",
                                                "--set", f"worker.router_address=127.0.0.1:{grpc_port}",
                                                "--set", f"worker.metrics_port={worker_port}",
                                                "--set", "worker.num_threads=1"], logs / f"worker-{name}.log")
            processes += [router, worker]
            wait_ready(metrics_port, processes, f"router {name}")
            routers.append({"grpc": grpc_port, "metrics": metrics_port, "process": router})
        port = free_port()
        addresses = ",".join(f"127.0.0.1:{r['grpc']}" for r in routers)
        gateway = Process("gateway", [binary("tessera-gateway"), "--set", f"model.path={test_model}",
                                      "--set", f"gateway.port={port}", "--set", "gateway.host=127.0.0.1",
                                      "--set", f"gateway.routers=[{addresses}]"], logs / "gateway.log")
        processes.append(gateway)
        wait_ready(port, processes, "gateway")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        yield {"routers": routers, "port": port, "client": client}
    finally:
        for p in reversed(processes):
            p.stop()


def completions_on(router):
    return metric_sum(router["metrics"], "tessera_request_success_total")


def test_prompts_sharing_a_prefix_go_to_the_same_replica(replicas):
    before = [completions_on(r) for r in replicas["routers"]]
    prefix = [(7 * i) % 40000 + 100 for i in range(64)]
    for k in range(6):  # one after the other: load never outweighs the prefix
        replicas["client"].completions.create(model=MODEL, prompt=prefix + [500 + k], max_tokens=2, temperature=0)
    served = [completions_on(r) - b for r, b in zip(replicas["routers"], before)]
    assert sorted(served) == [0, 6], served


def test_unrelated_concurrent_requests_spread_over_both_replicas(replicas):
    before = [completions_on(r) for r in replicas["routers"]]

    def one(k):
        prompt = [(31 * k + 11 * i) % 40000 + 100 for i in range(24)]
        return replicas["client"].completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                                     extra_body={"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(r.usage.completion_tokens == 24 for r in results)
    served = [completions_on(r) - b for r, b in zip(replicas["routers"], before)]
    assert sum(served) == 8 and min(served) >= 2, served


def test_a_dead_replica_is_skipped_and_the_gateway_stays_ready(replicas):
    victim = replicas["routers"][0]
    victim["process"].popen.kill()
    victim["process"].popen.wait(timeout=10)
    for k in range(6):
        r = replicas["client"].completions.create(model=MODEL, prompt=f"Request number {k} after a router died",
                                                  max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason == "length"
    assert http_status(replicas["port"], "/ready") == 200
    assert http_status(replicas["port"], "/health") == 200

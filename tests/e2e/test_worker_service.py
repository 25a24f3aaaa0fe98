"""tessera-worker as a process: it loads the model, serves /health, /metrics and /ready
(503 until a router accepts it), keeps re-dialing an absent router, and stops cleanly on
SIGTERM; a bad configuration is refused before anything starts."""
import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import run
from gateway_cluster import free_port


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_worker_without_router_is_alive_not_ready_and_stops_on_sigterm(binary, test_model):
    port = free_port()
    p = subprocess.Popen([str(binary("tessera-worker")), "--set", f"model.path={test_model}",
                          "--set", "worker.router_address=127.0.0.1:1", "--set", f"worker.metrics_port={port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                status, body = get(port, "/metrics")
                if "tessera_worker_up" in body and 'tessera_worker_up{tier="worker",group="g0"} 1' in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the worker never reported the model loaded")
        assert get(port, "/health")[0] == 200
        status, body = get(port, "/ready")
        assert status == 503 and "not attached" in body
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        assert "attaching to 127.0.0.1:1" in err and "stopped" in err
    finally:
        if p.poll() is None:
            p.kill()


def test_worker_refuses_a_bad_configuration(binary):
    r = run([binary("tessera-worker"), "--set", "worker.page_size_tokens=banana"])
    assert r.returncode == 1
    assert "worker.page_size_tokens" in r.stderr


def wait_status(port, path, want, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = get(port, path)[0]
            if last == want:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} on port {port} stayed {last}, wanted {want}")


def test_worker_attaches_to_router_and_a_restarted_worker_rejoins(binary, test_model):
    grpc_port, router_http, worker_http = free_port(), free_port(), free_port()
    router = subprocess.Popen([str(binary("tessera-router")), "--set", f"router.listen=127.0.0.1:{grpc_port}",
                               "--set", f"router.metrics_port={router_http}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker_cmd = [str(binary("tessera-worker")), "--set", f"model.path={test_model}",
                  "--set", f"worker.router_address=127.0.0.1:{grpc_port}", "--set", f"worker.metrics_port={worker_http}"]
    workers = []
    try:
        wait_status(router_http, "/health", 200)
        assert get(router_http, "/ready")[0] == 503  # no worker yet
        workers.append(subprocess.Popen(worker_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait_status(router_http, "/ready", 200)
        wait_status(worker_http, "/ready", 200)
        metrics = get(router_http, "/metrics")[1]
        assert 'tessera_kv_cache_usage_ratio{tier="router",group="g0"}' in metrics
        # The worker dies: the router is not ready until a worker is back, without a restart.
        workers[0].kill()
        workers[0].wait(timeout=10)
        wait_status(router_http, "/ready", 503)
        workers.append(subprocess.Popen(worker_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait_status(router_http, "/ready", 200)
        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(timeout=20) == 0
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=20) == 0
    finally:
        for p in workers + [router]:
            if p.poll() is None:
                p.kill()

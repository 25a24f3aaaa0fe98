"""The gateway under HTTP load: /health against the router's status server, and short
completions through gateway + router + worker against the same workload over gRPC and on the
engine alone. Driven by scripts/bench/gateway-http; prints Markdown tables (JSON with --json)."""
import argparse
import json
import os
import random
import re
import subprocess
import tempfile
import time

from router_tier import Tier, free_port, http_get, loadgen


class Gateway:
    def __init__(self, build, model, router_port, logs):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [f"{build}/gateway/tessera-gateway", "--set", f"gateway.port={self.port}", "--set", "gateway.host=127.0.0.1",
             "--set", f"gateway.routers=[127.0.0.1:{router_port}]", "--set", f"model.path={model}",
             "--set", "gateway.max_concurrent_requests=4096"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, "gateway.log"), "w"))
        deadline = time.time() + 60
        while http_get(self.port, "/ready")[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"bench/gateway-http: the gateway never became ready (logs in {logs})")
            time.sleep(0.1)
        body = http_get(self.port, "/v1/models")[1]
        self.model_name = json.loads(body)["data"][0]["id"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


def wrk(url, connections, duration, body=None):
    """Runs wrk (one thread, keep-alive connections in a closed loop); req/s, latencies, errors."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    script = None
    if body is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(json.dumps(body))}\n")
        script.close()
        args[1:1] = ["-s", script.name]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if script:
        os.unlink(script.name)

    def ms(text):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    r = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        r[f"p{p}_ms"] = ms(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tessera = f"{a.build}/launcher/tessera"
    logs = tempfile.mkdtemp(prefix="tessera-bench-gateway-")
    results = {}
    tier = Tier(a.build, a.model, ["router.enable_prefix_cache=false"], logs=logs)
    gateway = None
    try:
        tier.add_worker("g0", a.threads)
        gateway = Gateway(a.build, a.model, tier.grpc, logs)
        results["health"] = {
            "gateway": wrk(f"http://127.0.0.1:{gateway.port}/health", 64, a.duration),
            "router status server": wrk(f"http://127.0.0.1:{tier.http}/health", 64, a.duration),
        }
        rng = random.Random(7)
        prompt_ids = [rng.randrange(100, 49000) for _ in range(32)]
        text = ("Write a short note to a colleague about the weekly planning meeting, the budget review, "
                "and the new schedule for the release of the mobile application next month.")
        short = {"model": gateway.model_name, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        wrk(f"http://127.0.0.1:{gateway.port}/v1/completions", 4, 3, dict(short, prompt=prompt_ids))  # warm-up
        results["completions"] = {}
        for c in (1, 16):
            ids = wrk(f"http://127.0.0.1:{gateway.port}/v1/completions", c, a.duration, dict(short, prompt=prompt_ids))
            txt = wrk(f"http://127.0.0.1:{gateway.port}/v1/completions", c, a.duration, dict(short, prompt=text))
            n = max(c * 4, min(ids["requests"], 400))
            wl = ["--requests", str(n), "--concurrency", str(c), "--prompt-tokens", "32", "--max-tokens", "8"]
            grpc = loadgen(tessera, ["--router", f"127.0.0.1:{tier.grpc}"] + wl)
            alone = loadgen(tessera, ["--in-process", "--model", a.model, "--threads", str(a.threads),
                                      "--no-prefix-cache"] + wl)
            results["completions"][c] = {"http ids": ids, "http text": txt, "grpc": grpc, "alone": alone}
    finally:
        if gateway:
            gateway.close()
        tier.close()

    if a.json:
        print(json.dumps(results, indent=1))
        return
    h = results["health"]
    print(f"### GET /health, wrk 1 thread, 64 connections, {a.duration} s\n")
    print("| server | req/s | p50 (ms) | p99 (ms) | errors |")
    print("|---|---|---|---|---|")
    for k, r in h.items():
        print(f"| {k} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")
    print(f"\ngateway / router status server: {h['gateway']['requests_per_s'] / h['router status server']['requests_per_s']:.2f}x\n")
    print(f"### Short completions (32 prompt tokens, 8 generated, greedy), {a.threads} threads\n")
    print("| concurrency | path | req/s | p50 (ms) | p99 (ms) | errors | vs gRPC | vs engine alone |")
    print("|---|---|---|---|---|---|---|---|")
    for c, r in results["completions"].items():
        g, al = r["grpc"]["requests_per_s"], r["alone"]["requests_per_s"]
        for label, k in (("HTTP, token-id prompt", "http ids"), ("HTTP, text prompt", "http text")):
            x = r[k]
            print(f"| {c} | {label} | {x['requests_per_s']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['errors']}"
                  f" | {x['requests_per_s'] / g:.2f} | {x['requests_per_s'] / al:.2f} |")
        print(f"| {c} | gRPC to the router (loadgen) | {g:.1f} | | | | 1.00 | {g / al:.2f} |")
        print(f"| {c} | engine alone (loadgen --in-process) | {al:.1f} | | | | | 1.00 |")


if __name__ == "__main__":
    main()

"""The serving tier on CPU: router + worker processes against the engine alone, the prefix
cache on a shared-system-prompt workload, the step overlap, planning one step ahead
(router.pipeline_depth), and a second worker group.
Driven by scripts/bench/router-tier; prints Markdown tables (and JSON with --json)."""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Tier:
    """A router and its workers as processes; killed on exit."""

    def __init__(self, build, model, router_settings=(), logs=None):
        self.build, self.model, self.logs = build, model, logs or tempfile.mkdtemp(prefix="tessera-bench-")
        self.grpc, self.http = free_port(), free_port()
        self.workers = []
        args = [f"{build}/router/tessera-router", "--set", f"router.listen=127.0.0.1:{self.grpc}",
                "--set", f"router.metrics_port={self.http}"]
        for kv in router_settings:
            args += ["--set", kv]
        self.router = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                       stderr=open(os.path.join(self.logs, "router.log"), "w"))

    def add_worker(self, group, threads):
        port = free_port()
        p = subprocess.Popen([f"{self.build}/worker/tessera-worker", "--set", f"model.path={self.model}",
                              "--set", f"worker.router_address=127.0.0.1:{self.grpc}",
                              "--set", f"worker.metrics_port={port}", "--set", f"worker.group={group}",
                              "--set", f"worker.num_threads={threads}"],
                             stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(self.logs, f"worker-{group}.log"), "w"))
        self.workers.append((p, port))
        deadline = time.time() + 120
        while http_get(port, "/ready")[0] != 200:
            if time.time() > deadline or p.poll() is not None:
                raise SystemExit(f"bench/router-tier: worker {group} never attached (logs in {self.logs})")
            time.sleep(0.1)

    def busy_seconds(self):
        return sum(metric(http_get(port, "/metrics")[1], "tessera_worker_step_seconds_total")
                   for _, port in self.workers)

    def close(self):
        for p, _ in self.workers:
            p.kill()
        self.router.kill()
        for p, _ in self.workers:
            p.wait()
        self.router.wait()


_first = [0]


def loadgen(tessera, args):
    # Every run gets prompts no earlier run used, so no prefix cache serves them by accident.
    _first[0] += 100000
    r = subprocess.run([tessera, "loadgen", "--first-request", str(_first[0])] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench/router-tier: loadgen {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout)


def on_tier(tier, tessera, workload):
    before = tier.busy_seconds()
    t0 = time.time()
    out = loadgen(tessera, ["--router", f"127.0.0.1:{tier.grpc}"] + workload)
    out["worker_busy_share"] = (tier.busy_seconds() - before) / (time.time() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    tessera = f"{a.build}/launcher/tessera"

    def w(requests, concurrency, prompt, out, shared=0):
        return ["--requests", str(requests), "--concurrency", str(concurrency), "--prompt-tokens", str(prompt),
                "--max-tokens", str(out), "--shared-prefix-tokens", str(shared)]

    # The first three run the same plans on both sides (one wave, or one request at a
    # time); the last is a closed loop whose clients drift apart over gRPC but stay in
    # lockstep waves in-process, so its ratio mixes scheduling shape with overhead.
    workloads = {
        "decode: 16 at once, 16+128 tok": w(16, 16, 16, 128),
        "decode: c=1, 8 req, 64+64 tok": w(8, 1, 64, 64),
        "prefill: c=1, 8 req, 512+4 tok": w(8, 1, 512, 4),
        "closed loop c=16, 64 req, 64+64 tok": w(64, 16, 64, 64),
    }
    shared = w(64, 16, 512, 16, shared=448)
    results = {"tier": {}, "alone": {}, "prefix": {}, "overlap": {}, "pipeline": {}, "groups": {}}

    def best(runs):
        return max(runs, key=lambda r: r["output_tokens_per_s"])

    # Configurations run interleaved, best of --repeats each, so a noisy machine moves them
    # alike; idle tiers cost next to nothing meanwhile.
    on = Tier(a.build, a.model, ["router.overlap=true"])
    off = Tier(a.build, a.model, ["router.overlap=false"])
    depth1 = Tier(a.build, a.model, ["router.pipeline_depth=1"])  # `on` plans one step ahead (depth 2)
    nocache = Tier(a.build, a.model, ["router.enable_prefix_cache=false"])
    try:
        for t in (on, off, depth1, nocache):
            t.add_worker("g0", a.threads)
            loadgen(tessera, ["--router", f"127.0.0.1:{t.grpc}"] + w(8, 8, 32, 8))  # warm-up
        alone = ["--in-process", "--model", a.model, "--threads", str(a.threads)]
        alone_nocache = alone + ["--no-prefix-cache"]
        for name, wl in workloads.items():
            runs = {"alone": [], "on": [], "off": [], "depth1": []}
            for _ in range(a.repeats):
                runs["alone"].append(loadgen(tessera, alone + wl))
                runs["on"].append(on_tier(on, tessera, wl))
                runs["off"].append(on_tier(off, tessera, wl))
                runs["depth1"].append(on_tier(depth1, tessera, wl))
            results["alone"][name] = best(runs["alone"])
            results["tier"][name] = best(runs["on"])
            results["overlap"][name] = {"true": best(runs["on"]), "false": best(runs["off"])}
            results["pipeline"][name] = {"2": best(runs["on"]), "1": best(runs["depth1"])}
        runs = {"alone on": [], "alone off": [], "on": [], "off": []}
        for _ in range(a.repeats):
            runs["alone on"].append(loadgen(tessera, alone + shared))
            runs["alone off"].append(loadgen(tessera, alone_nocache + shared))
            runs["on"].append(on_tier(on, tessera, shared))
            runs["off"].append(on_tier(nocache, tessera, shared))
        results["prefix"] = {k: best(v) for k, v in runs.items()}
    finally:
        for t in (on, off, depth1, nocache):
            t.close()

    # Data parallel: one group, then two, each worker on half the threads.
    half = max(1, a.threads // 2)
    dp = workloads["closed loop c=16, 64 req, 64+64 tok"]
    for groups in (1, 2):
        tier = Tier(a.build, a.model)
        try:
            for g in range(groups):
                tier.add_worker(f"g{g}", half)
            results["groups"][groups] = on_tier(tier, tessera, dp)
        finally:
            tier.close()

    if a.json:
        print(json.dumps(results, indent=1))
        return

    def f(x, d=1):
        return f"{x:.{d}f}"

    print(f"Best of {a.repeats} interleaved runs per configuration.\n")
    print(f"### Router + worker vs the engine alone ({a.threads} threads)\n")
    print("| workload | engine alone req/s | engine alone out tok/s | router+worker req/s | router+worker out tok/s"
          " | tier / alone | worker busy | TTFT p50 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in workloads:
        al, t = results["alone"][name], results["tier"][name]
        print(f"| {name} | {f(al['requests_per_s'], 2)} | {f(al['output_tokens_per_s'])} | {f(t['requests_per_s'], 2)}"
              f" | {f(t['output_tokens_per_s'])} | {f(t['requests_per_s'] / al['requests_per_s'], 3)}"
              f" | {f(100 * t['worker_busy_share'])}% | {f(t.get('ttft_p50_s', 0), 3)} |")
    print(f"\n### Prefix cache, shared system prompt (64 req, c=16, 448 shared + 64 own prompt tokens, 16 out)\n")
    print("| configuration | req/s | total tok/s | TTFT p50 (s) | cached prompt tokens |")
    print("|---|---|---|---|---|")
    for k, label in (("alone off", "in-process, cache off"), ("alone on", "in-process, cache on"),
                     ("off", "router + worker, cache off"), ("on", "router + worker, cache on")):
        r = results["prefix"][k]
        print(f"| {label} | {f(r['requests_per_s'], 2)} | {f(r['total_tokens_per_s'])}"
              f" | {f(r.get('ttft_p50_s', 0), 3)} | {r['cached_prompt_tokens'] or ''} |")
    print(f"\nspeed-up of the prefix cache: "
          f"{f(results['prefix']['on']['requests_per_s'] / results['prefix']['off']['requests_per_s'], 2)}x requests/s\n")
    def a_b_table(title, key, a, b, a_label, b_label):
        print(f"### {title}\n")
        print(f"| workload | {a_label} out tok/s | busy | {b_label} out tok/s | busy | {b_label} / {a_label} |")
        print("|---|---|---|---|---|---|")
        for name in workloads:
            ra, rb = results[key][name][a], results[key][name][b]
            print(f"| {name} | {f(ra['output_tokens_per_s'])} | {f(100 * ra['worker_busy_share'])}%"
                  f" | {f(rb['output_tokens_per_s'])} | {f(100 * rb['worker_busy_share'])}%"
                  f" | {f(rb['output_tokens_per_s'] / ra['output_tokens_per_s'], 3)} |")
        print()

    a_b_table("Step overlap (stream step N's tokens while the worker runs step N+1)", "overlap", "false", "true",
              "overlap off", "overlap on")
    a_b_table("Pipelining (router.pipeline_depth: 2 sends plan N+1 before step N's result, 1 waits)", "pipeline",
              "1", "2", "depth 1", "depth 2")
    g1, g2 = results["groups"][1], results["groups"][2]
    print(f"### Data-parallel groups (closed loop c=16 workload, {half} thread(s) per worker)\n")
    print("| groups | req/s | out tok/s | errors |")
    print("|---|---|---|---|")
    for n, r in ((1, g1), (2, g2)):
        print(f"| {n} | {f(r['requests_per_s'], 2)} | {f(r['output_tokens_per_s'])} | {r['errors']} |")
    print(f"\ntwo groups / one: {f(g2['output_tokens_per_s'] / g1['output_tokens_per_s'], 2)}x")


if __name__ == "__main__":
    sys.exit(main())

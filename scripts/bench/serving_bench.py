"""Serving benchmark for any OpenAI-compatible server (driven by scripts/bench/serving).

Standard library only, so it runs on any host with python3 (the GPU host has no `openai`
package): the HTTP client is raw HTTP/1.1 over asyncio streams, one connection per request,
and the Server-Sent Events are parsed here, so every chunk is timestamped when its bytes
arrive. matplotlib is used for the PNG plots when it can be imported, and skipped otherwise.

Definitions (per request; all times in seconds in the JSON, milliseconds in the table):
  TTFT  request sent -> first SSE chunk that carries a token (a choice; a last chunk with
        finish_reason and no text is only the end marker some servers send)
  ITL   gaps between successive chunks that carry a token (one sample per gap)
  TPOT  (E2E - TTFT) / (output tokens - 1), for requests with at least 2 output tokens
  E2E   request sent -> end of the stream ([DONE] or the connection's end)
Output tokens are the server's `usage.completion_tokens` when the stream carries usage
(stream_options.include_usage), otherwise the number of chunks that carried a token
(`usage_source` says which). Input tokens are `usage.prompt_tokens`, otherwise the length
of the token-id prompt sent, otherwise a count from --count-tokens-url (text prompts).
Throughputs divide the totals of successful requests by the run's duration: first request
sent -> last request finished.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import ssl
import sys
import time
import urllib.parse
import urllib.request

PERCENTILES = (50, 95, 99)

# Text prompts (--prompt-format text) are random sequences of these words, each with a
# leading space: in the BPE vocabularies of common models each is one token, so a prompt of
# N words is close to N tokens. The exact count comes from the server (usage or
# --count-tokens-url), never from this list.
WORDS = ("the of and to in is was for on that with as by at from his it an were are which this be "
         "has had or not but also have its first one new after who they two their her been other "
         "when there all into more time over can some only most many year used may these would "
         "then made such each than about may while where between both during under well since "
         "city world house water light music small large number group state part place power").split()


# ---------------------------------------------------------------------------------------------
# Workloads: lists of Request(prompt, input_len, output_len), fully determined by the seed.

class Request:
    __slots__ = ("prompt", "input_len", "output_len")

    def __init__(self, prompt, input_len, output_len):
        self.prompt, self.input_len, self.output_len = prompt, input_len, output_len


def _random_ids(rng, n, lo, hi):
    return [rng.randrange(lo, hi) for _ in range(n)]


def _prompt(rng, ids, fmt):
    """The prompt as sent: token ids, or text of the same number of words."""
    if fmt == "ids":
        return ids
    return "".join(" " + WORDS[i % len(WORDS)] for i in ids)


def _lognormal_len(rng, median, sigma, lo, hi):
    return max(lo, min(hi, int(round(rng.lognormvariate(math.log(median), sigma)))))


def make_workload(a, seed) -> list[Request]:
    """The requests of one run. Every prompt starts with fresh random tokens (the shared-prefix
    workload shares exactly the prefixes), so no run hits a prefix cache filled by another
    run that used a different seed."""
    rng = random.Random(seed)
    lo, hi = a.token_range
    out = []
    if a.workload == "random":
        for _ in range(a.num_requests):
            ids = _random_ids(rng, a.input_len, lo, hi)
            out.append(Request(_prompt(rng, ids, a.prompt_format), a.input_len, a.output_len))
    elif a.workload == "sharegpt":
        for _ in range(a.num_requests):
            n_in = _lognormal_len(rng, a.sharegpt_input_median, a.sharegpt_input_sigma, 4, a.sharegpt_max_input)
            n_out = _lognormal_len(rng, a.sharegpt_output_median, a.sharegpt_output_sigma, 1, a.sharegpt_max_output)
            ids = _random_ids(rng, n_in, lo, hi)
            out.append(Request(_prompt(rng, ids, a.prompt_format), n_in, n_out))
    elif a.workload == "shared-prefix":
        prefixes = [_random_ids(rng, a.prefix_len, lo, hi) for _ in range(a.num_prefixes)]
        for i in range(a.num_requests):
            ids = prefixes[rng.randrange(a.num_prefixes)] + _random_ids(rng, a.input_len, lo, hi)
            out.append(Request(_prompt(rng, ids, a.prompt_format), len(ids), a.output_len))
    else:
        raise ValueError(f"unknown workload {a.workload}")
    return out


# ---------------------------------------------------------------------------------------------
# The HTTP/1.1 + SSE client.

class Endpoint:
    def __init__(self, base_url: str, api_key: str | None):
        u = urllib.parse.urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https"):
            raise ValueError(f"--base-url must be http(s)://host[:port][/prefix], not {base_url}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path  # e.g. "" or "/v1" is not added: paths below are absolute
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key


async def _read_headers(reader):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection before answering")
    parts = status_line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def _body(reader, headers):
    """Yields the body's bytes as they arrive (chunked, sized, or until the connection ends)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await reader.readexactly(n)
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


class Result:
    """What one request measured. Times are perf_counter seconds relative to its send."""

    def __init__(self, req: Request):
        self.input_len, self.output_len = req.input_len, req.output_len
        self.ok = False
        self.error = ""
        self.ttft = 0.0
        self.e2e = 0.0
        self.chunk_times: list[float] = []
        self.usage: dict | None = None
        self.finish_reason = None
        self.start = 0.0  # when it was sent: perf_counter, then seconds since the run began

    @property
    def num_chunks(self):
        return len(self.chunk_times)

    @property
    def output_tokens(self):
        return self.usage["completion_tokens"] if self.usage else self.num_chunks


async def send_request(ep: Endpoint, path: str, payload: dict, req: Request, timeout: float) -> Result:
    res = Result(req)
    body = json.dumps(payload).encode()
    head = (f"POST {ep.prefix}{path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if ep.api_key:
        head += f"Authorization: Bearer {ep.api_key}\r\n"
    writer = None
    res.start = t0 = time.perf_counter()

    async def exchange():
        nonlocal writer
        reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=ep.tls, limit=1 << 20)
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        status, headers = await _read_headers(reader)
        if status != 200:
            text = b"".join([c async for c in _body(reader, headers)]).decode(errors="replace")
            res.error = f"HTTP {status}: {text[:300]}"
            return
        buf = b""
        done = False
        async for data in _body(reader, headers):
            now = time.perf_counter() - t0
            buf += data.replace(b"\r\n", b"\n")
            while b"\n\n" in buf and not done:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data_text = line[5:].strip()
                    if data_text == b"[DONE]":
                        done = True
                        break
                    msg = json.loads(data_text)
                    if "error" in msg:
                        raise RuntimeError(f"error event: {json.dumps(msg['error'])[:300]}")
                    if msg.get("choices"):
                        choice = msg["choices"][0]
                        fr = choice.get("finish_reason")
                        if fr:
                            res.finish_reason = fr
                        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                        # A last chunk with no text only marks the end (llama-cpp-python sends
                        # one after every stream, Tessera after an EOS it skipped): no token.
                        if not (fr and not text):
                            if not res.chunk_times:
                                res.ttft = now
                            res.chunk_times.append(now)
                    if msg.get("usage"):
                        res.usage = msg["usage"]
            if done:
                break
        res.e2e = time.perf_counter() - t0
        if not res.chunk_times:
            res.error = "the stream carried no choice"
        else:
            res.ok = True

    try:
        await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        res.error = f"timed out after {timeout} s"
    except Exception as e:  # noqa: BLE001 - every failure is one counted error, the run goes on
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
    return res


EOS_MODES = ("ignore_eos", "min_tokens", "generation_config", "none")


def build_payload(a, req: Request) -> dict:
    p = {"model": a.model, "prompt": req.prompt, "max_tokens": req.output_len, "temperature": a.temperature,
         "stream": True}
    if a.usage_in_stream:
        p["stream_options"] = {"include_usage": True}
    # How the server is told to keep generating past EOS, so output lengths are the workload's.
    if a.eos == "ignore_eos":  # Tessera, vLLM, SGLang
        p["ignore_eos"] = True
    elif a.eos == "min_tokens":  # llama-cpp-python's server: EOS is banned until min_tokens
        p["min_tokens"] = req.output_len
    elif a.eos == "generation_config":  # transformers serve: rejects unknown fields, takes a GenerationConfig
        p["generation_config"] = json.dumps({"eos_token_id": -1})  # -1: no EOS (its continuous batching)
    return p


# ---------------------------------------------------------------------------------------------
# Arrival processes.

async def run_point(a, ep: Endpoint, reqs: list[Request], rate: float | None, concurrency: int | None,
                    seed: int) -> tuple[list[Result], float]:
    """Sends reqs; Poisson arrivals at `rate` req/s (inf: all at once) capped at `concurrency`
    in flight, or, with rate None, a closed loop of `concurrency` clients. Returns the
    results in request order and the run's duration."""
    rng = random.Random(seed ^ 0x5EED)
    results: list[Result | None] = [None] * len(reqs)
    t_start = time.perf_counter()

    async def one(i):
        results[i] = await send_request(ep, a.path, build_payload(a, reqs[i]), reqs[i], a.timeout)

    if rate is None:
        it = iter(range(len(reqs)))

        async def client():
            for i in it:
                await one(i)
        await asyncio.gather(*(client() for _ in range(concurrency)))
    else:
        sem = asyncio.Semaphore(concurrency) if concurrency else None

        async def gated(i):
            if sem is None:
                return await one(i)
            async with sem:
                return await one(i)
        tasks = []
        for i in range(len(reqs)):
            tasks.append(asyncio.create_task(gated(i)))
            if math.isfinite(rate) and i + 1 < len(reqs):
                await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    duration = time.perf_counter() - t_start
    for r in results:
        r.start -= t_start
    return results, duration


def count_tokens(url: str, text: str) -> int:
    """Prompt length through a tokenize-count endpoint (llama-cpp-python: /extras/tokenize/count)."""
    rq = urllib.request.Request(url, data=json.dumps({"input": text}).encode(),
                                headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(rq, timeout=60) as r:
        body = json.loads(r.read())
    return int(body["count"] if "count" in body else len(body["tokens"]))


# ---------------------------------------------------------------------------------------------
# Metrics.

def percentile(values, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def summary(values):
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None, "count": 0}
    return {"mean": sum(values) / len(values), **{f"p{p}": percentile(values, p) for p in PERCENTILES},
            "max": max(values), "count": len(values)}


def parse_slos(items):
    slos = {}
    for item in items or []:
        k, _, v = item.partition(":")
        if k not in ("ttft", "tpot", "itl", "e2e") or not v:
            raise SystemExit(f"--slo {item}: expected ttft|tpot|itl|e2e:MILLISECONDS")
        slos[k] = float(v) / 1000
    return slos


def tpot_of(r: Result):
    n = r.output_tokens
    return (r.e2e - r.ttft) / (n - 1) if n > 1 else None


def meets(r: Result, slos) -> bool:
    if not r.ok:
        return False
    tpot = tpot_of(r)
    gaps = [b - a for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    checks = {"ttft": r.ttft, "e2e": r.e2e, "tpot": tpot if tpot is not None else 0.0,
              "itl": max(gaps) if gaps else 0.0}
    return all(checks[k] <= v for k, v in slos.items())


def report(label, results: list[Result], duration, slos, rate, concurrency, input_counts=None) -> dict:
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    for i, r in enumerate(results):
        if r.ok and input_counts is not None and not r.usage:
            r.input_len = input_counts[i]
    in_tokens = [r.usage["prompt_tokens"] if r.usage else r.input_len for r in ok]
    out_tokens = [r.output_tokens for r in ok]
    itl = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tpots = [t for t in (tpot_of(r) for r in ok) if t is not None]
    good = sum(1 for r in ok if meets(r, slos))
    usage_sources = sorted({"server" if r.usage else "client" for r in ok})
    return {
        "label": label,
        "request_rate": rate if rate is None or math.isfinite(rate) else "inf",
        "concurrency": concurrency,
        "num_requests": len(results),
        "completed": len(ok),
        "errors": len(errors),
        "error_samples": errors[:5],
        "duration_s": duration,
        "total_input_tokens": sum(in_tokens),
        "total_output_tokens": sum(out_tokens),
        "request_throughput": len(ok) / duration,
        "input_throughput": sum(in_tokens) / duration,
        "output_throughput": sum(out_tokens) / duration,
        "total_token_throughput": (sum(in_tokens) + sum(out_tokens)) / duration,
        "slos_ms": {k: v * 1000 for k, v in slos.items()},
        "good_requests": good,
        "goodput": good / duration,
        "usage_source": "+".join(usage_sources),
        "ttft_s": summary([r.ttft for r in ok]),
        "tpot_s": summary(tpots),
        "itl_s": summary(itl),
        "e2e_s": summary([r.e2e for r in ok]),
        "requests": [{"input_len": r.input_len, "output_len": r.output_len, "ok": r.ok, "error": r.error,
                      "usage": r.usage, "num_chunks": r.num_chunks, "finish_reason": r.finish_reason,
                      "ttft_s": r.ttft, "e2e_s": r.e2e, "start_s": r.start} for r in results],
        "_itl_samples": itl,
    }


def _ms(x):
    return "" if x is None else f"{x * 1000:.1f}"


def markdown_table(points: list[dict]) -> str:
    cols = ("| run | rate (req/s) | conc. | done | err | req/s | in tok/s | out tok/s | goodput (req/s) "
            "| TTFT mean / P50 / P95 / P99 (ms) | TPOT mean / P50 / P95 / P99 (ms) | ITL mean / P50 / P95 / P99 (ms) "
            "| E2E mean / P50 / P95 / P99 (ms) |")
    lines = [cols, "|" + "---|" * (cols.count("|") - 1)]
    for p in points:
        def q(k):
            s = p[k]
            return " / ".join(_ms(s[m]) for m in ("mean", "p50", "p95", "p99"))
        rate = "closed loop" if p["request_rate"] is None else p["request_rate"]
        lines.append(f"| {p['label']} | {rate} | {p['concurrency'] or '∞'} | {p['completed']} | {p['errors']} "
                     f"| {p['request_throughput']:.2f} | {p['input_throughput']:.1f} | {p['output_throughput']:.1f} "
                     f"| {p['goodput']:.2f} | {q('ttft_s')} | {q('tpot_s')} | {q('itl_s')} | {q('e2e_s')} |")
    return "\n".join(lines)


def plot(points: list[dict], out_dir: str, title: str) -> list[str]:
    """Latency CDFs of every point, and throughput / latency against the offered load when
    there are several points. Returns the files written ([] without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/serving: matplotlib is not installed; no plots", file=sys.stderr)
        return []
    import os
    os.makedirs(out_dir, exist_ok=True)
    files = []

    def save(fig, caption: str, name: str):
        fig.suptitle(f"{title}: {caption}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        files.append(path)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for p in points:
        ok = [r for r in p["requests"] if r["ok"]]
        series = {"TTFT": [r["ttft_s"] * 1000 for r in ok], "ITL": [x * 1000 for x in p["_itl_samples"]],
                  "E2E": [r["e2e_s"] * 1000 for r in ok]}
        for ax, (name, vals) in zip(axes, series.items()):
            if vals:
                s = sorted(vals)
                ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=p["label"])
            ax.set_xlabel(f"{name} (ms)")
            ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    axes[1].set_ylabel("fraction of token gaps")
    axes[-1].legend(fontsize=7)
    save(fig, "latency CDFs", "latency_cdf.png")
    if len(points) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        groups: dict[str, list] = {}
        for p in points:
            groups.setdefault(p["label"].split(" @ ")[0], []).append(p)
        closed = points[0]["request_rate"] is None
        finite = [p["request_rate"] for p in points if isinstance(p["request_rate"], (int, float))]
        inf_x = 1.5 * max(finite) if finite else 1.0  # where an 'inf' rate is drawn
        for name, ps in groups.items():
            x = [p["concurrency"] if closed else (p["request_rate"] if p["request_rate"] != "inf" else inf_x)
                 for p in ps]
            axes[0].plot(x, [p["output_throughput"] for p in ps], "o-", label=name)
            for xi, p in zip(x, ps):
                if p["request_rate"] == "inf":
                    axes[0].annotate("all at once", (xi, p["output_throughput"]), fontsize=7)
            axes[1].plot([p["output_throughput"] for p in ps], [p["tpot_s"]["p50"] * 1000 if p["tpot_s"]["p50"]
                                                                 else float("nan") for p in ps], "o-", label=name)
        axes[0].set_xlabel("concurrent clients" if closed else "request rate (req/s)")
        axes[0].set_ylabel("output tokens/s")
        axes[1].set_xlabel("output tokens/s")
        axes[1].set_ylabel("TPOT P50 (ms)")
        for ax in axes:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "throughput against load", "throughput.png")
    return files


# ---------------------------------------------------------------------------------------------

def add_workload_args(ap):
    w = ap.add_argument_group("workload")
    w.add_argument("--workload", choices=("random", "sharegpt", "shared-prefix"), default="random")
    w.add_argument("--num-requests", type=int, default=64, help="requests per point (default 64)")
    w.add_argument("--input-len", type=int, default=128,
                   help="random: prompt tokens; shared-prefix: tokens after the prefix (default 128)")
    w.add_argument("--output-len", type=int, default=64, help="random, shared-prefix: max_tokens (default 64)")
    w.add_argument("--num-prefixes", type=int, default=4, help="shared-prefix: distinct system prompts")
    w.add_argument("--prefix-len", type=int, default=512, help="shared-prefix: tokens of each system prompt")
    # ShareGPT-like: log-normal lengths, clipped. The defaults give input median 128 (mean
    # ~190) and output median 96 (mean ~130), a long right tail like the ShareGPT
    # conversations peers benchmark with; the clips keep one request within a small model's
    # context. They are parameters, not a sample of the data set.
    w.add_argument("--sharegpt-input-median", type=float, default=128)
    w.add_argument("--sharegpt-input-sigma", type=float, default=0.9)
    w.add_argument("--sharegpt-max-input", type=int, default=1024)
    w.add_argument("--sharegpt-output-median", type=float, default=96)
    w.add_argument("--sharegpt-output-sigma", type=float, default=0.8)
    w.add_argument("--sharegpt-max-output", type=int, default=512)
    w.add_argument("--token-range", default="1000,30000",
                   help="random prompt token ids are drawn from [LO, HI) (default 1000,30000)")
    w.add_argument("--prompt-format", choices=("ids", "text"), default="ids",
                   help="ids: token-id arrays (/v1/completions); text: one word per id, for servers "
                        "that take only strings")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--warmup", type=int, default=2, help="requests sent (and dropped) before the first point")


def add_server_args(ap):
    s = ap.add_argument_group("server")
    s.add_argument("--model", default=None, help="the request's model (default: the first of /v1/models)")
    s.add_argument("--api-key", default=None)
    s.add_argument("--path", default="/v1/completions")
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--eos", choices=EOS_MODES, default="ignore_eos",
                   help="how to keep generating past EOS: ignore_eos (Tessera, vLLM, SGLang), "
                        "min_tokens=max_tokens (llama-cpp-python's server), generation_config with "
                        "eos_token_id -1 (transformers serve), none")
    s.add_argument("--no-usage-in-stream", dest="usage_in_stream", action="store_false",
                   help="do not send stream_options.include_usage (servers that reject it)")
    s.add_argument("--count-tokens-url", default=None,
                   help="text prompts without usage: POST {input} -> {count} to count prompt tokens")
    s.add_argument("--timeout", type=float, default=600, help="per request, seconds")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/bench/serving", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="http://host:port of the OpenAI-compatible server")
    ap.add_argument("--label", default="server")
    load = ap.add_argument_group("load (one of; sweeps give one point per value)")
    load.add_argument("--request-rate", default=None,
                      help="Poisson arrivals: comma list of req/s, 'inf' sends all at once")
    load.add_argument("--concurrency", default=None,
                      help="closed loop of C clients: comma list; with --request-rate, the most in flight")
    add_workload_args(ap)
    add_server_args(ap)
    ap.add_argument("--slo", action="append", default=[],
                    help="ttft|tpot|itl|e2e:MS, repeatable; goodput counts requests meeting all (default: none)")
    out = ap.add_argument_group("output")
    out.add_argument("--result-json", default=None)
    out.add_argument("--plot-dir", default=None, help="write latency_cdf.png (and throughput.png for sweeps) here")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)
    lo, hi = (int(x) for x in a.token_range.split(","))
    a.token_range = (lo, hi)
    if a.request_rate is None and a.concurrency is None:
        a.concurrency = "1"
    return a


def load_points(a):
    """[(rate or None, concurrency or None)] for each point of the run."""
    rates = [float(x) for x in a.request_rate.split(",")] if a.request_rate else None
    concs = [int(x) for x in a.concurrency.split(",")] if a.concurrency else None
    if rates:
        if concs and len(concs) > 1:
            raise SystemExit("bench/serving: with --request-rate, --concurrency is one cap")
        return [(r, concs[0] if concs else None) for r in rates]
    return [(None, c) for c in concs]


def first_model(base_url, api_key):
    rq = urllib.request.Request(base_url.rstrip("/") + "/v1/models",
                                headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(rq, timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]


def run(a) -> dict:
    """Runs every point of `a` against a.base_url; the result document."""
    ep = Endpoint(a.base_url, a.api_key)
    if a.model is None:
        a.model = first_model(a.base_url, a.api_key)
    slos = parse_slos(a.slo)
    points = []
    log = (lambda *x: None) if a.quiet else (lambda *x: print("bench/serving:", *x, file=sys.stderr))
    if a.warmup:
        warm = make_workload(argparse.Namespace(**{**vars(a), "num_requests": a.warmup, "workload": "random",
                                                   "output_len": min(a.output_len, 8)}), a.seed + 999_983)
        asyncio.run(run_point(a, ep, warm, None, min(a.warmup, 4), 0))
    for k, (rate, conc) in enumerate(load_points(a)):
        # Each point gets its own prompts (seed + k): a later point never hits a prefix cache
        # that an earlier one filled; a peer run with the same arguments gets the same ones.
        reqs = make_workload(a, a.seed + k)
        counts = None
        if a.prompt_format == "text" and a.count_tokens_url:
            counts = [count_tokens(a.count_tokens_url, r.prompt) for r in reqs]
        what = f"{conc} clients" if rate is None else f"{rate} req/s" + (f", at most {conc} in flight" if conc else "")
        log(f"{a.label}: {len(reqs)} {a.workload} requests, {what}")
        results, duration = asyncio.run(run_point(a, ep, reqs, rate, conc, a.seed + k))
        label = f"{a.label} @ " + (f"c={conc}" if rate is None else f"{rate:g} req/s")
        p = report(label, results, duration, slos, rate, conc, counts)
        log(f"  {p['completed']}/{p['num_requests']} ok in {duration:.1f} s, {p['output_throughput']:.1f} out tok/s, "
            f"TTFT P50 {_ms(p['ttft_s']['p50'])} ms, {p['errors']} errors")
        points.append(p)
    return {
        "base_url": a.base_url, "model": a.model, "path": a.path,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {k: v for k, v in vars(a).items() if k not in ("api_key",)},
        "points": points,
    }


def write_outputs(doc: dict, a, title=None):
    print(markdown_table(doc["points"]))
    if a.plot_dir:
        for f in plot(doc["points"], a.plot_dir, title or doc["config"]["label"]):
            print(f"bench/serving: wrote {f}", file=sys.stderr)
    if a.result_json:
        clean = json.loads(json.dumps(doc, default=str))
        for p in clean["points"]:
            p.pop("_itl_samples", None)
        with open(a.result_json, "w") as f:
            json.dump(clean, f, indent=1)
        print(f"bench/serving: wrote {a.result_json}", file=sys.stderr)


def main(argv=None):
    a = parse_args(argv)
    doc = run(a)
    write_outputs(doc, a)
    return 1 if any(p["errors"] for p in doc["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The compute/bandwidth model of DESIGN.md ("Numbers that matter") applied to a served
workload: what output throughput the hardware allows for the very requests a
scripts/bench/serving run sent, scheduled as Tessera's router schedules them.

The requests (input and output lengths, and arrival times unless the rate was `inf`) come
from a result JSON of scripts/bench/serving. The schedule replays the router's policy
(router/scheduler.cc, one plan at a time): first come first served admission up to
max_num_seqs sequences; each step gives every sequence with one token left to compute its
decode token first, then prefill chunks in admission order from what is left of the step's
token budget (max_num_batched_tokens, and prefill_chunk_tokens when set); a sequence
samples when its last known token is computed and finishes at its output length (EOS
ignored, as the benchmark asks). KV capacity is taken as unbounded (on the H100 the pool
holds 444k tokens: more than 256 sequences of at most 1,536 ever need).

Each step then costs what DESIGN.md says the hardware needs at least: the larger of
  - bytes / bandwidth: every weight read once (DESIGN's "16.1 GB" for Llama-3.1-8B) plus
    every scheduled sequence's KV read once (its context after the step) and written
    (its new tokens), and
  - FLOPs / peak: 2 x parameters per computed token, plus causal attention's
    4 x context x heads x head_dim x layers per token.
The model's time is the sum of its steps; its output throughput is output tokens over it.
Steps are not overlapped with each other and nothing else costs anything, so a server can
at best match it.

With --step-trace (a worker's worker.step_trace_path file, one JSON line per executed
step) each step the server really ran is set beside the model's cost of that very step,
grouped by the tokens it computed: where measured time exceeds the model, and by how much.
Beside it, a second bound for an engine that runs one kernel at a time: the weights'
matrix products bound by their own limit (weights / bandwidth or FLOPs / peak), then
attention bound by its own (KV / bandwidth or its FLOPs / peak), added rather than
overlapped.

  scripts/bench/serving-model --result-json RUN.json [--config config.json]
      [--bandwidth 3.0e12] [--peak 800e12] [--max-num-seqs 256]
      [--max-num-batched-tokens 8192] [--prefill-chunk-tokens 0] [--admission-batch 1] [--point N]
  scripts/bench/serving-model --step-trace TRACE.jsonl [--config config.json]
"""
import argparse
import json
import os
import sys
from collections import deque


class Shape:
    """The sizes the model needs, from a Hugging Face config.json (Llama-style)."""

    def __init__(self, config: dict):
        self.layers = config["num_hidden_layers"]
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads", self.heads)
        self.head_dim = config.get("head_dim", self.hidden // self.heads)
        self.inter = config["intermediate_size"]
        self.vocab = config["vocab_size"]
        tied = config.get("tie_word_embeddings", False)
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = self.hidden * (q + 2 * kv) + q * self.hidden + 3 * self.hidden * self.inter + 2 * self.hidden
        self.params = self.layers * per_layer + self.vocab * self.hidden * (1 if tied else 2) + self.hidden
        self.weight_bytes = 2 * self.params  # bf16
        self.kv_bytes_per_token = 2 * self.layers * kv * 2  # K and V, bf16

    def attention_flops(self, first: int, n: int) -> float:
        """Q·Kᵀ and P·V of tokens at positions first .. first + n - 1, each over its causal context."""
        return self.attended_flops(n * first + n * (n + 1) / 2)  # sum of (position + 1)

    def attended_flops(self, attended: float) -> float:
        """Q·Kᵀ and P·V over `attended` (query, key) pairs."""
        return 4.0 * attended * self.heads * self.head_dim * self.layers

    def step_parts(self, tokens: int, context: int, attended: float, bandwidth: float, peak: float):
        """A step computing `tokens` tokens that reads `context` tokens of KV (each sequence's
        context after the step) over `attended` (query, key) pairs, in seconds at the limits:
        (the weights at the bandwidth, the matrix products at the peak, the KV at the
        bandwidth, attention at the peak)."""
        kv = (context + tokens) * self.kv_bytes_per_token  # read the context, write the new KV
        return (self.weight_bytes / bandwidth, 2.0 * self.params * tokens / peak, kv / bandwidth,
                self.attended_flops(attended) / peak)

    def step_time(self, tokens: int, context: int, attended: float, bandwidth: float, peak: float) -> float:
        """DESIGN.md's bound: the whole step's bytes at the bandwidth or its FLOPs at the peak."""
        weights, products, kv, attention = self.step_parts(tokens, context, attended, bandwidth, peak)
        return max(weights + kv, products + attention)

    def serial_step_time(self, tokens: int, context: int, attended: float, bandwidth: float, peak: float) -> float:
        """The bound of an engine that overlaps nothing: the weights' products, then attention,
        each at its own limit."""
        weights, products, kv, attention = self.step_parts(tokens, context, attended, bandwidth, peak)
        return max(weights, products) + max(kv, attention)


class Sequence:
    __slots__ = ("input_len", "output_len", "computed", "known", "produced")

    def __init__(self, input_len: int, output_len: int):
        self.input_len, self.output_len = input_len, output_len
        self.computed = 0  # tokens whose KV exists
        self.known = input_len  # prompt, then the sampled tokens
        self.produced = 0


def simulate(requests, shape: Shape, bandwidth: float, peak: float, max_num_seqs: int, budget: int,
             chunk: int, admission_batch: int = 1) -> dict:
    """requests: [(arrival_s, input_len, output_len)] in arrival order. Arrived requests are
    admitted once min(admission_batch, how many have arrived) slots are free (the router's
    router.admission_batch)."""
    waiting = deque(sorted(requests, key=lambda r: r[0]))
    running: list[Sequence] = []
    now = 0.0
    steps = decode_rows = prefill_tokens = 0
    bytes_bound_steps = 0
    output_tokens = 0
    while waiting or running:
        arrived = 0
        while arrived < min(admission_batch, len(waiting)) and waiting[arrived][0] <= now:
            arrived += 1
        if arrived and max_num_seqs - len(running) >= arrived:  # then as many as fit, as the router does
            while waiting and len(running) < max_num_seqs and waiting[0][0] <= now:
                _, n_in, n_out = waiting.popleft()
                running.append(Sequence(n_in, n_out))
        if not running:
            now = waiting[0][0]
            continue
        left = budget
        slices = []
        for decode_pass in (True, False):
            for s in running:
                if left == 0:
                    break
                remaining = s.known - s.computed
                if remaining <= 0 or (remaining == 1) != decode_pass:
                    continue
                n = remaining if decode_pass or chunk <= 0 else min(remaining, chunk)
                n = min(n, left)
                slices.append((s, n))
                left -= n
        tokens = context = 0
        attended = 0.0
        for s, n in slices:
            tokens += n
            context += s.computed + n
            attended += n * s.computed + n * (n + 1) / 2
            if n == 1 and s.known - s.computed == 1:
                decode_rows += 1
            else:
                prefill_tokens += n
        weights, products, kv, attention = shape.step_parts(tokens, context, attended, bandwidth, peak)
        step = max(weights + kv, products + attention)
        bytes_bound_steps += weights + kv >= products + attention
        now += step
        steps += 1
        for s, n in slices:
            s.computed += n
            if s.computed == s.known:  # sampled
                s.produced += 1
                output_tokens += 1
                s.known += 1
        running = [s for s in running if s.produced < s.output_len]
    return {"time_s": now, "steps": steps, "output_tokens": output_tokens,
            "output_throughput": output_tokens / now if now > 0 else 0.0,
            "mean_decode_rows": decode_rows / max(steps, 1), "mean_prefill_tokens": prefill_tokens / max(steps, 1),
            "bandwidth_bound_steps": bytes_bound_steps}


TRACE_GROUPS = (1, 64, 256, 512, 1024, 2048, 4096)  # lower bounds of the token groups


def trace_table(lines, shape: Shape, bandwidth: float, peak: float) -> dict:
    """Measured against modelled time for the steps of a worker's step trace."""
    steps = [json.loads(line) for line in lines if line.strip()]
    steps = [s for s in steps if s["ok"] and s["tokens"] > 0]
    if not steps:
        raise ValueError("the step trace holds no executed step")
    groups = {g: {"steps": 0, "tokens": 0, "decode_rows": 0, "context": 0, "measured": 0.0, "model": 0.0,
                  "serial": 0.0} for g in TRACE_GROUPS}
    for s in steps:
        g = groups[max(lo for lo in TRACE_GROUPS if lo <= s["tokens"])]
        g["steps"] += 1
        for k in ("tokens", "decode_rows", "context"):
            g[k] += s[k]
        g["measured"] += s["seconds"]
        g["model"] += shape.step_time(s["tokens"], s["context"], s["attended"], bandwidth, peak)
        g["serial"] += shape.serial_step_time(s["tokens"], s["context"], s["attended"], bandwidth, peak)
    total = {k: sum(g[k] for g in groups.values()) for k in next(iter(groups.values()))}
    span = max(s["t"] + s["seconds"] for s in steps) - min(s["t"] for s in steps)
    return {"groups": groups, "total": total, "span_s": span}


def print_trace_table(t: dict) -> None:
    print("| tokens a step | steps | mean decode rows | mean tokens | mean context | measured ms/step "
          "| model ms/step | model / measured | one-kernel-at-a-time bound ms/step | its share of measured "
          "| measured s | measured s over the model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    bounds = list(TRACE_GROUPS) + [None]
    rows = [(f"{lo}–{bounds[i + 1] - 1}" if bounds[i + 1] else f"{lo}+", t["groups"][lo])
            for i, lo in enumerate(TRACE_GROUPS)] + [("all", t["total"])]
    for name, g in rows:
        n = g["steps"]
        if n == 0:
            continue
        print(f"| {name} | {n} | {g['decode_rows'] / n:.1f} | {g['tokens'] / n:.1f} | {g['context'] / n:,.0f} "
              f"| {1e3 * g['measured'] / n:.2f} | {1e3 * g['model'] / n:.2f} | {g['model'] / g['measured']:.1%} "
              f"| {1e3 * g['serial'] / n:.2f} | {g['serial'] / g['measured']:.1%} | {g['measured']:.2f} "
              f"| {g['measured'] - g['model']:.2f} |")
    busy = t["total"]["measured"]
    print(f"\nThe traced steps span {t['span_s']:.2f} s, of which the worker spent {busy:.2f} s in steps "
          f"({busy / t['span_s']:.1%}); the model needs {t['total']['model']:.2f} s for the same steps "
          f"({t['total']['model'] / t['span_s']:.1%} of the span).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result-json", help="a result file of scripts/bench/serving")
    ap.add_argument("--step-trace", help="a worker's step trace (worker.step_trace_path): measured steps against the model")
    ap.add_argument("--point", type=int, default=0, help="which point of the result (default the first)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..",
                                                     "tests/fixtures/models/llama-3.1-8b-instruct/config.json"))
    ap.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s (DESIGN.md: about 3.0 TB/s on H100)")
    ap.add_argument("--peak", type=float, default=800e12, help="FLOP/s (DESIGN.md: about 800 TFLOP/s bf16)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--prefill-chunk-tokens", type=int, default=0)
    ap.add_argument("--admission-batch", type=int, default=1, help="the router's router.admission_batch")
    a = ap.parse_args(argv)
    config_path = a.config if a.config.endswith(".json") else os.path.join(a.config, "config.json")
    with open(config_path) as f:
        shape = Shape(json.load(f))
    if bool(a.result_json) == bool(a.step_trace):
        ap.error("give one of --result-json and --step-trace")
    if a.step_trace:
        with open(a.step_trace) as f:
            try:
                t = trace_table(f, shape, a.bandwidth, a.peak)
            except (ValueError, KeyError) as e:
                print(f"serving-model: {a.step_trace}: not a step trace ({e})", file=sys.stderr)
                return 1
        print(f"# the executed steps of {a.step_trace}; weights {shape.weight_bytes / 1e9:.2f} GB, KV "
              f"{shape.kv_bytes_per_token / 1e3:.0f} kB/token; {a.bandwidth / 1e12:.2f} TB/s, "
              f"{a.peak / 1e12:.0f} TFLOP/s\n")
        print_trace_table(t)
        return 0
    with open(a.result_json) as f:
        point = json.load(f)["points"][a.point]
    saturated = str(point.get("request_rate")) == "inf" or point.get("concurrency") is not None
    requests = [(0.0 if saturated else r.get("start_s", 0.0), r["input_len"], r["output_len"])
                for r in point["requests"] if r.get("ok", True)]
    m = simulate(requests, shape, a.bandwidth, a.peak, a.max_num_seqs, a.max_num_batched_tokens,
                 a.prefill_chunk_tokens, a.admission_batch)
    measured = point.get("output_throughput")
    print(f"# {len(requests)} requests of {a.result_json} (point {a.point}, "
          f"{'all at once' if saturated else 'at their recorded start times'}); weights "
          f"{shape.weight_bytes / 1e9:.2f} GB, KV {shape.kv_bytes_per_token / 1e3:.0f} kB/token; "
          f"{a.bandwidth / 1e12:.2f} TB/s, {a.peak / 1e12:.0f} TFLOP/s\n")
    print("| model time (s) | steps | mean decode rows | mean prefill tokens | bandwidth-bound steps "
          "| model out tok/s | measured out tok/s | measured / model |")
    print("|---|---|---|---|---|---|---|---|")
    ratio = f"{measured / m['output_throughput']:.1%}" if measured and m["output_throughput"] else ""
    print(f"| {m['time_s']:.2f} | {m['steps']} | {m['mean_decode_rows']:.1f} | {m['mean_prefill_tokens']:.1f} "
          f"| {m['bandwidth_bound_steps']} | {m['output_throughput']:,.0f} | "
          f"{f'{measured:,.0f}' if measured else ''} | {ratio} |")
    return 0

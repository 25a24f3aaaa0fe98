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

  scripts/bench/serving-model --result-json RUN.json [--config config.json]
      [--bandwidth 3.0e12] [--peak 800e12] [--max-num-seqs 256]
      [--max-num-batched-tokens 8192] [--prefill-chunk-tokens 0] [--point N]
"""
import argparse
import json
import os
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
        contexts = n * first + n * (n + 1) / 2  # sum of (position + 1)
        return 4.0 * contexts * self.heads * self.head_dim * self.layers


class Sequence:
    __slots__ = ("input_len", "output_len", "computed", "known", "produced")

    def __init__(self, input_len: int, output_len: int):
        self.input_len, self.output_len = input_len, output_len
        self.computed = 0  # tokens whose KV exists
        self.known = input_len  # prompt, then the sampled tokens
        self.produced = 0


def simulate(requests, shape: Shape, bandwidth: float, peak: float, max_num_seqs: int, budget: int,
             chunk: int) -> dict:
    """requests: [(arrival_s, input_len, output_len)] in arrival order."""
    waiting = deque(sorted(requests, key=lambda r: r[0]))
    running: list[Sequence] = []
    now = 0.0
    steps = decode_rows = prefill_tokens = 0
    bytes_bound_steps = 0
    output_tokens = 0
    while waiting or running:
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
        flops = 0.0
        traffic = float(shape.weight_bytes)
        for s, n in slices:
            flops += 2.0 * shape.params * n + shape.attention_flops(s.computed, n)
            traffic += (s.computed + 2 * n) * shape.kv_bytes_per_token  # read the context, write the new KV
            if n == 1 and s.known - s.computed == 1:
                decode_rows += 1
            else:
                prefill_tokens += n
        step = max(traffic / bandwidth, flops / peak)
        bytes_bound_steps += traffic / bandwidth >= flops / peak
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result-json", required=True, help="a result file of scripts/bench/serving")
    ap.add_argument("--point", type=int, default=0, help="which point of the result (default the first)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..",
                                                     "tests/fixtures/models/llama-3.1-8b-instruct/config.json"))
    ap.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s (DESIGN.md: about 3.0 TB/s on H100)")
    ap.add_argument("--peak", type=float, default=800e12, help="FLOP/s (DESIGN.md: about 800 TFLOP/s bf16)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--prefill-chunk-tokens", type=int, default=0)
    a = ap.parse_args(argv)
    config_path = a.config if a.config.endswith(".json") else os.path.join(a.config, "config.json")
    with open(config_path) as f:
        shape = Shape(json.load(f))
    with open(a.result_json) as f:
        point = json.load(f)["points"][a.point]
    saturated = str(point.get("request_rate")) == "inf" or point.get("concurrency") is not None
    requests = [(0.0 if saturated else r.get("start_s", 0.0), r["input_len"], r["output_len"])
                for r in point["requests"] if r.get("ok", True)]
    m = simulate(requests, shape, a.bandwidth, a.peak, a.max_num_seqs, a.max_num_batched_tokens,
                 a.prefill_chunk_tokens)
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

#!/usr/bin/env python3
"""Hugging Face transformers as the peer of tessera-bench-cuda-engine: the same shapes on
the same GPU, in bf16, through `generate` (greedy), printed as the same kind of table.

    python3 scripts/bench/cuda_engine_hf.py --config tests/fixtures/models/llama-3.1-8b-instruct \
        [--batches 1,8,32,128,256] [--contexts 128,1024] [--steps 32] [--prefill 512,2048,8192]

The model is the config filled with random bf16 weights (transformers' own init, seeded),
as Tessera's dummy load format does; weights never come from a hub. Decode: `generate`
with B prompts of C random token ids, run once for 1 new token and once for 1 + steps;
the difference over `steps` is the decode step time (prefill and warm-up cancel out).
Prefill: one forward pass over P tokens keeping only the last position's logits (what
`generate` does), median of 3 after a warm-up. Needs torch with CUDA and transformers (the
GPU host has both); a shape that does not fit in memory prints "out of memory".
"""
import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def ints(text):
    return [int(x) for x in text.split(",") if x]


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a config.json or its directory")
    ap.add_argument("--batches", type=ints, default=[1, 8, 32, 128, 256])
    ap.add_argument("--contexts", type=ints, default=[128, 1024])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prefill", type=ints, default=[512, 2048, 8192])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.config)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    model.generation_config.pad_token_id = 0
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.config} (random bf16 weights), {config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, vocab {config.vocab_size}; {params * 2 / 1e9:.2f} GB of weights; built in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"peer: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}, sdpa attention, dynamic KV cache\n")

    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    print("| decode | batch | context | ms/step | tok/s |\n|---|---:|---:|---:|---:|")
    for context in args.contexts:
        for batch in args.batches:
            ids = torch.randint(0, config.vocab_size, (batch, context), device="cuda", generator=gen)
            mask = torch.ones_like(ids)

            def run(new_tokens):
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)

            try:
                with torch.inference_mode():
                    run(2)  # warm-up
                    one = timed(lambda: run(1))
                    many = timed(lambda: run(1 + args.steps))
                ms = (many - one) / args.steps * 1e3
                print(f"| decode | {batch} | {context} | {ms:.3f} | {batch / (ms / 1e3):.0f} |", flush=True)
            except torch.OutOfMemoryError:
                print(f"| decode | {batch} | {context} | out of memory | |", flush=True)
            del ids, mask
            torch.cuda.empty_cache()

    print("\n| prefill | tokens | ms | tok/s |\n|---|---:|---:|---:|")
    for tokens in args.prefill:
        ids = torch.randint(0, config.vocab_size, (1, tokens), device="cuda", generator=gen)
        try:
            with torch.inference_mode():
                model(input_ids=ids, logits_to_keep=1)
                times = [timed(lambda: model(input_ids=ids, logits_to_keep=1)) for _ in range(3)]
            s = statistics.median(times)
            print(f"| prefill | {tokens} | {s * 1e3:.1f} | {tokens / s:.0f} |", flush=True)
        except torch.OutOfMemoryError:
            print(f"| prefill | {tokens} | out of memory | |", flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""llama.cpp half of scripts/bench/cpu-engine: the same workload as
`tessera generate --benchmark`, run through llama-cpp-python's low-level API (.venv-bench).

  cpu_engine_llamacpp.py --model GGUF [--threads T] [--prompt-tokens 512]
                         [--decode-prompt-tokens 64] [--decode-tokens 128] [--concurrency 1,4,16]
                         [--kv-unified] [--flash-attn auto|on|off] [--verbose]

Token ids: sequence s, position i -> 17 + (7919 * (i + 1) + 104729 * s) % (n_vocab - 17).
Prefill: sequence 0, --prompt-tokens tokens in one llama_decode (logits for the last token
only), a warm-up run and then 3 timed runs on a cleared KV cache; the median is reported.
Decode at concurrency C: sequences 0..C-1, each prefilled with --decode-prompt-tokens tokens
(not timed), then --decode-tokens steps of one batch of C tokens, each sequence fed the greedy
argmax of its previous logits (EOS never stops it); only the steps are timed.
One context serves everything: n_seq_max = max(C), n_batch = n_ubatch = 512, and by default
one KV stream per sequence (llama.cpp's default), each big enough for the longest sequence.
Prints one JSON object on stdout; llama.cpp's log goes to stderr with --verbose.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as L

kFirstId = 17  # ids 0..16 are SmolLM2's special tokens
kPrefillRuns = 3

_log = []


@L.llama_log_callback
def _log_callback(level, text, user_data):
    msg = text.decode("utf-8", "replace") if text else ""
    _log.append(msg)
    if _verbose:
        sys.stderr.write(msg)


_verbose = False


def token_id(s, i, n_vocab):
    return kFirstId + (7919 * (i + 1) + 104729 * s) % (n_vocab - kFirstId)


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Engine:
    def __init__(self, args, n_seq_max, n_ctx):
        L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(args.model.encode(), mparams)
        if not self.model:
            raise SystemExit(f"cpu_engine_llamacpp: could not load {args.model}\n" + "".join(_log[-20:]))
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = 512
        cparams.n_ubatch = 512
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = args.threads
        cparams.n_threads_batch = args.threads
        cparams.kv_unified = args.kv_unified
        cparams.flash_attn_type = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                   "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[args.flash_attn]
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit("cpu_engine_llamacpp: could not create the context\n" + "".join(_log[-20:]))
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(512, 0, n_seq_max)

    def clear(self):
        # 0.3.36 (llama.cpp with the llama_memory_* API): llama_kv_self_clear is gone.
        L.llama_memory_clear(self.mem, True)

    def decode(self, tokens):
        """tokens: list of (token, pos, seq, wants_logits). Returns the row index of each wanted row."""
        b = self.batch
        b.n_tokens = len(tokens)
        for k, (tok, pos, seq, want) in enumerate(tokens):
            b.token[k] = tok
            b.pos[k] = pos
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = seq
            b.logits[k] = 1 if want else 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise SystemExit(f"cpu_engine_llamacpp: llama_decode returned {rc} for {len(tokens)} tokens\n"
                             + "".join(_log[-20:]))

    def argmax(self, i):
        ptr = L.llama_get_logits_ith(self.ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def close(self):
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)
        L.llama_backend_free()


def prefill_once(eng, n):
    eng.clear()
    tokens = [(token_id(0, i, eng.n_vocab), i, 0, i == n - 1) for i in range(n)]
    start = time.perf_counter()
    eng.decode(tokens)
    L.llama_synchronize(eng.ctx)
    eng.argmax(n - 1)
    return time.perf_counter() - start


def decode_run(eng, c, prompt, steps):
    eng.clear()
    nxt = []
    for s in range(c):  # prompts one sequence per llama_decode, not timed
        eng.decode([(token_id(s, i, eng.n_vocab), i, s, i == prompt - 1) for i in range(prompt)])
        nxt.append(eng.argmax(prompt - 1))
    L.llama_synchronize(eng.ctx)
    start = time.perf_counter()
    for step in range(steps):
        eng.decode([(nxt[s], prompt + step, s, True) for s in range(c)])
        nxt = [eng.argmax(s) for s in range(c)]
    return time.perf_counter() - start


def main():
    global _verbose
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--kv-unified", action="store_true",
                    help="one KV buffer shared by all sequences (n_ctx = max(P, max(C) * (64 + 128)))")
    ap.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp's log on stderr")
    args = ap.parse_args()
    _verbose = args.verbose
    conc = [int(x) for x in args.concurrency.split(",") if x]
    if args.prompt_tokens > 512 or any(c > 512 for c in conc) or args.decode_prompt_tokens > 512:
        raise SystemExit("cpu_engine_llamacpp: batches are limited to n_batch = 512 tokens")

    n_seq_max = max(conc + [1])
    per_seq = max(args.prompt_tokens, args.decode_prompt_tokens + args.decode_tokens)
    if args.kv_unified:
        n_ctx = max(args.prompt_tokens, n_seq_max * (args.decode_prompt_tokens + args.decode_tokens))
    else:
        n_ctx = n_seq_max * per_seq  # llama.cpp gives each of the n_seq_max streams n_ctx / n_seq_max cells
    eng = Engine(args, n_seq_max, n_ctx)

    prefill_once(eng, args.prompt_tokens)  # warm-up, not counted
    prefill_s = statistics.median(prefill_once(eng, args.prompt_tokens) for _ in range(kPrefillRuns))
    decode = []
    for c in conc:
        secs = decode_run(eng, c, args.decode_prompt_tokens, args.decode_tokens)
        n = c * args.decode_tokens
        decode.append({"concurrency": c, "num_tokens": n, "seconds": secs, "tokens_per_second": n / secs})

    # auto resolves per device when the context is made; llama.cpp logs the outcome
    fa = {"on": "enabled", "off": "disabled"}.get(args.flash_attn) or next(
        (m.split("Flash Attention")[1].strip() for m in _log if "Flash Attention " in m), "unknown")
    buffers = [" ".join(m.split()) for m in _log if "buffer size" in m]
    out = {
        "engine": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "threads": args.threads,
        "prefill": {"num_tokens": args.prompt_tokens, "seconds": prefill_s,
                    "tokens_per_second": args.prompt_tokens / prefill_s},
        "decode": decode,
        "peak_rss_bytes": peak_rss_bytes(),
        "config": {"n_ctx": eng.n_ctx, "n_seq_max": n_seq_max, "n_batch": 512, "n_ubatch": 512,
                   "kv_unified": args.kv_unified, "flash_attn": args.flash_attn, "flash_attn_resolved": fa,
                   "buffers": buffers,
                   "system_info": L.llama_print_system_info().decode().strip()},
    }
    eng.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

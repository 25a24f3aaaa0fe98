#!/usr/bin/env python3
"""Table of scripts/bench/cpu-engine from the JSON both engines print.

  cpu_engine_table.py TESSERA_JSON LLAMACPP_JSON

Either file may be missing or empty (that side failed): its cells read "failed". Prints a
Markdown table (prefill, decode per concurrency, peak RSS) with the ratio Tessera / llama.cpp,
then a line per mismatch between the two workloads (threads, token counts, concurrencies).
Only the standard library: runs under any python3.
"""
import json
import sys
from pathlib import Path


def load(path):
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def rows(r):
    """{row label: (value, num_tokens or None)} of one engine's result."""
    if r is None:
        return {}
    out = {}
    p = r.get("prefill")
    if p:
        out[f"prefill {p['num_tokens']}"] = (p["tokens_per_second"], p["num_tokens"])
    for d in r.get("decode", []):
        out[f"decode c={d['concurrency']}"] = (d["tokens_per_second"], d["num_tokens"])
    if r.get("peak_rss_bytes"):
        out["peak RSS (MiB)"] = (r["peak_rss_bytes"] / (1 << 20), None)
    return out


def fmt(v):
    return "failed" if v is None else f"{v:.1f}"


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ours, peer = load(sys.argv[1]), load(sys.argv[2])
    a, b = rows(ours), rows(peer)
    labels = list(a) + [k for k in b if k not in a]
    # prefill first, decode rows by concurrency, memory last, whatever order the engines used
    def key(label):
        if label.startswith("prefill"):
            return (0, 0)
        if label.startswith("decode c="):
            return (1, int(label.split("=")[1]))
        return (2, 0)
    labels.sort(key=key)
    if not labels:
        labels = ["prefill", "decode", "peak RSS (MiB)"]
    print("| | Tessera tok/s | llama.cpp tok/s | ratio (Tessera / llama.cpp) |")
    print("|---|---:|---:|---:|")
    notes = []
    for label in labels:
        va, na = a.get(label, (None, None))
        vb, nb = b.get(label, (None, None))
        ratio = f"{va / vb:.2f}x" if va is not None and vb else "-"
        print(f"| {label} | {fmt(va)} | {fmt(vb)} | {ratio} |")
        if na is not None and nb is not None and na != nb:
            notes.append(f"{label}: Tessera ran {na} tokens, llama.cpp {nb}")
    if ours and peer and ours.get("threads") != peer.get("threads"):
        notes.append(f"threads differ: Tessera {ours.get('threads')}, llama.cpp {peer.get('threads')}")
    if ours and peer:
        missing = sorted(set(a) ^ set(b))
        if missing:
            notes.append("measured by one engine only: " + ", ".join(missing))
    if notes:
        print()
    for n in notes:
        print(f"WARNING: the workloads differ: {n}")
    # Single-stream decode reads every weight once per token: its bandwidth against what
    # this machine's memory delivers (measured by the Tessera process).
    if ours and ours.get("memory_read_gb_per_s") and ours.get("weight_bytes"):
        bw = ours["memory_read_gb_per_s"]
        print()
        print(f"Memory read bandwidth (Tessera's threads, 512 MiB stream): {bw:.1f} GB/s; "
              f"weights {ours['weight_bytes'] / 1e6:.1f} MB per decode step")
        for d in ours.get("decode", []):
            steps = d["tokens_per_second"] / d["concurrency"]
            used = steps * ours["weight_bytes"] / 1e9
            print(f"  decode c={d['concurrency']}: {steps:.1f} steps/s read weights at {used:.1f} GB/s = "
                  f"{100 * used / bw:.0f}% of the limit")
    sys.exit(1 if notes else 0)


if __name__ == "__main__":
    main()

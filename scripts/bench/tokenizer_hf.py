#!/usr/bin/env python3
"""HF `tokenizers` half of scripts/bench/tokenizer.

  tokenizer_hf.py make-corpus OUT            write the benchmark corpus (JSON list of documents)
  tokenizer_hf.py run NAME CORPUS MODE SECS  time HF on it; MODE is "single" (encode() per
                                             document, RAYON_NUM_THREADS=1) or "batch"
                                             (encode_batch over all documents, all cores)

NAME is a reference tokenizer of scripts/fixtures/make_tokenizer_fixtures.py (the same
objects the fixtures come from). Prints one JSON line like tessera-bench-tokenizer.
"""
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_corpus(out):
    # Real text of several kinds: the repository's English docs, C++/Python/YAML code, and
    # the multilingual fixture corpus. One document per file, capped per file.
    docs = []
    for pattern in ("**/*.md", "**/*.cc", "**/*.h", "**/*.py", "**/*.proto", "**/*.yaml", "**/*.cmake"):
        for p in sorted(ROOT.glob(pattern)):
            if any(part.startswith(".") or part in ("build",) for part in p.relative_to(ROOT).parts):
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            docs.append(text[:32768])
    fixture = json.loads((ROOT / "tests/fixtures/tokenizer/corpus.json").read_text(encoding="utf-8"))
    # The multilingual strings as documents of ~2 KB, repeated to weigh about a quarter.
    joined = "\n".join(s for s in fixture if s)
    for _ in range(max(1, sum(map(len, docs)) // (3 * len(joined)))):
        docs.extend(joined[i:i + 2048] for i in range(0, len(joined), 2048))
    Path(out).write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    print(f"{len(docs)} documents, {sum(len(d.encode()) for d in docs) / 1e6:.2f} MB", file=sys.stderr)


def fnv1a(all_ids):
    h = 1469598103934665603
    mask = (1 << 64) - 1
    for ids in all_ids:
        for i in ids:
            h = ((h ^ (i & 0xFFFFFFFF)) * 1099511628211) & mask
        h = ((h ^ 0xFFFFFFFF) * 1099511628211) & mask
    return f"{h:016x}"


def load(name):
    sys.path.insert(0, str(ROOT / "scripts" / "fixtures"))
    import make_tokenizer_fixtures as f  # noqa: E402
    from tokenizers import Tokenizer
    if name in ("spm_small", "bytelevel_small"):
        return Tokenizer.from_file(str(f.OUT / f"{name}.tokenizer.json"))
    if name == "smollm2":
        smol = f.with_json_edits(f.from_gguf(f.MODEL), f.no_post_processor)
        return f.with_json_edits(smol, lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}))
    tk = f.from_gguf(f.VOCABS / f"ggml-vocab-{name}.gguf")
    return f.with_json_edits(tk, f.llama3_edits) if name == "llama-bpe" else tk


def run(name, corpus, mode, seconds):
    docs = json.loads(Path(corpus).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    tk = load(name)
    load_s = time.perf_counter() - t0
    num_bytes = sum(len(d.encode()) for d in docs)

    def one_pass():
        if mode == "batch":
            return [e.ids for e in tk.encode_batch(docs, add_special_tokens=False)]
        return [tk.encode(d, add_special_tokens=False).ids for d in docs]

    ids = one_pass()  # warm the word cache, as the C++ side does
    passes, start = 0, time.perf_counter()
    while True:
        one_pass()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and passes >= 2:
            break
    print(json.dumps({"impl": "hf-tokenizers", "mode": mode, "threads": os.cpu_count() if mode == "batch" else 1,
                      "load_s": load_s, "num_docs": len(docs), "num_bytes": num_bytes,
                      "num_tokens": sum(map(len, ids)), "mb_per_s": num_bytes * passes / elapsed / 1e6,
                      "ids_fnv1a": fnv1a(ids)}))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "run" and len(sys.argv) == 6 and sys.argv[4] == "single":
        # Must be set before tokenizers starts its thread pool.
        os.environ["RAYON_NUM_THREADS"] = "1"
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("TQDM_DISABLE", "1")
    if len(sys.argv) == 3 and sys.argv[1] == "make-corpus":
        make_corpus(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)

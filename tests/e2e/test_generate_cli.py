"""`tessera generate` on the real test model: offline generation through the engine and
tokenizer, the reference path against the transformers fixtures, bad input, and the
benchmark mode's JSON."""
import json

from conftest import run


def fixture_prompts(repo_root):
    with open(repo_root / "tests/fixtures/engine/smollm2_q4_1_reference.json") as f:
        return {p["name"]: p for p in json.load(f)["prompts"]}


def test_chat_prompt_answers_on_the_reference_path(binary, test_model):
    r = run([binary("tessera"), "generate", "--model", test_model, "--chat", "--dequantize",
             "--prompt", "What is the capital of France?", "--max-tokens", "16", "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"]
    assert out["finish_reason"] in ("eos", "length")
    assert out["prompt_token_ids"][0] == 1  # the chat template's <|im_start|>


def test_greedy_ids_equal_the_transformers_continuation(binary, test_model, repo_root):
    p = fixture_prompts(repo_root)["short_fact"]
    ids = ",".join(str(i) for i in p["token_ids"])
    r = run([binary("tessera"), "generate", "--model", test_model, "--dequantize", "--prompt-ids", ids,
             "--max-tokens", "20", "--ignore-eos", "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token_ids"] == p["greedy_token_ids"][:20]


def test_logprobs_and_seeded_sampling_are_reproducible(binary, test_model):
    args = [binary("tessera"), "generate", "--model", test_model, "--prompt", "Once upon a time",
            "--max-tokens", "12", "--temperature", "0.8", "--top-p", "0.9", "--seed", "42", "--logprobs", "3",
            "--json"]
    a = run(args)
    b = run(args)
    assert a.returncode == 0, a.stderr
    first, second = json.loads(a.stdout), json.loads(b.stdout)
    assert first["token_ids"] == second["token_ids"]
    for lp in first["logprobs"]:
        assert len(lp["top"]) == 3
        assert lp["logprob"] <= 0
        assert lp["top"][0]["logprob"] >= lp["top"][1]["logprob"] >= lp["top"][2]["logprob"]
    other = json.loads(run(args[:-5] + ["--seed", "43", "--json"]).stdout)
    assert other["token_ids"] != first["token_ids"]


def test_bad_input_is_refused_clearly(binary, test_model):
    r = run([binary("tessera"), "generate", "--model", test_model, "--prompt-ids", "1,2,999999"])
    assert r.returncode == 1
    assert "outside the vocabulary" in r.stderr
    r = run([binary("tessera"), "generate", "--model", test_model, "--prompt", "hi", "--top-p", "0"])
    assert r.returncode == 1
    assert "top_p" in r.stderr
    r = run([binary("tessera"), "generate", "--model", test_model])
    assert r.returncode == 2
    assert "--prompt" in r.stderr


def test_benchmark_mode_prints_the_workload_json(binary, test_model):
    r = run([binary("tessera"), "generate", "--model", test_model, "--benchmark", "--threads", "1",
             "--prompt-tokens", "32", "--decode-prompt-tokens", "8", "--decode-tokens", "4", "--concurrency", "1,2",
             "--repeats", "1"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine"] == "tessera" and out["threads"] == 1
    assert out["prefill"]["num_tokens"] == 32 and out["prefill"]["tokens_per_second"] > 0
    assert [d["concurrency"] for d in out["decode"]] == [1, 2]
    assert [d["num_tokens"] for d in out["decode"]] == [4, 8]
    assert out["peak_rss_bytes"] > out["weight_bytes"] // 2

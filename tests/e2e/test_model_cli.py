"""`tessera inspect`, `tokenize` and `detokenize` on the real test model."""
import json

from conftest import run


def test_inspect_reports_config_tokenizer_and_template(binary, test_model):
    r = run([binary("tessera"), "inspect", test_model])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "GGUF v3" in out and "272 tensors" in out
    assert "layers              30\n" in out
    assert "heads (q / kv)      9 / 3, head_dim 64\n" in out
    assert "parameters          134.5 M\n" in out
    assert "tied embeddings     yes\n" in out
    assert "byte-level BPE" in out
    assert "49152 tokens, 48900 merges" in out
    assert "eos                 2 '<|im_end|>'" in out
    assert "chat template: 368 characters, compiled" in out
    assert "Q4_1      210 tensors" in out


def test_inspect_lists_tensors_and_metadata(binary, test_model):
    r = run([binary("tessera"), "inspect", test_model, "--tensors", "--metadata"])
    assert r.returncode == 0, r.stderr
    assert "blk.29.ffn_down.weight" in r.stdout
    assert "general.architecture = " in r.stdout and "llama" in r.stdout


def test_inspect_dummy_config_directory(binary, repo_root):
    r = run([binary("tessera"), "inspect", repo_root / "tests/fixtures/models/llama-3.1-8b-instruct"])
    # No tokenizer in a config-only directory: the config prints, the tokenizer is an error.
    assert "parameters          8030.3 M\n" in r.stdout
    assert "rope                theta 500000, scaling llama3 (factor 8)" in r.stdout
    assert "tokenizer: error: " in r.stdout
    assert r.returncode == 1


def test_inspect_missing_model_is_a_clear_error(binary, tmp_path):
    r = run([binary("tessera"), "inspect", tmp_path / "nope.gguf"])
    assert r.returncode == 1
    assert r.stderr.strip() == f"tessera inspect: {tmp_path / 'nope.gguf'}: no such file or directory"


def test_tokenize_then_detokenize_round_trips(binary, test_model):
    text = "Hello, world! Ünïcödé 你好 🎉\n\tcode: x = [1, 2, 3]"
    r = run([binary("tessera"), "tokenize", "--model", test_model, text])
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert all(i.isdigit() for i in ids) and len(ids) > 10
    back = run([binary("tessera"), "detokenize", "--model", test_model, *ids])
    assert back.returncode == 0, back.stderr
    assert back.stdout == text + "\n"


def test_tokenize_json_parses_special_tokens_unless_told_not_to(binary, test_model):
    r = run([binary("tessera"), "tokenize", "--model", test_model, "--json", "<|im_start|>user"])
    assert json.loads(r.stdout) == {"ids": [1, 4093], "tokens": ["<|im_start|>", "user"]}
    plain = run([binary("tessera"), "tokenize", "--model", test_model, "--json", "--special-as-text", "<|im_start|>user"])
    assert 1 not in json.loads(plain.stdout)["ids"]


def test_tokenize_reads_stdin(binary, test_model):
    a = run([binary("tessera"), "tokenize", "--model", test_model, "two\nlines"])
    b = run([binary("tessera"), "tokenize", "--model", test_model, "-"], input="two\nlines")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_detokenize_rejects_bad_ids(binary, test_model):
    r = run([binary("tessera"), "detokenize", "--model", test_model, "12", "abc"])
    assert r.returncode == 2
    assert "'abc' is not a token id" in r.stderr
    r = run([binary("tessera"), "detokenize", "--model", test_model, "49152"])
    assert r.returncode == 1
    assert r.stderr.startswith("tessera detokenize: ")


def test_detokenize_skip_special(binary, test_model):
    r = run([binary("tessera"), "detokenize", "--model", test_model, "--skip-special", "1", "4093", "2"])
    assert r.returncode == 0
    assert r.stdout == "user\n"

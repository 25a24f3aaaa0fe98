"""scripts/bench/serving-model: the router's schedule replayed over a result file, each step
costing DESIGN.md's bound (weights + KV at the bandwidth, or FLOPs at the peak)."""
import json
import subprocess
import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts/bench"))
import serving_model  # noqa: E402

CONFIG = json.loads((REPO_ROOT / "tests/fixtures/models/llama-3.1-8b-instruct/config.json").read_text())
SHAPE = serving_model.Shape(CONFIG)
BW, PEAK = 3.0e12, 800e12


def run(requests, max_num_seqs=256, budget=8192, chunk=0, admission_batch=1):
    return serving_model.simulate(requests, SHAPE, BW, PEAK, max_num_seqs, budget, chunk, admission_batch)


def test_llama_8b_sizes_are_design_md_s():
    assert round(SHAPE.weight_bytes / 1e9, 1) == 16.1  # "a bf16 Llama-3.1-8B (16.1 GB)"
    assert SHAPE.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2
    assert abs(SHAPE.weight_bytes / BW - 5.35e-3) < 0.01e-3  # "about 5.3 ms per token"


def test_one_request_is_a_prefill_then_decodes_each_bound_by_the_weights():
    m = run([(0.0, 5, 4)])
    assert m["steps"] == 4 and m["output_tokens"] == 4
    assert m["bandwidth_bound_steps"] == 4
    kv = sum(c * SHAPE.kv_bytes_per_token for c in (0 + 2 * 5, 5 + 2, 6 + 2, 7 + 2))
    assert abs(m["time_s"] - (4 * SHAPE.weight_bytes + kv) / BW) < 1e-12


def test_the_step_budget_and_the_chunk_size_split_a_prompt():
    assert run([(0.0, 10, 1)], budget=4)["steps"] == 3  # 4 + 4 + 2 prompt tokens
    assert run([(0.0, 10, 1)], chunk=3)["steps"] == 4  # 3 + 3 + 3 + 1


def test_decodes_go_first_and_max_num_seqs_admits_in_arrival_order():
    # Two sequences but room for one: the second starts when the first is done.
    assert run([(0.0, 4, 3), (0.0, 4, 3)], max_num_seqs=1)["steps"] == 6
    # Room for both: one step prefills both, then two decode steps.
    m = run([(0.0, 4, 3), (0.0, 4, 3)])
    assert m["steps"] == 3 and m["mean_decode_rows"] == 4 / 3


def test_a_long_prompt_is_compute_bound():
    m = run([(0.0, 8192, 1)])
    flops = 2.0 * SHAPE.params * 8192 + SHAPE.attention_flops(0, 8192)
    assert m["bandwidth_bound_steps"] == 0
    assert abs(m["time_s"] - flops / PEAK) < 1e-12


def test_admission_batch_waits_for_a_group_of_free_slots_as_the_router_does():
    # Room for two. One by one: C starts when A ends (step 3), D when C ends (step 5), beside
    # the long B: 6 steps. In groups of two: C and D wait until B ends too, then start
    # together: 8 steps, with fewer decode rows a step.
    requests = [(0.0, 4, 2), (0.0, 4, 6), (0.0, 4, 2), (0.0, 4, 2)]
    one_by_one = run(requests, max_num_seqs=2)
    grouped = run(requests, max_num_seqs=2, admission_batch=2)
    assert one_by_one["output_tokens"] == grouped["output_tokens"] == 12
    assert (one_by_one["steps"], grouped["steps"]) == (6, 8)
    assert (one_by_one["mean_decode_rows"], grouped["mean_decode_rows"]) == (8 / 6, 1.0)
    # Fewer have arrived than a group: they start at once.
    assert run([(0.0, 4, 2)], admission_batch=8)["steps"] == 2


def test_late_arrivals_wait_for_their_time():
    m = run([(0.0, 4, 2), (10.0, 4, 2)])
    assert m["time_s"] > 10.0 and m["steps"] == 4


def test_the_command_reads_a_result_file_and_prints_the_ratio(tmp_path):
    result = {"points": [{"request_rate": "inf", "concurrency": None, "output_throughput": 1000.0,
                          "requests": [{"input_len": 100, "output_len": 50, "ok": True, "start_s": 0.0}] * 8}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    out = subprocess.run([str(REPO_ROOT / "scripts/bench/serving-model"), "--result-json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    row = out.strip().splitlines()[-1].strip("|").split("|")
    model = run([(0.0, 100, 50)] * 8)
    assert int(row[1]) == model["steps"]
    assert row[5].strip() == f"{model['output_throughput']:,.0f}"
    assert row[7].strip() == f"{1000.0 / model['output_throughput']:.1%}"


def test_a_step_trace_is_set_beside_the_model_step_by_step(tmp_path):
    # A decode step of 100 rows at context 500 (bandwidth-bound) and an 8k prefill
    # (compute-bound), as a worker's worker.step_trace_path writes them; one refused plan.
    decode = {"step": 1, "t": 0.0, "seconds": 0.020, "ok": True, "slices": 100, "decode_rows": 100,
              "tokens": 100, "context": 100 * 500, "attended": 100 * 500, "sampled": 100}
    prefill = {"step": 2, "t": 0.030, "seconds": 0.300, "ok": True, "slices": 1, "decode_rows": 0,
               "tokens": 8192, "context": 8192, "attended": 8192 * 8193 / 2, "sampled": 1}
    refused = dict(decode, step=3, t=0.4, ok=False)
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in (decode, prefill, refused)))
    t = serving_model.trace_table(path.read_text().splitlines(), SHAPE, BW, PEAK)
    kv = (100 * 500 + 100) * SHAPE.kv_bytes_per_token
    want_decode = (SHAPE.weight_bytes + kv) / BW
    assert abs(t["groups"][64]["model"] - want_decode) < 1e-12
    assert abs(t["groups"][64]["serial"] - (SHAPE.weight_bytes / BW + kv / BW)) < 1e-12
    want_prefill = (2.0 * SHAPE.params * 8192 + SHAPE.attention_flops(0, 8192)) / PEAK
    assert abs(t["groups"][4096]["model"] - want_prefill) < 1e-12
    assert t["total"]["steps"] == 2 and abs(t["total"]["measured"] - 0.320) < 1e-12
    assert abs(t["span_s"] - 0.330) < 1e-12
    # Neither bound can exceed what was measured here, and the serial one is never below the model.
    for g in t["groups"].values():
        assert g["serial"] >= g["model"] - 1e-15
    out = subprocess.run([str(REPO_ROOT / "scripts/bench/serving-model"), "--step-trace", str(path)],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["64–255"].split("|")[2].strip() == "1"
    assert rows["all"].split("|")[2].strip() == "2"
    assert rows["all"].split("|")[6].strip() == "160.00"  # measured ms a step


def test_a_file_that_is_not_a_step_trace_is_a_clear_error(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"points": []}\n')
    r = subprocess.run([str(REPO_ROOT / "scripts/bench/serving-model"), "--step-trace", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a step trace" in r.stderr

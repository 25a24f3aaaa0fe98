"""`tessera config ...` uses the same parser as every process, and its reference is the doc."""
from conftest import run


def test_sample_deployment_config_is_valid(binary, repo_root):
    r = run([binary("tessera"), "config", "check", "--config", repo_root / "deploy/config/tessera.yaml"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(": ok\n")


def test_check_reports_every_problem_with_file_and_line(binary, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  port: 0\nworker:\n  devcie: cpu\n")
    r = run([binary("tessera"), "config", "check", "--config", bad])
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{bad}:4:3: worker.devcie: unknown key (did you mean 'device'?)",
    ]
    bad.write_text("gateway:\n  port: 0\n")
    r = run([binary("tessera"), "config", "check", "--config", bad])
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"{bad}:2:9: gateway.port: must be a TCP port in 1..65535 (got 0)"]


def test_dump_applies_overrides_and_round_trips(binary, tmp_path):
    r = run([binary("tessera"), "config", "dump", "--set", "router.max_num_seqs=7", "--set", "worker.device=cpu"])
    assert r.returncode == 0, r.stderr
    assert "  max_num_seqs: 7\n" in r.stdout
    assert "  device: cpu\n" in r.stdout
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(r.stdout)
    again = run([binary("tessera"), "config", "dump", "--config", dumped])
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout


def test_missing_config_file_is_a_clear_error(binary, tmp_path):
    r = run([binary("tessera"), "config", "check", "--config", tmp_path / "nope.yaml"])
    assert r.returncode == 1
    assert r.stderr.strip() == f"{tmp_path / 'nope.yaml'}: cannot open config file"


def test_configuration_doc_is_the_generated_reference(binary, repo_root):
    r = run([binary("tessera"), "config", "reference"])
    assert r.returncode == 0
    doc = (repo_root / "docs/CONFIGURATION.md").read_text()
    assert r.stdout in doc, "docs/CONFIGURATION.md is stale: regenerate it (see docs/DEVELOPING.md)"

"""Every binary answers --help and --version, and rejects what it does not understand."""
import re

import pytest

from conftest import run

TIERS = ["tessera-gateway", "tessera-router", "tessera-worker"]
VERSION_LINE = re.compile(r"^(?P<name>[\w-]+) (?P<version>\d+\.\d+\.\d+) \((?P<git>[^)]+)\)\n$")


@pytest.mark.parametrize("name", TIERS + ["tessera"])
def test_version_names_program_and_semantic_version(binary, name):
    r = run([binary(name), "--version"])
    assert r.returncode == 0, r.stderr
    m = VERSION_LINE.match(r.stdout)
    assert m, r.stdout
    assert m["name"] == name


@pytest.mark.parametrize("name", TIERS + ["tessera"])
def test_help_prints_usage_and_exits_zero(binary, name):
    r = run([binary(name), "--help"])
    assert r.returncode == 0
    assert r.stdout.startswith(f"Usage: {name} ")


@pytest.mark.parametrize("name", TIERS + ["tessera"])
def test_unknown_argument_is_a_usage_error(binary, name):
    r = run([binary(name), "--frobnicate"])
    assert r.returncode == 2
    assert "'--frobnicate'" in r.stderr
    assert f"Try '{name} --help'" in r.stderr


def test_gateway_without_its_model_files_refuses_to_start(binary, tmp_path):
    # The gateway tokenizes, so it needs the model's tokenizer before it listens.
    missing = tmp_path / "missing.gguf"
    r = run([binary("tessera-gateway"), "--set", f"model.path={missing}"])
    assert r.returncode == 1
    assert str(missing) in r.stderr


def test_worker_lists_cpu_features(binary):
    r = run([binary("tessera-worker"), "--list-devices"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^cpu: \d+ logical cpus, kernels (scalar|avx2|avx512), features: ", r.stdout, re.M)
    assert re.search(r"^cuda: ", r.stdout, re.M)

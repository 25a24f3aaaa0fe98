"""Shared fixtures for the end-to-end suite: where the built binaries and the test model are.

scripts/test sets TESSERA_BUILD_DIR and TESSERA_TEST_MODEL; run by hand, the defaults are
the repository's build/ directory and the model cache of scripts/fetch-model.
"""
import os
import pathlib
import subprocess

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("TESSERA_BUILD_DIR", REPO_ROOT / "build")).resolve()
    if not (path / "CMakeCache.txt").exists():
        pytest.fail(f"no configured build at {path}; run scripts/test or set TESSERA_BUILD_DIR")
    return path


@pytest.fixture(scope="session")
def binary(build_dir):
    """binary("tessera-router") -> path of a built executable; fails clearly when missing."""

    locations = {
        "tessera": "launcher/tessera",
        "tessera-gateway": "gateway/tessera-gateway",
        "tessera-router": "router/tessera-router",
        "tessera-worker": "worker/tessera-worker",
        "tessera-metrics-sample": "tests/tessera-metrics-sample",
    }

    def find(name: str) -> pathlib.Path:
        path = build_dir / locations[name]
        if not path.exists():
            pytest.fail(f"{name} was not built at {path}")
        return path

    return find


@pytest.fixture(scope="session")
def test_model() -> pathlib.Path:
    path = os.environ.get("TESSERA_TEST_MODEL")
    if not path:
        path = subprocess.run([str(REPO_ROOT / "scripts/fetch-model")], check=True, capture_output=True,
                              text=True).stdout.strip()
    return pathlib.Path(path)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture(scope="session")
def gateway_cluster(binary, test_model, repo_root, build_dir, tmp_path_factory):
    """A real Tessera (router, one CPU worker, gateway) on free ports for the whole session;
    see gateway_cluster.py. Logs stay under the session's tmp dir."""
    from gateway_cluster import Cluster

    cluster = Cluster(binary, test_model, repo_root, build_dir, tmp_path_factory.mktemp("gateway-cluster")).start()
    yield cluster
    cluster.stop()

"""A real Tessera on this host for the gateway's end-to-end tests: router, one CPU worker and
gateway, on free ports, with their logs in files, and the router's gRPC GetStats.

`tessera serve` is the intended way to run one (it supervises the three processes); while the
built `tessera` does not list `serve` yet, the three binaries are started directly with the same
settings. Set TESSERA_E2E_CLUSTER=binaries to force the direct start.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc

STARTUP_TIMEOUT_S = 90
LOG_TAIL_BYTES = 6000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def read_tail(path: pathlib.Path, start: int = 0, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            begin = max(start, end - limit)
            f.seek(begin)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return ("...\n" if begin > start else "") + text


class Process:
    """One child process whose stdout and stderr go to `log`."""

    def __init__(self, name: str, args: list, log: pathlib.Path):
        self.name, self.args, self.log = name, [str(a) for a in args], log
        with open(log, "wb") as out:
            # A session of its own: stopping it never signals pytest. (serve puts each child
            # in a group of its own, and they die with it: PR_SET_PDEATHSIG.)
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            # SIGTERM to the process alone: serve drains and stops its own children.
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        # Whatever is left in the process's own group goes too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_ready(port: int, processes: list[Process], what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        for p in processes:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode} while {what} started\n"
                                   + logs_text(processes))
        try:
            last = http_status(port, "/ready", timeout=2)
            if last == 200:
                return
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{what}: /ready on port {port} stayed {last} for {timeout} s\n" + logs_text(processes))


def logs_text(processes: list[Process], offsets: dict | None = None) -> str:
    parts = []
    for p in processes:
        start = (offsets or {}).get(p.log, 0)
        parts.append(f"----- {p.name} ({p.log}) -----\n{read_tail(p.log, start)}")
    return "\n".join(parts)


def lists_serve(tessera: pathlib.Path) -> bool:
    r = subprocess.run([str(tessera), "--help"], capture_output=True, text=True, timeout=30)
    return re.search(r"^\s+serve\b", r.stdout + r.stderr, re.MULTILINE) is not None


def find_protoc(build_dir: pathlib.Path) -> str:
    cache = build_dir / "CMakeCache.txt"
    if cache.exists():
        m = re.search(r"^Protobuf_PROTOC_EXECUTABLE:FILEPATH=(.+)$", cache.read_text(), re.MULTILINE)
        if m and os.path.exists(m.group(1)):
            return m.group(1)
    return "protoc"


class RouterStatsClient:
    """Router.GetStats over gRPC. The message classes come from proto/ through protoc (the
    one the C++ build uses, so no grpcio-tools is needed); the call is made without a
    generated stub."""

    def __init__(self, address: str, repo_root: pathlib.Path, build_dir: pathlib.Path, out_dir: pathlib.Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        proto_root = repo_root / "proto"
        subprocess.run([find_protoc(build_dir), f"-I{proto_root}", f"--python_out={out_dir}",
                        str(proto_root / "tessera/v1/common.proto"), str(proto_root / "tessera/v1/router.proto")],
                       check=True, capture_output=True, text=True, timeout=60)
        if str(out_dir) not in sys.path:
            sys.path.insert(0, str(out_dir))
        self.pb = importlib.import_module("tessera.v1.router_pb2")
        self.channel = grpc.insecure_channel(address)
        self._get_stats = self.channel.unary_unary(
            "/tessera.v1.Router/GetStats",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self.pb.RouterStats.FromString)

    def get_stats(self):
        return self._get_stats(self.pb.GetStatsRequest(), timeout=5)

    def close(self) -> None:
        self.channel.close()


class Cluster:
    """Router + worker + gateway (through `tessera serve` or the binaries), and any extra
    gateways started on the same router."""

    def __init__(self, binary, model: pathlib.Path, repo_root: pathlib.Path, build_dir: pathlib.Path,
                 work_dir: pathlib.Path):
        self.binary, self.model, self.repo_root, self.build_dir = binary, model, repo_root, build_dir
        self.work_dir = work_dir
        self.processes: list[Process] = []
        self.gateway_port = free_port()
        self.router_port = free_port()
        self.router_metrics_port = free_port()
        self.worker_metrics_port = free_port()
        self.mode = ""
        self.stats_client: RouterStatsClient | None = None

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.router_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> "Cluster":
        tessera = self.binary("tessera")
        use_serve = os.environ.get("TESSERA_E2E_CLUSTER") != "binaries" and lists_serve(tessera)
        try:
            if use_serve:
                self.mode = "tessera serve"
                self.processes.append(Process("tessera serve", [
                    tessera, "serve", "--model", self.model, "--host", "127.0.0.1", "--port", self.gateway_port,
                    "--router-port", self.router_port,
                    "--set", f"router.metrics_port={self.router_metrics_port}",
                    "--set", f"worker.metrics_port={self.worker_metrics_port}",
                ], self.work_dir / "serve.log"))
            else:
                self.mode = "binaries"
                self.processes.append(Process("router", [
                    self.binary("tessera-router"), "--set", f"router.listen={self.router_address}",
                    "--set", f"router.metrics_port={self.router_metrics_port}",
                ], self.work_dir / "router.log"))
                self.processes.append(Process("worker", [
                    self.binary("tessera-worker"), "--set", f"worker.router_address={self.router_address}",
                    "--set", f"model.path={self.model}", "--set", f"worker.metrics_port={self.worker_metrics_port}",
                ], self.work_dir / "worker.log"))
                self.processes.append(self._gateway_process("gateway", self.gateway_port, []))
            wait_ready(self.gateway_port, self.processes, f"the cluster ({self.mode})")
            self.stats_client = RouterStatsClient(self.router_address, self.repo_root, self.build_dir,
                                                  self.work_dir / "pb")
        except BaseException:
            self.stop()
            raise
        return self

    def _gateway_process(self, name: str, port: int, settings: list[str]) -> Process:
        args = [self.binary("tessera-gateway"), "--set", "gateway.host=127.0.0.1", "--set", f"gateway.port={port}",
                "--set", f"gateway.routers=[{self.router_address}]", "--set", f"model.path={self.model}"]
        for s in settings:
            args += ["--set", s]
        return Process(name, args, self.work_dir / f"{name}.log")

    def start_gateway(self, name: str, settings: list[str]) -> int:
        """Another gateway on the cluster's router, with extra `--set` settings; its port."""
        port = free_port()
        p = self._gateway_process(name, port, settings)
        self.processes.append(p)
        wait_ready(port, [p], name)
        return port

    def router_stats(self):
        return self.stats_client.get_stats()

    def log_offsets(self) -> dict:
        return {p.log: p.log.stat().st_size if p.log.exists() else 0 for p in self.processes}

    def logs(self, since: dict | None = None) -> str:
        return logs_text(self.processes, since)

    def stop(self) -> None:
        if self.stats_client:
            self.stats_client.close()
            self.stats_client = None
        # Gateways first, then the worker, then the router (or serve, which drains its own).
        for p in reversed(self.processes):
            p.stop()

"""tessera serve as a process: it starts router, worker and gateway, prints their logs behind
[name] prefixes and the API's URL once ready, restarts a worker killed under it, stops
cleanly on SIGTERM, and fails fast (never loops) on a child that cannot start."""
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai

from conftest import run

DRAIN_TIMEOUT_S = 20  # a ceiling: the stop takes as long as the in-flight request


def free_ports(n):
    """n distinct free ports (all bound at once, so none comes back twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Serve:
    """`tessera serve` as a child process; threads collect its stdout and stderr lines."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, stream, into):
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern, timeout, after=0):
        """The first match of `pattern` in a stdout line at index >= `after`, and that index."""
        regex = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.out)):
                    if m := regex.search(self.out[i]):
                        return m, i
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and all(not t.is_alive() for t in self.readers)):
                    raise AssertionError(f"no line matching {pattern!r} in {timeout} s; output:\n" + self.transcript())
                self.cond.wait(min(left, 0.5))

    def transcript(self):
        with self.cond:
            return "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        self.proc.wait(timeout=10)
        for t in self.readers:
            t.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def ready_status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def complete(client, model):
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    return r.choices[0].text


def start_serve(binary, test_model, extra=()):
    """`tessera serve` on free ports, ready; (serve, its API's URL, the model's name, its port)."""
    port, router_port, router_metrics, worker_metrics = free_ports(4)
    serve = Serve([binary("tessera"), "serve", "--model", test_model, "--port", port, "--router-port", router_port,
                   "--drain-timeout", DRAIN_TIMEOUT_S, "--set", f"router.metrics_port={router_metrics}",
                   "--set", f"worker.metrics_port={worker_metrics}", *extra])
    try:
        m, _ = serve.wait_for(rf"^tessera serve: ready — OpenAI API at (http://127\.0\.0\.1:{port}/v1) \(model (.+)\)$",
                              timeout=120)
    except BaseException:
        serve.stop()
        raise
    return serve, m.group(1), m.group(2), port


def stop_with_sigterm(serve):
    """SIGTERM, then the exit (0, within the drain timeout) and the whole transcript."""
    t0 = time.time()
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=DRAIN_TIMEOUT_S + 15) == 0, serve.transcript()
    assert time.time() - t0 < DRAIN_TIMEOUT_S + 5
    for t in serve.readers:
        t.join(timeout=5)
    text = serve.transcript()
    # Stopped in the order that loses no request: gateway, router, workers.
    order = [text.index(f"tessera serve: {name} stopped: exited with status 0") for name in ("gateway", "router", "worker/0")]
    assert order == sorted(order), text
    assert serve.out[-1] == "tessera serve: stopped"
    return text


def test_serve_restarts_a_killed_worker_and_stops_cleanly_on_sigterm(binary, test_model):
    serve, url, model, port = start_serve(binary, test_model)
    try:
        for prefix in ("[router] tessera-router: ", "[worker/0] tessera-worker: ", "[gateway] tessera-gateway: "):
            serve.wait_for(re.escape(prefix), timeout=5)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        before = complete(client, model)

        m, _ = serve.wait_for(r"^tessera serve: started worker/0 \(pid (\d+)\)$", timeout=5)
        first_pid = int(m.group(1))
        os.kill(first_pid, signal.SIGKILL)
        m, restarted_at = serve.wait_for(r"^tessera serve: restarted worker/0 \(pid (\d+), restart 1\)$", timeout=30)
        assert int(m.group(1)) != first_pid
        serve.wait_for(r"^tessera serve: worker/0 is ready", timeout=60, after=restarted_at)
        # Serving again: the gateway learns of the new worker through its router's health,
        # which it polls, so its first answers may still be 503. A new client: a new
        # connection, not one idle since before the restart.
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        deadline = time.time() + 30
        while True:
            try:
                if ready_status(port) == 200:
                    assert complete(client, model) == before  # greedy: the new worker answers alike
                    break
            except openai.APIStatusError as e:
                assert e.status_code == 503, e
            assert time.time() < deadline, "the gateway did not serve again after the worker's restart"
            time.sleep(0.2)

        stop_with_sigterm(serve)
        # Every line is whole: a [name] prefix or serve's own.
        for line in serve.out:
            assert re.match(r"^(\[(router|worker/0|gateway)\] |tessera serve: )", line), line
    except BaseException:
        print(serve.transcript())  # shown by pytest with the failure
        raise
    finally:
        serve.stop()


# A stream in flight at SIGTERM ends whole: the gateway drains it and writes its last
# chunk out before it stops (it once stopped its server first, truncating most streams).
def test_serve_drains_a_request_in_flight_before_stopping_the_router(binary, test_model):
    serve, url, model, _ = start_serve(binary, test_model)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        started, finished = threading.Event(), []

        def stream_one():
            reasons = []
            try:
                chunks = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24,
                                                   temperature=0, stream=True, extra_body={"ignore_eos": True})
                for chunk in chunks:
                    started.set()
                    reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
            except Exception as e:  # noqa: BLE001 — a cut stream raises httpx's errors, unwrapped
                reasons.append(repr(e))
            finished.append(reasons)

        streamer = threading.Thread(target=stream_one, daemon=True)
        streamer.start()
        assert started.wait(timeout=30), "the stream never started"
        # The gateway, stopped first, drains the stream while the router and the worker
        # still run.
        stop_with_sigterm(serve)
        streamer.join(timeout=5)
        assert finished == [["length"]], f"the request in flight did not finish whole: {finished}"
    except BaseException:
        print(serve.transcript())
        raise
    finally:
        serve.stop()


def test_serve_with_tp_2_fails_fast_naming_the_worker(binary, test_model):
    port, router_port, router_metrics, worker_metrics = free_ports(4)
    t0 = time.time()
    r = run([binary("tessera"), "serve", "--model", test_model, "--tp", "2", "--port", port,
             "--router-port", router_port, "--set", f"router.metrics_port={router_metrics}",
             "--set", f"worker.metrics_port={worker_metrics}"])
    assert r.returncode == 1
    assert time.time() - t0 < 30
    assert "tensor/pipeline parallelism is not built yet" in r.stdout
    assert re.search(r"tessera serve: worker/[01] exited with status 1 before it was ever ready", r.stderr), r.stderr
    assert "restarted" not in r.stdout


def test_serve_without_the_default_model_says_how_to_fetch_it(binary, tmp_path):
    env = dict(os.environ, TESSERA_MODEL_CACHE=str(tmp_path))
    r = run([binary("tessera"), "serve", "--model", "default"], env=env)
    assert r.returncode == 1
    assert "scripts/fetch-model" in r.stderr
    assert "started" not in r.stdout


def test_serve_refuses_bad_flags_before_starting_anything(binary, test_model):
    r = run([binary("tessera"), "serve", "--dp", "0"])
    assert r.returncode == 2 and "--dp and --tp must be at least 1" in r.stderr
    r = run([binary("tessera"), "serve", "--model", test_model, "--port", "18123", "--router-port", "18123"])
    assert r.returncode == 1 and "would both listen on port 18123" in r.stderr
    r = run([binary("tessera"), "serve", "--device", "tpu"])
    assert r.returncode == 2 and "--device must be auto, cpu or cuda" in r.stderr
    r = run([binary("tessera"), "serve", "--bogus"])
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr


def test_serve_a_dummy_weight_model_with_a_tokenizer_from_elsewhere(binary, test_model, repo_root):
    """The dummy load format fills a config.json with random weights and has no tokenizer:
    model.tokenizer_path lends the gateway one (here the test model's own GGUF, same vocabulary),
    and token-id prompts, text prompts and chat all work; without it the gateway says what is
    missing."""
    config_dir = repo_root / "tests/fixtures/models/smollm2-135m-instruct"
    serve, url, model, _ = start_serve(binary, config_dir, ["--set", "model.load_format=dummy",
                                                             "--set", f"model.tokenizer_path={test_model}"])
    try:
        assert model == "smollm2-135m-instruct"
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        by_ids = client.completions.create(model=model, prompt=[1, 504, 3458, 282], max_tokens=6, temperature=0)
        assert by_ids.usage.prompt_tokens == 4 and by_ids.usage.completion_tokens == 6
        # Random weights say random things, but the same greedy request says the same thing.
        again = client.completions.create(model=model, prompt=[1, 504, 3458, 282], max_tokens=6, temperature=0)
        assert again.choices[0].text == by_ids.choices[0].text
        by_text = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3)
        assert by_text.usage.completion_tokens == 3
        chat = client.chat.completions.create(model=model, max_tokens=3,
                                              messages=[{"role": "user", "content": "Hello"}])
        assert chat.usage.completion_tokens == 3
    finally:
        serve.stop()

    port, router_port = free_ports(2)
    r = run([binary("tessera"), "serve", "--model", config_dir, "--port", port, "--router-port", router_port,
             "--set", "model.load_format=dummy", "--ready-timeout", "60"])
    assert r.returncode != 0
    assert "tokenizer.json" in r.stdout + r.stderr

"""The container build (deploy/docker): the compose file is valid Compose, each Tessera service's
command line loads with the real config parser and its wiring agrees with the other services and
the Dockerfiles; the Dockerfiles pass hadolint; the build context admits what they copy; the
runtime-package script finds the packages of real binaries.

No Docker daemon is needed (CI has none): nothing here builds or runs an image."""
import fnmatch
import os
import pathlib
import re
import shutil
import subprocess

import pytest
from deploy_support import host_port, need, need_program, tessera_config

DOCKER = "deploy/docker"
TESSERA_SERVICES = {"gateway": "tessera-gateway", "router": "tessera-router", "worker": "tessera-worker"}


def interpolate(text: str, env: dict) -> str:
    """Compose's ${VAR} and ${VAR:-default} (nested defaults included), from `env`."""
    pattern = re.compile(r"\$\{(\w+)(?::-([^${}]*))?\}")
    while True:
        new = pattern.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)
        if new == text:
            return new
        text = new


@pytest.fixture(scope="module")
def compose(repo_root, test_model):
    spec = need("compose_spec")
    text = interpolate((repo_root / DOCKER / "compose.yaml").read_text(),
                       {"TESSERA_MODEL_DIR": str(test_model.parent), "HOME": os.environ.get("HOME", "/root")})
    parsed = spec.PyCompose.from_yaml(text)  # strict: unknown keys and bad values raise
    parsed.validate()
    return parsed.to_dict()


def dockerfile(repo_root, service: dict) -> list:
    parser = need("dockerfile")
    return parser.parse_file(str(repo_root / DOCKER / service["build"]["context"] / service["build"]["dockerfile"]))


def bind_mounts(service: dict, compose_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = (compose_dir / source).resolve() if not source.startswith("/") else pathlib.Path(source)
    return out


def test_compose_file_is_valid_and_runs_the_three_tiers(compose):
    services = compose["services"]
    assert set(TESSERA_SERVICES) <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    # The monitoring services are opt-in; the three tiers start with a plain `up`.
    for name in TESSERA_SERVICES:
        assert "profiles" not in services[name]
    assert services["worker"]["build"]["args"]["TESSERA_CUDA"] == "OFF"


def test_each_service_loads_its_configuration_with_the_real_parser(compose, repo_root, binary, test_model):
    compose_dir = repo_root / DOCKER
    services = compose["services"]
    effective = {}
    for name in TESSERA_SERVICES:
        service = services[name]
        mounts = bind_mounts(service, compose_dir)
        args = list(service["command"])
        container_config = args[args.index("--config") + 1]
        host_config = mounts[container_config]
        assert host_config.is_file(), f"{name} mounts {host_config}, which does not exist"
        args[args.index("--config") + 1] = str(host_config)
        config = tessera_config(binary("tessera"), host_config, args)
        effective[name] = config
        # The entrypoint is the tier's binary (the command holds only its arguments).
        entrypoint = [c for c in dockerfile(repo_root, service) if c.cmd == "ENTRYPOINT"][-1]
        assert entrypoint.value == (TESSERA_SERVICES[name],)
        if name in ("worker", "gateway"):
            # The model path lies in the mounted model folder, and the test model is there.
            model = pathlib.PurePosixPath(config["model"]["path"])
            (mount,) = [m for m in mounts if model.is_relative_to(m)]
            assert (mounts[mount] / model.relative_to(mount)).is_file()
            assert (mounts[mount] / model.relative_to(mount)).samefile(test_model)

    router_host, router_port = "router", host_port(effective["router"]["router"]["listen"])[1]
    assert effective["gateway"]["gateway"]["routers"] == [f"{router_host}:{router_port}"]
    assert effective["worker"]["worker"]["router_address"] == f"{router_host}:{router_port}"
    assert effective["worker"]["worker"]["device"] == "cpu"

    # The images' health checks probe the ports the configuration opens.
    health_ports = {"gateway": effective["gateway"]["gateway"]["port"],
                    "router": effective["router"]["router"]["metrics_port"],
                    "worker": effective["worker"]["worker"]["metrics_port"]}
    for name, port in health_ports.items():
        commands = dockerfile(repo_root, services[name])
        (health,) = [c for c in commands if c.cmd == "HEALTHCHECK"]
        assert f"http://127.0.0.1:{port}/health" in health.value
        exposed = {int(p) for c in commands if c.cmd == "EXPOSE" for p in c.value}
        assert port in exposed
        user = [c for c in commands if c.cmd == "USER"][-1]
        assert not user.value[0].startswith(("root", "0:", "0")), f"{name} runs as root"
    # Stop grace periods cover the drain timeouts.
    for name in ("gateway", "router", "worker"):
        drain = effective[name]["gateway" if name == "gateway" else "router"]["drain_timeout_s"]
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > drain


def test_dockerfiles_pass_hadolint(repo_root, tmp_path):
    hadolint = need_program("hadolint")
    config = repo_root / DOCKER / ".hadolint.yaml"
    files = sorted((repo_root / DOCKER).glob("*.Dockerfile"))
    assert [f.name for f in files] == ["gateway.Dockerfile", "router.Dockerfile", "worker.Dockerfile"]
    r = subprocess.run([hadolint, "--config", str(config), *map(str, files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # The same settings do flag a careless Dockerfile (untagged base, root, cd in RUN).
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get update && apt-get install -y curl\n")
    r = subprocess.run([hadolint, "--config", str(config), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3006" in r.stdout, r.stdout


def test_image_build_scripts_pass_shellcheck(repo_root):
    shellcheck = need_program("shellcheck")
    scripts = sorted((repo_root / DOCKER).glob("*.sh"))
    assert len(scripts) == 3
    r = subprocess.run([shellcheck, "--shell=sh", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def context_sources(repo_root: pathlib.Path, dockerfile_path: pathlib.Path) -> list[pathlib.Path]:
    """The files and folders a Dockerfile copies from the build context (globs expanded)."""
    parser = need("dockerfile")
    out = []
    for command in parser.parse_file(str(dockerfile_path)):
        if command.cmd != "COPY" or any(f.startswith("--from=") for f in command.flags):
            continue
        for source in command.value[:-1]:
            matches = sorted(repo_root.glob(source))
            assert matches, f"{dockerfile_path.name} copies {source}, which matches nothing"
            out += matches
    return out


def test_build_context_admits_what_the_dockerfiles_copy(repo_root):
    """.dockerignore is an allow list: each file or folder a Dockerfile copies from the context
    is named by a `!` line."""
    allowed = [line[1:].rstrip("/") for line in (repo_root / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for path in sorted((repo_root / DOCKER).glob("*.Dockerfile")):
        for source in context_sources(repo_root, path):
            relative = source.relative_to(repo_root).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in allowed), \
                f"{path.name} copies {relative}, which .dockerignore leaves out"


def test_the_sources_the_images_copy_configure_with_cmake(repo_root, tmp_path):
    """What the build stages copy is enough for CMake to configure the CPU build the gateway and
    router images (and the CPU worker) make: nothing the build needs is left out of the image."""
    # The three build stages copy the same sources, so one configure covers them all.
    per_file = {path.name: set(context_sources(repo_root, path)) for path in (repo_root / DOCKER).glob("*.Dockerfile")}
    sources = per_file["gateway.Dockerfile"]
    assert all(s == sources for s in per_file.values()), {k: sorted(map(str, v ^ sources)) for k, v in per_file.items()}
    src = tmp_path / "src"
    for source in sorted(sources):
        target = src / source.relative_to(repo_root)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(tmp_path / "build"), "-G", "Ninja",
                        "-DCMAKE_BUILD_TYPE=Release", "-DTESSERA_CUDA=OFF", "-DTESSERA_BUILD_TESTS=OFF"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_runtime_package_script_finds_the_packages_of_real_binaries(repo_root, binary):
    """The runtime stages install what runtime-packages.sh prints: on this Debian 12 machine (the
    gateway and router images' base) it names the gRPC and yaml-cpp runtime packages of the built
    binaries, all installed here, and no -dev package."""
    script = repo_root / DOCKER / "runtime-packages.sh"
    r = subprocess.run([str(script), str(binary("tessera-gateway")), str(binary("tessera-router"))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    packages = r.stdout.split()
    assert packages == sorted(set(packages))
    assert any(p.startswith("libgrpc++") for p in packages) and any(p.startswith("libyaml-cpp") for p in packages)
    assert not any(p.endswith("-dev") for p in packages)
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Package}\\n", *packages], capture_output=True, text=True)
    assert installed.returncode == 0 and sorted(installed.stdout.split()) == packages


"""docker/: no Docker engine runs here, so the compose file and Dockerfiles are checked as data:
services, images, ports, volumes, commands, and that the images install what pyproject.toml declares."""

from __future__ import annotations

import re

import tomllib
import yaml

from tests.helpers import ROOT

DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_extras(dockerfile: str) -> set[str]:
    text = (DOCKER / dockerfile).read_text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("RUN pip install")]
    match = re.fullmatch(r'RUN pip install "\.\[([a-z0-9,]+)\]"', line.strip())
    assert match, f"{dockerfile} should install this project with extras: {line}"
    return set(match.group(1).split(","))


def _requirements(extras: set[str]) -> list[str]:
    project = _pyproject()["project"]
    out = list(project["dependencies"])
    for extra in extras:
        out += project["optional-dependencies"][extra]
    return [r.lower() for r in out]


def test_services_images_and_commands() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "ray-head", "worker", "dashboard", "sweep"}
    assert services["postgres"]["image"].startswith("postgres:")
    control = {"ray-head", "dashboard", "sweep"}
    assert {services[s]["image"] for s in control} == {"sweeps-control:latest"}
    assert services["worker"]["image"] == "sweeps-worker:latest"
    assert services["ray-head"]["build"]["dockerfile"] == "docker/control.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"

    head = services["ray-head"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and "--port=6379" in head and "--num-cpus=0" in head
    assert "--dashboard-host=127.0.0.1" in head                     # Ray's dashboard: loopback only
    assert services["worker"]["command"][:3] == ["ray", "start", "--address=ray-head:6379"]
    sweep = services["sweep"]["command"]
    assert sweep[:3] == ["sweeps", "run", "search_spaces/mnist_gpu.yaml"]
    assert "ray://ray-head:10001" in sweep             # no Ray node in this container: Ray Client
    assert (ROOT / sweep[2]).exists()
    assert services["dashboard"]["command"][:2] == ["sweeps", "dashboard"]
    assert "--allow-remote-writes" in services["dashboard"]["command"]      # 0.0.0.0 inside the container only
    for name in ("dashboard", "sweep"):
        assert services[name]["environment"]["SWEEPS_STORAGE"].startswith("postgresql://sweeps:${SWEEPS_DB_PASSWORD")

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_signals_reach_the_commands() -> None:
    """Each of our services runs its command in exec form under an init (tini as PID 1), so `docker stop`'s
    SIGTERM reaches the coordinator (which records its running trials) instead of being swallowed by PID 1."""
    services = _compose()["services"]
    for name in ("ray-head", "worker", "dashboard", "sweep"):
        assert services[name]["init"] is True, name
        assert isinstance(services[name]["command"], list), f"{name}: exec form, not a shell string"
    assert services["sweep"]["stop_grace_period"] == "60s"
    for dockerfile in ("control.Dockerfile", "worker.Dockerfile"):
        cmd = [ln for ln in (DOCKER / dockerfile).read_text().splitlines() if ln.startswith(("CMD", "ENTRYPOINT"))]
        assert all(ln.split(None, 1)[1].startswith("[") for ln in cmd), (dockerfile, cmd)


def test_only_loopback_is_published_and_data_persists() -> None:
    compose = _compose()
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert {name for name, ports in published.items() if ports} == {"postgres", "dashboard"}
    for ports in published.values():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), port
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert set(compose["volumes"]) == {"pgdata", "artifacts"}
    for name in ("dashboard", "sweep"):
        assert "artifacts:/data" in compose["services"][name]["volumes"]
    text = (DOCKER / "compose.yaml").read_text()
    assert "${SWEEPS_DB_PASSWORD:?" in text and not re.search(r"PASSWORD: [^$\s]", text)   # no literal password


def test_dockerfiles_install_what_pyproject_declares() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    for dockerfile in ("control.Dockerfile", "worker.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        assert "COPY pyproject.toml" in text
        for package in packages:
            assert f"COPY {package} ./{package}" in text, (dockerfile, package)
        assert _pip_extras(dockerfile) <= set(extras)
    control = _requirements(_pip_extras("control.Dockerfile"))
    assert not [r for r in control if r.startswith(("tensorflow", "keras"))], "the control plane has no TensorFlow"
    worker = _requirements(_pip_extras("worker.Dockerfile"))
    assert any(r.startswith("tensorflow[and-cuda]") for r in worker)
    assert not [r for r in worker if r.startswith("tensorflow-cpu")]     # never both TensorFlow wheels
    assert any(r.startswith("ray[default]") for r in control) and any(r.startswith("ray[default]") for r in worker)
    pythons = {re.search(r"^FROM (\S+)", (DOCKER / f).read_text(), re.M).group(1)
               for f in ("control.Dockerfile", "worker.Dockerfile")}
    assert pythons == {"python:3.11-slim"}                            # same Python on both sides of Ray

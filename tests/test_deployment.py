"""Deployment files: the compose file is valid, the Dockerfile installs what pyproject declares."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture
def compose() -> list[str]:
    """The compose client; CI must have one (.ci/run installs it), elsewhere its tests skip without."""
    cmd = compose_command()
    if cmd is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have `docker compose` or docker-compose (.ci/run installs it)")
        pytest.skip("no docker compose client on this machine")
    return cmd


def test_compose_file_is_valid(compose):
    cmd = compose
    proc = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_dockerfile_installs_the_package_and_runs_the_cli():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in text
    assert 'ENTRYPOINT ["appraise"]' in text
    assert "USER appraise" in text  # never run as root in the container


def test_compose_has_the_service_topology(compose):
    """postgres, a one-shot migration, the API and a GPU worker sharing the blob store volume."""
    cmd = compose
    proc = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    # the Ray head and workers are optional (profile `ray`); older docker-compose lists profiled services too
    services = set(proc.stdout.split())
    assert {"postgres", "migrate", "api", "worker"} <= services <= {"postgres", "migrate", "api", "worker",
                                                                     "ray-head", "ray-worker"}
    full = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          cwd=ROOT).stdout
    assert "capabilities:" in full and "gpu" in full and "driver: nvidia" in full
    assert "service_completed_successfully" in full and "db" in full and "upgrade" in full


def test_dockerfile_has_api_and_worker_targets():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM base AS api" in text and "FROM base AS worker" in text
    assert 'CMD ["worker"]' in text and '"serve"' in text


def test_compose_ray_nodes_are_an_option_and_the_worker_can_use_them(compose):
    """`--profile ray` adds a Ray head and workers (the `ray` image target); the worker takes APPRAISE_RAY_ADDRESS."""
    import yaml

    proc = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "ray", "config"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "APPRAISE_RAY_ADDRESS":
                                                                          "ray-head:6379"})
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    for name in ("ray-head", "ray-worker"):
        assert services[name]["profiles"] == ["ray"]
        assert services[name]["image"] == "appraise-ray:latest"
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert services["worker"]["environment"]["APPRAISE_RAY_ADDRESS"] == "ray-head:6379"
    assert "FROM worker AS ray" in (ROOT / "Dockerfile").read_text()

"""Reproducible installs: the lock files pin every dependency with hashes, and every install
path (the test setup, the Dockerfile, docker-compose) uses them and the secret key."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _pins(lock: str) -> dict[str, str]:
    """name -> version of every pin in a lock file, each checked to carry a sha256 hash."""
    text = (ROOT / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    pins = {}
    for block in blocks:
        if block.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", block)
        assert match, f"{lock}: not a pin: {block[:60]}"
        assert "--hash=sha256:" in block, f"{lock}: {match[1]} has no hash"
        pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def test_the_locks_pin_every_dependency_with_hashes_and_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    service, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    missing = _names(project["dependencies"]) - set(service)
    assert not missing, f"requirements.txt lacks {missing}: run .ci/lock"
    missing = _names(project["optional-dependencies"]["dev"]) - set(dev)
    assert not missing, f"requirements-dev.txt lacks {missing}: run .ci/lock"
    assert "setuptools" in service and "setuptools" in dev, "the build backend is locked too"
    differ = {n: (v, dev.get(n)) for n, v in service.items() if dev.get(n) != v}
    assert not differ, f"the two locks pin different versions: {differ}"


def test_every_install_uses_the_lock() -> None:
    setup = (ROOT / ".ci/setup").read_text()
    assert re.search(r"--require-hashes \\\s*-r requirements-dev.txt", setup)
    assert "--no-deps --no-build-isolation" in setup
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements.txt" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
    assert "bash .ci/audit" in (ROOT / "tests/run").read_text()


def test_docker_compose_makes_the_secret_key_and_hands_it_to_every_tally_process() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    keygen = services["secret-key"]["command"]
    assert keygen == ["tally", "secrets", "generate-key", "--file", "/keys/secret-key"]
    for name in ("migrate", "api", "worker"):
        service = services[name]
        assert service["environment"]["TALLY_SECRET_KEY_FILE"] == "/keys/secret-key", name
        assert "tally-keys:/keys:ro" in service["volumes"], name
    assert services["migrate"]["depends_on"]["secret-key"] == {
        "condition": "service_completed_successfully"
    }


def test_docker_compose_cluster_profile_runs_tally_on_six_nodes() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nodes = [name for name in services if name.startswith("redis-node-")]
    assert len(nodes) == 6 and all(services[n]["profiles"] == ["cluster"] for n in nodes)
    assert all("--cluster-enabled" in services[n]["command"] for n in nodes)
    assert "--cluster-replicas 1" in services["redis-cluster-init"]["command"][0]
    for name in ("api-cluster", "worker-cluster"):
        env = services[name]["environment"]
        settings = Settings(**{k.removeprefix("TALLY_").lower(): v for k, v in env.items()})
        assert settings.redis_cluster and settings.queue_url == "redis://redis:6379/0", name
        assert services[name]["depends_on"]["redis-cluster-init"] == {
            "condition": "service_completed_successfully"
        }

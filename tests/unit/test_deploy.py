"""The deployment files agree with the code and with each other.

No Docker engine runs here, so these tests check what can be checked without
one: ``.env.example`` documents every setting with its default,
``deploy/compose.yaml`` parses and wires services, ports and passwords
consistently, nginx forwards WebSocket upgrades to every instance, and the
Dockerfile builds the wheel with the command the README gives, and the lock
files pin every dependency that ``pyproject.toml`` names.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from voxgate.cli import KILL_AFTER_GRACE_S
from voxgate.settings import PROCESS_FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PORT = 8000
# Compose points every instance at the shared PostgreSQL database with this.
DATABASE_URL = "VOXGATE_DATABASE_URL"


def setting_names() -> set[str]:
    return {
        f"VOXGATE_{name.upper()}"
        for name in Settings.__struct_fields__
        if name not in PROCESS_FIELDS  # set by ``voxgate serve`` for its workers
    }


# --- .env.example -------------------------------------------------------------------


def env_example() -> list[tuple[str, str, list[str]]]:
    """``(name, value, comment lines above)`` of each active ``NAME=value`` line."""
    entries: list[tuple[str, str, list[str]]] = []
    comments: list[str] = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif not line.strip():
            comments = []
        else:
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            entries.append((name, value, comments))
    return entries


def test_env_example_lists_every_setting_once() -> None:
    names = [name for name, _, _ in env_example()]
    assert len(names) == len(set(names)), (
        f"listed twice: {sorted(n for n in names if names.count(n) > 1)}"
    )
    voxgate = {name for name in names if name.startswith("VOXGATE_")}
    assert voxgate == set(names), f"not voxgate settings: {set(names) - voxgate}"
    missing = setting_names() - voxgate
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"
    unknown = voxgate - setting_names()
    assert not unknown, f".env.example names variables voxgate does not read: {sorted(unknown)}"


def test_env_example_values_are_the_defaults() -> None:
    defaults = Settings()
    values = {}
    for name, value, _ in env_example():
        field = name.removeprefix("VOXGATE_").lower()
        if value == "" and getattr(defaults, field) is None:
            continue  # an empty value stands for "unset" where the default is None
        values[name] = value
    assert Settings.from_env(values) == defaults


def test_every_setting_in_env_example_is_explained() -> None:
    for name, _, comments in env_example():
        assert comments or name == "VOXGATE_LOG_LEVEL", f"{name} has no comment above it"


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out: list[tuple[str, str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_builds_the_wheel_with_the_readme_command() -> None:
    instructions = dockerfile()
    builds = [args for kind, args in instructions if kind == "RUN" and " wheel " in args]
    assert len(builds) == 1, builds
    readme = (ROOT / "README.md").read_text()
    assert builds[0] in readme, f"README.md does not give the Dockerfile's build: {builds[0]}"
    # The build context holds what the build copies, and .dockerignore keeps it there.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for kind, args in instructions:
        if kind == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source not in ignored, f"COPY {source} but .dockerignore drops it"


def test_dockerfile_runs_voxgate_serve_as_a_non_root_user_with_a_health_check() -> None:
    instructions = dockerfile()
    stages = [args for kind, args in instructions if kind == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    args = dict(re.findall(r"ARG (\w+)=(\S+)", (ROOT / "Dockerfile").read_text()))
    runtime_base = final_stage[0][1].split()[0]
    runtime_image = args.get(runtime_base.strip("${}"), runtime_base)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", runtime_image), runtime_image

    users = [a for k, a in final_stage if k == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1] not in ("root", "0"), users

    (health,) = [a for k, a in final_stage if k == "HEALTHCHECK"]
    probe = " ".join(json.loads(health[health.index("CMD") + 3 :].strip()))
    assert "urllib.request" in probe, health
    assert f"http://127.0.0.1:{PORT}/health" in probe, health

    (cmd,) = [a for k, a in final_stage if k == "CMD"]
    assert json.loads(cmd) == ["voxgate", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
    exposed = [a for k, a in final_stage if k == "EXPOSE"]
    assert exposed == [str(PORT)], exposed


# --- deploy/compose.yaml and nginx ------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict), loaded
    return loaded


def voxgate_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("voxgate")
    }


def variable_in(text: str) -> str:
    """The one ``${NAME...}`` interpolation in ``text``."""
    (name,) = re.findall(r"\$\{(\w+)", text)
    return str(name)


def interpolated(text: str) -> str:
    """``text`` with every ``${...}`` replaced by a value, as compose would."""
    return re.sub(r"\$\{[^}]*\}", "value", text)


def test_compose_runs_two_voxgate_instances_from_this_dockerfile(compose: dict[str, Any]) -> None:
    instances = voxgate_services(compose)
    assert len(instances) >= 2, sorted(compose["services"])
    for name, service in instances.items():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
        env = service["environment"]
        unknown = set(env) - setting_names()
        assert not unknown, f"{name} sets variables voxgate does not read: {unknown}"
        grace = float(env["VOXGATE_SHUTDOWN_GRACE_S"])
        stop = service["stop_grace_period"]
        assert stop.endswith("s"), stop
        assert float(stop[:-1]) >= grace + KILL_AFTER_GRACE_S, (stop, grace)
        assert str(PORT) in [str(port) for port in service["expose"]], service
        for dependency in ("redis", "postgres"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_points_voxgate_at_its_redis_and_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes", "Redis runs with AOF"
    redis_password = variable_in(command[command.index("--requirepass") + 1])
    assert variable_in(redis["environment"]["REDISCLI_AUTH"]) == redis_password
    postgres = services["postgres"]["environment"]
    for name, service in voxgate_services(compose).items():
        env = service["environment"]
        url = urlsplit(interpolated(env["VOXGATE_REDIS_URL"]))
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379), name
        assert variable_in(env["VOXGATE_REDIS_URL"]) == redis_password, name
        dsn = urlsplit(interpolated(env[DATABASE_URL]))
        assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432), name
        assert dsn.username == postgres["POSTGRES_USER"], name
        assert dsn.path == f"/{postgres['POSTGRES_DB']}", name
        assert variable_in(env[DATABASE_URL]) == variable_in(postgres["POSTGRES_PASSWORD"])
    assert {"redis-data", "postgres-data"} <= set(compose["volumes"])


def test_the_load_balancer_forwards_websockets_to_every_instance(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("nginx"), lb
    (mount,) = lb["volumes"]
    source, target, *_ = mount.split(":")
    assert target == "/etc/nginx/nginx.conf"
    conf = (DEPLOY / source).read_text()
    instances = voxgate_services(compose)
    upstream = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", conf, re.MULTILINE))
    assert upstream == {f"{name}:{PORT}" for name in instances}, upstream
    assert set(lb["depends_on"]) == set(instances)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", conf)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", conf)
    assert re.search(r"proxy_http_version\s+1\.1;", conf)
    read_timeout = int(re.findall(r"proxy_read_timeout\s+(\d+)s;", conf)[0])
    assert read_timeout > Settings().idle_timeout_s, "the proxy must outlast voxgate's idle close"
    published = [shlex.split(port)[0] for port in lb["ports"]]
    assert any(port.endswith(":80") for port in published), published
    assert re.search(r"listen\s+80;", conf)


# --- lock files ---------------------------------------------------------------------


def _pins(lock: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _wanted(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    if extra is not None:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    env = {"sys_platform": "linux", "python_version": "3.11", "extra": extra or ""}
    return [r for r in found if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize(("lock", "extra"), [("runtime.lock", None), ("dev.lock", "dev")])
def test_lock_files_pin_every_dependency_within_pyproject(lock: str, extra: str | None) -> None:
    """A dependency added to pyproject.toml without ./scripts/lock.sh fails here, not in CI's
    install, and every pin is hashed (pip --require-hashes refuses anything else)."""
    path = ROOT / "requirements" / lock
    pins = _pins(path)
    for requirement in _wanted(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: run ./scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside {requirement.specifier}: "
            "run ./scripts/lock.sh"
        )
    # Each pin is one block: "name==version \" and its "--hash=sha256:..." lines.
    blocks = [b for b in re.split(r"\n(?=\S)", path.read_text()) if "==" in b]
    assert len(blocks) == len(pins)
    unhashed = [b.split()[0] for b in blocks if "--hash=sha256:" not in b]
    assert not unhashed, f"{lock}: pins without a hash: {unhashed}"


def test_setup_and_dockerfile_install_from_the_lock_files() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes -r requirements/dev.lock" in setup
    assert "--no-build-isolation -e ." in setup
    runs = " ".join(args for kind, args in dockerfile() if kind == "RUN")
    assert "--require-hashes -r requirements/build.lock" in runs
    assert "--require-hashes -r /tmp/runtime.lock" in runs

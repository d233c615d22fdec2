"""The Dockerfile passes hadolint and has what a GPU cluster relies on: pinned base, non-root
user, exec-form `fitjobs serve` (GPU image) and `fitjobs api` (API image without CUDA), health
check, exposed port, cache-friendly layers installed from hash-checked lock files."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import SETTINGS
from tests.deploy.dockerfile_model import (
    REPO_ROOT,
    Instruction,
    copy_sources,
    external_bases,
    image_env,
    install_steps,
    read_all,
    read_dockerfile,
)

# Each image the Dockerfile builds: its target, its command and the lock its dependencies come from.
IMAGES = {"gpu": (["fitjobs", "serve"], "docker/requirements/cuda.txt"),
          "api": (["fitjobs", "api"], "docker/requirements/cpu.txt")}


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    """The instructions with this keyword."""
    return [instruction for instruction in instructions if instruction.keyword == keyword]


def test_hadolint_passes() -> None:
    binary = Path(sys.executable).with_name("hadolint")
    path = str(binary) if binary.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run([path, "--no-color", str(REPO_ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_exact_version() -> None:
    bases = external_bases(read_all())
    assert bases
    for base in bases:
        image = base.value.split()[0]
        assert "$" not in image, f"line {base.line}: the base must be readable without build args"
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and tag and tag != "latest", f"line {base.line}: {image} has no fixed tag"
        # An exact release (3.11.15), not a moving major or minor tag (3.11, 3).
        assert re.match(r"\d+\.\d+\.\d+", tag), f"line {base.line}: {image} is not an exact version"
    assert re.match(r"python:3\.11\.\d+", bases[-1].value), "pyproject requires Python 3.11"


@pytest.mark.parametrize("target", IMAGES)
def test_runs_as_a_numeric_non_root_user(target: str) -> None:
    dockerfile = read_dockerfile(target=target)
    users = only(dockerfile, "USER")
    assert users, "the image must not run as root"
    user, _, group = users[-1].value.partition(":")
    # Numeric, so Kubernetes can check runAsNonRoot against the image itself.
    assert user.isdigit() and int(user) != 0
    assert not group or (group.isdigit() and int(group) != 0)
    last_user_line = users[-1].line
    assert all(run.line < last_user_line for run in only(dockerfile, "RUN")), \
        "nothing runs as root after USER"


def test_default_target_is_the_gpu_image(dockerfile: list[Instruction]) -> None:
    assert dockerfile == read_dockerfile(target="gpu")


@pytest.mark.parametrize("target", IMAGES)
def test_command_is_exec_form_fitjobs(target: str) -> None:
    dockerfile = read_dockerfile(target=target)
    commands = only(dockerfile, "CMD")
    assert len(commands) == 1
    assert commands[0].exec_form() == IMAGES[target][0]
    assert not only(dockerfile, "ENTRYPOINT"), "Kubernetes `command:` picks api or worker"
    env = image_env(dockerfile)
    assert env["FITJOBS_HOST"] == "0.0.0.0"
    assert env["FITJOBS_PORT"] == "8080"
    assert "/opt/fitjobs/venv/bin" in env["PATH"].split(":")[0]


@pytest.mark.parametrize("target", IMAGES)
def test_port_is_exposed_and_health_checked(target: str) -> None:
    dockerfile = read_dockerfile(target=target)
    port = image_env(dockerfile)["FITJOBS_PORT"]
    exposed = [value for instruction in only(dockerfile, "EXPOSE") for value in instruction.value.split()]
    assert exposed == [port]
    checks = only(dockerfile, "HEALTHCHECK")
    assert len(checks) == 1
    command = checks[0].exec_form()
    assert command is not None, "exec form: the image has no shell tools such as curl"
    assert "/healthz" in " ".join(command)
    assert "FITJOBS_PORT" in " ".join(command)


def test_fitjobs_variables_in_the_image_are_real_settings() -> None:
    known = {spec.env for spec in SETTINGS}
    image_settings = {key for key in image_env(read_all()) if key.startswith("FITJOBS_")}
    assert image_settings - {"FITJOBS_VENV"} <= known


@pytest.mark.parametrize("target", IMAGES)
def test_dependencies_install_from_the_lock_before_the_code_is_copied(target: str) -> None:
    dockerfile = read_dockerfile(target=target)
    assert install_steps(dockerfile) == ["deps", "project"]
    deps_run = next(i for i in only(dockerfile, "RUN") if "install.sh deps" in i.value)
    copied_before = [source for instruction in only(dockerfile, "COPY") if instruction.line < deps_run.line
                     for source, _ in copy_sources([instruction])]
    # Neither a code change nor a new version in pyproject.toml invalidates the dependency layer.
    assert sorted(copied_before) == ["docker/install.sh", IMAGES[target][1]]
    # Only the GPU image installs TensorFlow's CUDA libraries (install.sh then reads cuda.txt).
    assert ("FITJOBS_CUDA=1" in deps_run.value) is (target == "gpu")
    sources = [source for source, _ in copy_sources(dockerfile)]
    assert {"service/", "README.md", "pyproject.toml"} <= set(sources)


def test_dockerignore_lets_in_only_what_is_copied(dockerfile: list[Instruction]) -> None:
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allowlist: new files stay out of the build context"

    def included(path: str) -> bool:
        verdict = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
                verdict = negated
        return verdict

    for source, _ in copy_sources(read_all()):
        assert included(source.rstrip("/")), f"{source} is copied but .dockerignore excludes it"
    for path in (".venv/bin/python", ".git/HEAD", ".fitjobs/fitjobs.db", "tests/conftest.py"):
        assert not included(path), f"{path} would enter the build context"


@pytest.mark.parametrize("variable", ["HF_HOME", "KERAS_HOME", "XDG_CACHE_HOME", "CUDA_CACHE_PATH"])
def test_caches_live_outside_the_read_only_root(dockerfile: list[Instruction], variable: str) -> None:
    assert image_env(dockerfile)[variable].startswith("/var/cache/fitjobs")

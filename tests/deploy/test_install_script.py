"""docker/install.sh, the script the Dockerfile runs, installs a working service on the host.

The test lays out the files the Dockerfile copies, runs the same install steps into a fresh
virtual environment, starts the Dockerfile's CMD with the image's PATH and checks /readyz and
the image's HEALTHCHECK command. One difference from the GPU image, because this host has no GPU:
FITJOBS_CUDA is not set, so the dependencies come from the CPU lock (the API image's), without
NVIDIA's CUDA wheels; hashes are checked as in the image. pip's cache is used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.deploy.dockerfile_model import REPO_ROOT, Instruction, copy_sources, image_env, install_steps, read_all

INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_context(dockerfile: list[Instruction], target: Path) -> Path:
    """Copy what the Dockerfile's COPY instructions take (every stage's), where they put it under WORKDIR."""
    for source, destination in copy_sources(read_all()):
        assert not destination.startswith("/"), "COPY targets are relative to the source WORKDIR"
        origin = REPO_ROOT / source
        place = target / destination
        if origin.is_dir():  # COPY of a folder copies its contents into the destination
            shutil.copytree(origin, place, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            place = place / origin.name if destination.endswith("/") else place
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, place)
    return target


def host_environ(**extra: str) -> dict[str, str]:
    """This process's environment without FITJOBS_* and the image-only install switches."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("FITJOBS_") and key not in ("PIP_NO_CACHE_DIR", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def test_install_script_builds_a_service_that_becomes_ready(dockerfile: list[Instruction],
                                                            tmp_path: Path) -> None:
    context = build_context(dockerfile, tmp_path / "src")
    venv = tmp_path / "venv"
    steps = install_steps(dockerfile)
    assert steps == ["deps", "project"]

    started = time.monotonic()
    for step in steps:
        result = subprocess.run(["bash", str(context / "docker" / "install.sh"), step, str(venv)],
                                env=host_environ(), capture_output=True, text=True,
                                timeout=INSTALL_TIMEOUT_S)
        assert result.returncode == 0, f"install.sh {step} failed:\n{result.stdout}\n{result.stderr}"
    installed_in = time.monotonic() - started
    assert (venv / "bin" / "fitjobs").exists()

    # The image's PATH puts the virtual environment first; the command is the image's CMD.
    command = next(i for i in dockerfile if i.keyword == "CMD").exec_form()
    assert command == ["fitjobs", "serve"]
    image = image_env(dockerfile)
    port = free_port()
    home = tmp_path / "home"
    env = host_environ(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        FITJOBS_HOME=str(home), FITJOBS_HOST="127.0.0.1", FITJOBS_PORT=str(port),
        FITJOBS_GPUS="none", XDG_RUNTIME_DIR=str(tmp_path), HF_HOME=str(tmp_path / "hf"),
        PYTHONUNBUFFERED=image["PYTHONUNBUFFERED"])
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except (requests.ConnectionError, requests.Timeout):
                status = None  # not listening yet, or its workers still load the app
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"/readyz never answered 200:\n{(tmp_path / 'serve.log').read_text()}"
        assert (home / "fitjobs.db").exists()
        # The dashboard's files are package data: installed, not only in the source tree.
        assert requests.get(f"http://127.0.0.1:{port}/ui/app.js", timeout=10).status_code == 200

        healthcheck = next(i for i in dockerfile if i.keyword == "HEALTHCHECK").exec_form()
        assert healthcheck is not None
        probe = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, f"HEALTHCHECK failed: {probe.stderr}"

        # Kubernetes stops a pod with SIGTERM: the service must end cleanly, well inside the grace.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    print(f"install.sh {' + '.join(steps)}: {installed_in:.0f} s")


@pytest.mark.parametrize("arguments", [[], ["deploy"], ["project"]])
def test_install_script_refuses_bad_calls(arguments: list[str], tmp_path: Path) -> None:
    env = host_environ()
    result = subprocess.run(["bash", str(REPO_ROOT / "docker" / "install.sh"), *arguments],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "install.sh" in result.stderr

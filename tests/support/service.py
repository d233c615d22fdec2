"""A real `fitjobs serve` process on a free port, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TRAINER_MODULES = (b"service.trainer", b"service.trainer.warm")


def trainer_pids(job_id: str | None = None, home: Path | None = None) -> list[int]:
    """Pids of live trainer processes, cold or warm (of one job, or of one FITJOBS_HOME).

    A warm trainer's command line names no job; it works in the job's attempt folder instead.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not any(module in argv for module in TRAINER_MODULES):
            continue
        if job_id is not None and job_id.encode() not in argv:
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if f"/jobs/{job_id}/" not in cwd + "/":
                continue
        if home is not None:
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"FITJOBS_HOME={home}".encode() not in environ:
                continue
        found.append(int(entry.name))
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` in the process tree."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            parents[int(entry.name)] = stat[1]
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def alive(pids: list[int]) -> list[int]:
    """The pids of the list that still run (zombies count as gone)."""
    return [pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z"]


@dataclass
class RunningService:
    """A started `fitjobs serve` and where it keeps its data."""

    process: subprocess.Popen[bytes]
    url: str
    home: Path
    data_root: Path
    log_path: Path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)

    def wait_for_state(self, job_id: str, states: set[str], timeout: float) -> dict:
        """Poll the job until it reaches one of ``states``; fail with its log otherwise."""
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in states:
                return job
            time.sleep(0.3)
        logs = self.get(f"/v1/jobs/{job_id}/logs").text[-3000:]
        raise AssertionError(f"job {job_id} is {job.get('state')} after {timeout} s; log:\n{logs}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the service and wait for it; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_env(home: Path, port: int | None, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for fitjobs processes keeping their data under ``home``, tuned for fast tests."""
    env = dict(os.environ)
    env.update({
        "FITJOBS_HOME": str(home), "FITJOBS_DATA_ROOT": str(home / "data"),
        "FITJOBS_HOST": "127.0.0.1",
        "FITJOBS_POLL_INTERVAL": "0.2", "FITJOBS_METRICS_FLUSH_SECONDS": "0.5",
        "FITJOBS_SHUTDOWN_GRACE": "3", "FITJOBS_TRAINER_THREADS": "2", "FITJOBS_GPUS": "none",
        "FITJOBS_API_DRAIN_SECONDS": "0",
        # No predict process (it imports TensorFlow) unless a test asks for one.
        "FITJOBS_PREDICT_MODELS": "0",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(home / "hf-cache"),
    })
    if port is not None:
        env["FITJOBS_PORT"] = str(port)
    env.update(extra_env or {})
    return env


def spawn(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `fitjobs ROLE` (serve, api or worker) with its output in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "service.cli", role], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def start_service(home: Path, *, role: str = "serve", extra_env: dict[str, str] | None = None,
                  ready_timeout: float = 60) -> RunningService:
    """Start `fitjobs serve` (or `api`) with its data under ``home``; wait until /readyz answers."""
    port = free_port()
    data_root = home / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    log_path = home / f"{role}.log"
    process = spawn(role, service_env(home, port, extra_env), log_path)
    service = RunningService(process, f"http://127.0.0.1:{port}", home, data_root, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fitjobs {role} exited with {process.returncode}:\n{service.output()}")
        try:
            if requests.get(service.url + "/readyz", timeout=2).status_code == 200:
                return service
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or listening while its workers still load the app
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"fitjobs {role} not ready after {ready_timeout} s:\n{service.output()}")

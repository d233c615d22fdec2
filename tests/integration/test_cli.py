"""The `fitjobs` console script's client commands, run as real processes against a real `fitjobs serve`."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from service.cli import tensorboard_command
from tests.support.sentiment_data import tiny_job_spec, write_sentiment_files
from tests.support.service import REPO_ROOT, RunningService, free_port

FITJOBS = str(Path(sys.executable).with_name("fitjobs"))


def tiny_spec(model_dir: Path, **hyper: Any) -> dict[str, Any]:
    return tiny_job_spec(model_dir, "cli", **{"epochs": 1, **hyper})


@pytest.fixture(scope="module")
def spec_file(service: RunningService, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    write_sentiment_files(service.data_root / "cli", 96, 32)
    path = tmp_path_factory.mktemp("specs") / "tiny.json"
    path.write_text(json.dumps(tiny_spec(tiny_model_dir)))
    return path


def cli_env(service: RunningService) -> dict[str, str]:
    # The console script imports this checkout (PYTHONPATH), and talks to the test's service.
    return {**os.environ, "FITJOBS_URL": service.url, "FITJOBS_HOME": str(service.home / "cli-home"),
            "PYTHONPATH": str(REPO_ROOT)}


def fitjobs(service: RunningService, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `fitjobs` console script with output captured."""
    return subprocess.run([FITJOBS, *args], env=cli_env(service), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)


def fitjobs_json(service: RunningService, *args: str, status: int = 0) -> Any:
    done = fitjobs(service, *args, "--json")
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def finished(service: RunningService, spec_file: Path) -> dict[str, Any]:
    """A job submitted and followed to the end with `fitjobs submit --wait --json`."""
    job = fitjobs_json(service, "submit", str(spec_file), "--wait")
    assert job["state"] == "succeeded", job
    return dict(job)


def test_submit_wait_draws_progress_and_exits_0(service: RunningService, spec_file: Path) -> None:
    done = fitjobs(service, "submit", str(spec_file), "--wait")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job_id = lines[0]
    assert job_id.startswith("job_") and lines[-1].startswith(f"{job_id} succeeded")
    assert "epoch 1/1" in done.stderr and "steps" in done.stderr and "loss" in done.stderr
    assert f"{job_id} succeeded" in done.stderr


def test_submit_wait_in_a_terminal_draws_a_live_bar(service: RunningService, spec_file: Path) -> None:
    """`fitjobs submit --wait` on a pseudo-terminal, as a person sees it: the bar is redrawn in place."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec the console script on the terminal
        env = cli_env(service)
        env.update(COLUMNS="120", LINES="30", TERM="xterm-256color")
        os.execve(FITJOBS, [FITJOBS, "submit", str(spec_file), "--wait"], env)
    output = bytearray()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    screen = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, screen[-3000:]
    assert "\x1b[" in screen, "rich drew with terminal control sequences"
    assert "epoch 1/1" in screen and "━" in screen and "ex/s" in screen
    assert "succeeded" in screen.splitlines()[-1]


def test_json_output_of_every_command(service: RunningService, finished: dict[str, Any], tmp_path: Path) -> None:
    job_id = finished["id"]
    assert fitjobs_json(service, "show", job_id)["id"] == job_id
    assert fitjobs_json(service, "status", job_id)["state"] == "succeeded"
    listed = fitjobs_json(service, "list", "--state", "succeeded", "--limit", "0")
    assert job_id in [job["id"] for job in listed]
    metrics = fitjobs_json(service, "metrics", job_id)
    assert [row["epoch"] for row in metrics["epochs"]] == [1]
    logs = fitjobs_json(service, "logs", job_id)
    assert job_id in logs["log"] and "fit" in logs["log"]
    downloaded = fitjobs_json(service, "download", job_id, "-o", str(tmp_path / "model.tar.gz"))
    assert downloaded["digest_checked"] is True and Path(downloaded["path"]).stat().st_size == downloaded["size"]
    with tarfile.open(downloaded["path"]) as tar:
        assert "config.json" in tar.getnames()
    followed = fitjobs(service, "follow", job_id, "--json")
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith('{"')]
    assert events[-1]["state"] == "succeeded" and [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert json.loads("\n".join(lines[len(events):]))["state"] == "succeeded"
    cancelled = fitjobs_json(service, "cancel", job_id, status=1)
    assert cancelled["status"] == 409 and cancelled["state"] == "succeeded"


def test_human_output(service: RunningService, finished: dict[str, Any], tmp_path: Path) -> None:
    job_id = finished["id"]
    shown = fitjobs(service, "show", job_id)
    assert shown.returncode == 0 and "succeeded" in shown.stderr and "val_loss" in shown.stderr
    listed = fitjobs(service, "list")
    assert listed.returncode == 0 and any(line.startswith(f"{job_id} succeeded") for line in listed.stdout.splitlines())
    plot = tmp_path / "curves.png"
    metrics = fitjobs(service, "metrics", job_id, "--plot", str(plot))
    assert metrics.returncode == 0 and "val_accuracy" in metrics.stderr and "epoch 1" in metrics.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    target = tmp_path / "config.json"
    download = fitjobs(service, "download", job_id, "--artifact", "model/config.json", "-o", str(target))
    assert download.returncode == 0 and download.stdout.strip() == str(target)
    assert json.loads(target.read_text())["model_type"] == "bert"


def test_validate(service: RunningService, spec_file: Path, tmp_path: Path) -> None:
    valid = fitjobs(service, "validate", str(spec_file))
    assert valid.returncode == 0 and valid.stdout.startswith("valid: 2 labels"), valid.stderr
    bad = json.loads(spec_file.read_text())
    bad["data"]["text_column"] = "review_body"
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    report = fitjobs_json(service, "validate", str(bad_file), status=1)
    assert report["valid"] is False and report["problems"]
    human = fitjobs(service, "validate", str(bad_file))
    assert human.returncode == 1 and "problem:" in human.stdout and "review_body" in human.stdout


def test_exit_statuses_failed_timed_out_cancelled(service: RunningService, spec_file: Path, tmp_path: Path) -> None:
    missing = json.loads(spec_file.read_text())
    missing["model"] = str(tmp_path / "no-such-model")
    missing_file = tmp_path / "missing.json"
    missing_file.write_text(json.dumps(missing))
    failed = fitjobs_json(service, "submit", str(missing_file), "--wait", status=1)
    assert failed["state"] == "failed" and failed["error"]["code"] == "model_not_found"

    long = json.loads(spec_file.read_text())
    long["hyperparameters"].update(epochs=50, batch_size=2)
    long_file = tmp_path / "long.json"
    long_file.write_text(json.dumps(long))
    job = fitjobs_json(service, "submit", str(long_file))
    timed_out = fitjobs(service, "wait", job["id"], "--timeout", "1")
    assert timed_out.returncode == 3, timed_out.stderr
    assert "still" in timed_out.stderr
    assert fitjobs_json(service, "wait", job["id"], "--timeout", "0", status=3)["id"] == job["id"]
    assert fitjobs_json(service, "cancel", job["id"])["cancel_requested"] in (True, False)
    cancelled = fitjobs(service, "wait", job["id"], "--timeout", "120")
    assert cancelled.returncode == 2, cancelled.stderr
    assert cancelled.stdout.startswith(f"{job['id']} cancelled")


def test_errors_exit_1_with_the_problem(service: RunningService) -> None:
    missing = "job_" + "0" * 32
    done = fitjobs(service, "show", missing)
    assert done.returncode == 1 and "HTTP 404" in done.stderr and missing in done.stderr
    problem = fitjobs_json(service, "show", missing, status=1)
    assert problem["status"] == 404 and problem["request_id"]


def test_tensorboard_opens_each_jobs_published_logs(service: RunningService, spec_file: Path,
                                                    finished: dict[str, Any], tmp_path: Path) -> None:
    jobs = [finished, fitjobs_json(service, "submit", str(spec_file), "--wait")]
    ids = [job["id"] for job in jobs]
    board, port = tmp_path / "board", free_port()
    printed = fitjobs_json(service, "tensorboard", *ids, "--dir", str(board), "--print-command", "--port", str(port))
    spec = ",".join(f"{job_id}:{board / job_id}" for job_id in ids)
    assert printed["command"][-4:] == ["--logdir_spec", spec, "--port", str(port)]
    for job_id in ids:
        assert sorted(path.parent.name for path in (board / job_id).rglob("events.out.tfevents.*")) == \
            ["train", "validation"]
    # The real TensorBoard, started by the command, serves every job's runs and their scalars.
    viewer = subprocess.Popen([FITJOBS, "tensorboard", *ids, "--port", str(port)], env=cli_env(service),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        deadline, tags = time.monotonic() + 120, dict[str, Any]()
        while time.monotonic() < deadline and len(tags) < 4:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as answer:
                    tags = json.load(answer)
            except OSError:
                time.sleep(0.5)
        assert viewer.poll() is None, viewer.stderr.read() if viewer.stderr else ""
    finally:
        viewer.send_signal(signal.SIGINT)
        assert viewer.wait(timeout=30) == 0
    assert sorted(tags) == sorted(f"{job_id}/{run}" for job_id in ids for run in ("train", "validation"))
    for job_id in ids:
        assert {"batch_loss", "epoch_loss"} <= set(tags[f"{job_id}/train"])
        assert "epoch_accuracy" in tags[f"{job_id}/validation"]
    none = fitjobs(service, "tensorboard", "job_" + "1" * 32, "--print-command")
    assert none.returncode == 1 and "HTTP 404" in none.stderr


def test_tensorboard_command_names_each_run() -> None:
    command = tensorboard_command({"job_a": Path("/t/job_a"), "job_b": Path("/t/job_b")}, ["--port", "1"])
    assert command == [sys.executable, "-m", "tensorboard.main", "--logdir_spec", "job_a:/t/job_a,job_b:/t/job_b",
                       "--port", "1"]


def test_delete(service: RunningService, finished: dict[str, Any]) -> None:
    """DELETE /v1/jobs/{id} through `fitjobs delete`."""
    deleted = fitjobs_json(service, "delete", finished["id"])
    assert deleted == {"id": finished["id"], "deleted": True}
    assert fitjobs_json(service, "show", finished["id"], status=1)["status"] == 404

"""schemathesis against a real `fitjobs api` with a bearer token: every check, no failure.

The run generates requests from the served openapi.yaml (examples, fuzzing and stateful
phases), sends them, and checks each answer: no 5xx, statuses, content types, headers and
bodies as documented, valid requests accepted and invalid ones refused, Allow on 405, auth
enforced. It runs twice: with the ids it generates (which name nothing), and with the ids of a
job and a dataset created first, so that the operations on existing objects are reached too.
tests/support/schemathesis.toml lists where a valid request shape is not enough for a 2xx.
The coverage phase (about 1,700 more cases, minutes) is left to a manual run:
SCHEMATHESIS_PHASES=examples,coverage,fuzzing,stateful.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import REPO_ROOT, RunningService, start_service

TOKEN = "schemathesis-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = REPO_ROOT / "tests" / "support" / "schemathesis.toml"
MIN_CASES = 300


def run_schemathesis(service: RunningService, config: Path) -> tuple[int, int, str]:
    """(generated, passed, output) of one schemathesis run with every check."""
    phases = os.environ.get("SCHEMATHESIS_PHASES", "examples,fuzzing,stateful")
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
               "--config-file", str(config), "run", f"{service.url}/openapi.yaml", "--url", service.url,
               "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}", "--phases", phases,
               "--max-examples", "40", "--seed", "20261126", "--generation-database", "none",
               "--workers", "2", "--no-color"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    output = run.stdout + run.stderr
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    summary = output[output.find("SUMMARY"):] if "SUMMARY" in output else output[-5000:]
    # On failure, the failures section too: each failed check with the request that reproduces it.
    failures = output[output.find("FAILURES"):][:12000] if "FAILURES" in output else ""
    assert run.returncode == 0 and counted is not None, failures + summary
    return int(counted.group(1)), int(counted.group(2)), summary


def test_schemathesis_finds_no_failure_with_every_check(tmp_path: Path) -> None:
    service = start_service(tmp_path / "home", role="api", extra_env={
        "FITJOBS_API_TOKENS": TOKEN, "FITJOBS_API_WORKERS": "2"})
    try:
        generated, passed, summary = run_schemathesis(service, CONFIG)
        assert generated == passed and generated >= MIN_CASES, summary

        job = requests.post(service.url + "/v1/jobs", headers=AUTH, timeout=30, json={
            "model": "bert-base-uncased", "data": {"train": {"records": sentiment_rows(8, seed=1)}}})
        table = write_table(sentiment_rows(8, seed=2), tmp_path / "rows.csv").read_bytes()
        dataset = requests.post(service.url + "/v1/datasets", headers=AUTH, timeout=30,
                                files={"file": ("rows.csv", table)})
        assert job.status_code == 201 and dataset.status_code == 201, (job.text, dataset.text)
        existing = tmp_path / "schemathesis-existing.toml"
        existing.write_text(CONFIG.read_text() + f'\n[parameters]\njob_id = "{job.json()["id"]}"\n'
                                                 f'dataset_id = "{dataset.json()["id"]}"\n')
        on_existing, passed_existing, summary = run_schemathesis(service, existing)
        assert on_existing == passed_existing and on_existing >= MIN_CASES, summary
    finally:
        service.stop()
    print(f"\nschemathesis: {generated} generated, {passed} passed; on an existing job and dataset: "
          f"{on_existing} generated, {passed_existing} passed")
    assert "Traceback" not in service.output(), service.output()[-3000:]

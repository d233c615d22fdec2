"""One training attempt: check data, load model, fit the Keras recipe, publish artifacts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.artifacts import (
    EVALUATION_FILE,
    MODEL_FOLDER,
    SAVED_MODEL_FOLDER,
    SAVED_MODEL_IDS_FOLDER,
    TENSORBOARD_FOLDER,
    artifacts_key,
    publish_artifacts,
)
from service.storage import Storage, open_storage
from service.trainer.checkpoint_mirror import CheckpointMirror
from service.trainer.reporter import TrainingReporter
from service.trainer.stop import StopSignal
from service.trainer.tf_runtime import prepare_tensorflow

FINAL_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "macro_f1", "val_macro_f1")


def run_training(spec: dict[str, Any], *, data_root: Path, work_dir: Path, checkpoint_dir: Path,
                 reporter: TrainingReporter, publish_dir: Path | None = None, storage: Storage | None = None,
                 job_id: str | None = None, threads: int = 0, checkpoint_steps: int = 0,
                 stop: StopSignal | None = None, devices: list[str] | None = None,
                 timings: dict[str, float] | None = None,
                 mirror: CheckpointMirror | None = None) -> dict[str, Any]:
    """Train the spec's model and publish it; returns the job's result.

    The artifacts are published as job ``job_id``'s in ``storage`` (service.artifacts), or,
    without them, as the local folder ``publish_dir``. With ``mirror``, every checkpoint is
    also copied to storage, so the job resumes on another node.

    Data problems raise TrainingFailure(invalid_data) before any model weights are read;
    model problems raise TrainingFailure(model_load_failed). A checkpoint in
    ``checkpoint_dir`` from an interrupted attempt is resumed from; it is removed once the
    model is published. With ``stop``, SIGTERM during the fit writes a checkpoint at the
    current step and raises DrainRequested. ``devices`` defaults to the visible GPUs
    (mirrored when there are several; see service.trainer.devices). ``timings`` holds the
    seconds of phases before this call (queued, startup), reported with the others.
    """
    prepare_tensorflow(threads)
    from service.trainer.data import as_locations, prepare_data
    from service.trainer.modeling import load_classifier, load_tokenizer, spec_model_source
    from service.trainer.precision import apply_policy, choose_compute, detect_device, keep_head_in_float32

    phases = PhaseClock(reporter, timings)
    hyper = spec["hyperparameters"]
    with phases.measure("data"):
        data = prepare_data(spec, data_root, work_dir / "datasets-cache")
    reporter.event("data_loaded", f"{len(data.train)} training and {len(data.validation)} validation rows, "
                   f"{data.num_labels} labels.",
                   {"train_rows": len(data.train), "validation_rows": len(data.validation),
                    "labels": [data.id2label[i] for i in range(data.num_labels)]})
    with phases.measure("tokenize"):
        tokenizer = load_tokenizer(spec_model_source(spec["model"], as_locations(data_root)))
        train_tokens, validation_tokens = tokenize(data, spec, tokenizer, checkpoint_dir / "tokens")
    import tf_keras

    plan = choose_compute(hyper.get("precision", "auto"), hyper.get("jit_compile", "auto"), detect_device())
    # Set in every run (also to float32): the policy is process-wide and decides how the model is built.
    apply_policy(plan)
    reporter.event("compute_chosen", f"{plan.precision}, XLA {'on' if plan.jit_compile else 'off'} on "
                   f"{plan.device}: {plan.reason}", plan.as_dict())
    # Seeded before the new classification head is drawn, so a spec's seed fixes the whole run.
    tf_keras.utils.set_random_seed(hyper["seed"])
    from service.trainer.devices import choose_strategy

    strategy = choose_strategy(devices)
    with phases.measure("model_load"), strategy.scope():
        # Variables made here are mirrored; compile and fit follow the model's strategy.
        model = load_classifier(spec_model_source(spec["model"], as_locations(data_root)), data.num_labels,
                                data.id2label, data.label2id)
        keep_head_in_float32(model)
    replicas = strategy.num_replicas_in_sync
    reporter.event("model_loaded", f"Loaded {spec['model']} ({model.config.model_type}) on {replicas} "
                   f"device(s).", {"replicas": replicas})
    weights = training_class_weights(data, hyper.get("class_weight", "none"))
    if weights is not None:
        reporter.event("class_weights", "Class weights: " + ", ".join(
            f"{data.id2label[label]} {weight:.3g}" for label, weight in sorted(weights.items())) + ".",
                       {data.id2label[label]: weight for label, weight in weights.items()})
    from service.trainer.summaries import SummaryReporter, TrainingSummaries

    # Beside the checkpoint: a resumed attempt adds to the earlier attempts' event files.
    summaries = TrainingSummaries(checkpoint_dir / TENSORBOARD_FOLDER)
    outcome = fit(model, tokenizer, train_tokens, validation_tokens, hyper, SummaryReporter(reporter, summaries),
                  checkpoint_dir, checkpoint_steps, stop, jit_compile=plan.jit_compile,
                  pad_to_multiple=plan.pad_to_multiple, class_weight=weights, mirror=mirror)
    phases.record("fit", outcome.train_seconds)
    started = time.monotonic()
    report = evaluate(model, outcome, data, spec)
    # Validation during the fit and the final report of the selected epoch.
    phases.record("evaluate", outcome.evaluate_seconds + time.monotonic() - started)
    summaries.confusion_matrix(report)
    summaries.close()
    result: dict[str, Any] = {**outcome.final, **outcome.selection, **outcome.batching,
                              "precision": plan.precision, "jit_compile": plan.jit_compile,
                              "compute_reason": plan.reason, "examples_per_second": outcome.examples_per_second,
                              "evaluation": report}
    acceptance = spec.get("acceptance")
    if acceptance:
        from service.trainer.evaluation import acceptance_check

        result["acceptance"] = acceptance_check(report, acceptance["metric"], acceptance["min"])
    reporter.event("evaluated", f"Epoch {report['epoch']} on {report['rows']} validation rows: accuracy "
                   f"{report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}.", report["metrics"])
    reporter.event("publishing", "Writing the model and its files.")
    started = time.monotonic()
    staging = staging_folder(work_dir, publish_dir, storage, job_id)
    summary = {name: value for name, value in result.items() if name != "evaluation"}
    write_artifacts(model, tokenizer, spec, outcome.history, {**summary, "phases": phases.seconds}, staging,
                    evaluation=report, summaries=summaries.folder)
    writing = time.monotonic() - started
    try:
        with phases.measure("saved_model"):
            result["saved_model"] = export_serving_model(staging, spec, reporter)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    started = time.monotonic()
    publish(staging, publish_dir, storage, job_id)
    phases.record("publish", writing + time.monotonic() - started)
    reporter.event("artifacts_published", "Model, tokenizer, SavedModel, evaluation.json, metrics.json, spec.json "
                                          "and TensorBoard event files published.")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if mirror is not None:
        mirror.remove()
    result["phases"] = phases.seconds
    if acceptance and not result["acceptance"]["passed"]:
        from service.jobs import FailureCode
        from service.trainer.failures import TrainingFailure

        check = result["acceptance"]
        value = "undefined" if check["value"] is None else f"{check['value']:.4f}"
        raise TrainingFailure(FailureCode.BELOW_THRESHOLD,
                              f"The selected model (epoch {report['epoch']}) has {check['metric']} {value}, below "
                              f"the acceptance minimum {check['min']:g}; its model and evaluation are kept for "
                              "inspection.", result=result)
    return result


def training_class_weights(data: Any, setting: Any) -> dict[int, float] | None:
    """Class weights by label id for the spec's ``class_weight``; invalid_data for a label the data lacks."""
    import numpy as np

    from service.jobs import FailureCode
    from service.trainer.evaluation import class_weights
    from service.trainer.failures import TrainingFailure

    try:
        return class_weights(np.asarray(data.train["labels"]), data.num_labels, setting, data.label2id)
    except KeyError as exc:
        names = ", ".join(data.id2label[i] for i in range(data.num_labels))
        raise TrainingFailure(FailureCode.INVALID_DATA, f"class_weight names label {exc.args[0]!r}, which the "
                                                        f"training data does not have; its labels are: {names}.") \
            from exc


def evaluate(model: Any, outcome: FitOutcome, data: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The evaluation report of the model (the selected epoch's weights) on the validation rows.

    The logits of the validation pass of the selected epoch are reused when this attempt kept
    them; otherwise (an epoch of an earlier attempt) the rows are predicted again.
    """
    import numpy as np

    from service.trainer.evaluation import evaluation_report

    epoch = outcome.selection["best_epoch"]
    logits = outcome.validation.logits_of(epoch) if epoch else None
    if logits is None:
        logits = outcome.predictor.logits(outcome.validation.batches)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    columns = spec["data"]
    pair = columns.get("text_pair_column")
    return evaluation_report(np.asarray(data.validation["labels"]), probabilities, data.id2label,
                             data.validation[columns["text_column"]],
                             data.validation[pair] if pair else None, epoch=epoch)


class PhaseClock:
    """Seconds spent in each phase of a job, each reported as an event and a metric when it ends."""

    def __init__(self, reporter: TrainingReporter, earlier: dict[str, float] | None = None) -> None:
        self.reporter = reporter
        self.seconds: dict[str, float] = {}
        for name, seconds in (earlier or {}).items():
            self.record(name, seconds)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (recorded only when it completes)."""
        started = time.monotonic()
        yield
        self.record(name, time.monotonic() - started)

    def record(self, name: str, seconds: float) -> None:
        """Record a phase measured elsewhere."""
        self.seconds[name] = round(seconds, 3)
        self.reporter.event("phase_finished", f"{name}: {seconds:.1f} s.",
                            {"phase": name, "seconds": round(seconds, 3)})
        self.reporter.phase_seconds(name, seconds)


# Rows above which tokenizing uses several processes; below it, one process and the fast
# tokenizer's own threads are quicker than forking.
PARALLEL_TOKENIZE_ROWS = 50_000


def tokenize(data: Any, spec: dict[str, Any], tokenizer: Any, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """Tokenized train and validation datasets, truncated at max_length and not yet padded.

    With ``cache_dir`` (kept beside the job's checkpoint) the tokens are written once and a
    resumed attempt reads them back instead of tokenizing again.
    """
    text, pair = spec["data"]["text_column"], spec["data"]["text_pair_column"]
    max_length = spec["hyperparameters"]["max_length"]

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pairs = batch[pair] if pair else None
        return tokenizer(batch[text], pairs, truncation=True, max_length=max_length)

    columns = [text] + ([pair] if pair else [])
    recipe = hashlib.sha256(json.dumps([tokenizer.name_or_path, len(tokenizer), max_length, columns])
                            .encode()).hexdigest()[:16]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def mapped(split: Any, name: str) -> Any:
        processes = min(os.cpu_count() or 1, 8) if len(split) >= PARALLEL_TOKENIZE_ROWS else None
        cache = str(cache_dir / f"{name}-{split._fingerprint}-{recipe}.arrow") if cache_dir else None
        return split.map(encode, batched=True, batch_size=1000, remove_columns=columns, num_proc=processes,
                         cache_file_name=cache, desc=f"Tokenizing {name}")

    return mapped(data.train, "train"), mapped(data.validation, "validation")


@dataclass(frozen=True)
class FitOutcome:
    """What a fit produced: per-epoch history, the final metrics, timings and batching figures."""

    history: list[dict[str, float]]
    final: dict[str, float]  # the selected epoch's metrics
    selection: dict[str, Any]  # best_epoch, epochs_trained, stopped_early, stop_reason, selection_metric
    batching: dict[str, Any]
    train_seconds: float
    evaluate_seconds: float
    examples_per_second: float | None
    validation: Any  # the ValidateEachEpoch callback: the validation batches and the kept logits
    predictor: Any  # the Predictor of the fitted model


def fit(model: Any, tokenizer: Any, train_tokens: Any, validation_tokens: Any, hyper: dict[str, Any],
        reporter: TrainingReporter, checkpoint_dir: Path, checkpoint_steps: int,
        stop: StopSignal | None = None, jit_compile: bool = False, pad_to_multiple: int = 8,
        class_weight: dict[int, float] | None = None, mirror: CheckpointMirror | None = None) -> FitOutcome:
    """Compile and fit the recipe on length-bucketed batches; the model ends with the best epoch's weights.

    The recipe: AdamW (or Adam) on a warmup-then-decay schedule with gradient clipping, optional
    gradient accumulation and class weights, early stopping, and the epoch that is best by
    ``selection_metric`` kept on disk and loaded back at the end.
    """
    import tf_keras

    from service.trainer.accumulation import install_accumulating_train_step
    from service.trainer.batching import BucketedBatches, TokenColumns
    from service.trainer.checkpoints import StepCheckpoints, read_history
    from service.trainer.metrics import SparseMacroF1
    from service.trainer.optimization import build_optimizer
    from service.trainer.precision import float32_loss
    from service.trainer.progress import FollowEpochs, ReportProgress
    from service.trainer.selection import BEST_FOLDER, KeepBestEpoch, best_epoch, early_stop, read_best
    from service.trainer.tracing import build_training_variables, install_step_functions
    from service.trainer.validation import Predictor, ValidateEachEpoch

    tf_keras.utils.set_random_seed(hyper["seed"])
    batch_size, epochs = hyper["batch_size"], hyper["epochs"]
    accumulate = hyper.get("gradient_accumulation_steps") or 1
    selection_metric = hyper.get("selection_metric") or "val_loss"
    early_stopping = hyper.get("early_stopping")
    pad_values = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0,
                  "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
    # XLA compiles every batch shape anew, so with it batches are padded to fewer lengths.
    train_batches = BucketedBatches(TokenColumns.from_dataset(train_tokens), batch_size, hyper["max_length"],
                                    pad_values, seed=hyper["seed"], accumulate=accumulate,
                                    multiple=pad_to_multiple, coarse=jit_compile)
    validation_batches = BucketedBatches(TokenColumns.from_dataset(validation_tokens), batch_size,
                                         hyper["max_length"], pad_values, multiple=pad_to_multiple, coarse=jit_compile)
    batching = batching_figures(train_batches, validation_batches, epochs)
    reporter.event("batching", f"Length-bucketed batches: {batching['padding_efficiency']:.0%} of padded "
                   f"tokens are real; {batching['batch_shapes']} distinct batch shapes.", batching)
    steps_per_epoch = len(train_batches)
    with model.distribute_strategy.scope():
        # Optimizer and metrics belong to the strategy the model's variables were made in.
        optimizer = build_optimizer(hyper, train_batches.updates(), epochs)
        model.compile(optimizer=optimizer, loss=float32_loss(),
                      metrics=["accuracy", SparseMacroF1(num_classes=model.config.num_labels)],
                      jit_compile=jit_compile)
    if accumulate > 1:
        install_accumulating_train_step(model)
    # Variables made now, and no AutoGraph where the model needs none: one cheaper trace per step function.
    # Validation is a callback's forward pass (service.trainer.validation), not Keras' test function.
    sample = validation_batches if len(validation_batches.columns) else train_batches
    build_training_variables(model, *sample.sample(2))
    install_step_functions(model, reporter)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # Saves model and optimizer state; a later attempt resumes where this one stopped.
    checkpoints = StepCheckpoints(str(checkpoint_dir), steps_per_epoch, checkpoint_steps, stop, reporter,
                                  ends_update=train_batches.ends_update,
                                  saved=mirror.save_state if mirror is not None else None)
    progress = ReportProgress(reporter, epochs, steps_per_epoch, len(train_batches.columns), batch_size)
    keep_best = KeepBestEpoch(checkpoint_dir / BEST_FOLDER, lambda: checkpoints.history, selection_metric,
                              early_stopping, reporter, saved=mirror.save_best if mirror is not None else None)
    predictor = Predictor(model, reporter)
    validation = ValidateEachEpoch(predictor, validation_batches, selection_metric, progress)
    callbacks = [
        FollowEpochs(train_batches, checkpoints),
        # Adds the val_ metrics to the epoch's logs before the callbacks below read them.
        validation,
        # Metrics are recorded before the best weights and the checkpoint are written: an
        # epoch whose checkpoint exists always has its metrics and, if it was the best, its weights.
        progress,
        keep_best,
        checkpoints,
    ]
    # An attempt resumed after the run already stopped early trains no further.
    recorded = read_history(checkpoint_dir)
    stopped = early_stop(recorded, early_stopping)
    if stopped is not None and read_best(checkpoint_dir / BEST_FOLDER) is None:
        stopped = None  # no kept weights to publish without restoring the checkpoint: the fit does that
    if stopped is None:
        reporter.event("fit_started", f"Fitting {epochs} epoch(s) of {steps_per_epoch} step(s).",
                       {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "updates_per_epoch":
                        train_batches.updates(), "gradient_accumulation_steps": accumulate})
        model.fit(train_batches.dataset(), epochs=epochs, callbacks=callbacks, verbose=2, class_weight=class_weight)
        stopped = keep_best.stopped
        history = checkpoints.history  # from the checkpoint's record: earlier attempts' epochs too
        # Batch shapes are dynamic in the train step's signature: one trace serves them all.
        batching["train_step_traces"] = model.train_function.experimental_get_tracing_count()
        batching["train_step_autograph"] = model.train_function.autograph
    else:
        history = recorded
    best = read_best(checkpoint_dir / BEST_FOLDER)
    chosen = best_epoch(history, selection_metric)
    if best is not None and chosen is not None and best["epoch"] == chosen["epoch"]:
        model.load_weights(best["weights"])
    elif chosen is not None and history and chosen["epoch"] != history[-1]["epoch"]:
        # A checkpoint written before best epochs were kept: the model in hand is the last epoch's.
        reporter.event("best_epoch_unavailable", f"The weights of epoch {chosen['epoch']}, the best by "
                       f"{selection_metric}, were not kept; the last epoch is published.",
                       {"best_epoch": int(chosen["epoch"]), "published_epoch": int(history[-1]["epoch"])})
        chosen = history[-1]
    chosen = chosen or (history[-1] if history else {})
    final = {name: chosen[name] for name in FINAL_METRICS if name in chosen}
    selection = {"best_epoch": int(chosen.get("epoch", 0)) or None, "epochs_trained": len(history),
                 "stopped_early": stopped is not None, "stop_reason": stopped.reason if stopped else None,
                 "selection_metric": selection_metric}
    return FitOutcome(history=history, final=final, selection=selection, batching=batching,
                      train_seconds=progress.train_seconds, evaluate_seconds=progress.evaluate_seconds,
                      examples_per_second=progress.examples_per_second, validation=validation, predictor=predictor)


def batching_figures(train: Any, validation: Any, epochs: int) -> dict[str, Any]:
    """Padding efficiency (real / padded tokens) of the whole run and its distinct batch shapes."""
    real, padded, shapes = train.stats(range(epochs))
    validation_real, validation_padded, validation_shapes = validation.stats(range(1))
    real, padded = real + epochs * validation_real, padded + epochs * validation_padded
    return {"padding_efficiency": round(real / padded, 4) if padded else 1.0,
            "batch_shapes": len(shapes | validation_shapes),
            "padded_lengths": sorted({length for _, length in shapes | validation_shapes})}


def write_artifacts(model: Any, tokenizer: Any, spec: dict[str, Any], history: list[dict[str, float]],
                    final: dict[str, Any], staging: Path, evaluation: dict[str, Any] | None = None,
                    summaries: Path | None = None) -> None:
    """Write the model, tokenizer, metrics, evaluation, spec and event files to ``staging``, ready to publish.

    ``summaries`` is the folder of the attempts' TensorBoard event files; each run's files are
    merged into one under tensorboard/ (service.trainer.summaries).
    """
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
        model.save_pretrained(str(staging / MODEL_FOLDER))
        tokenizer.save_pretrained(str(staging / MODEL_FOLDER))
        (staging / "metrics.json").write_text(json.dumps({"epochs": history, "final": final}, indent=2))
        if evaluation is not None:
            (staging / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
        (staging / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        if summaries is not None:
            from service.trainer.summaries import publish_summaries

            publish_summaries(summaries, staging / TENSORBOARD_FOLDER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_serving_model(staging: Path, spec: dict[str, Any], reporter: TrainingReporter) -> dict[str, Any]:
    """Export the staged model as its SavedModel beside it; the result's ``saved_model`` field.

    A model that cannot be exported costs the job its SavedModel, not its success: the field
    then has no signatures and says why.
    """
    import logging

    from service.trainer.serving import export_saved_model

    try:
        exported = export_saved_model(staging / MODEL_FOLDER, staging,
                                      max_length=spec["hyperparameters"]["max_length"],
                                      pair=bool(spec["data"].get("text_pair_column")))
    except Exception as exc:  # a TensorFlow error of any type: the trained model stands
        logging.getLogger(__name__).exception("SavedModel export failed")
        for folder in (SAVED_MODEL_FOLDER, SAVED_MODEL_IDS_FOLDER):
            shutil.rmtree(staging / folder, ignore_errors=True)
        failed = {"signatures": [], "reason": f"The export failed: {type(exc).__name__}: {exc}"[:1000]}
        reporter.event("saved_model_failed", f"No SavedModel: {failed['reason']}", failed)
        return failed
    field = exported.as_result()
    without = "" if exported.reason is None else f" only; serving_default is left out: {exported.reason}"
    reporter.event("saved_model_exported", f"SavedModel with {', '.join(exported.signatures)}{without} "
                                           f"({exported.seconds:.1f} s).", field)
    return field


def staging_folder(work_dir: Path, publish_dir: Path | None, storage: Storage | None, job_id: str | None) -> Path:
    """Where the artifacts are written before they are published.

    Beside their published place when that is a local folder (one file system, so publishing
    is a rename, and a full disk shows while writing); in the attempt's work folder for an
    object store.
    """
    name = f".{job_id or 'artifacts'}.staging-{os.getpid()}"
    if storage is not None and job_id is not None:
        if storage.local_root is not None:
            return storage.local_path(artifacts_key(job_id)).with_name(name)
        return work_dir / name.lstrip(".")
    if publish_dir is not None:
        return publish_dir.with_name(f".{publish_dir.name}.staging-{os.getpid()}")
    return work_dir / name.lstrip(".")


def publish(staging: Path, publish_dir: Path | None, storage: Storage | None, job_id: str | None) -> None:
    """Publish ``staging`` as the job's artifacts in ``storage``, or as the local folder ``publish_dir``.

    Either way a reader sees the whole set of files or none (service.storage).
    """
    if storage is not None and job_id is not None:
        publish_artifacts(storage, staging, job_id)
    elif publish_dir is not None:
        try:
            open_storage(publish_dir.parent.absolute().as_uri()).publish_folder(staging, publish_dir.name, move=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        raise ValueError("run_training needs a publish_dir, or a storage and a job id")

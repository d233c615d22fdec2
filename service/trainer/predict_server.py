"""The predict server: ``python -m service.trainer.predict_server``, one per node, for online predictions.

The gunicorn master of `fitjobs api` starts it (service.predict_client.PredictServerKeeper) and
starts it again if it dies. It imports TensorFlow and transformers and runs a tiny model once
before it listens, so a request for a model not yet loaded waits only for that model's load.
It listens on a Unix socket (FITJOBS_HOME/predict.sock, mode 0600); API workers connect, send
one JSON request line and read one JSON answer line. Requests are served on threads.

A model is loaded with from_pretrained and answers the request that loaded it eagerly; it is
then traced (one tf.function over int32 batches of any shape) on a thread of its own, which
takes about as long again, and later requests use the traced forward pass (about twice as
fast for one text). Loaded models are kept in a least-recently-used cache: at most FITJOBS_PREDICT_MODELS of them
and FITJOBS_PREDICT_MEMORY_BYTES of weights. Models are read from the job's published
artifacts; with an object store they are fetched to FITJOBS_HOME/cache/predict first. The
process runs on the CPU (it is started with no visible GPU), so it never takes GPU memory a
training job needs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socketserver
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.artifacts import ARTIFACTS, MODEL_FOLDER, artifacts_key, job_artifacts_dir
from service.config import Settings
from service.locations import JOB_ID
from service.logconfig import configure_logging

log = logging.getLogger("service.trainer.predict_server")

# Texts are run in length order in batches of this many, so short texts are not padded to a long one.
BATCH_SIZE = 32
PREDICT_CACHE = "predict"


class PredictError(RuntimeError):
    """A request the server cannot answer; ``code`` says why (model_not_found, bad_request, internal)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    """A job's model ready to predict: tokenizer, weights, label names and the compiled forward pass."""

    job_id: str
    tokenizer: Any
    forward: Callable[[dict[str, Any]], Any]
    input_names: tuple[str, ...]
    labels: tuple[str, ...]
    nbytes: int
    load_ms: float
    trace_ms: float | None = None  # set once the traced forward pass replaced the eager one
    keras_model: Any = None  # until then


class ModelCache:
    """The most recently used models, at most ``max_models`` of them and ``max_bytes`` of weights.

    Loads run one at a time (a second request for the same model waits for the first's load
    and then finds it); predictions with loaded models run concurrently.
    """

    def __init__(self, max_models: int, max_bytes: int, load: Callable[[str], LoadedModel]) -> None:
        self.max_models = max(1, max_models)
        self.max_bytes = max_bytes
        self._load = load
        self._lock = threading.Lock()
        self._loading = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def get(self, job_id: str) -> tuple[LoadedModel, bool]:
        """The job's model and whether this call loaded it."""
        with self._lock:
            if job_id in self._models:
                self._models.move_to_end(job_id)
                return self._models[job_id], False
        with self._loading:
            with self._lock:
                if job_id in self._models:
                    self._models.move_to_end(job_id)
                    return self._models[job_id], False
            model = self._load(job_id)
            with self._lock:
                self._models[job_id] = model
                evicted = self._evict()
        if evicted:
            log.info("dropped the models of %s (least recently used)", ", ".join(evicted))
            gc.collect()
        return model, True

    def _evict(self) -> list[str]:
        evicted = []
        while len(self._models) > self.max_models or (
                len(self._models) > 1 and sum(m.nbytes for m in self._models.values()) > self.max_bytes):
            job_id, _ = self._models.popitem(last=False)
            evicted.append(job_id)
        return evicted

    def state(self) -> dict[str, Any]:
        """The loaded models, least recently used first, and their weights' bytes."""
        with self._lock:
            return {"models": list(self._models), "bytes": sum(m.nbytes for m in self._models.values()),
                    "load_ms": {job_id: m.load_ms for job_id, m in self._models.items()},
                    "trace_ms": {job_id: m.trace_ms for job_id, m in self._models.items()},
                    "max_models": self.max_models, "max_bytes": self.max_bytes}


class Predictor:
    """Loads models from published artifacts and runs them; holds TensorFlow and transformers."""

    def __init__(self, settings: Settings) -> None:
        from service.trainer.tf_runtime import import_tensorflow

        self.settings = settings
        self.storage = settings.storage
        self.tf = import_tensorflow(settings.trainer_threads)
        import transformers

        transformers.logging.set_verbosity_error()
        self.transformers = transformers
        self.cache = ModelCache(settings.predict_models, settings.predict_memory_bytes, self.load)
        self.warm_up()

    def warm_up(self) -> None:
        """Build and run a tiny BERT once, so the first real load finds TensorFlow's runtime started."""
        config = self.transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8, num_labels=2)
        model = self.transformers.TFBertForSequenceClassification(config)
        ones = self.tf.ones((1, 4), self.tf.int32)
        inputs = {"input_ids": ones, "attention_mask": ones, "token_type_ids": self.tf.zeros_like(ones)}
        model(**inputs, training=False)
        self.compiled_forward(model, tuple(inputs))(inputs)

    def model_folder(self, job_id: str) -> Path:
        """The local folder of the job's published model, fetched from an object store when needed."""
        if not JOB_ID.match(job_id):
            raise PredictError("bad_request", f"{job_id!r} is not a job id")
        if self.storage.local_root is not None:
            folder = job_artifacts_dir(self.storage.local_root / ARTIFACTS, job_id) / MODEL_FOLDER
        else:
            local = self.settings.cache_dir / PREDICT_CACHE / job_id
            if not (local / MODEL_FOLDER).is_dir():
                local.parent.mkdir(parents=True, exist_ok=True)
                if self.storage.fetch_published(artifacts_key(job_id), local) is None:
                    raise PredictError("model_not_found", f"job {job_id} has published no model")
            folder = local / MODEL_FOLDER
        if not (folder / "config.json").is_file():
            raise PredictError("model_not_found", f"job {job_id} has published no model")
        return folder

    def compiled_forward(self, model: Any, input_names: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
        """The model's logits as one traced function over int32 batches of any shape."""
        tf = self.tf
        signature = [{name: tf.TensorSpec([None, None], tf.int32, name=name) for name in input_names}]

        @tf.function(input_signature=signature)
        def forward(inputs: dict[str, Any]) -> Any:
            return model(**inputs, training=False).logits

        return forward

    def load(self, job_id: str) -> LoadedModel:
        """Tokenizer and model of the job, traced once; their weights' bytes counted."""
        started = time.perf_counter()
        folder = self.model_folder(job_id)
        try:
            tokenizer = self.transformers.AutoTokenizer.from_pretrained(str(folder))
            model = self.transformers.TFAutoModelForSequenceClassification.from_pretrained(str(folder))
        except Exception as exc:  # from_pretrained raises many types
            raise PredictError("model_load_failed", f"the model of job {job_id} could not be loaded: "
                                                    f"{type(exc).__name__}") from exc
        accepted = set(model.input_signature) if hasattr(model, "input_signature") else set()
        input_names = tuple(name for name in tokenizer.model_input_names if not accepted or name in accepted)
        id2label = model.config.id2label
        labels = tuple(str(id2label[index]) for index in range(len(id2label)))
        nbytes = sum(int(weight.shape.num_elements() or 0) * weight.dtype.size for weight in model.weights)

        def eager(inputs: dict[str, Any]) -> Any:
            return model(**inputs, training=False).logits

        # The first call of a model sets up its kernels (hundreds of milliseconds for MiniLM): part of the load.
        probe = self.tf.ones((1, 8), self.tf.int32)
        eager({name: probe for name in input_names})
        load_ms = (time.perf_counter() - started) * 1000
        log.info("loaded the model of job %s in %.0f ms (%.1f MiB of weights)", job_id, load_ms, nbytes / 2 ** 20)
        return LoadedModel(job_id, tokenizer, eager, input_names, labels, nbytes, load_ms, keras_model=model)

    def trace_later(self, loaded: LoadedModel) -> None:
        """Trace the model on a thread of its own; requests run eagerly until it is done.

        Tracing takes about as long again as loading, so the request that loaded the model
        does not wait for it: it starts once that request is answered.
        """
        threading.Thread(target=self.trace, args=(loaded,), name=f"trace-{loaded.job_id}", daemon=True).start()

    def trace(self, loaded: LoadedModel) -> None:
        """Replace a loaded model's eager forward pass with a traced one, once traced."""
        started = time.perf_counter()
        try:
            forward = self.compiled_forward(loaded.keras_model, loaded.input_names)
            probe = self.tf.ones((1, 2), self.tf.int32)
            forward({name: probe for name in loaded.input_names})
        except Exception:  # the eager forward pass goes on serving
            log.exception("could not trace the model of job %s; it runs eagerly", loaded.job_id)
            return
        loaded.forward = forward
        loaded.keras_model = None
        loaded.trace_ms = (time.perf_counter() - started) * 1000
        log.info("traced the model of job %s in %.0f ms", loaded.job_id, loaded.trace_ms)

    def predict(self, job_id: str, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, Any]:
        """Label, its probability and every label's probability for each text, with timings."""
        started = time.perf_counter()
        model, loaded = self.cache.get(job_id)
        ready = time.perf_counter()
        try:
            predictions, tokenize_s, infer_s = self.run(model, texts, pairs, max_length)
        finally:
            if loaded:
                self.trace_later(model)
        return {"predictions": predictions, "labels": list(model.labels),
                "model_load_ms": model.load_ms if loaded else 0.0,
                "timing": {"load_wait_ms": (ready - started) * 1000, "tokenize_ms": tokenize_s * 1000,
                           "inference_ms": infer_s * 1000, "server_ms": (time.perf_counter() - started) * 1000}}

    def run(self, model: LoadedModel, texts: list[str], pairs: list[str] | None,
            max_length: int) -> tuple[list[dict[str, Any]], float, float]:
        """Each text's prediction, tokenized and run in length-ordered batches; seconds tokenizing and inferring."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
        rows: list[list[float]] = [[] for _ in texts]
        tokenize_s = infer_s = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start:start + BATCH_SIZE]
            begin = time.perf_counter()
            encoded = model.tokenizer([texts[i] for i in chunk], [pairs[i] for i in chunk] if pairs else None,
                                      padding="longest", truncation=True, max_length=max_length, return_tensors="np")
            inputs = {name: self.tf.constant(encoded[name], dtype=self.tf.int32) for name in model.input_names}
            middle = time.perf_counter()
            logits = model.forward(inputs)
            probabilities = self.tf.nn.softmax(self.tf.cast(logits, self.tf.float32), axis=-1).numpy()
            tokenize_s += middle - begin
            infer_s += time.perf_counter() - middle
            for row, index in zip(probabilities, chunk, strict=True):
                rows[index] = [float(p) for p in row]
        predictions = []
        for row in rows:
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append({"label": model.labels[best], "probability": row[best],
                                "probabilities": dict(zip(model.labels, row, strict=True))})
        return predictions, tokenize_s, infer_s

    def handle(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line: {"result": ...} or {"error": ..., "code": ...}."""
        try:
            request = json.loads(line)
            op, args = request.get("op"), request.get("args", {})
            if op == "predict":
                return {"result": self.predict(str(args["job_id"]), list(args["texts"]), args.get("pairs"),
                                               int(args["max_length"]))}
            if op == "ping":
                return {"result": {"pid": os.getpid(), **self.cache.state()}}
            return {"error": f"unknown operation {op!r}", "code": "bad_request"}
        except PredictError as exc:
            return {"error": str(exc), "code": exc.code}
        except Exception as exc:  # noqa: BLE001 - every failure is answered; the server keeps serving
            traceback.print_exc()
            return {"error": type(exc).__name__, "code": "internal"}


class PredictServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers JSON lines on a Unix socket, one thread per connection."""

    daemon_threads = True
    predictor: Predictor


class PredictHandler(socketserver.StreamRequestHandler):
    """One API worker's connection: a request line, an answer line, until it closes."""

    server: PredictServer

    def handle(self) -> None:
        for line in self.rfile:
            if line.strip():
                self.wfile.write(json.dumps(self.server.predictor.handle(line)).encode() + b"\n")
                self.wfile.flush()


def listen(path: Path, predictor: Predictor) -> PredictServer:
    """Bind the socket under a temporary name and rename it into place, replacing a dead server's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    server = PredictServer(str(staged), PredictHandler)
    os.chmod(staged, 0o600)
    server.predictor = predictor
    os.replace(staged, path)
    return server


def exit_with_parent() -> None:
    """Exit once the process that started this one is gone (PDEATHSIG covers a SIGKILL of it too)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Load TensorFlow and transformers, then serve predictions until SIGTERM or the parent's exit."""
    parser = argparse.ArgumentParser(prog="python -m service.trainer.predict_server")
    parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    exit_with_parent()
    started = time.perf_counter()
    predictor = Predictor(settings)
    path = settings.predict_socket
    server = listen(path, predictor)
    log.info("predict server %d ready on %s after %.1f s", os.getpid(), path, time.perf_counter() - started)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

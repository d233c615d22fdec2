"""Loading a model's config, tokenizer and TF sequence classifier from the Hub, a local folder or a job.

Config and tokenizer need no TensorFlow (the dry run uses them); ``load_classifier`` does, so
call it only after ``service.trainer.tf_runtime.prepare_tensorflow`` ran. Failures are
model_not_found, unsupported_model or model_load_failed; code from a model's repository is
never run.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.jobs import FailureCode
from service.locations import Locations, ModelSource, PathRefused, model_source
from service.trainer.failures import TrainingFailure

TF_WEIGHTS = "tf_model.h5"
SAFETENSORS_WEIGHTS = "model.safetensors"
MAX_CAUSE = 300
# huggingface_hub's errors for a repository, revision or file that is not there (or not cached offline).
NOT_FOUND_ERRORS = ("RepositoryNotFoundError", "RevisionNotFoundError", "LocalEntryNotFoundError",
                    "EntryNotFoundError", "GatedRepoError", "HFValidationError")
NOT_FOUND_PHRASES = ("is not a local folder and is not a valid model identifier", "is not a valid git identifier",
                     "couldn't find them in the cached files", "does not appear to have a file named")
# Held while a model loads with its weights' random draws put off (initialized_after_loading).
LOADING = threading.Lock()
UNSUPPORTED_PHRASES = ("does not recognize this architecture", "Unrecognized model", "trust_remote_code")

ModelRef = str | dict[str, Any] | ModelSource


def resolve_model(model: ModelRef) -> ModelSource:
    """The ModelSource of a spec's ``model``; job models are found under this process's artifacts folder."""
    if isinstance(model, ModelSource):
        return model
    from service.config import Settings

    # The API checked model roots at submit time; the trainer loads what the accepted spec names.
    return model_source(model, Locations.from_settings(Settings.from_env()), enforce_roots=False)


def spec_model_source(model: str | dict[str, Any], locations: Locations | None = None) -> ModelSource:
    """The ModelSource of an accepted spec's ``model``, held to the model roots again as it loads.

    The API checked the roots at submit time; a folder swapped for a symlink while the job was
    queued is refused here (model_not_found), symlinks followed, without naming where it leads.
    A Hub name stays a Hub id: it is never looked up as a folder.
    """
    if locations is None:
        from service.config import Settings

        locations = Locations.from_settings(Settings.from_env())
    try:
        return model_source(model, locations, enforce_roots=True)
    except PathRefused as exc:
        given = model if isinstance(model, str) else model.get("path", model.get("job"))
        raise TrainingFailure(FailureCode.MODEL_NOT_FOUND, f"model {given!r} {exc}; it is refused when the job "
                                                           "loads it") from exc


def short_cause(exc: BaseException, source: ModelSource | None = None) -> str:
    """'Type: first line' of an exception, cut to MAX_CAUSE characters; a local folder's resolved path
    is replaced by the name the spec gave it."""
    lines = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if source is not None and source.kind != "hub" and source.ref:
        cause = cause.replace(source.ref, source.given if source.given is not None else "the model folder")
    # Some causes list every model type transformers knows.
    return cause[:MAX_CAUSE] + "..." if len(cause) > MAX_CAUSE else cause


def load_failed(source: ModelSource, what: str, exc: BaseException) -> TrainingFailure:
    """A model_load_failed failure naming the model, what could not be loaded, and why."""
    return TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"could not load the {what} of model "
                                                          f"{source.describe()}: {short_cause(exc, source)}")


def classify_load_error(source: ModelSource, what: str, exc: BaseException) -> TrainingFailure:
    """model_not_found, unsupported_model or model_load_failed for an error of from_pretrained."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = " ".join(str(error) for error in chain)
    if any(type(error).__name__ in NOT_FOUND_ERRORS for error in chain) or \
            any(phrase in texts for phrase in NOT_FOUND_PHRASES):
        where = "on the Hub or in the local cache" if source.kind == "hub" else "there"
        return TrainingFailure(FailureCode.MODEL_NOT_FOUND, f"model {source.describe()} was not found {where} "
                                                            f"({what}): {short_cause(exc, source)}")
    if any(phrase in texts for phrase in UNSUPPORTED_PHRASES):
        return TrainingFailure(FailureCode.UNSUPPORTED_MODEL,
                               f"model {source.describe()} is of a type transformers cannot build without running "
                               f"its code: {short_cause(exc, source)}")
    return load_failed(source, what, exc)


def check_local_folder(source: ModelSource) -> None:
    """A local or job model folder exists and holds a config.json; a Hub id names no local file (model_not_found)."""
    folder = source.local_folder
    if folder is None:
        # transformers reads a Hub id as a folder when one of that name is in the working folder.
        if os.path.lexists(source.ref):
            raise TrainingFailure(FailureCode.MODEL_NOT_FOUND,
                                  f"model {source.ref!r} is a Hub id, and a file or folder of that name in the "
                                  "working folder would be loaded in its place; a Hub id is only looked up on the "
                                  "Hub (give a local model as {\"path\": ...})")
        return
    if source.kind == "job" and not folder.is_dir():
        raise TrainingFailure(FailureCode.MODEL_NOT_FOUND, f"job {source.job_id} has no published model to "
                                                           "continue from (it has not succeeded)")
    if not folder.is_dir():
        raise TrainingFailure(FailureCode.MODEL_NOT_FOUND, f"model folder {source.describe()} does not exist")
    if not (folder / "config.json").is_file():
        # Checked here: without it transformers guesses the model type from the folder's name.
        raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"model folder {source.describe()} has no config.json")


def local_folder(model_ref: str) -> Path | None:
    """The folder ``model_ref`` names, or None for a Hub name; a path-like ref that is no folder fails."""
    source = resolve_model(model_ref)
    check_local_folder(source)
    return source.local_folder


def load_model_config(model: ModelRef, **overrides: Any) -> Any:
    """The model's config (no weights); unsupported_model when transformers has no TF classifier for it."""
    from transformers import AutoConfig

    source = resolve_model(model)
    check_local_folder(source)
    try:
        config = AutoConfig.from_pretrained(source.ref, revision=source.revision, trust_remote_code=False,
                                            **overrides)
    except Exception as exc:  # from_pretrained raises OSError, ValueError, KeyError, ...
        raise classify_load_error(source, "config", exc) from exc
    check_supported(source, config)
    return config


def check_supported(source: ModelSource, config: Any) -> None:
    """Refuse a config whose model type has no TFAutoModelForSequenceClassification class."""
    from transformers.models.auto.modeling_tf_auto import TF_MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in TF_MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        supported = ", ".join(sorted(TF_MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))
        raise TrainingFailure(FailureCode.UNSUPPORTED_MODEL,
                              f"model {source.describe()} is a {model_type!r} model, which has no TensorFlow "
                              f"sequence-classification class in transformers; supported types: {supported}")


def has_pytorch_safetensors_only(folder: Path) -> bool:
    """Whether the folder's only weights are PyTorch-format safetensors, which the TF loader cannot read."""
    weights = folder / SAFETENSORS_WEIGHTS
    if (folder / TF_WEIGHTS).exists() or not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as handle:
        return (handle.metadata() or {}).get("format") == "pt"


def load_tokenizer(model: ModelRef) -> Any:
    """The model's tokenizer (the fast one where there is one), after checking its config is supported.

    Never runs code from the model's repository; reads no weights.
    """
    from transformers import AutoTokenizer

    source = resolve_model(model)
    load_model_config(source)
    try:
        return AutoTokenizer.from_pretrained(source.ref, revision=source.revision, trust_remote_code=False)
    except Exception as exc:  # from_pretrained raises many types, as in load_model_config
        raise classify_load_error(source, "tokenizer", exc) from exc


def load_classifier(model: ModelRef, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]) -> Any:
    """A TFAutoModelForSequenceClassification with the model's weights and a head for ``num_labels`` classes."""
    from transformers import TFAutoModelForSequenceClassification

    source = resolve_model(model)
    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id}
    config = load_model_config(source, **labels)
    folder = source.local_folder
    try:
        with initialized_after_loading() as draw_unloaded:
            if folder is not None and has_pytorch_safetensors_only(folder):
                model = load_pytorch_safetensors(folder, config)
            else:
                # A checkpoint with a head for another number of labels gets a new head, as with the
                # plain recipe's from_pretrained(checkpoint, num_labels=N) on a base model; one with a
                # head of the same size (a job continued from) keeps its trained head.
                model = TFAutoModelForSequenceClassification.from_pretrained(
                    source.ref, revision=source.revision, config=config, ignore_mismatched_sizes=True)
            draw_unloaded()
        return model
    except TrainingFailure:
        raise
    except Exception as exc:  # from_pretrained raises many types, as in load_model_config
        raise classify_load_error(source, "weights", exc) from exc


def load_pytorch_safetensors(folder: Path, config: Any) -> Any:
    """Build the TF model from its config and copy in the folder's PyTorch-format safetensors weights.

    transformers' TF from_pretrained fails on these files ("'builtins.safe_open' object is not
    iterable", upstream issue #40028); reading them with safetensors.numpy and converting the
    state dict works.
    """
    import safetensors.numpy
    from transformers import TFAutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    model = TFAutoModelForSequenceClassification.from_config(config)
    # Creates the variables the weights are copied into, without a forward pass (as from_pretrained does).
    model.build_in_name_scope()
    state_dict = safetensors.numpy.load_file(str(folder / SAFETENSORS_WEIGHTS))
    _, info = load_pytorch_state_dict_in_tf2_model(model, state_dict, tf_inputs=False, allow_missing_keys=True,
                                                   output_loading_info=True)
    # Only the new head ("classifier.*", DistilBERT's "pre_classifier.*") may be missing;
    # anything else means the checkpoint is not this architecture.
    missing = [key for key in info["missing_keys"] if "classifier" not in key.split(".")[0]]
    if missing:
        raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED,
                              f"the model's {SAFETENSORS_WEIGHTS} lacks {len(missing)} tensors the model needs, "
                              f"e.g. {', '.join(missing[:3])}")
    return model


@contextmanager
def initialized_after_loading() -> Iterator[Any]:
    """Variables made inside start as NaN instead of random draws; the function it yields draws
    the ones that loading left unset.

    Building a model draws every weight from its initializer, and loading the checkpoint then
    overwrites nearly all of them: for MiniLM, 0.5 s of a 1.5 s load went to truncated-normal
    draws thrown away. Here a weight whose initializer is random starts as NaN (constant fills
    cost almost nothing). After loading, a weight that is still entirely NaN was not in the
    checkpoint (the new classification head, a head of another size) and gets its own
    initializer's draw, from the same seeded generator as before. Weights with a constant
    initializer (zeros, ones: biases, layer norms) are made as usual.

    The swap of ``Layer.add_weight`` is process-wide: loads through here take turns (a lock), and
    no other thread should build Keras layers meanwhile.
    """
    import tensorflow as tf
    import tf_keras
    from tf_keras.src.engine.base_layer import Layer

    with LOADING:
        original = Layer.__dict__["add_weight"]
        signature = inspect.signature(original)
        constant = (tf_keras.initializers.Zeros, tf_keras.initializers.Ones, tf_keras.initializers.Constant)
        deferred: list[tuple[Any, Any]] = []

        def add_weight(self: Any, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            given = bound.arguments.get("initializer")
            dtype = tf.as_dtype(bound.arguments.get("dtype") or self.dtype or tf_keras.backend.floatx())
            if given is None or not dtype.is_floating:
                return original(*bound.args, **bound.kwargs)
            initializer = tf_keras.initializers.get(given)
            if isinstance(initializer, constant):
                return original(*bound.args, **bound.kwargs)
            bound.arguments["initializer"] = tf_keras.initializers.Constant(float("nan"))
            variable = original(*bound.args, **bound.kwargs)
            deferred.append((variable, initializer))
            return variable

        def draw_unloaded() -> None:
            for variable, initializer in deferred:
                if bool(tf.reduce_all(tf.math.is_nan(variable))):
                    variable.assign(initializer(variable.shape, variable.dtype))
            deferred.clear()

        Layer.add_weight = add_weight
        try:
            yield draw_unloaded
        finally:
            Layer.add_weight = original

"""Loading a tokenizer and a TF sequence classifier from a Hub name or a local folder.

Import only after ``service.trainer.tf_runtime.prepare_tensorflow`` ran: transformers' TF
classes import TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure

TF_WEIGHTS = "tf_model.h5"
SAFETENSORS_WEIGHTS = "model.safetensors"
MAX_CAUSE = 300


def load_failed(model_ref: str, what: str, exc: BaseException) -> TrainingFailure:
    """A model_load_failed failure naming the model, what could not be loaded, and why."""
    lines = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if len(cause) > MAX_CAUSE:
        cause = cause[:MAX_CAUSE] + "..."  # some causes list every model type transformers knows
    return TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"could not load the {what} of model {model_ref!r}: {cause}")


def local_folder(model_ref: str) -> Path | None:
    """The folder ``model_ref`` names, or None for a Hub name; a path-like ref that is no folder fails."""
    path = Path(model_ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            # Checked here: without it transformers guesses the model type from the folder's name.
            raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"model folder {model_ref!r} has no config.json")
        return path
    # "org/name" is a Hub id; only refs spelled like paths are taken to mean a missing folder.
    if model_ref.startswith(("/", "./", "../", "~")):
        raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"model folder {model_ref!r} does not exist")
    return None


def has_pytorch_safetensors_only(folder: Path) -> bool:
    """Whether the folder's only weights are PyTorch-format safetensors, which the TF loader cannot read."""
    weights = folder / SAFETENSORS_WEIGHTS
    if (folder / TF_WEIGHTS).exists() or not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as handle:
        return (handle.metadata() or {}).get("format") == "pt"


def load_tokenizer(model_ref: str) -> Any:
    """The model's tokenizer (the fast one where there is one); never runs code from the model's repo."""
    from transformers import AutoTokenizer

    local_folder(model_ref)
    try:
        return AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - from_pretrained raises OSError, ValueError, KeyError, ...
        raise load_failed(model_ref, "tokenizer", exc) from exc


def load_classifier(model_ref: str, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]) -> Any:
    """A TFAutoModelForSequenceClassification with the model's weights and a head for ``num_labels`` classes."""
    from transformers import AutoConfig, TFAutoModelForSequenceClassification

    folder = local_folder(model_ref)
    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id}
    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=False, **labels)
    except Exception as exc:  # noqa: BLE001 - see load_tokenizer
        raise load_failed(model_ref, "config", exc) from exc
    try:
        if folder is not None and has_pytorch_safetensors_only(folder):
            return load_pytorch_safetensors(folder, config)
        # A checkpoint with a head for another number of labels gets a new head, as with the
        # plain recipe's from_pretrained(checkpoint, num_labels=N) on a base model.
        return TFAutoModelForSequenceClassification.from_pretrained(model_ref, config=config,
                                                                    ignore_mismatched_sizes=True)
    except TrainingFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - see load_tokenizer
        raise load_failed(model_ref, "weights", exc) from exc


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
    model(model.dummy_inputs, training=False)  # creates the variables the weights are copied into
    state_dict = safetensors.numpy.load_file(str(folder / SAFETENSORS_WEIGHTS))
    _, info = load_pytorch_state_dict_in_tf2_model(model, state_dict, allow_missing_keys=True,
                                                   output_loading_info=True)
    # Only the new head ("classifier.*", DistilBERT's "pre_classifier.*") may be missing;
    # anything else means the checkpoint is not this architecture.
    missing = [key for key in info["missing_keys"] if "classifier" not in key.split(".")[0]]
    if missing:
        raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED,
                              f"the weights in {folder} lack {len(missing)} tensors the model needs, "
                              f"e.g. {', '.join(missing[:3])}")
    return model

"""Loading tokenizers and TF sequence classifiers from the Hub or a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure

TF_WEIGHTS = "tf_model.h5"
SAFETENSORS_WEIGHTS = "model.safetensors"


def load_failed(model_ref: str, what: str, exc: BaseException) -> TrainingFailure:
    """A model_load_failed failure that names the model and the cause."""
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"could not load the {what} of {model_ref!r}: {cause}")


def is_local(model_ref: str) -> bool:
    """Whether the spec names a local folder (absolute path) rather than a Hub model."""
    return model_ref.startswith("/")


def has_pytorch_safetensors_only(folder: Path) -> bool:
    """A folder whose only weights are PyTorch-format safetensors (no TF checkpoint)."""
    weights = folder / SAFETENSORS_WEIGHTS
    if (folder / TF_WEIGHTS).exists() or not weights.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as handle:
        return (handle.metadata() or {}).get("format") == "pt"


def load_tokenizer(model_ref: str) -> Any:
    """The model's tokenizer (fast where available); never runs remote code."""
    if is_local(model_ref) and not Path(model_ref).is_dir():
        raise TrainingFailure(FailureCode.MODEL_LOAD_FAILED, f"model folder {model_ref!r} does not exist")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - from_pretrained raises OSError, ValueError, KeyError...
        raise load_failed(model_ref, "tokenizer", exc) from exc


def load_classifier(model_ref: str, num_labels: int, id2label: dict[int, str],
                    label2id: dict[str, int]) -> Any:
    """TFAutoModelForSequenceClassification with a fresh head for ``num_labels`` classes."""
    from transformers import AutoConfig, TFAutoModelForSequenceClassification

    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id}
    try:
        if is_local(model_ref) and has_pytorch_safetensors_only(Path(model_ref)):
            return load_from_pytorch_safetensors(Path(model_ref), labels)
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=False, **labels)
        return TFAutoModelForSequenceClassification.from_pretrained(
            model_ref, config=config, ignore_mismatched_sizes=True)
    except TrainingFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - see load_tokenizer
        raise load_failed(model_ref, "weights", exc) from exc


def load_from_pytorch_safetensors(folder: Path, labels: dict[str, Any]) -> Any:
    """Build the TF model from its config and copy in PyTorch-format safetensors weights.

    transformers' TF loader fails on these files (upstream issue #40028); reading them
    with safetensors.numpy and converting the state dict works.
    """
    import safetensors.numpy
    from transformers import AutoConfig, TFAutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, **labels)
    model = TFAutoModelForSequenceClassification.from_config(config)
    model(model.dummy_inputs, training=False)
    state_dict = safetensors.numpy.load_file(str(folder / SAFETENSORS_WEIGHTS))
    _, info = load_pytorch_state_dict_in_tf2_model(model, state_dict, allow_missing_keys=True,
                                                   output_loading_info=True)
    encoder_missing = [key for key in info["missing_keys"] if "classifier" not in key]
    if encoder_missing:
        raise ValueError(f"the checkpoint lacks weights the model needs: {', '.join(encoder_missing[:5])}")
    return model

"""Numeric precision and XLA compilation chosen for the device a job got.

``auto`` picks what is fastest and safe: on NVIDIA GPUs, bfloat16 mixed precision from compute
capability 8.0 (Ampere and later have bfloat16 tensor cores and need no loss scaling), float16
mixed precision with dynamic loss scaling on 7.x (Volta, Turing), float32 before that, and
XLA on every GPU. On CPU, XLA stays off (it halved MiniLM's throughput on these CPUs), and the
precision is bfloat16 mixed where the CPU has bfloat16 instructions (AVX512-BF16 or AMX), which
made MiniLM's train step 1.4x faster here at 24 and at 256 tokens, and float32 elsewhere.
Whatever the policy, the classification head and the loss compute in float32, so logits and
the loss never lose range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_SETTINGS = ("auto", True, False)


@dataclass(frozen=True)
class DeviceInfo:
    """What the job runs on: a CPU, or GPUs with their names and the lowest compute capability."""

    kind: str  # "gpu" or "cpu"
    names: tuple[str, ...] = ()
    compute_capability: tuple[int, int] | None = None
    cpu_bfloat16: bool = False  # the CPU computes bfloat16 natively

    def describe(self) -> str:
        """'CPU', or 'GPU NVIDIA H100 (compute capability 9.0)' and the like."""
        if self.kind == "cpu":
            return "CPU with bfloat16 instructions" if self.cpu_bfloat16 else "CPU"
        names = ", ".join(sorted(set(self.names))) or "GPU"
        capability = ".".join(map(str, self.compute_capability)) if self.compute_capability else "unknown"
        return f"{len(self.names)} GPU(s) {names} (compute capability {capability})"


@dataclass(frozen=True)
class ComputePlan:
    """The precision policy and XLA setting a fit uses, and why they were chosen."""

    precision: str
    jit_compile: bool
    device: str
    reason: str
    # Batches are padded to a multiple of this (see service.trainer.batching.padded_lengths).
    pad_to_multiple: int = 8

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for an event and the job's result."""
        return asdict(self)


def detect_device() -> DeviceInfo:
    """The visible GPUs (lowest compute capability wins) or the CPU; call after prepare_tensorflow."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return DeviceInfo("cpu", cpu_bfloat16=cpu_has_bfloat16())
    names, capabilities = [], []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(str(details.get("device_name", gpu.name)))
        if details.get("compute_capability"):
            capabilities.append(tuple(details["compute_capability"]))
    return DeviceInfo("gpu", tuple(names), min(capabilities) if capabilities else None)


CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU's flags include bfloat16 arithmetic (Linux; False where unknown)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return bool(CPU_BFLOAT16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def choose_compute(precision: str, jit_compile: str | bool, device: DeviceInfo) -> ComputePlan:
    """Resolve the spec's ``precision`` and ``jit_compile`` (each maybe ``auto``) for ``device``."""
    reasons = []
    if precision == "auto":
        capability = device.compute_capability or (0, 0)
        if device.kind == "cpu" and device.cpu_bfloat16:
            precision = "mixed_bfloat16"
            reasons.append("bfloat16 mixed precision: this CPU has bfloat16 instructions")
        elif device.kind == "cpu":
            precision = "float32"
            reasons.append("float32: this CPU has no bfloat16 instructions")
        elif capability >= (8, 0):
            precision = "mixed_bfloat16"
            reasons.append("bfloat16 mixed precision: compute capability 8.0 or later has bfloat16 tensor cores")
        elif capability >= (7, 0):
            precision = "mixed_float16"
            reasons.append("float16 mixed precision with loss scaling: compute capability 7.x has float16 "
                           "tensor cores but no bfloat16")
        else:
            precision = "float32"
            reasons.append("float32: this GPU has no tensor cores")
    else:
        reasons.append(f"{precision} as the spec asks")
    if jit_compile == "auto":
        jit_compile = device.kind == "gpu"
        reasons.append("XLA on for the GPU" if jit_compile else "XLA off: it halves training speed on CPU")
    else:
        reasons.append(f"XLA {'on' if jit_compile else 'off'} as the spec asks")
    # Tensor cores want lengths in multiples of 8; a CPU gains nothing from rounding up.
    pad_to_multiple = 8 if device.kind == "gpu" else 1
    return ComputePlan(precision=precision, jit_compile=bool(jit_compile), device=device.describe(),
                       reason="; ".join(reasons) + ".", pad_to_multiple=pad_to_multiple)


def apply_policy(plan: ComputePlan) -> None:
    """Make layers built from now on use the plan's precision (call before the model is built)."""
    import tf_keras

    tf_keras.mixed_precision.set_global_policy(plan.precision)


def keep_head_in_float32(model: Any) -> list[str]:
    """Run the classification head's layers in float32 whatever the global policy; returns their names.

    The head is the model's top-level layers other than the encoder (transformers names them
    classifier, pre_classifier, dropout...); its variables are float32 already, so only the
    compute dtype changes, and inputs are cast to float32 on the way in.
    """
    encoder = getattr(model, model.base_model_prefix, None)
    changed = []
    for layer in model.layers:
        if layer is encoder:
            continue
        for inner in [layer, *layer._flatten_layers(include_self=False)]:
            inner._set_dtype_policy("float32")
        changed.append(layer.name)
    return changed


def float32_loss() -> Any:
    """SparseCategoricalCrossentropy on logits that casts them to float32 first."""
    import tensorflow as tf
    import tf_keras

    class Float32SparseCategoricalCrossentropy(tf_keras.losses.SparseCategoricalCrossentropy):
        """The recipe's loss, computed in float32 even when the logits arrive in a half type."""

        def call(self, y_true: Any, y_pred: Any) -> Any:
            return super().call(y_true, tf.cast(y_pred, tf.float32))

    return Float32SparseCategoricalCrossentropy(from_logits=True)

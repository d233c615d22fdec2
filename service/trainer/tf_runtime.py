"""TensorFlow process set-up; must run before anything imports TensorFlow."""

from __future__ import annotations

import os
from typing import Any


def import_tensorflow(threads: int = 0) -> Any:
    """Select Keras 2 (tf-keras), quiet TF's C++ logs, import TensorFlow and set thread limits.

    Touches no device: CUDA starts later, at the first device query or op, so a warm trainer
    can call this before it knows which GPUs (CUDA_VISIBLE_DEVICES) it will get.
    """
    # transformers' TF models are Keras 2 models; TF 2.16+ defaults to Keras 3 unless told.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:
            pass  # already initialised in this process; the first setting stays
    return tf


def prepare_tensorflow(threads: int = 0) -> None:
    """Select Keras 2 (tf-keras), quiet TF's C++ logs, set thread limits and GPU memory growth."""
    tf = import_tensorflow(threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            # Grow GPU memory as needed, so jobs sharing a GPU (time-slicing) can coexist.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass

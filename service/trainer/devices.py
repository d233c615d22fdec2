"""Which devices a fit runs on: one device as Keras chooses, or every visible GPU mirrored.

The supervisor hands a job its GPUs through CUDA_VISIBLE_DEVICES (``resources.gpus``); with
more than one visible, the model is replicated on each (tf.distribute.MirroredStrategy) and
every batch of ``batch_size`` rows is split between them, so the spec's numbers keep their
meaning whatever the GPU count.
"""

from __future__ import annotations

from typing import Any


def choose_strategy(devices: list[str] | None = None) -> Any:
    """MirroredStrategy over ``devices`` (default: the visible GPUs) when there are several."""
    import tensorflow as tf

    if devices is None:
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()

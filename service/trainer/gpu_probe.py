"""`python -m service.trainer.gpu_probe`: the GPUs TensorFlow sees, printed as one JSON line.

The supervisor runs this as a short-lived subprocess (service.supervisor.gpus) when nvidia-smi
cannot answer for it, so CUDA starts in this throwaway process and never in the supervisor,
whose trainers each get their own CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
import sys

from service.trainer.tf_runtime import import_tensorflow


def visible_gpus() -> dict[str, object]:
    """TensorFlow's physical GPU devices, and whether this TensorFlow was built with CUDA."""
    tf = import_tensorflow()
    return {"gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
            "built_with_cuda": bool(tf.test.is_built_with_cuda()),
            "tensorflow": tf.__version__}


def main() -> int:
    """Print the GPUs TensorFlow sees as the last line of stdout."""
    print(json.dumps(visible_gpus()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

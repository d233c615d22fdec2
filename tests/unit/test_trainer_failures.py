"""How the trainer names unexpected exceptions: disk full before out of memory, then internal."""

from __future__ import annotations

import errno

from service.jobs import FailureCode
from service.trainer.__main__ import classify_exception


class ResourceExhaustedError(Exception):
    """Stands in for tf.errors.ResourceExhaustedError, which is matched by name."""


def test_enospc_is_disk_full_and_names_the_file() -> None:
    code, message = classify_exception(OSError(errno.ENOSPC, "No space left on device", "/data/model.h5"))
    assert code is FailureCode.DISK_FULL and "/data/model.h5" in message


def test_tensorflow_reports_a_full_disk_as_resource_exhausted() -> None:
    exc = ResourceExhaustedError("/ckpt/ckpt-2_temp/part-00000.data; No space left on device")
    assert classify_exception(exc)[0] is FailureCode.DISK_FULL


def test_a_full_disk_deeper_in_the_chain_is_found() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert classify_exception(outer)[0] is FailureCode.DISK_FULL


def test_allocation_failures_are_out_of_memory() -> None:
    assert classify_exception(MemoryError())[0] is FailureCode.OUT_OF_MEMORY
    code, message = classify_exception(ResourceExhaustedError("OOM when allocating tensor with shape[64,2,4096,4096]"))
    assert code is FailureCode.OUT_OF_MEMORY and "batch_size" in message


def test_anything_else_is_internal_with_its_type() -> None:
    code, message = classify_exception(KeyError("input_ids"))
    assert code is FailureCode.INTERNAL and message.startswith("KeyError")


def test_an_outcome_that_cannot_be_written_travels_in_the_exit_status(tmp_path) -> None:
    import json

    from service.trainer.outcome import Outcome, finish, outcome_of_exit_status, read_outcome

    missing = tmp_path / "gone"  # writing into a folder that is not there fails like a full disk
    status = finish(missing, Outcome("failed", code="disk_full", message="x"))
    assert status not in (0, 1)
    carried = outcome_of_exit_status(status, tmp_path)
    assert carried is not None and carried.code == "disk_full"
    assert finish(tmp_path, Outcome("failed", code="invalid_data", message="bad")) == 1
    written = read_outcome(tmp_path)
    assert written is not None and written.code == "invalid_data"
    published = tmp_path / "published"
    published.mkdir()
    (published / "metrics.json").write_text(json.dumps({"final": {"val_accuracy": 0.9}}))
    status = finish(missing, Outcome("succeeded", result={"val_accuracy": 0.9}))
    succeeded = outcome_of_exit_status(status, published)
    assert succeeded is not None and succeeded.result == {"val_accuracy": 0.9}
    assert outcome_of_exit_status(1, published) is None and outcome_of_exit_status(-9, published) is None

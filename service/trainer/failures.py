"""The typed failure a trainer raises when a job cannot go on."""

from __future__ import annotations

from typing import Any

from service.jobs import FailureCode


class TrainingFailure(Exception):
    """A job failed for a reason the user can act on; ``code`` is a FailureCode value.

    ``result`` is what a job that trained but failed anyway (below_threshold) keeps as its
    result: the same keys a succeeded job's result has.
    """

    def __init__(self, code: FailureCode, message: str, *, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

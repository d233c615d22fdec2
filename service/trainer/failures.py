"""The typed failure a trainer raises when a job cannot go on."""

from __future__ import annotations

from service.jobs import FailureCode


class TrainingFailure(Exception):
    """A job failed for a reason the user can act on; ``code`` is a FailureCode value."""

    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

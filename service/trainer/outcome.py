"""The file a trainer child leaves behind to say how its attempt ended."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOME_FILE = "outcome.json"


@dataclass(frozen=True)
class Outcome:
    """``status`` is "succeeded" (with ``result``) or "failed" (with ``code`` and ``message``)."""

    status: str
    result: dict[str, float] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None


def write_outcome(attempt_dir: Path, outcome: Outcome) -> None:
    """Write the outcome atomically, so a reader never sees half of it."""
    target = attempt_dir / OUTCOME_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(outcome)))
    os.replace(tmp, target)


def read_outcome(attempt_dir: Path) -> Outcome | None:
    """The outcome an attempt left, or None when it ended without writing one."""
    try:
        data: dict[str, Any] = json.loads((attempt_dir / OUTCOME_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Outcome(**data)

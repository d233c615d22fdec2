"""How a trainer stops when the supervisor sends SIGTERM (node drain, cancel, deadline).

Before the fit starts there is nothing to keep, so the process stops at once; during the fit
it finishes the current step, writes a checkpoint of model and optimizer state at that step
(service.trainer.checkpoints) and exits, so the next attempt loses no finished step.
"""

from __future__ import annotations

import signal
from types import FrameType


class DrainRequested(Exception):
    """SIGTERM arrived; the fit stopped after writing a checkpoint (or before it started)."""


class StopSignal:
    """Turns SIGTERM into DrainRequested: at once before the fit, at the next step inside it.

    Once the fit has started the flag alone is set; after the last step the attempt finishes
    (publishing takes seconds), since its work is worth more than a checkpoint of it.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_fit = False

    def install(self) -> None:
        """Handle SIGTERM in this (main) thread from now on."""
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        if not self.in_fit:
            raise DrainRequested("stopped on SIGTERM before the fit started")

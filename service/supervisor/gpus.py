"""Which GPUs a supervisor may hand out, and which are free right now."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def detect_gpus(setting: str | tuple[str, ...]) -> tuple[str, ...]:
    """GPU ids from FITJOBS_GPUS: an explicit list as given, or `auto` via nvidia-smi."""
    if setting != "auto":
        return tuple(setting)
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return ()
    try:
        listed = subprocess.run([binary, "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed, running without GPUs: %s", exc)
        return ()
    return tuple(line.strip() for line in listed.splitlines() if line.strip().isdigit())


@dataclass
class GpuPool:
    """GPU ids of one node; each is lent to at most one job at a time."""

    ids: tuple[str, ...]
    lent: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def free(self) -> list[str]:
        """Ids not lent to any job, in order."""
        busy = {gpu for ids in self.lent.values() for gpu in ids}
        return [gpu for gpu in self.ids if gpu not in busy]

    def lend(self, job_id: str, count: int) -> tuple[str, ...]:
        """Lend ``count`` free GPUs to a job; raises ValueError when too few are free."""
        free = self.free
        if count > len(free):
            raise ValueError(f"{count} GPU(s) asked, {len(free)} free")
        self.lent[job_id] = tuple(free[:count])
        return self.lent[job_id]

    def give_back(self, job_id: str) -> None:
        """Return a job's GPUs to the pool."""
        self.lent.pop(job_id, None)

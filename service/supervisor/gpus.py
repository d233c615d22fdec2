"""Which GPUs a supervisor may hand out, and which are free right now.

With FITJOBS_GPUS=auto the GPUs are discovered once, at start. nvidia-smi answers first: it is
quick and starts no CUDA in this process. Where it is missing, fails, or disagrees with what the
environment says this worker was given, TensorFlow's device list is read in a short-lived
subprocess (service.trainer.gpu_probe): CUDA started in the supervisor itself would hold GPU
memory for its whole life. A worker that was given GPUs and sees none refuses to start
(GpusNotVisible) rather than register 0 GPUs and train on the CPU while it holds the GPU.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT = 20.0
# NVIDIA_VISIBLE_DEVICES values with which the container runtime exposes no GPU.
NO_GPU_VALUES = frozenset({"", "void", "none"})
# Entries CUDA accepts in CUDA_VISIBLE_DEVICES: an index, a GPU UUID or a MIG instance UUID.
CUDA_DEVICE_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$")
# TensorFlow's log lines that say why CUDA found no device.
CUDA_FAILURE_HINT = re.compile(r"cuInit|cuda drivers|libcuda|driver version", re.IGNORECASE)


class GpusNotVisible(RuntimeError):
    """The environment says this worker was given GPUs, yet no discovery source sees one."""


@dataclass(frozen=True)
class ListedGpu:
    """One GPU as nvidia-smi lists it."""

    index: str
    uuid: str
    name: str

    def matches(self, entry: str) -> bool:
        """Whether a CUDA_VISIBLE_DEVICES entry (index or UUID, possibly shortened) names this GPU."""
        return entry == self.index or (entry.startswith("GPU-") and self.uuid.startswith(entry))


@dataclass(frozen=True)
class SourceReport:
    """What one discovery source found, or how it failed (``ids`` None: it could not tell)."""

    source: str
    ids: tuple[str, ...] | None
    detail: str
    listed: tuple[ListedGpu, ...] = field(default=())

    def describe(self) -> str:
        """``source: detail``, for logs and error messages."""
        return f"{self.source}: {self.detail}"


def cuda_visible_devices(environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """The devices CUDA_VISIBLE_DEVICES lets CUDA see, read as CUDA reads it; None when unset."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for part in value.split(","):
        entry = part.strip()
        if not CUDA_DEVICE_ENTRY.match(entry):
            break  # CUDA ignores the first invalid entry and everything after it ("-1" hides all)
        entries.append(entry)
    return tuple(entries)


def gpus_given(environ: Mapping[str, str]) -> list[str]:
    """The variables (``NAME=value``) saying GPUs were given to this process, e.g. by a device plugin."""
    given = []
    nvidia = environ.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip().lower() not in NO_GPU_VALUES:
        given.append(f"NVIDIA_VISIBLE_DEVICES={nvidia}")
    if cuda_visible_devices(environ):
        given.append(f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']}")
    return given


def query_nvidia_smi(environ: Mapping[str, str], command: str = "nvidia-smi",
                     timeout: float = NVIDIA_SMI_TIMEOUT) -> SourceReport:
    """The GPUs nvidia-smi lists (it ignores CUDA_VISIBLE_DEVICES: it sees what the container was given)."""
    binary = shutil.which(command, path=environ.get("PATH"))
    if binary is None:
        return SourceReport("nvidia-smi", None, f"`{command}` not found on PATH")
    try:
        done = subprocess.run([binary, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return SourceReport("nvidia-smi", None, f"gave no answer within {timeout:g} s")
    except OSError as exc:
        return SourceReport("nvidia-smi", None, f"could not run {binary}: {exc}")
    if done.returncode != 0:
        said = first_line(done.stderr) or first_line(done.stdout)
        return SourceReport("nvidia-smi", None, f"exited with status {done.returncode}: {said}")
    listed = []
    for line in done.stdout.splitlines():
        parts = [part.strip() for part in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            listed.append(ListedGpu(*parts))
    if not listed:
        return SourceReport("nvidia-smi", (), "listed no GPU")
    names = ", ".join(f"{gpu.index} ({gpu.name}, {gpu.uuid})" for gpu in listed)
    return SourceReport("nvidia-smi", tuple(gpu.index for gpu in listed),
                        f"listed {len(listed)} GPU(s): {names}", tuple(listed))


def tensorflow_probe_command() -> list[str]:
    """The command that prints the GPUs TensorFlow sees (service.trainer.gpu_probe)."""
    return [sys.executable, "-m", "service.trainer.gpu_probe"]


def query_tensorflow(environ: Mapping[str, str], command: Sequence[str] | None = None,
                     timeout: float = 120.0) -> SourceReport:
    """The GPUs TensorFlow sees with this environment, asked in a subprocess, as ids to hand out."""
    argv = list(command or tensorflow_probe_command())
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=dict(environ),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return SourceReport("tensorflow", None,
                            f"gave no answer within {timeout:g} s (FITJOBS_GPU_DISCOVERY_TIMEOUT)")
    except OSError as exc:
        return SourceReport("tensorflow", None, f"could not run {argv[0]}: {exc}")
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if done.returncode == 0 and lines else None
        names = [str(name) for name in found["gpus"]] if found is not None else None
    except (ValueError, TypeError, KeyError):
        names = None
    if names is None:
        said = last_line(done.stderr) or last_line(done.stdout)
        return SourceReport("tensorflow", None, f"the probe exited with status {done.returncode}: {said}")
    # TensorFlow numbers the devices CUDA_VISIBLE_DEVICES lets it see; trainers need the entries themselves.
    cuda = cuda_visible_devices(environ)
    ids = tuple(cuda[i] if cuda is not None and i < len(cuda) else str(i) for i in range(len(names)))
    if names:
        return SourceReport("tensorflow", ids, f"found {len(names)} GPU(s): {', '.join(names)}")
    detail = "found no GPU"
    if found is not None and found.get("built_with_cuda") is False:
        detail += " (this TensorFlow is built without CUDA)"
    # Without the log line's prefix (severity, time, thread, source file).
    hints = [line.split("] ", 1)[-1].strip() for line in done.stderr.splitlines()
             if CUDA_FAILURE_HINT.search(line)]
    if hints:
        detail += f" ({hints[-1]})"
    return SourceReport("tensorflow", (), detail)


def discover_gpus(setting: str | tuple[str, ...], environ: Mapping[str, str], *,
                  nvidia_smi: str = "nvidia-smi", tensorflow_probe: Sequence[str] | None = None,
                  timeout: float = 120.0) -> tuple[str, ...]:
    """GPU ids to hand out: FITJOBS_GPUS ids as given, none for `none`, or those discovered for `auto`.

    Raises GpusNotVisible when, with `auto`, the environment says GPUs were given and none is seen.
    """
    if setting != "auto":
        log.info("GPUs from FITJOBS_GPUS, not discovered: %s", ",".join(setting) or "none")
        return tuple(setting)
    cuda = cuda_visible_devices(environ)
    given = gpus_given(environ)
    smi = query_nvidia_smi(environ, nvidia_smi)
    log.log(logging.INFO if smi.ids is not None else logging.WARNING, "GPU discovery: %s", smi.describe())
    if cuda is None:
        usable = smi.ids or ()
    else:  # the trainers' CUDA_VISIBLE_DEVICES replaces this one: hand out its entries themselves
        usable = tuple(entry for entry in cuda if any(gpu.matches(entry) for gpu in smi.listed))
    unmatched = [entry for entry in cuda or () if entry not in usable]
    if smi.ids is None:
        why = "nvidia-smi could not tell"
    elif unmatched:
        why = f"CUDA_VISIBLE_DEVICES names {','.join(unmatched)}, which nvidia-smi does not list"
    elif not usable and given:
        why = f"{' and '.join(given)}, yet nvidia-smi lists no usable GPU"
    else:
        why = None
    reports = [smi]
    chosen, source = usable, "nvidia-smi"
    if why is not None:
        log.info("GPU discovery: asking TensorFlow in a subprocess, since %s", why)
        tensorflow = query_tensorflow(environ, tensorflow_probe, timeout)
        log.log(logging.INFO if tensorflow.ids is not None else logging.WARNING, "GPU discovery: %s",
                tensorflow.describe())
        reports.append(tensorflow)
        if tensorflow.ids is not None:
            # TensorFlow sees what the trainers' CUDA will see; when it answers, its answer counts.
            chosen, source = tensorflow.ids, "tensorflow"
    if chosen:
        log.info("GPUs handed out by this supervisor: %s (found by %s)", ",".join(chosen), source)
        return chosen
    findings = "; ".join(report.describe() for report in reports)
    if cuda == () and "CUDA_VISIBLE_DEVICES" in environ:
        findings += f"; CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU from CUDA"
    if given:
        raise GpusNotVisible(
            f"FITJOBS_GPUS=auto and {' and '.join(given)} say this worker was given GPUs, but it can see "
            f"none ({findings}). It refuses to start rather than register 0 GPUs and train on the CPU "
            "while holding the GPU. Check the node's NVIDIA driver and container runtime "
            "(NVIDIA_DRIVER_CAPABILITIES needs `utility` for nvidia-smi and `compute` for CUDA), or set "
            "FITJOBS_GPUS=none to train on the CPU on purpose.")
    log.info("No GPU found (%s); this supervisor trains on the CPU", findings)
    return ()


def first_line(text: str) -> str:
    """The first non-blank line of a program's output."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def last_line(text: str) -> str:
    """The last non-blank line of a program's output."""
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


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

"""Reads a TensorBoard logdir with TensorBoard's own event reader, as `tensorboard --logdir` would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from tests.support.service import RunningService

PUBLISHED = ["tensorboard/train/events.out.tfevents.fitjobs.v2",
             "tensorboard/validation/events.out.tfevents.fitjobs.v2"]


@dataclass(frozen=True)
class Run:
    """One run's scalars as (step, value) pairs in file order, and its images' PNG bytes by tag."""

    scalars: dict[str, list[tuple[int, float]]]
    images: dict[str, list[tuple[int, bytes]]]

    def series(self, tag: str) -> dict[int, float]:
        """The tag's values by step; fails if a step appears twice."""
        pairs = self.scalars[tag]
        steps = [step for step, _ in pairs]
        assert len(steps) == len(set(steps)), f"{tag} repeats steps: {steps}"
        return dict(pairs)


def read_run(folder: Path) -> Run:
    """Every scalar and image of the run whose event files are in ``folder``."""
    # Size 0 keeps every event; TensorBoard's defaults sample long series.
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    accumulator.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[tuple[int, bytes]]] = {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        for event in accumulator.Tensors(tag):
            value = make_ndarray(event.tensor_proto)
            if plugin == "scalars":
                scalars.setdefault(tag, []).append((event.step, float(value)))
            elif plugin == "images":
                # An image summary is [width, height, encoded image...].
                images.setdefault(tag, []).append((event.step, bytes(value[2])))
    return Run(scalars, images)


def download_logdir(api: RunningService, job_id: str, folder: Path) -> list[str]:
    """Download every artifact of the job under tensorboard/ into ``folder``, keeping its path; their names."""
    listed = [a["name"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]]
    names = [name for name in listed if name.startswith("tensorboard/")]
    for name in names:
        response = api.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert response.status_code == 200 and response.content, (name, response.status_code)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(response.content)
    return names

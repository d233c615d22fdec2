"""How the CLI shows jobs to people: one-line summaries, a live progress bar per epoch, metric tables and plots."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from service.client import TERMINAL, Event, FitjobsClient, Job, Metrics, WaitTimeout

# Exit statuses of the commands that wait for a job (wait, follow, submit --wait).
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED, EXIT_TIMED_OUT = 0, 1, 2, 3
EXIT_BY_STATE = {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def describe(job: Job) -> str:
    """One line: id, state, progress while running, error, and the result's numbers."""
    progress = job.get("progress") or {}
    line = f"{job['id']} {job['state']}"
    if job["state"] == "running" and progress.get("epochs"):
        line += (f" epoch {progress.get('epoch')}/{progress['epochs']}"
                 f" step {progress.get('step')}/{progress.get('steps_per_epoch') or '?'}")
    if job.get("error"):
        error: dict[str, Any] = dict(job["error"] or {})
        line += f" [{error.get('code')}] {error.get('message')}"
    # A list shows summaries (no result); a single job's result also holds reports and flags.
    numbers = {k: v for k, v in (job.get("result") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        line += " " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in sorted(numbers.items()))
    return line


def job_table(job: Job) -> Table:
    """A job's fields as a two-column table (`fitjobs show`)."""
    table = Table(show_header=False, box=None)
    spec: dict[str, Any] = job.get("spec") or {}
    model = job.get("model", spec.get("model"))
    rows: list[tuple[str, Any]] = [("id", job["id"]), ("state", job["state"]), ("model", model),
                                   ("attempt", job.get("attempt")), ("created", job.get("created_at")),
                                   ("started", job.get("started_at")), ("finished", job.get("finished_at"))]
    progress = job.get("progress") or {}
    if progress.get("epochs"):
        rows.append(("progress", f"epoch {progress.get('epoch')}/{progress['epochs']}, step {progress.get('step')}/"
                                 f"{progress.get('steps_per_epoch') or '?'}"))
    if job.get("queue"):
        rows.append(("queue", job["queue"]))
    if job.get("error"):
        error: dict[str, Any] = dict(job["error"] or {})
        rows.append(("error", f"[{error.get('code')}] {error.get('message')}"))
    result = job.get("result") or {}
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in sorted(result.items())
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for name, value in rows:
        if value is not None:
            table.add_row(f"[bold]{name}[/]", str(value))
    return table


def metrics_table(metrics: Metrics) -> Table:
    """The per-epoch series as a table (`fitjobs metrics`): a row per metric, a column per epoch."""
    epochs = metrics.get("epochs") or []
    names = sorted({key for row in epochs for key in row} - {"epoch"})
    table = Table("metric", *(f"epoch {row.get('epoch')}" for row in epochs))
    for name in names:
        values = [dict(row).get(name) for row in epochs]
        table.add_row(name, *("" if value is None else f"{value:.4g}" for value in values))
    return table


def plot_metrics(metrics: Metrics, target: Path, title: str) -> None:
    """Write a PNG of the loss (per step and per epoch) and accuracy (per epoch) curves."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file is all it draws
    import matplotlib.pyplot as plt

    steps = [row for row in metrics.get("steps") or [] if "loss" in row]
    epochs = metrics.get("epochs") or []
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        loss_axes.plot([row["step"] for row in steps], [row["loss"] for row in steps], lw=0.8, alpha=0.6,
                       label="loss (step)")
    # Epoch values sit at the step that ended the epoch, so both series share the x axis.
    per_epoch = max((row["step"] for row in steps), default=len(epochs)) / max(len(epochs), 1)
    for axes, names in ((loss_axes, ("loss", "val_loss")), (accuracy_axes, ("accuracy", "val_accuracy"))):
        for name in names:
            points = [(row["epoch"] * per_epoch, dict(row)[name]) for row in epochs if name in row]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=f"{name} (epoch)")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_title("loss")
    accuracy_axes.set_title("accuracy")
    figure.suptitle(title)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    plt.close(figure)


class ProgressView:
    """A live bar per epoch (steps, ETA, loss, examples/s) drawn from a job's progress and step metrics."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             TextColumn("{task.completed:>4.0f}/{task.fields[steps]} steps"),
                             TextColumn("ETA {task.fields[eta]}"), TextColumn("loss {task.fields[loss]}"),
                             TextColumn("{task.fields[rate]} ex/s"), console=console, transient=False)
        self.tasks: dict[int, TaskID] = {}
        self.state = ""

    def __enter__(self) -> ProgressView:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def note(self, text: str) -> None:
        """A line above the bars."""
        self.bars.console.print(text, highlight=False, markup=False)

    def update(self, job: Job, metrics: Metrics | None) -> None:
        """Redraw from the job's latest progress (and the latest step loss)."""
        if job["state"] != self.state:
            self.state = job["state"]
            self.note(f"{job['id']} {job['state']}")
        progress = job.get("progress") or {}
        epochs, epoch = progress.get("epochs"), progress.get("epoch")
        if not epochs or not epoch:
            return
        steps = progress.get("steps_per_epoch")
        losses = [row["loss"] for row in (metrics or {}).get("steps") or [] if row.get("epoch") == epoch
                  and "loss" in row]
        eta = progress.get("eta_seconds")
        rate = progress.get("examples_per_second")
        fields: dict[str, Any] = {"steps": steps or "?", "loss": f"{losses[-1]:.4f}" if losses else "-",
                  "eta": f"{int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "-:--",
                  "rate": f"{rate:.1f}" if rate else "-"}
        for earlier, task in self.tasks.items():
            if earlier < epoch and not self.bars.tasks[task].finished:
                total = self.bars.tasks[task].total
                self.bars.update(task, completed=total, eta="0:00")
        if epoch not in self.tasks:
            self.tasks[epoch] = self.bars.add_task(f"epoch {epoch}/{epochs}", total=steps, **fields)
        completed = progress.get("step") or 0
        if job["state"] == "succeeded" and steps:
            completed = steps
        self.bars.update(self.tasks[epoch], completed=completed, total=steps, **fields)


def watch_job(client: FitjobsClient, job_id: str, *, console: Console, timeout: float | None,
              follow_events: bool, interval: float = 1.0,
              on_event: Callable[[Event], None] | None = None) -> tuple[int, Job]:
    """Draw a job's progress until it ends (printing its events when ``follow_events``); its exit status and job."""
    with ProgressView(console) as view:
        follower: threading.Thread | None = None
        if follow_events:
            def print_events() -> None:
                for event in client.follow(job_id):
                    view.note(f"{event.get('created_at', '')[11:19]} {event.get('kind')}: {event.get('message')}")
                    if on_event is not None:
                        on_event(event)

            follower = threading.Thread(target=print_events, name="fitjobs-follow", daemon=True)
            follower.start()

        def redraw(job: Job) -> None:
            view.update(job, client.metrics(job_id) if job["state"] == "running" or job["state"] in TERMINAL
                        else None)

        try:
            job = client.wait(job_id, timeout=timeout, interval=interval, on_update=redraw)
        except WaitTimeout as exc:
            view.note(f"{job_id}: {exc}")
            return EXIT_TIMED_OUT, exc.job
        if follower is not None:
            follower.join(timeout=30)  # the stream ends with the job's final event
    return EXIT_BY_STATE[job["state"]], job

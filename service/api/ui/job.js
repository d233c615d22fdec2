// A job's page: state and progress, live curves, the event timeline, logs, the evaluation,
// artifact downloads and the cancel button.
//
// The event stream (SSE over fetch) brings state changes and milestones as they happen; while
// the job runs, its progress and metrics are also read every POLL_MS, since the trainer writes
// per-step metrics without an event for each.

import { ApiError, apiUrl, download, followEvents, getJson, jobPath, request, token } from "./api.js";
import { lineChart } from "./charts.js";
import {
  TERMINAL_STATES, bytes, duration, fill, h, modelName, number, problemBlock, progressBar, stateBadge, when,
} from "./dom.js";

const POLL_MS = 1000;
const LOG_EVERY_POLLS = 3;
const RECONNECT_MS = 2000;
// The log pane shows the end of long logs.
const LOG_TAIL_CHARS = 200_000;

/** Show job ``jobId`` in ``root``; returns a function that stops its stream and timers. */
export function jobView(root, jobId) {
  const aborter = new AbortController();
  const path = (rest = "") => jobPath(jobId, rest);
  const sections = {
    header: h("section", { class: "job-header" }),
    notice: h("div", { class: "notice" }),
    charts: h("section", { class: "charts" }),
    evaluation: h("section", { class: "evaluation", hidden: true }),
    artifacts: h("section", { class: "artifacts", hidden: true }),
    timeline: h("ol", { class: "timeline" }),
    streamStatus: h("span", { class: "muted stream-status" }),
    logs: h("pre", { class: "logs", tabindex: 0 }),
  };
  let job = null;
  let lastEventId = 0;
  let polls = 0;
  let busy = false;
  let finished = false;

  fill(root,
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    sections.header, sections.notice, sections.charts, sections.evaluation, sections.artifacts,
    h("section", { class: "events" }, h("h2", {}, "Events ", sections.streamStatus), sections.timeline),
    h("section", {}, h("h2", {}, "Log"), sections.logs));

  function renderHeader() {
    const cancellable = !TERMINAL_STATES.has(job.state);
    const p = job.progress || {};
    const facts = [
      ["Model", modelName(job.spec?.model ?? job.model)],
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Attempt", `${job.attempt} of ${job.max_attempts ?? "?"}`],
      ["Throughput", p.examples_per_second ? `${p.examples_per_second.toFixed(1)} examples/s` : ""],
      ["ETA", job.state === "running" && p.eta_seconds != null ? duration(p.eta_seconds) : ""],
      ["Queue", job.queue ? `position ${job.queue.position}: ${job.queue.reason ?? ""}` : ""],
    ].filter(([, value]) => value);
    fill(sections.header,
      h("div", { class: "toolbar" },
        h("h1", {}, "Job ", h("code", { class: "job-id" }, job.id)),
        stateBadge(job.state, job.cancel_requested),
        cancellable ? h("button", { type: "button", class: "danger", id: "cancel-job", onclick: cancel,
          disabled: job.cancel_requested }, job.cancel_requested ? "Cancelling…" : "Cancel job") : null),
      progressBar(job),
      h("dl", { class: "facts" }, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
      job.error ? h("div", { class: "problem", role: "alert" }, h("strong", {}, job.error.code), " ",
        job.error.message) : null,
      job.result ? resultLine(job.result) : null);
  }

  function resultLine(result) {
    const parts = [["val_accuracy", result.val_accuracy], ["val_loss", result.val_loss],
      ["accuracy", result.accuracy], ["loss", result.loss]].filter(([, value]) => typeof value === "number");
    return h("p", { class: "result" }, result.best_epoch ? `Best epoch ${result.best_epoch}: ` : "",
      parts.map(([name, value]) => `${name} ${number(value)}`).join(" · "));
  }

  function renderMetrics(metrics) {
    const steps = metrics.steps || [];
    const epochs = metrics.epochs || [];
    const series = (rows, x, name) => ({ name, points: rows.filter((row) => name in row).map((row) => [row[x],
      row[name]]) });
    fill(sections.charts,
      lineChart({ title: "Training loss by step", xLabel: "step", yLabel: "loss", integerX: true,
        series: [series(steps, "step", "loss")] }),
      lineChart({ title: "Loss by epoch", xLabel: "epoch", yLabel: "loss", integerX: true,
        series: [series(epochs, "epoch", "loss"), series(epochs, "epoch", "val_loss")] }),
      lineChart({ title: "Accuracy by epoch", xLabel: "epoch", yLabel: "accuracy", integerX: true,
        series: [series(epochs, "epoch", "accuracy"), series(epochs, "epoch", "val_accuracy")] }));
  }

  function addEvent(event) {
    if (event.id <= lastEventId) return;
    lastEventId = event.id;
    sections.timeline.append(h("li", { "data-kind": event.kind, class: event.state ? "state-event" : "" },
      h("time", { datetime: event.created_at, title: when(event.created_at) },
        new Date(event.created_at).toLocaleTimeString()),
      h("span", { class: "kind" }, event.state ? stateBadge(event.state) : event.kind),
      h("span", { class: "message" }, event.message)));
  }

  async function catchUp() {
    // The events after the last one shown, as a list: where no stream is open.
    const { events } = await getJson(path(`/events?after=${lastEventId}`), { signal: aborter.signal });
    events.forEach(addEvent);
  }

  async function refreshJob() {
    job = await getJson(path(), { signal: aborter.signal });
    renderHeader();
  }

  async function refreshMetrics() {
    renderMetrics(await getJson(path("/metrics"), { signal: aborter.signal }));
  }

  async function refreshLogs() {
    const text = await (await request(path("/logs"), { accept: "text/plain", signal: aborter.signal })).text();
    const atBottom = sections.logs.scrollTop + sections.logs.clientHeight >= sections.logs.scrollHeight - 4;
    sections.logs.textContent = text.length > LOG_TAIL_CHARS ? `…\n${text.slice(-LOG_TAIL_CHARS)}` : text || "(empty)";
    if (atBottom) sections.logs.scrollTop = sections.logs.scrollHeight;
  }

  async function refreshEvaluation() {
    let report;
    try {
      report = await getJson(path("/evaluation"), { signal: aborter.signal });
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return; // nothing published
      throw error;
    }
    sections.evaluation.hidden = false;
    fill(sections.evaluation, h("h2", {}, "Evaluation"), evaluationView(report));
  }

  async function refreshArtifacts() {
    const { artifacts } = await getJson(path("/artifacts"), { signal: aborter.signal });
    if (!artifacts.length) return;
    sections.artifacts.hidden = false;
    const link = (apiPath, name, text) => h("a", { href: apiUrl(apiPath), download: name, class: "download",
      "data-artifact": text, onclick: (event) => downloadWithToken(event, apiPath, name) }, text);
    fill(sections.artifacts, h("h2", {}, "Artifacts"),
      h("p", {}, link(path("/model.tar.gz"), `${jobId}.model.tar.gz`, "model.tar.gz"),
        " — the model folder as one archive"),
      h("table", { class: "artifact-list" },
        h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", { class: "num" }, "Size"))),
        h("tbody", {}, artifacts.map((artifact) => h("tr", {},
          h("td", {}, link(path(`/artifacts/${artifact.name.split("/").map(encodeURIComponent).join("/")}`),
            artifact.name.split("/").pop(), artifact.name)),
          h("td", { class: "num" }, bytes(artifact.size)))))));
  }

  function downloadWithToken(event, apiPath, name) {
    // A plain link carries no Authorization header; with a token the file is fetched, then saved.
    if (!token.get()) return;
    event.preventDefault();
    download(apiPath, name).catch(showError);
  }

  async function cancel() {
    if (!confirm(`Cancel job ${jobId}?`)) return;
    try {
      job = await getJson(path("/cancel"), { method: "POST" });
      renderHeader();
    } catch (error) {
      showError(error);
    }
  }

  function showError(error) {
    if (error.name === "AbortError") return;
    fill(sections.notice, problemBlock(error));
  }

  async function finish() {
    // The job ended: read everything once more, then stop polling.
    finished = true;
    await Promise.all([refreshJob(), refreshMetrics(), refreshLogs(), refreshEvaluation(), refreshArtifacts(),
      catchUp()]);
  }

  async function poll() {
    if (busy || finished || !job) return;
    busy = true;
    try {
      polls += 1;
      await refreshJob();
      if (TERMINAL_STATES.has(job.state)) {
        await finish();
      } else {
        await refreshMetrics();
        if (polls % LOG_EVERY_POLLS === 0) await refreshLogs();
      }
      fill(sections.notice);
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
  }

  async function follow() {
    while (!aborter.signal.aborted) {
      try {
        await followEvents(jobId, { after: lastEventId, signal: aborter.signal, onOpen: () => {
          sections.streamStatus.textContent = "(live)";
        }, onEvent: (event) => {
          addEvent(event);
          if (event.state || event.kind === "evaluated") poll();
        } });
      } catch (error) {
        if (aborter.signal.aborted) return;
        sections.streamStatus.textContent = `(reconnecting: ${error.message})`;
        // No stream for now (the API process may follow FITJOBS_API_MAX_STREAMS already): read the
        // events so far as a list, and try the stream again shortly.
        await catchUp().catch(showError);
      }
      // The stream ended: after the job's last event, or because the node is draining.
      if (job && TERMINAL_STATES.has(job.state)) break;
      try {
        await refreshJob();
      } catch (error) {
        showError(error);
      }
      if (job && TERMINAL_STATES.has(job.state)) break;
      if (sections.streamStatus.textContent === "(live)") sections.streamStatus.textContent = "(reconnecting)";
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
    sections.streamStatus.textContent = "";
  }

  const timer = setInterval(poll, POLL_MS);
  (async () => {
    try {
      await refreshJob();
      if (TERMINAL_STATES.has(job.state)) await finish();
      else await Promise.all([refreshMetrics(), refreshLogs()]);
      await follow();
      if (!finished) await poll();
    } catch (error) {
      showError(error);
    }
  })();

  return () => {
    aborter.abort();
    clearInterval(timer);
  };
}

/** The evaluation report: summary figures, the confusion matrix and the per-class table. */
export function evaluationView(report) {
  const labels = report.confusion_matrix?.labels ?? report.labels ?? [];
  const matrix = report.confusion_matrix?.matrix ?? [];
  const largest = Math.max(1, ...matrix.flat());
  const summary = [["rows", report.rows], ["epoch", report.epoch], ["accuracy", number(report.accuracy)],
    ["macro F1", number(report.macro_f1)], ["weighted F1", number(report.weighted_f1)],
    ["ROC AUC", report.roc_auc == null ? null : number(report.roc_auc)], ["loss", number(report.loss)]]
    .filter(([, value]) => value !== null && value !== undefined);
  const errors = report.most_confident_errors ?? [];
  return [
    h("dl", { class: "facts" }, summary.map(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))])),
    h("div", { class: "evaluation-tables" },
      h("figure", {},
        h("figcaption", {}, "Confusion matrix (rows: true label, columns: predicted)"),
        h("table", { class: "confusion-matrix" },
          h("thead", {}, h("tr", {}, h("th", {}, "true \\ predicted"), labels.map((name) => h("th", {}, name)))),
          h("tbody", {}, matrix.map((counts, row) => h("tr", {}, h("th", {}, labels[row]),
            counts.map((count, column) => h("td", {
              class: `num heat-${Math.min(5, Math.ceil((count / largest) * 5))}${row === column ? " diagonal" : ""}`,
              "data-true": labels[row], "data-predicted": labels[column],
            }, String(count)))))))),
      h("figure", {},
        h("figcaption", {}, "Per class"),
        h("table", { class: "per-class" },
          h("thead", {}, h("tr", {}, ["label", "precision", "recall", "F1", "support"].map((name) => h("th", {},
            name)))),
          h("tbody", {}, Object.entries(report.per_class ?? {}).map(([name, scores]) => h("tr", { "data-label": name },
            h("th", {}, name), h("td", { class: "num" }, number(scores.precision, 3)),
            h("td", { class: "num" }, number(scores.recall, 3)), h("td", { class: "num" }, number(scores.f1, 3)),
            h("td", { class: "num" }, String(scores.support)))))))),
    errors.length ? h("details", {},
      h("summary", {}, `Most confident errors (${errors.length})`),
      h("table", { class: "errors" },
        h("thead", {}, h("tr", {}, ["row", "text", "true", "predicted", "probability"].map((name) => h("th", {},
          name)))),
        h("tbody", {}, errors.map((error) => h("tr", {}, h("td", { class: "num" }, String(error.row)),
          h("td", {}, error.text), h("td", {}, error.true_label), h("td", {}, error.predicted_label),
          h("td", { class: "num" }, number(error.probability, 3))))))) : null,
  ];
}

// The new-job form: a spec as JSON, its dry run (POST /v1/jobs:validate) with the report, then
// the submission (POST /v1/jobs). Submitting is possible only once the dry run of the very text
// in the box found no problems.

import { ApiError, getJson, request } from "./api.js";
import { fill, h, number, problemBlock } from "./dom.js";

const DRAFT_KEY = "fitjobs.draft";

/** A random key for Idempotency-Key (crypto.randomUUID needs a secure context; this does not). */
function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

async function exampleSpec() {
  const response = await fetch("example-spec.json", { cache: "no-cache" });
  return response.text();
}

/** Show the form in ``root``; returns a function that cleans up (nothing to stop). */
export function submitView(root) {
  const editor = h("textarea", { id: "spec", spellcheck: "false", rows: 24, "aria-label": "Training spec (JSON)" });
  const report = h("section", { class: "dry-run-report", "aria-live": "polite" });
  const checkButton = h("button", { type: "button", id: "dry-run", onclick: check }, "Dry run");
  const submitButton = h("button", { type: "button", id: "submit-job", class: "primary", disabled: true,
    onclick: submit }, "Submit job");
  const exampleButton = h("button", { type: "button", class: "secondary", onclick: loadExample },
    "Replace with the example");
  // The text whose dry run passed, and the key that makes a double submission of it one job.
  let checked = null;
  let key = null;

  fill(root,
    h("h1", {}, "New job"),
    h("p", { class: "muted" }, "Write the training spec as JSON (the body of POST /v1/jobs). A dry run checks "
      + "the spec, reads its data and the model's tokenizer and config, and reports what a job would train on; "
      + "once it finds no problems, submit the job."),
    editor,
    h("div", { class: "toolbar" }, checkButton, submitButton, exampleButton),
    report);

  editor.addEventListener("input", () => {
    sessionStorage.setItem(DRAFT_KEY, editor.value);
    if (editor.value !== checked) submitButton.disabled = true;
  });

  async function loadExample() {
    editor.value = await exampleSpec();
    sessionStorage.setItem(DRAFT_KEY, editor.value);
    submitButton.disabled = true;
    fill(report);
  }

  function parsed() {
    try {
      return JSON.parse(editor.value);
    } catch (error) {
      fill(report, h("div", { class: "problem", role: "alert" }, h("strong", {}, "Not valid JSON"),
        h("p", {}, error.message)));
      return undefined;
    }
  }

  async function check() {
    const spec = parsed();
    if (spec === undefined) return;
    const text = editor.value;
    submitButton.disabled = true;
    checkButton.disabled = true;
    fill(report, h("p", { class: "muted" }, "Running the dry run…"));
    try {
      const result = await getJson("jobs:validate", { method: "POST", body: spec });
      fill(report, reportView(result));
      checked = text;
      key = randomKey();
      submitButton.disabled = editor.value !== checked;
    } catch (error) {
      const body = error instanceof ApiError && error.problem.report ? reportView(error.problem.report) : null;
      fill(report, problemBlock(error), body);
    } finally {
      checkButton.disabled = false;
    }
  }

  async function submit() {
    if (editor.value !== checked) return;
    submitButton.disabled = true;
    try {
      const response = await request("jobs", { method: "POST", body: checked, headers: { "Idempotency-Key": key } });
      const job = await response.json();
      sessionStorage.removeItem(DRAFT_KEY);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      report.prepend(problemBlock(error));
      submitButton.disabled = false;
    }
  }

  const draft = sessionStorage.getItem(DRAFT_KEY);
  if (draft) editor.value = draft;
  else exampleSpec().then((text) => {
    if (!editor.value) editor.value = text; // unless something was typed meanwhile
  });
  return () => {};
}

/** A dry-run report: problems first, then warnings, labels, splits and the model. */
export function reportView(result) {
  const problems = result.problems ?? [];
  const warnings = result.warnings ?? [];
  const finding = (item) => h("li", { "data-code": item.code, "data-check": item.check },
    h("code", {}, item.check || item.code), " ", item.message,
    [item.split && ` (split ${item.split}`, item.column && `, column ${item.column}`, item.row && `, row ${item.row}`,
      item.split && ")"].filter(Boolean).join(""));
  const splits = Object.entries(result.splits ?? {});
  return h("div", { class: `report ${problems.length ? "has-problems" : "valid"}`, "data-valid": String(!problems.length) },
    h("h2", {}, problems.length ? `Dry run: ${problems.length} problem(s)` : "Dry run: no problems"),
    problems.length ? h("ul", { class: "problems" }, problems.map(finding)) : null,
    warnings.length ? h("div", {}, h("h3", {}, "Warnings"), h("ul", { class: "warnings" }, warnings.map(finding)))
      : null,
    h("dl", { class: "facts" },
      result.labels ? [h("dt", {}, "Labels"), h("dd", {}, result.labels.join(", "))] : null,
      result.model ? [h("dt", {}, "Model"), h("dd", {}, `${result.model.name} (${result.model.model_type}, `
        + `${result.model.tokenizer})`)] : null,
      result.steps_per_epoch ? [h("dt", {}, "Steps"), h("dd", {},
        `${result.steps_per_epoch} per epoch × ${result.epochs} epoch(s)`)] : null,
      typeof result.seconds === "number" ? [h("dt", {}, "Checked in"), h("dd", {}, `${result.seconds.toFixed(1)} s`)]
        : null),
    splits.length ? h("table", { class: "splits" },
      h("thead", {}, h("tr", {}, ["split", "rows", "rows per label", "tokens p50 / p90 / max", "truncated"]
        .map((name) => h("th", {}, name)))),
      h("tbody", {}, splits.map(([name, split]) => h("tr", { "data-split": name },
        h("th", {}, name), h("td", { class: "num" }, String(split.rows)),
        h("td", {}, Object.entries(split.labels ?? {}).map(([label, rows]) => `${label}: ${rows}`).join(", ")),
        h("td", { class: "num" }, split.tokens ? `${split.tokens.p50} / ${split.tokens.p90} / ${split.tokens.max}` : ""),
        h("td", { class: "num" }, split.tokens ? `${split.tokens.truncated_rows} (${number(split.tokens.truncated_share * 100, 1)} %)`
          : ""))))) : null);
}

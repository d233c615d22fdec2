// Building elements and formatting values for the views. No inline styles: the page's
// Content-Security-Policy allows style sheets from this origin only.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "value") element.value = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** An HTML element: h("a", {href: "#/jobs", onclick: fn}, "text", child, [more]). */
export function h(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

/** An SVG element, as h() builds HTML ones. */
export function s(tag, attributes, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

/** Replace everything inside ``parent`` with ``children``. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
  return parent;
}

export const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
export const JOB_STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

/** A job's state as a coloured badge. */
export function stateBadge(state, cancelRequested = false) {
  const text = cancelRequested && !TERMINAL_STATES.has(state) ? `${state} (cancelling)` : state;
  return h("span", { class: `badge state-${state}`, "data-state": state }, text);
}

/** How long ago ``iso`` was, in words: "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function age(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** A timestamp in the browser's locale, or an empty string. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

/** A duration in seconds, in words. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** A byte count in B, KiB, MiB or GiB. */
export function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A number with ``digits`` decimals, or "–" when there is none. */
export function number(value, digits = 4) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

/** A spec's `model` as text: a name, a path, or the job it continues. */
export function modelName(model) {
  if (typeof model === "string") return model;
  if (model && typeof model === "object") {
    if (model.path) return model.path;
    if (model.job) return `job ${model.job}`;
  }
  return JSON.stringify(model);
}

/** The share of a job's training done, from 0 to 1, from its progress. */
export function progressShare(job) {
  if (job.state === "succeeded") return 1;
  const p = job.progress || {};
  if (!p.epochs || !p.steps_per_epoch || !p.epoch) return 0;
  const done = (p.epoch - 1) * p.steps_per_epoch + (p.step || 0);
  return Math.min(1, Math.max(0, done / (p.epochs * p.steps_per_epoch)));
}

/** A job's progress as a bar and words: "epoch 2/3 · step 14/30". */
export function progressBar(job) {
  const share = progressShare(job);
  const p = job.progress || {};
  const words = p.epochs ? `epoch ${p.epoch}/${p.epochs}` + (p.steps_per_epoch ? ` · step ${p.step}/${p.steps_per_epoch}` : "")
    : "";
  return h("span", { class: "progress" },
    h("progress", { max: 1000, value: Math.round(share * 1000), title: `${(share * 100).toFixed(0)} %` }),
    h("span", { class: "progress-words" }, words));
}

/** Problem details as a message block: title, detail and field errors. */
export function problemBlock(error) {
  const problem = error.problem || { title: "Request failed", detail: String(error.message || error) };
  const fields = Object.entries(problem.errors || {});
  return h("div", { class: "problem", role: "alert" },
    h("strong", {}, problem.title || "Error"),
    problem.detail ? h("p", {}, problem.detail) : null,
    fields.length ? h("ul", { class: "field-errors" },
      fields.map(([field, messages]) => h("li", {}, h("code", {}, field), ": ", messages.join(" ")))) : null,
    problem.request_id ? h("p", { class: "muted" }, `request ${problem.request_id}`) : null);
}

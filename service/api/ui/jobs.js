// The job list: newest first, filtered by state, a page at a time (GET /v1/jobs).

import { getJson } from "./api.js";
import { JOB_STATES, age, fill, h, modelName, problemBlock, progressBar, stateBadge, when } from "./dom.js";

const PAGE = 20;
const REFRESH_MS = 3000;

/** Show the job list in ``root``; returns a function that stops its refreshing. */
export function jobListView(root, query) {
  const state = JOB_STATES.includes(query.get("state")) ? query.get("state") : "";
  const rows = h("tbody");
  const status = h("p", { class: "muted list-status" });
  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => load(next, true) },
    "More");
  const filter = h("select", { id: "state-filter", "aria-label": "State" },
    h("option", { value: "" }, "all states"),
    JOB_STATES.map((name) => h("option", { value: name }, name)));
  filter.value = state;
  filter.addEventListener("change", () => {
    location.hash = filter.value ? `#/jobs?state=${filter.value}` : "#/jobs";
  });
  let next = null;
  let pages = 1;
  let stopped = false;

  fill(root,
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("label", {}, "State ", filter),
      h("a", { class: "button", href: "#/new" }, "New job")),
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "State", "Progress", "Model", "Age"].map((name) => h("th", {}, name)))),
      rows),
    status, more);

  function row(job) {
    return h("tr", { "data-job": job.id },
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-link" }, job.id)),
      h("td", {}, stateBadge(job.state, job.cancel_requested)),
      h("td", {}, progressBar(job)),
      h("td", { class: "model", title: modelName(job.model) }, modelName(job.model)),
      h("td", { title: when(job.created_at) }, age(job.created_at)));
  }

  async function load(cursor, append) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (state) params.set("state", state);
    if (cursor) params.set("cursor", cursor);
    try {
      const page = await getJson(`jobs?${params}`);
      if (stopped) return;
      if (append) pages += 1;
      (append ? rows.append.bind(rows) : fill.bind(null, rows))(...page.jobs.map(row));
      next = page.next;
      more.hidden = !next;
      status.textContent = rows.children.length ? "" : state ? `No ${state} jobs.` : "No jobs yet.";
    } catch (error) {
      if (!stopped) fill(status, problemBlock(error));
    }
  }

  load(null, false);
  // Only the first page is refreshed; once more pages are shown the list holds still.
  const timer = setInterval(() => pages === 1 && load(null, false), REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}

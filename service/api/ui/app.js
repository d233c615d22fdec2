// The dashboard's entry point: the token prompt and the routes #/jobs, #/jobs/ID and #/new.

import { ApiError, getJson, onUnauthorized, token } from "./api.js";
import { fill, h, problemBlock } from "./dom.js";
import { jobView } from "./job.js";
import { jobListView } from "./jobs.js";
import { submitView } from "./submit.js";

const view = document.getElementById("view");
const who = document.getElementById("who");
let stopView = () => {};
let prompting = false;

function route() {
  stopView();
  stopView = () => {};
  if (prompting) return;
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] === "new" ? "new" : "jobs"));
  }
  if (parts[0] === "new") stopView = submitView(view);
  else if (parts[0] === "jobs" && parts[1]) stopView = jobView(view, decodeURIComponent(parts[1]));
  else stopView = jobListView(view, query);
}

/** Ask for the API's bearer token; kept in sessionStorage for this tab. */
function askForToken(problem) {
  stopView();
  stopView = () => {};
  prompting = true;
  const input = h("input", { type: "password", id: "token", autocomplete: "off", required: true,
    "aria-label": "API token" });
  const form = h("form", { class: "token-form", id: "token-form" },
    h("h1", {}, "API token"),
    h("p", {}, "This service needs a bearer token (the one you use with the API). It is kept in this tab's "
      + "session storage until the tab is closed."),
    problem && token.get() ? problemBlock({ problem }) : null,
    h("label", {}, "Token ", input),
    h("button", { type: "submit", class: "primary" }, "Continue"));
  token.clear();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    prompting = false;
    await start();
  });
  fill(view, form);
  fill(who);
  input.focus();
}

function showCaller(tenant) {
  fill(who, tenant.name ? `tenant ${tenant.name}` : "",
    token.get() ? h("button", { type: "button", class: "link", id: "forget-token", onclick: () => {
      token.clear();
      location.reload();
    } }, "forget token") : null);
}

/** Find out whether the API wants a token (GET /v1/tenant answers 401), then show the route. */
async function start() {
  try {
    showCaller(await getJson("tenant"));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // onUnauthorized shows the prompt
    fill(view, problemBlock(error));
    return;
  }
  route();
}

onUnauthorized((problem) => {
  if (!prompting) askForToken(problem);
});
window.addEventListener("hashchange", () => {
  if (!prompting) route();
});
start();

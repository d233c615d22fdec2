// Calls to the fitjobs /v1 API: the bearer token, problem+json errors and the jobs' event streams.
//
// The API lies at ../v1/ from this page (/ui/), so a proxy may serve both under any path prefix.

const API_BASE = new URL("../v1/", document.baseURI);
const TOKEN_KEY = "fitjobs.token";

/** The bearer token of this browser tab (sessionStorage: it ends with the tab). */
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An API answer other than 2xx, with its RFC 9457 problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let unauthorized = () => {};

/** Call ``handler`` whenever the API refuses the token (or its absence) with 401. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** The absolute URL of an API path such as `jobs/ID/metrics`. */
export function apiUrl(path) {
  // "./": a path such as `jobs:validate` would otherwise read as a URL of the scheme "jobs:".
  return new URL(`./${path}`, API_BASE).href;
}

/** `jobs/ID` with the id escaped for a URL path. */
export function jobPath(jobId, rest = "") {
  return `jobs/${encodeURIComponent(jobId)}${rest}`;
}

function authHeaders(extra) {
  const headers = new Headers(extra);
  const bearer = token.get();
  if (bearer) headers.set("Authorization", `Bearer ${bearer}`);
  return headers;
}

async function readProblem(response) {
  const text = await response.text();
  try {
    const problem = JSON.parse(text);
    if (problem && typeof problem === "object") return problem;
  } catch {
    // Not JSON: a proxy's error page, say.
  }
  return { title: `${response.status} ${response.statusText}`, detail: text.slice(0, 500) };
}

async function checked(response) {
  if (response.ok) return response;
  const problem = await readProblem(response);
  if (response.status === 401) unauthorized(problem);
  throw new ApiError(response.status, problem);
}

/** Fetch an API path; resolves with the Response when it is 2xx, rejects with ApiError otherwise. */
export async function request(path, { method = "GET", body, headers, signal, accept = "application/json" } = {}) {
  const sent = authHeaders(headers);
  sent.set("Accept", accept);
  let payload;
  if (body !== undefined) {
    sent.set("Content-Type", "application/json");
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(apiUrl(path), { method, headers: sent, body: payload, signal, cache: "no-store" });
  return checked(response);
}

/** GET (or another method) an API path and parse its JSON answer. */
export async function getJson(path, options) {
  return (await request(path, options)).json();
}

/** Fetch an API file with the token and save it as ``filename`` (a plain link cannot send the token). */
export async function download(path, filename) {
  const response = await request(path, { accept: "*/*" });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * Follow a job's Server-Sent Events with fetch (EventSource cannot send the Authorization header).
 *
 * Calls ``onOpen()`` once the stream is open and ``onEvent(event)`` for each event after id
 * ``after``; resolves when the server ends the
 * stream (the job ended, or the node is draining), rejects on network errors and non-2xx answers.
 */
export async function followEvents(jobId, { after = 0, onOpen = () => {}, onEvent, signal }) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (after > 0) headers.set("Last-Event-ID", String(after));
  const response = await checked(await fetch(apiUrl(jobPath(jobId, "/events")),
    { headers, signal, cache: "no-store" }));
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = parseFrame(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (frame) onEvent(frame);
    }
  }
}

/** One SSE frame's event (its `data` parsed as JSON), or null for comments and keep-alives. */
export function parseFrame(text) {
  const data = [];
  let id = null;
  let kind = "message";
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") id = value;
    else if (field === "event") kind = value;
  }
  if (data.length === 0) return null;
  const event = JSON.parse(data.join("\n"));
  return { ...event, id: id === null ? event.id : Number(id), kind: event.kind ?? kind };
}

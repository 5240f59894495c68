// cwredis dashboard: polls the JSON API about once a second and redraws the current page.
// Every string from the server is put into the page with textContent (el() below), never innerHTML:
// job errors, output and names are written by whoever submits jobs.
"use strict";

const POLL_MS = 1000;
const PAGE_SIZE = 25;
let csrf = null;
let timer = null;
let offsets = { running: 0, failed: 0 };
let openTracebacks = new Set();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString(); }
function td(value, cls) { return el("td", cls ? { className: cls } : {}, value); }
function ago(ms, nowMs) { return ms ? `${Math.max(0, Math.round((nowMs - ms) / 1000))} s ago` : "–"; }
function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min` :
    s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
function jobLink(id) { return el("a", { href: "#/job/" + encodeURIComponent(id), className: "job-link" }, id); }
function bar(value, max) { return el("progress", { value: Math.max(0, value), max: Math.max(1, max) }); }

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function act(action, ids) {
  if (!csrf) csrf = (await getJSON("/api/session")).csrf;
  const response = await fetch("/api/" + action, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ ids }),
  });
  const body = await response.json().catch(() => ({}));
  setStatus(response.ok ? `${action}: ${JSON.stringify(body)}` : `${action} refused: ${body.error || response.status}`,
            !response.ok);
  refresh();
}

function actionButton(label, action, id) {
  return el("button", { "data-action": action, "data-id": id, onclick: () => act(action, [id]) }, label);
}

function pager(kind, page) {
  const offset = page.offset, total = page.total;
  const last = Math.min(total, offset + page.jobs.length);
  return el("div", { className: "pager" },
    el("button", { disabled: offset === 0 ? "" : null, onclick: () => { offsets[kind] = Math.max(0, offset - PAGE_SIZE); refresh(); } }, "‹ newer"),
    ` ${total ? offset + 1 : 0}–${last} of ${num(total)} `,
    el("button", { onclick: () => { if (last < total) { offsets[kind] = offset + PAGE_SIZE; refresh(); } } }, "older ›"));
}

// -- the throughput chart (canvas, drawn here: no library) -----------------------------------------------

function chart(history) {
  const canvas = el("canvas", { width: 900, height: 200, id: "throughput" });
  const ctx = canvas.getContext("2d");
  const pad = 40, w = canvas.width - pad - 10, h = canvas.height - 30;
  const max = Math.max(1, ...history.map(p => Math.max(p.done_per_s, p.failed_per_s)));
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#5b6673";
  ctx.strokeStyle = "#e3e6ea";
  for (let i = 0; i <= 4; i++) {
    const y = 10 + h - (h * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(pad + w, y); ctx.stroke();
    ctx.fillText((max * i / 4).toFixed(max < 4 ? 1 : 0), 4, y + 4);
  }
  ctx.fillText("−10 min", pad, canvas.height - 4);
  ctx.fillText("now", pad + w - 20, canvas.height - 4);
  const span = 600;  // seconds
  const end = history.length ? history[history.length - 1].t_ms : 0;
  for (const [key, color] of [["done_per_s", "#2a9d8f"], ["failed_per_s", "#e63946"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    history.forEach((p, i) => {
      const x = pad + w - ((end - p.t_ms) / 1000 / span) * w;
      const y = 10 + h - (p[key] / max) * h;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  return canvas;
}

// -- pages ----------------------------------------------------------------------------------------

function card(label, value, id) {
  return el("div", { className: "card" }, el("div", { className: "value", id }, num(value)), el("div", { className: "label" }, label));
}

async function overviewPage() {
  const o = await getJSON("/api/overview");
  if (o.error) throw new Error(o.error);
  const last = o.history.length ? o.history[o.history.length - 1] : { done_per_s: 0, failed_per_s: 0 };
  const queues = el("table", { id: "queues" },
    el("tr", {}, el("th", {}, "queue"), el("th", { className: "num" }, "pending"), el("th", { className: "num" }, "running"),
       el("th", { className: "num" }, "done/s"), el("th", { className: "num" }, "done (total)"), el("th", { className: "num" }, "failed (total)")),
    o.queues.map(q => el("tr", { "data-queue": q.name }, td(q.name), td(num(q.pending), "num pending"), td(num(q.running), "num running"),
      td(q.done_per_s.toFixed(1), "num rate"), td(num(q.done), "num done"), td(num(q.failed), "num failed"))));
  const sessions = o.sessions.length ? el("table", { id: "sessions" },
    el("tr", {}, el("th", {}, "session"), el("th", {}, "progress"), el("th", { className: "num" }, "done / jobs"),
       el("th", { className: "num" }, "running"), el("th", { className: "num" }, "failed"), el("th", { className: "num" }, "ETA")),
    o.sessions.map(s => el("tr", { "data-session": s.name }, td(s.name), td(bar(s.done + s.failed, s.jobs)),
      td(`${num(s.done)} / ${num(s.jobs)}`, "num"), td(num(s.running), "num"), td(num(s.failed), "num"),
      td(s.eta_s === null ? "–" : duration(s.eta_s), "num")))) : el("p", { className: "muted" }, "no sessions");
  return [
    el("div", { className: "cards" }, card("workers", o.workers, "count-workers"), card("running", o.running, "count-running"),
       card("delayed", o.delayed, "count-delayed"), card("failed", o.failed, "count-failed"),
       card("done (total)", o.done, "count-done"), card("done/s", last.done_per_s.toFixed(1), "count-rate")),
    el("h2", {}, "Throughput, last 10 minutes ", el("span", { className: "legend" },
       el("span", { className: "done-color" }, "■ done/s"), el("span", { className: "failed-color" }, "■ failed/s"))),
    chart(o.history),
    el("h2", {}, "Queues"), queues,
    el("h2", {}, "Sessions"), sessions,
  ];
}

async function runningPage() {
  const page = await getJSON(`/api/running?offset=${offsets.running}&limit=${PAGE_SIZE}`);
  const rows = page.jobs.map(j => el("tr", { "data-job": j.id },
    td(jobLink(j.id)), td(j.function), td(j.queue), td(`${j.host || "?"} pid ${j.pid || "?"}`), td(duration(j.elapsed_s), "num"),
    td(j.progress ? [bar(j.progress.fraction * 1000, 1000), " ", `${Math.round(j.progress.fraction * 100)}% `, j.progress.message || ""] : "–"),
    td(el("pre", { className: "short output" }, j.output || "")), td(actionButton("cancel", "cancel", j.id))));
  return [el("h2", {}, `Running jobs (${num(page.total)})`), pager("running", page),
    el("table", { id: "running" }, el("tr", {}, ["job", "function", "queue", "where", "elapsed", "progress", "output (last lines)", ""].map(h => el("th", {}, h))), rows)];
}

async function failedPage() {
  const page = await getJSON(`/api/failed?offset=${offsets.failed}&limit=${PAGE_SIZE}`);
  const rows = [];
  for (const j of page.jobs) {
    rows.push(el("tr", { "data-job": j.id }, td(jobLink(j.id)), td(j.function), td(j.reason), td(j.attempts, "num"),
      td(el("a", { href: "#", className: "error-line", onclick: (e) => { e.preventDefault(); toggleTraceback(j.id); } }, j.error || "(no message)")),
      td([actionButton("requeue", "requeue", j.id), actionButton("purge", "purge", j.id)])));
    if (openTracebacks.has(j.id)) rows.push(el("tr", {}, el("td", { colspan: 6 }, await tracebackOf(j.id))));
  }
  return [el("h2", {}, `Failed jobs (${num(page.total)})`), pager("failed", page),
    el("table", { id: "failed" }, el("tr", {}, ["job", "function", "reason", "attempts", "error (click: traceback)", ""].map(h => el("th", {}, h))), rows)];
}

function toggleTraceback(id) {
  if (openTracebacks.has(id)) openTracebacks.delete(id); else openTracebacks.add(id);
  refresh();
}

async function tracebackOf(id) {
  const j = await getJSON("/api/job/" + encodeURIComponent(id));
  return el("pre", { className: "traceback" }, j.traceback || "(no traceback)");
}

async function workersPage() {
  const workers = await getJSON("/api/workers");
  const now = Date.now();
  return [el("h2", {}, `Live workers (${workers.length})`), el("table", { id: "workers" },
    el("tr", {}, ["host", "pid", "queues", "concurrency", "running", "state", "last heartbeat"].map(h => el("th", {}, h))),
    workers.map(w => el("tr", { "data-worker": w.id }, td(w.host || "?"), td(w.pid, "num"), td(w.queues.join(", ")), td(w.concurrency, "num"),
      td(w.running, "num"), td(w.quarantined ? "QUARANTINED (wrong secret? see its log)" : "ok"), td(ago(w.heartbeat_ms, now)))))];
}

async function jobPage(id) {
  const j = await getJSON("/api/job/" + encodeURIComponent(id));
  const fields = ["id", "state", "function", "attempts", "reason", "error", "worker"];
  const list = el("dl", { id: "job" }, fields.map(k => [el("dt", {}, k), el("dd", { "data-field": k }, j[k] === null ? "–" : j[k])]));
  if (j.progress) list.append(el("dt", {}, "progress"), el("dd", {}, bar(j.progress.fraction * 1000, 1000), ` ${Math.round(j.progress.fraction * 100)}% ${j.progress.message || ""}`));
  return [el("h2", {}, "Job"), list,
    el("div", {}, j.state === "failed" ? [actionButton("requeue", "requeue", j.id), actionButton("purge", "purge", j.id)] : [],
       ["pending", "running", "delayed"].includes(j.state) ? actionButton("cancel", "cancel", j.id) : null),
    el("h2", {}, "Output"), el("pre", { className: "output" }, j.output || "(none kept)"),
    j.traceback ? [el("h2", {}, "Traceback"), el("pre", { className: "traceback" }, j.traceback)] : []];
}

// -- routing and polling ------------------------------------------------------------------------

function route() {
  const [, name, ...rest] = (location.hash || "#/overview").split("/");
  return { name: name || "overview", arg: decodeURIComponent(rest.join("/")) };
}

async function refresh() {
  clearTimeout(timer);
  const { name, arg } = route();
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.id === "nav-" + name);
  const pages = { overview: overviewPage, running: runningPage, failed: failedPage, workers: workersPage, job: () => jobPage(arg) };
  try {
    const content = await (pages[name] || overviewPage)();
    const main = document.getElementById("main");
    const scroll = window.scrollY;
    main.replaceChildren(...[content].flat(3).filter(Boolean));
    window.scrollTo(0, scroll);
    setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
  timer = setTimeout(refresh, POLL_MS);
}

window.addEventListener("hashchange", () => { offsets = { running: 0, failed: 0 }; refresh(); });
refresh();

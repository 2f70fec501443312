// agentbus dashboard. Everything shown comes from the API and goes in with
// textContent: text from agents is never read as markup.
"use strict";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key === "title" || key === "href" || key === "type") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ms(value) {
  if (value === null || value === undefined) return "-";
  if (value < 1000) return value.toFixed(value < 10 ? 1 : 0) + " ms";
  return (value / 1000).toFixed(value < 10000 ? 2 : 1) + " s";
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function bytes(value) {
  if (value < 0) return "none";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit ? value.toFixed(1) : value) + " " + units[unit];
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (!rows.length) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colSpan: columns, text: empty })));
    return;
  }
  for (const row of rows) tbody.append(row);
}

function taskLink(id) {
  if (!id) return "-";
  return el("a", { href: "/task/" + encodeURIComponent(id), class: "mono", text: id });
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  let reply = {};
  try { reply = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error(reply.error || response.status + " " + response.statusText);
  return reply;
}

// A stream of server-sent events that goes to the login page when the
// session is gone, and says on the page whether it is live.
function follow(url, handlers, indicator) {
  const source = new EventSource(url);
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(event.data ? event.data : ""));
  }
  source.onopen = () => { if (indicator) { indicator.textContent = "live"; indicator.classList.add("on"); } };
  source.onerror = async () => {
    if (indicator) { indicator.textContent = "reconnecting"; indicator.classList.remove("on"); }
    const check = await fetch("/api/overview").catch(() => null);
    if (check && check.status === 401) location.href = "/login";
  };
  return source;
}

// The first screen.
function overviewPage() {
  const live = document.getElementById("live");
  follow("/api/stream", { overview: (data) => renderOverview(JSON.parse(data)) }, live);
  startTail();
}

function renderOverview(o) {
  for (const node of document.querySelectorAll("[data-count]")) {
    node.querySelector("b").textContent = o.counts[node.dataset.count] ?? "-";
  }
  document.getElementById("since").textContent = o.counting_since || "-";
  document.getElementById("problems").textContent = (o.problems || []).join("; ");

  fill(document.querySelector("#agents tbody"), o.agents.map((a) => el("tr", { "data-agent": a.name },
    el("td", {}, el("span", { class: a.online ? "dot on" : "dot", title: a.online ? "online" : "offline" }), a.name),
    el("td", { text: a.online ? String(a.instances) : "offline" }),
    el("td", { text: a.heartbeat_age_s === null ? "-" : age(a.heartbeat_age_s) + " ago" }),
    el("td", { text: a.task_types.join(", ") || "-" }),
    el("td", { class: "n", text: a.in_flight }),
    el("td", { class: "n", text: a.done }),
    el("td", { class: "n", text: a.failed }),
    el("td", { class: "n", text: ms(a.p50_ms) }),
    el("td", { class: "n", text: ms(a.p95_ms) }),
    el("td", { class: "n", text: ms(a.wait_p50_ms) }),
    el("td", { class: "n", text: ms(a.wait_p95_ms) }),
  )), 11, "no agents online");

  fill(document.querySelector("#queues tbody"), o.queues.map((q) => el("tr", {},
    el("td", { class: "mono", text: q.queue }),
    el("td", { text: q.priority }),
    el("td", { class: "n", text: q.waiting }),
    el("td", { class: "n", text: q.in_progress }),
    el("td", { class: "n", text: q.redelivered }),
    el("td", { class: "n", text: age(q.oldest_age_s) }),
  )), 6, "no tasks queued");

  fill(document.querySelector("#streams tbody"), o.streams.map((s) => {
    const used = s.used_percent;
    const bar = el("span", { class: "bar" }, el("i", { class: used >= 80 ? "high" : "" }));
    bar.firstChild.style.width = Math.min(100, used || 0) + "%";
    let limit = s.limit;
    if (s.limit === "messages") limit = "messages (" + s.max_messages + ")";
    if (s.limit === "bytes") limit = "bytes (" + bytes(s.max_bytes) + ")";
    if (s.limit === "age") limit = "age (" + age(s.max_age_s) + ")";
    return el("tr", {},
      el("td", { class: "mono", text: s.name }),
      el("td", { class: "n", text: s.messages }),
      el("td", { class: "n", text: bytes(s.bytes) }),
      el("td", {}, bar, used === null ? "-" : used.toFixed(1) + "%"),
      el("td", { text: limit }),
    );
  }), 5, "no streams");

  document.getElementById("dlq-total").textContent = "(" + o.dead_letters.total + " stored)";
  fill(document.querySelector("#dlq tbody"), o.dead_letters.recent.map((d) => {
    const errors = d.errors || [];
    const last = errors.length ? errors[errors.length - 1] : null;
    const history = errors.map((e) => "attempt " + e.attempt + ": " + e.error).join("\n");
    let action;
    if (d.refused) {
      action = el("span", { class: "muted", text: "not replayable: " + d.refused });
    } else if (d.task_id) {
      action = el("button", { type: "button", class: "replay", "data-task": d.task_id, text: "Replay" });
      action.addEventListener("click", async () => {
        action.disabled = true;
        try {
          await post("/api/dead-letters/" + encodeURIComponent(d.task_id) + "/replay");
          action.textContent = "Replayed";
        } catch (err) {
          action.disabled = false;
          action.textContent = "Replay failed: " + err.message;
        }
      });
    }
    return el("tr", { "data-dead-letter": d.task_id || "" },
      el("td", {}, taskLink(d.task_id)),
      el("td", { class: "mono", text: d.subject }),
      el("td", { class: "n", text: d.attempts }),
      el("td", { title: history, text: last ? last.error + (errors.length > 1 ? " (+" + (errors.length - 1) + " more)" : "") : d.reason }),
      el("td", { text: d.dead_lettered_at }),
      el("td", {}, action),
    );
  }), 6, "no dead letters");
}

let tailSource = null;
function startTail() {
  const form = document.getElementById("tail-form");
  const input = document.getElementById("tail-subject");
  const list = document.getElementById("tail");
  const open = () => {
    if (tailSource) tailSource.close();
    list.replaceChildren();
    tailSource = follow("/api/tail?subject=" + encodeURIComponent(input.value.trim()), {
      message: (data) => {
        const m = JSON.parse(data);
        const item = el("li", {}, el("span", { class: "subject", text: m.subject }), m.body);
        if (m.skipped) item.prepend(el("span", { class: "muted", text: "(" + m.skipped + " skipped) " }));
        list.prepend(item);
        while (list.children.length > 200) list.lastChild.remove();
      },
    });
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); open(); });
  document.getElementById("tail-clear").addEventListener("click", () => list.replaceChildren());
  open();
}

// Tasks in one state.
async function tasksPage() {
  const state = new URLSearchParams(location.search).get("state") || "";
  document.getElementById("state").textContent = state.replace("_", " ");
  document.getElementById("tasks-note").textContent = state === "queued"
    ? "Tasks the queues hold: waiting, or taken by a worker and not yet settled."
    : "Tasks this dashboard saw since it started (running and input required: from the tasks' logs).";
  const load = async () => {
    const response = await fetch("/api/tasks?state=" + encodeURIComponent(state));
    if (response.status === 401) { location.href = "/login"; return; }
    const reply = await response.json();
    fill(document.querySelector("#tasks tbody"), reply.tasks.map((t) => el("tr", {},
      el("td", {}, taskLink(t.task_id)),
      el("td", { class: "mono", text: t.agent || t.queue || "-" }),
      el("td", { text: t.task_type || "-" }),
      el("td", { text: t.state }),
      el("td", { class: "n", text: ms(t.duration_ms) }),
      el("td", { text: t.at }),
      el("td", { text: t.error || "" }),
    )), 7, "no tasks");
  };
  await load();
  setInterval(load, 3000);
}

// One task.
const FINAL = ["completed", "failed", "rejected", "timeout", "cancelled", "dead_lettered", "finished_without_record"];

function pretty(value) {
  if (value === null || value === undefined) return "-";
  return JSON.stringify(value, null, 2);
}

async function taskPage() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("task-id").textContent = id;
  document.title = "agentbus: task " + id;
  const base = "/api/task/" + encodeURIComponent(id);
  const stateNode = document.getElementById("task-state");
  const cancel = document.getElementById("cancel");
  const answerForm = document.getElementById("answer-form");
  const result = document.getElementById("action-result");
  let waitingForAnswer = false;

  const load = async () => {
    const response = await fetch(base);
    if (response.status === 401) { location.href = "/login"; return; }
    const reply = await response.json();
    if (!response.ok) { stateNode.textContent = reply.error; return; }
    const report = reply.report;
    stateNode.textContent = report.state;
    document.getElementById("task-note").textContent = reply.note || "";
    const record = report.record;
    const response_ = (record && record.response) || (report.last_event && FINAL.includes(report.last_event.type) ? report.last_event.data : null);
    document.getElementById("result").textContent = pretty(response_);
    document.getElementById("request").textContent = reply.request ? pretty(reply.request) : "not stored any more (a queue holds a task until it is settled; dead letters keep it)";
    document.getElementById("record").textContent = pretty(record);
    const over = FINAL.includes(report.state);
    cancel.hidden = over || report.state === "unknown";
    waitingForAnswer = waitingForAnswer || report.state === "input_required";
    answerForm.hidden = over || !waitingForAnswer;
  };

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { result.textContent = (await post(base + "/cancel")).message; }
    catch (err) { result.textContent = err.message; cancel.disabled = false; }
  });
  answerForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById("answer").value;
    let answer = text;
    try { answer = JSON.parse(text); } catch (_) { /* plain text */ }
    try { await post(base + "/answer", { answer }); result.textContent = "answer sent"; waitingForAnswer = false; answerForm.hidden = true; }
    catch (err) { result.textContent = err.message; }
  });

  const timeline = document.getElementById("timeline");
  const note = document.getElementById("timeline-note");
  const source = follow(base + "/events", {
    event: (data) => {
      const e = JSON.parse(data);
      const summary = e.type === "partial" || e.type === "progress" ? JSON.stringify(e.data)
        : e.type === "input_required" ? (e.data.question ?? JSON.stringify(e.data))
        : e.type === "started" ? "agent " + (e.data.agent ?? "?") + ", attempt " + (e.data.attempt ?? "?") + ", instance " + e.instance
        : FINAL.includes(e.type) ? (e.data.error ?? JSON.stringify(e.data.result ?? e.data))
        : JSON.stringify(e.data);
      timeline.append(el("li", { "data-kind": e.type },
        el("span", { class: "muted", text: "#" + e.seq }),
        el("span", { class: "kind " + e.type, text: e.type.replace("_", " ") }),
        el("span", { class: "data", title: e.time, text: summary })));
      if (e.type === "input_required") { waitingForAnswer = true; answerForm.hidden = false; }
      if (e.type === "input_received") { waitingForAnswer = false; }
      if (FINAL.includes(e.type)) { source.close(); }
      load();
    },
    gone: (data) => { const g = JSON.parse(data); note.textContent = "events " + g.from + " to " + (g.until - 1) + " are no longer stored"; },
    unlogged: (text) => { note.textContent = text; source.close(); },
    error: (text) => { if (text) note.textContent = text; },
  });
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "overview") overviewPage();
  if (page === "tasks") tasksPage();
  if (page === "task") taskPage();
});

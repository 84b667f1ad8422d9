// The review page: gallery, detail and summary views over the JSON API
// (see src/review/web.rs). Plain DOM, no framework; text goes in through
// textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
let meta = null;
let current = null; // the decision shown in the detail view

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts));
  if (!r.ok) throw new Error((await r.text()).trim() || r.statusText);
  return r.json();
}

const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const when = (us) => new Date(us / 1000).toLocaleString();

// --- routing: #/?QUERY (gallery), #/d/FRAME?QUERY (detail), #/summary
function route() {
  const h = location.hash.slice(1) || "/";
  const [path, q] = h.split("?");
  const query = new URLSearchParams(q || "");
  for (const v of ["gallery", "detail", "summary"]) $(v + "-view").hidden = true;
  const m = path.match(/^\/d\/(\d+)$/);
  if (m) return showDetail(m[1], query);
  if (path === "/summary") return showSummary();
  return showGallery(query);
}

function filterQuery(query) {
  const q = new URLSearchParams(query);
  q.delete("page");
  return q;
}

// --- gallery
function toLocalInput(us) {
  const d = new Date(us / 1000);
  const off = d.getTimezoneOffset() * 60000;
  return new Date(d.getTime() - off).toISOString().slice(0, 19);
}

function fillForm(query) {
  const f = $("filters");
  for (const e of f.elements) {
    if (!e.name) continue;
    const v = query.get(e.name) || "";
    if (e.type === "checkbox") e.checked = v === "1";
    else if (e.type === "datetime-local") e.value = v ? toLocalInput(Number(v)) : "";
    else e.value = v;
  }
}

function formQuery() {
  const q = new URLSearchParams();
  for (const e of $("filters").elements) {
    if (!e.name) continue;
    if (e.type === "checkbox") { if (e.checked) q.set(e.name, "1"); continue; }
    if (!e.value) continue;
    if (e.type === "datetime-local") q.set(e.name, String(new Date(e.value).getTime() * 1000));
    else q.set(e.name, e.value);
  }
  return q;
}

async function showGallery(query) {
  $("gallery-view").hidden = false;
  fillForm(query);
  const page = Number(query.get("page") || 0);
  let data;
  try {
    data = await api("/api/decisions?" + query.toString());
  } catch (e) {
    $("count").textContent = "error: " + e.message;
    return;
  }
  $("count").textContent = `${data.total} decisions`;
  const fq = filterQuery(query).toString();
  const grid = $("grid");
  grid.replaceChildren(...data.items.map((it) => card(it, fq)));
  $("pageno").textContent = data.pages ? `page ${page + 1} of ${data.pages}` : "";
  $("newer").disabled = page <= 0;
  $("older").disabled = page + 1 >= data.pages;
  $("newer").onclick = () => goPage(query, page - 1);
  $("older").onclick = () => goPage(query, page + 1);
}

function goPage(query, page) {
  const q = new URLSearchParams(query);
  q.set("page", String(page));
  location.hash = "#/?" + q.toString();
}

function card(it, fq) {
  const img = it.thumb
    ? el("img", { src: it.thumb, alt: `frame ${it.frame}`, loading: "lazy" })
    : el("div", { class: "noimg" }, "no evidence");
  const tags = [el("span", { class: "tag " + it.status }, it.label ? `${it.status}: ${it.label}` : it.status)];
  if (it.divergent) tags.push(el("span", { class: "tag divergent" }, "divergent"));
  return el("a", { class: "card", href: `#/d/${it.frame}?${fq}`, "data-frame": String(it.frame) },
    img,
    el("div", { class: "meta" },
      el("b", { class: "cls" }, it.class), ` p=${fmt(it.probability, 2)} m=${fmt(it.margin, 3)}`, el("br"),
      `#${it.frame} · ${when(it.captured_unix_us)}`, el("br"), ...tags));
}

// --- detail
async function showDetail(frame, query) {
  $("detail-view").hidden = false;
  let d;
  try {
    d = await api(`/api/decisions/${frame}?` + filterQuery(query).toString());
  } catch (e) {
    $("d-title").textContent = "error: " + e.message;
    return;
  }
  current = { d, query: filterQuery(query) };
  const l = d.line;
  $("d-title").textContent = `Frame ${l.frame}: ${l.class}`;
  $("position").textContent = d.position === null ? "(outside the filter)" : `${d.position + 1} of ${d.total}`;
  $("prev").disabled = d.prev === null;
  $("next").disabled = d.next === null;
  renderActions(d);
  renderImages(d.evidence);
  renderFacts(d);
  $("d-history").replaceChildren(...d.history.map((h) => el("li", {},
    `${when(h.time_unix_us)} ${h.reviewer}: ${h.undo ? "undo → " : ""}${h.label === null ? "unreviewed" : h.label}`)));
}

function renderActions(d) {
  const l = d.line;
  const buttons = [el("button", { id: "confirm", onclick: () => act({ label: l.class }) }, `✓ confirm ${l.class} (Enter)`)];
  l.classes.forEach((c, i) => {
    const b = el("button", { "data-class": c, onclick: () => act({ label: c }) }, `${i + 1} ${c}`);
    if (d.label === c) b.className = "current";
    buttons.push(b);
  });
  buttons.push(el("button", { id: "undo", onclick: () => act({ undo: true }) }, "undo (u)"));
  $("d-actions").replaceChildren(...buttons);
}

function figure(src, caption, wide) {
  return el("figure", wide ? { class: "wide" } : {}, el("img", { src, alt: caption }), el("figcaption", {}, caption));
}

function renderImages(ev) {
  const box = $("d-images");
  if (ev.state !== "kept") {
    const why = { none: "no evidence kept for this frame", deleted: "evidence deleted (evidence quota)", unreadable: "evidence unreadable" };
    box.replaceChildren(el("p", {}, why[ev.state] || ev.state));
    return;
  }
  const figs = [];
  if (ev.frame) figs.push(figure(ev.frame, "frame (full resolution, within the ROI)", true));
  figs.push(figure(ev.input, `input ${ev.size[0]}×${ev.size[1]} (as the model saw it)`));
  for (const c of ev.classes) {
    const who = `${c.role} ${c.class}`;
    if (c.cwm) figs.push(figure(c.cwm, `CWM ${who}`));
    else figs.push(el("figure", { class: "missing" }, el("figcaption", {}, `CWM ${who}: not kept (evidence.heatmaps_all_classes is off)`)));
    figs.push(figure(c.pos, `CCM+ ${who} (score ${fmt(c.score, 4)})`));
    figs.push(figure(c.neg, `CCM− ${who}`));
  }
  figs.push(figure(ev.panel, "panel", true));
  box.replaceChildren(...figs);
}

function check(c) {
  if (!c) return "not run";
  return (c.ok ? "ok" : "FAILED") + (c.max_abs_error !== undefined ? ` (max error ${c.max_abs_error.toExponential(2)})` : "") + (c.detail ? `: ${c.detail}` : "");
}

function renderFacts(d) {
  const l = d.line;
  const rows = [
    ["status", d.label ? `${d.status}: ${d.label}` : d.status],
    ["captured", when(l.captured_unix_us)],
    ["source", l.source || "–"],
    ["verdict", (l.verdict || "–") + (l.reason ? ` (${l.reason})` : "")],
    ["runner-up", d.runner_up || "–"],
    ["margin", fmt(l.margin, 4)],
    ["scores", l.classes.map((c, i) => `${c} ${fmt(l.scores[i], 4)}`).join(" · ")],
    ["probabilities", l.classes.map((c, i) => `${c} ${fmt(l.probabilities[i], 3)}`).join(" · ")],
    ["latency (ms)", `queue ${fmt(l.latency.queue_ms, 2)} · preprocess ${fmt(l.latency.preprocess_ms, 2)} · infer ${fmt(l.latency.infer_ms, 2)} · capture→decision ${fmt(l.latency.capture_to_decision_ms, 2)}`],
    ["check (a) evidence", check(l.checks.evidence)],
    ["check (b) reference", check(l.checks.reference)],
    ["divergent", l.divergent ? "yes" : "no"],
    ["model", l.model],
    ["evidence", l.evidence || (l.evidence_error ? `not kept: ${l.evidence_error}` : "–")],
  ];
  if (d.evidence.format) rows.push(["evidence format", d.evidence.format]);
  $("d-facts").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
}

async function act(body) {
  if (!current) return;
  const frame = current.d.line.frame;
  try {
    const r = await api("/api/labels", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": meta.csrf },
      body: JSON.stringify(Object.assign({ frame }, body)),
    });
    $("d-status").textContent = `frame ${frame}: ${r.label === null ? "unreviewed" : r.label} (${r.status})`;
    if (!body.undo && current.d.next !== null) go(current.d.next);
    else route();
  } catch (e) {
    $("d-status").textContent = `frame ${frame}: not saved: ${e.message}`;
  }
}

function go(frame) {
  location.hash = `#/d/${frame}?` + current.query.toString();
}

function onKey(e) {
  if ($("detail-view").hidden || !current) return;
  if (e.target.closest && e.target.closest("input, select, textarea")) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const l = current.d.line;
  if (e.key === "Enter" || e.key === "c") act({ label: l.class });
  else if (e.key === "u") act({ undo: true });
  else if (e.key === "ArrowRight" && current.d.next !== null) go(current.d.next);
  else if (e.key === "ArrowLeft" && current.d.prev !== null) go(current.d.prev);
  else if (e.key === "Escape") location.hash = "#/?" + current.query.toString();
  else if (/^[1-9]$/.test(e.key) && Number(e.key) <= l.classes.length) act({ label: l.classes[Number(e.key) - 1] });
  else return;
  e.preventDefault();
}

// --- summary
async function showSummary() {
  $("summary-view").hidden = false;
  let s;
  try {
    s = await api("/api/summary");
  } catch (e) {
    $("s-body").textContent = "error: " + e.message;
    return;
  }
  const perClass = el("table", { id: "s-classes" }, el("tr", {}, el("th", {}, "decided class"), el("th", {}, "decisions")),
    ...Object.entries(s.per_class).map(([c, n]) => el("tr", {}, el("td", {}, c), el("td", {}, String(n)))));
  const perStatus = el("table", { id: "s-status" }, el("tr", {}, el("th", {}, "label status"), el("th", {}, "decisions")),
    ...["unreviewed", "confirmed", "corrected"].map((k) => el("tr", {}, el("td", {}, k), el("td", {}, String(s.per_status[k] || 0)))));
  const head = el("tr", {}, el("th", {}, "decided ↓ / label →"), ...s.classes.map((c) => el("th", {}, c)));
  const reviewed = s.confusion.flat().reduce((a, b) => a + b, 0);
  const agree = s.confusion.reduce((a, row, i) => a + row[i], 0);
  const confusion = el("table", { id: "s-confusion" }, head,
    ...s.confusion.map((row, i) => el("tr", {}, el("th", {}, s.classes[i]), ...row.map((n) => el("td", {}, String(n))))));
  const max = Math.max(1, ...s.over_time.map((b) => b.decisions));
  const time = el("table", { id: "s-time" }, el("tr", {}, el("th", {}, "from"), el("th", {}, "decisions"), el("th", {}, "divergent")),
    ...s.over_time.map((b) => el("tr", {}, el("td", {}, when(b.start_unix_us)),
      el("td", {}, el("span", { class: "bar", style: `width:${(100 * b.decisions) / max}px` }), ` ${b.decisions}`),
      el("td", {}, el("span", { class: "bar div", style: `width:${(100 * b.divergent) / max}px` }), ` ${b.divergent}`))));
  $("s-body").replaceChildren(
    el("p", {}, `${s.decisions} decisions, ${s.divergent} divergent; ${reviewed} reviewed` + (reviewed ? `, accuracy on reviewed frames ${fmt(agree / reviewed, 3)}` : "")),
    el("h2", {}, "Per decided class"), perClass,
    el("h2", {}, "Per label status"), perStatus,
    el("h2", {}, "Decision vs label (reviewed frames)"), confusion,
    el("h2", {}, "Divergences over time"), time);
}

// --- start
async function start() {
  meta = await api("/api/meta");
  $("who").textContent = `${meta.reviewer} · labels: ${meta.labels}`;
  for (const c of meta.classes) $("f-class").append(el("option", { value: c }, c));
  for (const m of meta.models) $("f-model").append(el("option", { value: m }, m.slice(0, 12)));
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#/?" + formQuery().toString();
  });
  $("filters").addEventListener("reset", () => setTimeout(() => { location.hash = "#/"; }, 0));
  $("back").onclick = () => { location.hash = "#/?" + (current ? current.query.toString() : ""); };
  $("prev").onclick = () => current && current.d.prev !== null && go(current.d.prev);
  $("next").onclick = () => current && current.d.next !== null && go(current.d.next);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  route();
}

start().catch((e) => { document.body.textContent = "review page: " + e.message; });

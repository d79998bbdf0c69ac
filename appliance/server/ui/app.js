// The MLaaS4HEP page: every call goes to this server's API with the caller's identity (see docs/server.md,
// "Web page"). A token given in the #token= fragment or pasted in the field stays in this tab only
// (sessionStorage); without one, the browser's session cookie lets oauth2-proxy forward the caller's token.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "mlaas4hep.token";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const state = { selected: null, logOffset: 0, plotsOf: null, objectUrls: [] };

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) { /* not JSON: the status says it */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function notice(text, kind = "error") {
  const box = $("notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = !text;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function progressText(job) {
  const p = job.progress || {};
  const parts = [];
  if (p.stage) parts.push(p.stage);
  if (p.epochs) parts.push(`epoch ${p.epoch ?? 0}/${p.epochs}`);
  if (p.events_read && p.done !== undefined && p.events) parts.push(`${p.done}/${p.events} events scored`);
  else if (p.events_read) parts.push(`${p.events_read} events`);
  if (p.loss !== undefined) parts.push(`loss ${Number(p.loss).toFixed(4)}`);
  return parts.join(" · ");
}

async function refreshJobs() {
  try {
    const { jobs } = await (await api("/jobs?limit=100")).json();
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren(...jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.job = job.id;
      row.className = job.id === state.selected ? "selected" : "";
      row.append(cell(job.id.slice(0, 8), "mono"), cell(job.kind || "train", "kind"), cell(job.model_name),
                 cell(job.state, `state ${job.state}`),
                 cell(job.id === state.selected ? progressText(state.detail || {}) : ""), cell(when(job.created)));
      const open = document.createElement("td");
      const button = document.createElement("button");
      button.textContent = "Open";
      button.className = "open";
      button.addEventListener("click", () => select(job.id));
      open.append(button);
      row.append(open);
      return row;
    }));
    $("no-jobs").hidden = jobs.length > 0;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (!token() && !state.greeted) notice("");
    state.greeted = true;
  } catch (error) {
    if (error.status === 401) notice("Log in: paste an access token above, or come through the login page.");
    else notice(`Jobs: ${error.message}`);
  }
}

async function select(jobId) {
  state.selected = jobId;
  state.logOffset = 0;
  state.plotsOf = null;
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
  $("log").textContent = "";
  $("plots").hidden = true;
  $("download-model").hidden = true;
  $("detail").hidden = false;
  await refreshDetail();
  $("detail").scrollIntoView({ behavior: "smooth" });
}

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  state.objectUrls.push(url);
  return url;
}

async function refreshDetail() {
  const jobId = state.selected;
  if (!jobId) return;
  let job;
  try {
    job = await (await api(`/jobs/${jobId}`)).json();
  } catch (error) {
    if (error.status === 404) { $("detail").hidden = true; state.selected = null; }
    notice(`Job ${jobId}: ${error.message}`);
    return;
  }
  state.detail = job;
  $("detail-id").textContent = job.id;
  $("detail-state").textContent = job.state;
  $("detail-state").className = `state ${job.state}`;
  const predict = job.kind === "predict";
  const facts = [["kind", job.kind || "train"], ["model", job.model_name], ["progress", progressText(job)],
                 ["created", when(job.created)],
                 ["started", when(job.started)], ["finished", when(job.finished)],
                 ["expires", job.expires ? when(job.expires) : (FINISHED.has(job.state) ? "kept" : "")],
                 ["error", job.error]];
  const auc = job.result && job.result.metrics && job.result.metrics.auc;
  if (auc !== undefined) facts.push(["AUC", Number(auc).toFixed(4)]);
  if (predict && job.result) {
    facts.push(["model version", job.result.version], ["friend trees", job.result.output],
               ["events", `${job.result.events} (${job.result.passed} passed the cuts)`]);
  } else if (job.result && job.result.version !== undefined) facts.push(["published", `version ${job.result.version}`]);
  $("detail-facts").replaceChildren(...facts.filter(([, v]) => v).flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
  $("cancel").hidden = FINISHED.has(job.state);
  $("delete").hidden = !FINISHED.has(job.state);
  await followLog(job);
  if (predict && job.state === "succeeded" && job.links.friends && state.plotsOf !== job.id) {
    state.plotsOf = job.id;
    const link = $("download-model");
    link.textContent = "Download friend trees (.tar.gz)";
    link.href = "#";
    link.hidden = false;
    link.onclick = async (event) => {
      event.preventDefault();
      const a = document.createElement("a");
      a.href = await blobUrl(job.links.friends);
      a.download = `${job.id}-friends.tar.gz`;
      a.click();
    };
  }
  if (!predict && job.state === "succeeded" && state.plotsOf !== job.id) {
    state.plotsOf = job.id;
    $("download-model").textContent = "Download model (.tar.gz)";
    try {
      $("plot-roc").src = await blobUrl(job.links.plot_roc);
      $("plot-loss").src = await blobUrl(job.links.plot_loss);
      $("plots").hidden = false;
    } catch (error) {
      notice(`Plots: ${error.message}`);
    }
    const link = $("download-model");
    link.href = "#";
    link.hidden = false;
    link.onclick = async (event) => {
      event.preventDefault();
      const a = document.createElement("a");
      a.href = await blobUrl(job.links.model);
      a.download = `${job.model_name}.tar.gz`;
      a.click();
    };
  }
}

async function followLog(job) {
  const response = await api(`/jobs/${job.id}/logs?offset=${state.logOffset}`);
  const text = await response.text();
  state.logOffset = Number(response.headers.get("X-Log-Offset") || state.logOffset + text.length);
  if (text) {
    const log = $("log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += text;
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
}

async function refreshModels() {
  try {
    const answer = await (await api("/tfaas/models")).json();
    const body = $("models").querySelector("tbody");
    body.replaceChildren(...answer.models.map((model) => {
      const row = document.createElement("tr");
      row.append(cell(model.name, "mono"), cell(model.version), cell((model.versions || []).join(", ")));
      return row;
    }));
    $("models-note").textContent = answer.error
      || (answer.models.length ? `from ${answer.tfaas}` : `no models of yours in ${answer.tfaas} yet`);
  } catch (error) {
    $("models-note").textContent = `Models: ${error.message}`;
  }
}

async function submitJob(event) {
  event.preventDefault();
  let body;
  try {
    body = JSON.parse($("workflow").value);
  } catch (error) {
    notice(`The workflow is not valid JSON: ${error.message}`);
    return;
  }
  const archive = $("archive").files[0];
  const options = { method: "POST" };
  if (archive) {
    const form = new FormData();
    form.append("workflow", JSON.stringify(body));
    form.append("archive", archive);
    options.body = form;
  } else {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  try {
    const job = await (await api("/jobs", options)).json();
    notice(`Submitted job ${job.id} (${job.model_name}).`, "ok");
    await refreshJobs();
    await select(job.id);
  } catch (error) {
    notice(`Submit: ${error.message}`);
  }
}

async function cancelOrDelete(what) {
  const jobId = state.selected;
  if (what === "delete" && !confirm(`Delete job ${jobId}, its log, plots and model archive?`)) return;
  try {
    await api(`/jobs/${jobId}`, { method: "DELETE" });
    if (what === "delete") {
      state.selected = null;
      $("detail").hidden = true;
    }
    await refreshJobs();
    await refreshDetail();
  } catch (error) {
    notice(`${what}: ${error.message}`);
  }
}

function openViewer(img) {
  if (!img.src) return;
  $("viewer-img").src = img.src;
  $("viewer").hidden = false;
}

async function tick() {
  await refreshJobs();
  state.ticks = (state.ticks || 0) + 1;
  if (state.ticks % 5 === 0) await refreshModels();  // a finished job publishes a new version
  if (state.selected && !(state.detail && FINISHED.has(state.detail.state) && state.plotsOf === state.selected)) {
    await refreshDetail();
  }
  setTimeout(tick, POLL_MS);
}

function start() {
  takeTokenFromFragment();
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("token").value.trim()) sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    notice("");
    refreshJobs();
    refreshModels();
  });
  window.addEventListener("hashchange", () => {  // a #token= link followed while the page is open
    takeTokenFromFragment();
    $("whoami").textContent = token() ? "token in this tab" : "";
    notice("");
    refreshJobs();
    refreshModels();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("submit").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", () => cancelOrDelete("cancel"));
  $("delete").addEventListener("click", () => cancelOrDelete("delete"));
  $("plot-roc").addEventListener("click", (event) => openViewer(event.target));
  $("plot-loss").addEventListener("click", (event) => openViewer(event.target));
  $("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
  $("whoami").textContent = token() ? "token in this tab" : "";
  refreshModels();
  tick();
}

document.addEventListener("DOMContentLoaded", start);

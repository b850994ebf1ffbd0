// berth's web UI: plain JavaScript over the /v1 API of the node that served it, with
// the API token given in the header's form (when the cluster has tokens).
// Every view is re-read every 2 s and at once after an event arrives; writes carry an
// Idempotency-Key and are retried once with it on a 503 or a dropped connection.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { apps: null, instances: null, hosts: null, pools: null, deployments: null, cluster: null };
const EVENT_TYPES = [
  "app_created", "app_updated", "app_scaled", "app_deleted", "deployment_started", "deployment_finished",
  "deployment_cancelled", "deployment_blocked", "deployment_unblocked", "instance_changed", "instance_removed",
  "instances_changed", "host_registered", "host_changed", "host_removed", "pool_created", "pool_deleted",
  "events_dropped",
];
const EXAMPLE = {
  id: "web",
  cmd: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
  instances: 2,
  cpus: 0.1,
  mem_mb: 64,
  network: { pool: "lan" },
};

function key() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return "ui-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// Elements are built with textContent only: nothing from the API is parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "width") e.style.width = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bar(used, total, label) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const level = pct >= 90 ? "high" : pct >= 70 ? "mid" : "low";
  return el("div", { class: "bar", title: label },
    el("div", { class: "fill " + level, width: `${pct.toFixed(1)}%` }),
    el("span", { class: "bar-label" }, label));
}

function showError(msg) {
  const b = $("#banner");
  b.textContent = msg;
  b.hidden = false;
  clearTimeout(showError.t);
  showError.t = setTimeout(() => (b.hidden = true), 8000);
}

// The API token, if the cluster has tokens: kept for this tab only (sessionStorage).
function token() {
  return sessionStorage.getItem("berth-token") || "";
}

function authHeaders() {
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

async function api(method, path, body) {
  const opts = { method, headers: authHeaders() };
  if (method !== "GET") opts.headers["Idempotency-Key"] = key();
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  for (let attempt = 0; ; attempt++) {
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      if (attempt === 0 && method !== "GET") { await new Promise((ok) => setTimeout(ok, 1000)); continue; }
      throw new Error(`${method} ${path}: ${e.message}`);
    }
    if (r.status === 503 && attempt === 0 && method !== "GET") { await new Promise((ok) => setTimeout(ok, 1000)); continue; }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // Not berth's JSON (a proxy's error page, a cut-off body): say what came back.
      throw new Error(`${method} ${path}: HTTP ${r.status}, not JSON: ${text.slice(0, 200)}`);
    }
    if (!r.ok) {
      const err = data && data.error ? `${data.error.code}: ${data.error.message}` : `HTTP ${r.status}`;
      if (r.status === 401) $("#token-form").classList.add("needed");
      throw new Error(err);
    }
    return data;
  }
}

async function act(what, fn) {
  try {
    await fn();
    await refresh();
  } catch (e) {
    showError(`${what} failed — ${e.message}`);
  }
}

function rollout(d) {
  if (!d) return "—";
  return el("div", { class: "rollout" },
    bar(d.updated, d.total, `v${d.to_version}: ${d.updated}/${d.total}`),
    d.blocked ? el("div", { class: "blocked" }, d.blocked) : null);
}

function renderApps() {
  const tbody = $("#apps-table tbody");
  tbody.replaceChildren(...state.apps.map((a) => el("tr", { dataset: { app: a.id } },
    el("td", {}, el("b", {}, a.id), a.pending_reason ? el("div", { class: "pending" }, a.pending_reason) : null),
    el("td", {}, `v${a.version}`),
    el("td", { class: "num" }, a.instances),
    el("td", { class: "num" }, a.running),
    el("td", { class: "num" }, a.healthy),
    el("td", {}, rollout(a.deployment)),
    el("td", { class: "actions" },
      el("button", { dataset: { action: "scale" }, onclick: () => openScale(a) }, "Scale"),
      el("button", { dataset: { action: "restart" }, onclick: () => confirm(`Restart every instance of ${a.id}?`) &&
        act(`restart ${a.id}`, () => api("POST", `/v1/apps/${encodeURIComponent(a.id)}/restart`)) }, "Restart"),
      el("button", { dataset: { action: "rollback" }, disabled: a.version <= 1,
        onclick: () => confirm(`Roll ${a.id} back to the version before v${a.version}?`) &&
          act(`rollback ${a.id}`, () => api("POST", `/v1/apps/${encodeURIComponent(a.id)}/rollback`)) }, "Rollback"),
      el("button", { dataset: { action: "delete" }, class: "danger", onclick: () => confirm(`Delete ${a.id} and stop its instances?`) &&
        act(`delete ${a.id}`, () => api("DELETE", `/v1/apps/${encodeURIComponent(a.id)}`)) }, "Delete")))));
  $("#apps-empty").hidden = state.apps.length > 0;
  const itbody = $("#instances-table tbody");
  itbody.replaceChildren(...state.instances.map((i) => el("tr", { dataset: { instance: i.id } },
    el("td", { class: "mono" }, i.id),
    el("td", {}, i.app),
    el("td", {}, `v${i.version}`),
    el("td", {}, el("span", { class: "pill state-" + i.state }, i.state)),
    el("td", {}, el("span", { class: "pill health-" + i.health }, i.health)),
    el("td", { class: "num" }, i.host ?? "—"),
    el("td", { class: "mono ip" }, i.ip ?? "—"),
    el("td", { class: "num" }, i.restarts),
    el("td", { class: "message" }, i.message ?? ""))));
}

function renderHosts() {
  $("#hosts-table tbody").replaceChildren(...state.hosts.map((h) => el("tr", { dataset: { host: h.id } },
    el("td", {}, el("b", {}, h.id), el("div", { class: "mono small" }, h.http)),
    el("td", {}, el("span", { class: "pill host-" + h.state }, h.state)),
    el("td", {}, h.runtime),
    el("td", {}, bar(h.cpus_used, h.cpus, `${h.cpus_used.toFixed(2)} / ${h.cpus} CPU`)),
    el("td", {}, bar(h.mem_mb_used, h.mem_mb, `${h.mem_mb_used} / ${h.mem_mb} MiB`)),
    el("td", { class: "num" }, h.instances),
    el("td", { class: "small" }, Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(", ")),
    el("td", { class: "actions" }, h.state === "draining"
      ? el("button", { dataset: { action: "eligible" }, onclick: () => act(`make host ${h.id} eligible`, () => api("POST", `/v1/hosts/${h.id}/eligible`)) }, "Make eligible")
      : el("button", { dataset: { action: "drain" }, onclick: () => confirm(`Drain host ${h.id}? Its instances move elsewhere.`) &&
        act(`drain host ${h.id}`, () => api("POST", `/v1/hosts/${h.id}/drain`)) }, "Drain")))));
}

function renderPools() {
  $("#pools-table tbody").replaceChildren(...state.pools.map((p) => el("tr", { dataset: { pool: p.name } },
    el("td", {}, el("b", {}, p.name)),
    el("td", { class: "mono" }, p.subnet),
    el("td", { class: "mono" }, p.gateway ?? "—"),
    el("td", { class: "mono" }, p.range ?? "—"),
    el("td", { class: "wide" }, bar(p.used, p.size, `${p.used} / ${p.size} addresses`)))));
}

function renderDeployments() {
  $("#deployments-table tbody").replaceChildren(...state.deployments.map((d) => el("tr", { dataset: { deployment: d.id } },
    el("td", { class: "num" }, d.id),
    el("td", {}, el("b", {}, d.app)),
    el("td", {}, `v${d.from_version ?? "—"} → v${d.to_version}`),
    el("td", { class: "small" }, d.started_at),
    el("td", { class: "wide" }, bar(d.updated, d.total, `${d.updated} / ${d.total} updated`)),
    el("td", { class: "blocked" }, d.blocked ?? ""),
    el("td", { class: "actions" }, el("button", { dataset: { action: "cancel" }, onclick: () => confirm(`Cancel deployment ${d.id} of ${d.app}? It rolls back.`) &&
      act(`cancel deployment ${d.id}`, () => api("DELETE", `/v1/deployments/${d.id}`)) }, "Cancel")))));
  $("#deployments-empty").hidden = state.deployments.length > 0;
  $("#deploy-count").textContent = state.deployments.length ? state.deployments.length : "";
}

function renderCluster() {
  const c = state.cluster;
  if (!c) return;
  const leader = c.leader === null ? "no leader" : `leader ${c.leader}`;
  $("#cluster").replaceChildren(
    el("span", { class: c.leader === null ? "pill host-down" : "pill host-up" }, leader),
    ` term ${c.term} · `,
    `${c.members.filter((m) => m.voter).length} voters, ${c.members.filter((m) => !m.voter).length} learners`);
}

async function refresh() {
  try {
    // Stale reads: this node's replica, so the UI still shows the last view when the
    // node is cut off from the leader (the cluster line then says so).
    const q = "?stale=true";
    const [cluster, apps, instances, hosts, pools, deployments] = await Promise.all([
      api("GET", "/v1/cluster" + q), api("GET", "/v1/apps" + q), api("GET", "/v1/instances" + q),
      api("GET", "/v1/hosts" + q), api("GET", "/v1/ipam/pools" + q), api("GET", "/v1/deployments" + q)]);
    // Re-render only what changed: rows under the pointer stay put between polls.
    const next = { cluster, apps, instances, hosts, pools, deployments };
    const changed = (k) => JSON.stringify(next[k]) !== JSON.stringify(state[k]);
    const dirty = { cluster: changed("cluster"), apps: changed("apps") || changed("instances"), hosts: changed("hosts"),
      pools: changed("pools"), deployments: changed("deployments") };
    Object.assign(state, next);
    if (dirty.cluster) renderCluster();
    if (dirty.apps) renderApps();
    if (dirty.hosts) renderHosts();
    if (dirty.pools) renderPools();
    if (dirty.deployments) renderDeployments();
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("#cluster").textContent = `cannot read the cluster: ${e.message}`;
  }
}

function openScale(a) {
  $("#scale-app").textContent = a.id;
  const input = $("#scale-count");
  input.value = a.instances;
  const dialog = $("#scale-dialog");
  dialog.onclose = () => {
    if (dialog.returnValue !== "ok") return;
    const n = Number(input.value);
    act(`scale ${a.id}`, () => api("POST", `/v1/apps/${encodeURIComponent(a.id)}/scale`, { instances: n }));
  };
  dialog.showModal();
}

function eventLine(e) {
  const rest = Object.entries(e).filter(([k]) => !["id", "index", "at", "type", "app"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  return el("li", { dataset: { type: e.type } },
    el("span", { class: "small" }, e.at ?? ""), " ",
    el("span", { class: "pill event" }, e.type), " ",
    e.app ? el("b", {}, e.app) : null, " ", el("span", { class: "small mono" }, rest));
}

// Server-sent events read with fetch (EventSource cannot send a token), resumed after
// the last event seen when the stream ends or fails.
async function follow() {
  const list = $("#events-list");
  let pending = null;
  let last = 0;
  const onEvent = (type, data) => {
    if (!EVENT_TYPES.includes(type)) return;
    let e;
    try { e = JSON.parse(data); } catch { return; }
    list.prepend(eventLine(e));
    while (list.children.length > 200) list.lastChild.remove();
    if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 250);
  };
  for (;;) {
    try {
      const r = await fetch(`/v1/events?since=${last}`, { headers: authHeaders() });
      if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { type: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (ev.id !== null) last = Number(ev.id) || last;
            if (ev.data.length) onEvent(ev.type, ev.data.join("\n"));
            ev = { type: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "event") ev.type = val;
            else if (field === "data") ev.data.push(val);
            else if (field === "id") ev.id = val;
          }
        }
      }
    } catch {
      // Down, restarting, or no token yet: try again shortly.
    }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

// The token form: saved for this tab, checked at once (GET /v1/tokens/self).
function tokenForm() {
  const show = async () => {
    const who = $("#token-who");
    if (!token()) { who.textContent = "no token"; return; }
    try {
      const me = await api("GET", "/v1/tokens/self");
      who.textContent = `${me.name} (${me.role})`;
      $("#token-form").classList.remove("needed");
    } catch (e) {
      who.textContent = e.message;
    }
  };
  $("#token-save").addEventListener("click", (e) => {
    e.preventDefault();
    const t = $("#token").value.trim();
    if (t) sessionStorage.setItem("berth-token", t); else sessionStorage.removeItem("berth-token");
    $("#token").value = "";
    show();
    refresh();
  });
  show();
}

function tabs() {
  const show = (name) => {
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll("section.tab").forEach((s) => s.classList.toggle("active", s.id === name));
    history.replaceState(null, "", "#" + name);
  };
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
  document.querySelectorAll("[data-goto]").forEach((a) => a.addEventListener("click", (e) => { e.preventDefault(); show(a.dataset.goto); }));
  const initial = location.hash.slice(1);
  if (document.getElementById(initial)?.classList.contains("tab")) show(initial);
}

function deployForm() {
  $("#spec").value = JSON.stringify(EXAMPLE, null, 2);
  $("#deploy-button").addEventListener("click", () => act("deploy", async () => {
    let spec;
    try { spec = JSON.parse($("#spec").value); } catch (e) { throw new Error(`the spec is not valid JSON: ${e.message}`); }
    if (!spec || typeof spec.id !== "string" || !spec.id) throw new Error("the spec needs an \"id\"");
    const app = await api("PUT", `/v1/apps/${encodeURIComponent(spec.id)}`, spec);
    $("#deploy-result").textContent = `${app.id} is at v${app.version}`;
  }));
}

tabs();
tokenForm();
deployForm();
refresh();
follow();
setInterval(refresh, 2000);

// Grain's live view: renders the executor's /status document, pushed by /events.
// Everything a peer sent (job and user names, error messages) is put in the page as
// text (textContent), never as markup.
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  let updates = 0;

  // -- small helpers -------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren(...rows);
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = el("td", "muted empty", empty);
      td.colSpan = cols;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(Math.round(s % 60)).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  }

  function gb(v) { return (Math.round(v * 10) / 10).toString(); }

  // a stable colour per user (a hue from the name's hash)
  const hues = new Map();
  function hue(user) {
    if (!hues.has(user)) {
      let h = 2166136261;
      for (let i = 0; i < user.length; i++) h = Math.imul(h ^ user.charCodeAt(i), 16777619);
      hues.set(user, ((h >>> 0) % 360));
    }
    return hues.get(user);
  }
  function swatch(user) {
    const s = el("i", "sw user");
    s.style.background = "hsl(" + hue(user) + ", 55%, 52%)";
    return s;
  }

  function mean(a, from) {
    let sum = 0, n = 0;
    for (let i = Math.max(0, from); i < a.length; i++) if (a[i] !== null) { sum += a[i]; n++; }
    return n ? sum / n : 0;
  }

  // -- sections ------------------------------------------------------------------------
  function header(doc) {
    $("exname").textContent = doc.name || "";
    $("meta").textContent = "version " + doc.version + " · up " + duration(doc.uptime_s) +
      " · " + doc.clients + " client" + (doc.clients === 1 ? "" : "s");
    document.title = "Grain · " + doc.running_jobs + " running · " + doc.queue_length + " queued";
    const rec = doc.recovering;
    $("recovering").hidden = !rec;
    if (rec) {
      const parts = [];
      const ww = rec.waiting_for_workers || {};
      const names = Object.keys(ww);
      if (names.length) parts.push("waiting for workers " + names.map(n => n + " (" + ww[n] + " jobs)").join(", "));
      if (rec.jobs_held_back) parts.push(rec.jobs_held_back + " resubmitted jobs held back until their workers report");
      if (rec.jobs_waiting_for_their_client) parts.push(rec.jobs_waiting_for_their_client + " running jobs waiting for their client");
      if (rec.sessions_waiting_for_their_client) parts.push(rec.sessions_waiting_for_their_client + " sessions waiting for their client to come back");
      $("recovering-text").textContent = parts.join("; ") || "waiting";
    }
  }

  function tiles(doc) {
    const h = doc.history || {};
    const ended = (h.finished || []).map((v, i) => v + (h.failed[i] || 0));
    const rate = mean(ended, ended.length - 10);
    const used = doc.cores.total - doc.cores.free;
    const items = [
      ["workers", doc.workers.length, doc.workers.filter(w => w.draining).length ? doc.workers.filter(w => w.draining).length + " draining" : ""],
      ["cores in use", used + " / " + doc.cores.total, doc.cores.total ? Math.round(100 * used / doc.cores.total) + "%" : ""],
      ["memory in use", gb(doc.memory_gb.total - doc.memory_gb.free) + " / " + gb(doc.memory_gb.total) + " GB", ""],
      ["running", doc.running_jobs, ""],
      ["queued", doc.queue_length, ""],
      ["jobs / s", rate.toFixed(rate < 10 ? 1 : 0), "last 10 s"],
      ["finished", doc.jobs.finished, doc.jobs.failed + " failed"],
    ];
    $("tiles").replaceChildren(...items.map(([label, value, note]) => {
      const t = el("div", "tile");
      t.appendChild(el("div", "label", label));
      t.appendChild(el("div", "value", value));
      t.appendChild(el("div", "note muted", note));
      t.dataset.tile = label;
      return t;
    }));
  }

  function charts(doc) {
    const full = doc.history;
    if (!full || !window.GrainChart) return;
    // only the time this executor has observed (at least a minute): a young executor's
    // chart is not a flat line at the right edge of ten empty minutes
    const len = full.finished.length;
    const keep = Math.min(len, Math.max(60, full.end - full.since + 1));
    const h = {};
    for (const k in full) h[k] = Array.isArray(full[k]) ? full[k].slice(len - keep) : full[k];
    // a 5-second moving average keeps the throughput line readable
    const smooth = a => a.map((_, i) => {
      let s = 0;
      for (let k = Math.max(0, i - 4); k <= i; k++) s += a[k];
      return s / (i - Math.max(0, i - 4) + 1);
    });
    const ok = smooth(h.finished), bad = smooth(h.failed);
    GrainChart.draw($("chart-throughput"), {
      end: h.end, step: h.step_s, unit: "/s",
      max: Math.max(1, ...ok.map((v, i) => v + bad[i])),
      series: [{values: ok.map((v, i) => v + bad[i]), cls: "ok", area: true},
               {values: bad, cls: "bad", area: true}],
    });
    const util = h.cores_busy.map((b, i) => (b === null || !h.cores_total[i]) ? null : 100 * b / h.cores_total[i]);
    GrainChart.draw($("chart-utilization"), {
      end: h.end, step: h.step_s, unit: "%", max: 100,
      rightMax: Math.max(1, ...h.queued.filter(v => v !== null)),
      series: [{values: util, cls: "util", area: true},
               {values: h.queued, cls: "queue", axis: "right"}],
    });
  }

  function users(doc) {
    fill($("users").tBodies[0], doc.users.map(u => {
      const name = el("span", "user-name");
      name.appendChild(swatch(u.name));
      name.appendChild(document.createTextNode(u.name));
      const share = el("span", "share");
      const bar = el("span", "bar");
      bar.style.width = Math.round(100 * Math.min(1, u.share)) + "%";
      bar.style.background = "hsl(" + hue(u.name) + ", 55%, 52%)";
      share.appendChild(bar);
      share.appendChild(el("span", "pct", (100 * u.share).toFixed(1) + "%"));
      const limits = [u.max_cores !== null ? "≤ " + u.max_cores.toLocaleString("en") + " cores" : "",
                      u.max_queued !== null ? "≤ " + u.max_queued.toLocaleString("en") + " queued" : ""].filter(Boolean).join(", ");
      const tr = row([name, u.weight, u.running_jobs, u.queued_jobs, u.cores_in_use,
                      gb(u.memory_in_use_gb), share, u.finished_jobs, u.failed_jobs, limits]);
      tr.dataset.user = u.name;
      return tr;
    }), "no users with jobs or sessions", 10);
  }

  function queue(doc) {
    const rows = [];
    for (const u of doc.users) {
      for (const q of u.queue || []) {
        const name = el("span", "user-name");
        name.appendChild(swatch(u.name));
        name.appendChild(document.createTextNode(u.name));
        rows.push(row([name, q.request, q.queued, el("code", "", q.next), duration(q.waiting_s)]));
      }
    }
    fill($("queue").tBodies[0], rows, "nothing queued", 5);
  }

  function worker(w) {
    const card = el("article", "worker" + (w.draining ? " draining" : ""));
    card.dataset.worker = w.name;
    const head = el("header");
    head.appendChild(el("h3", "", w.name));
    head.appendChild(el("span", "muted", w.address));
    if (w.draining) head.appendChild(el("span", "badge", "draining"));
    head.appendChild(el("span", "muted right", (w.cores_total - w.cores_free) + "/" + w.cores_total +
      " cores · " + gb(w.memory_total_gb - w.memory_free_gb) + "/" + gb(w.memory_total_gb) + " GB"));
    card.appendChild(head);
    // the core map: one cell per core, coloured by the user whose job holds it
    const grid = el("div", "cores");
    const map = w.core_map || {};
    const jobs = new Map();
    for (const id of w.core_ids || []) {
      const j = map[String(id)];
      const cell = el("div", "core" + (j ? " busy" : ""));
      cell.dataset.core = id;
      cell.appendChild(el("span", "cid", id));
      if (j) {
        cell.style.background = "hsl(" + hue(j.user) + ", 55%, 52%)";
        cell.appendChild(el("span", "cjob", j.job));
        cell.title = j.job + " · " + j.user + " · " + j.session + " · " + duration(j.running_s);
        const key = j.id;
        if (!jobs.has(key)) jobs.set(key, Object.assign({cores: []}, j));
        jobs.get(key).cores.push(id);
      } else {
        cell.title = "core " + id + ": free";
      }
      grid.appendChild(cell);
    }
    card.appendChild(grid);
    if (w.core_map_truncated) card.appendChild(el("p", "muted", "(more jobs run here than the page lists)"));
    const table = el("table", "grid jobs");
    const rows = [...jobs.values()].map(j => {
      const name = el("span", "user-name");
      name.appendChild(swatch(j.user));
      name.appendChild(document.createTextNode(j.user));
      const tr = row([el("code", "job-name", j.job), name, j.cores.join(","), duration(j.running_s),
                      j.session, j.queued_behind ? j.queued_behind + " chained" : ""]);
      tr.className = "running-job";
      return tr;
    });
    if (rows.length) {
      const thead = document.createElement("thead");
      thead.appendChild(row(["job", "user", "cores", "running for", "client", ""]));
      table.appendChild(thead);
      const tb = document.createElement("tbody");
      tb.replaceChildren(...rows);
      table.appendChild(tb);
      card.appendChild(table);
    } else {
      card.appendChild(el("p", "muted idle", "idle"));
    }
    return card;
  }

  function workers(doc) {
    const list = doc.workers.map(worker);
    if (!list.length) list.push(el("p", "muted", "no worker is registered"));
    $("workers").replaceChildren(...list);
  }

  const SHOWN_FAILURES = 10;
  function failures(doc) {
    const all = doc.failures || [];
    const rows = all.slice(0, SHOWN_FAILURES).map(f => {
      const tr = row([new Date(f.at * 1000).toLocaleTimeString(), f.user, el("code", "", f.job),
                      f.worker, f.end, el("pre", "error", f.error)]);
      tr.className = "failure";
      return tr;
    });
    if (all.length > SHOWN_FAILURES) {
      const more = el("td", "muted", "… and " + (all.length - SHOWN_FAILURES) +
        " earlier ones in /status (the last " + all.length + " are kept)");
      more.colSpan = 6;
      const tr = document.createElement("tr");
      tr.appendChild(more);
      rows.push(tr);
    }
    fill($("failures").tBodies[0], rows, "no failures", 6);
  }

  function render(doc) {
    header(doc);
    tiles(doc);
    charts(doc);
    users(doc);
    queue(doc);
    workers(doc);
    failures(doc);
    updates += 1;
    document.body.dataset.updates = String(updates);
    window.grainStatus = doc;
  }

  // -- live updates: server-sent events, else polling ----------------------------------
  function live(state, text) {
    const l = $("live");
    l.className = "live " + state;
    l.textContent = text;
  }

  let polling = null;
  async function poll() {
    try {
      const r = await fetch("/status", {cache: "no-store"});
      render(await r.json());
      live("poll", "live (polling) · " + new Date().toLocaleTimeString());
    } catch (e) {
      live("off", "executor unreachable");
    }
  }
  function startPolling() {
    if (polling === null) polling = setInterval(poll, 2000);
  }

  function connect() {
    if (!window.EventSource) { poll(); startPolling(); return; }
    let failuresInARow = 0;
    const es = new EventSource("/events");
    es.addEventListener("status", e => {
      failuresInARow = 0;
      if (polling !== null) { clearInterval(polling); polling = null; }
      render(JSON.parse(e.data));
      live("on", "live · " + new Date().toLocaleTimeString());
    });
    es.onerror = () => {
      failuresInARow += 1;
      live("off", "reconnecting…");
      // the executor refuses streams past its cap (503): fall back to polling
      if (es.readyState === EventSource.CLOSED || failuresInARow >= 3) { es.close(); startPolling(); }
    };
  }

  poll();
  connect();
})();

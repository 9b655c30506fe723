// Faultline's live console: reads the gateway's event stream and draws
// the cluster; its controls call the control API. Plain JavaScript, no
// build step, no library: the charts are a few SVG lines drawn here.
//
// The operator token comes from the address's fragment (#token=…) or the
// form, is kept in this tab's session storage, and goes out only as an
// Authorization header. EventSource cannot send headers, so the stream is
// read with fetch and split into events here.
"use strict";

(() => {
  const STREAM = "/v1/console/stream";
  const HISTORY = 60; // points per chart: 30 s at two snapshots a second
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 5000;
  const LOG_LENGTH = 200; // entries kept, as many as the gateway keeps

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    snapshot: null,
    log: new Map(), // seq -> entry
    history: new Map(), // worker -> [{p50, p99}]
    retryMs: RETRY_MIN_MS,
    connectedOnce: false,
  };

  // --- DOM helpers: every text goes in as text, never as markup. ---
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const svg = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  };
  const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`);
  const ms = (x) => (x === null || x === undefined ? "–" : `${x < 10 ? x.toFixed(2) : x.toFixed(0)} ms`);
  const time = (atMs) => new Date(atMs).toLocaleTimeString([], { hour12: false });

  // A state is always a word and a symbol, never a colour alone.
  const STATE_SYMBOL = { up: "●", suspect: "◐", down: "✕", silent: "…", unjudged: "?" };
  function badge(stateName) {
    return h("span", { class: `badge state-${stateName}`, "data-state": stateName },
      h("span", { "aria-hidden": "true", text: STATE_SYMBOL[stateName] || "?" }), ` ${stateName}`);
  }

  // --- The token ---
  function readToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const fromFragment = fragment.get("token");
    if (fromFragment) {
      sessionStorage.setItem("faultline-token", fromFragment);
      // The token leaves the address bar (and the history) at once.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("faultline-token");
  }

  function askForToken(message) {
    $("token-form").hidden = false;
    setConnection("locked", message);
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem("faultline-token", token);
    state.token = token;
    $("token-form").hidden = true;
    connect();
  });

  // --- The stream ---
  function setConnection(stateName, detail) {
    $("connection").dataset.state = stateName;
    $("conn-status").textContent = stateName;
    $("conn-detail").textContent = detail || "";
  }

  async function connect() {
    setConnection(state.connectedOnce ? "reconnecting" : "connecting", "");
    let response;
    try {
      response = await fetch(STREAM, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
        cache: "no-store",
      });
    } catch (_) {
      return retry("the gateway does not answer");
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem("faultline-token");
      const body = await response.json().catch(() => null);
      return askForToken(body?.error?.message || `refused (${response.status})`);
    }
    if (!response.ok || !response.body) {
      return retry(`the stream answered ${response.status}`);
    }
    state.retryMs = RETRY_MIN_MS;
    state.connectedOnce = true;
    setConnection("live", "");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const raw = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          try {
            handleEvent(raw);
          } catch (error) {
            // One frame the page cannot draw is skipped, not fatal.
            setConnection("live", `skipped a frame it could not draw: ${error}`);
          }
        }
      }
    } catch (_) {
      // The connection broke (the gateway stopped): reconnect below.
    } finally {
      // Never leave a half-read stream holding one of the browser's few
      // connections to the gateway.
      reader.cancel().catch(() => {});
    }
    retry("the stream ended");
  }

  function retry(why) {
    const wait = state.retryMs;
    state.retryMs = Math.min(RETRY_MAX_MS, state.retryMs * 2);
    setConnection("reconnecting", `${why}; trying again in ${(wait / 1000).toFixed(1)} s`);
    setTimeout(connect, wait);
  }

  function handleEvent(raw) {
    let name = "message";
    let data = "";
    for (const line of raw.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    const payload = JSON.parse(data);
    if (name === "hello") {
      state.log.clear();
      for (const entry of payload.log) state.log.set(entry.seq, entry);
      drawLog();
    } else if (name === "event") {
      state.log.set(payload.seq, payload);
      while (state.log.size > LOG_LENGTH) state.log.delete(Math.min(...state.log.keys()));
      drawLog();
    } else if (name === "snapshot") {
      state.snapshot = payload;
      remember(payload);
      draw(payload);
    }
  }

  // --- Drawing ---
  function remember(snapshot) {
    for (const w of snapshot.workers) {
      const points = state.history.get(w.id) || [];
      points.push({ p50: w.p50_ms, p99: w.p99_ms });
      while (points.length > HISTORY) points.shift();
      state.history.set(w.id, points);
    }
  }

  function draw(s) {
    // When the gateway drew it: a fresh snapshot after a reconnect shows
    // here (the tests read it).
    document.body.dataset.snapshotAt = String(s.at_ms);
    $("current-strategy").textContent = s.strategy;
    $("current-data-path").textContent = s.data_path;
    $("current-gateway").textContent = s.gateway;
    $("conn-detail").textContent = `updated ${time(s.at_ms)}`;
    drawTopology(s);
    drawWorkers(s);
    drawAvailability(s);
    drawTransfers(s);
    syncControls(s);
  }

  function memberCard(id, role, stateName, reason, extra) {
    return h("li", { class: `member state-${stateName}`, "data-member": id, "data-role": role },
      h("span", { class: "member-id", text: id }), badge(stateName), extra || null,
      reason ? h("span", { class: "reason", text: reason }) : null);
  }

  function drawTopology(s) {
    const byRole = (role) => s.members.filter((m) => m.role === role);
    const infra = s.infrastructure || {};
    const group = (title, items) =>
      h("div", { class: "tier" }, h("h3", { text: title }), h("ul", {}, items.length ? items : h("li", { class: "subtle", text: "none heard" })));

    const lease = (m, holding, standing) =>
      m.lease_token ? h("span", { class: "lease", text: `${holding} · token ${m.lease_token}` })
        : h("span", { class: "lease subtle", text: standing });

    const nats = infra.nats || {};
    const nodes = new Map();
    for (const stream of nats.streams || []) {
      if (stream.leader) {
        const node = nodes.get(stream.leader) || { leads: [], lagging: false, offline: false };
        node.leads.push(stream.stream);
        nodes.set(stream.leader, node);
      }
      for (const r of stream.replicas || []) {
        const node = nodes.get(r.name) || { leads: [], lagging: false, offline: false };
        node.offline = node.offline || r.offline;
        node.lagging = node.lagging || !r.current;
        nodes.set(r.name, node);
      }
    }
    const natsItems = [...nodes.entries()].sort().map(([name, n]) => {
      const stateName = n.offline ? "down" : n.lagging ? "suspect" : "up";
      const reason = n.offline ? "offline in the Raft group" : n.lagging ? "catching up" : "current";
      return memberCard(name, "nats", stateName, reason,
        h("span", { class: "lease", text: (n.leads.length ? `leads ${n.leads.join(", ")}` : "follower") +
          (name === nats.connected ? " · this gateway's node" : "") }));
    });
    if (!natsItems.length && nats.connected) {
      natsItems.push(memberCard(nats.connected, "nats", "up", "connected", null));
    }
    const store = (name, info) => memberCard(name, "store", (info && info.state) || "unjudged",
      (info && info.detail) || "", null);

    const topology = $("topology");
    topology.replaceChildren(
      group("Gateways", byRole("gateway").map((m) => memberCard(m.id, m.role, m.state, m.reason,
        m.id === s.gateway ? h("span", { class: "lease", text: "serves this page" }) : null))),
      group("Load-balancers", byRole("load-balancer").map((m) => memberCard(m.id, m.role, m.state, m.reason, null))),
      group("Workers", s.workers.map((w) => memberCard(w.id, "worker", w.state, w.reason, flags(w)))),
      group("Health-monitors", byRole("health-monitor").map((m) => memberCard(m.id, m.role, m.state, m.reason,
        lease(m, "leader", "standby")))),
      group("Coordinators", byRole("coordinator").map((m) => memberCard(m.id, m.role, m.state, m.reason,
        lease(m, "active", "standby")))),
      group("NATS (JetStream)", natsItems),
      group("Stores", [store("PostgreSQL", infra.postgres), store("Redis", infra.redis)]),
    );
  }

  function flags(w) {
    const tags = [];
    if (w.ejected) tags.push(h("span", { class: "flag flag-ejected", text: "⏏ ejected" }));
    if (w.ramping) tags.push(h("span", { class: "flag flag-ramping", text: `↗ ramping (weight ${w.weight} of ${w.advertised_weight})` }));
    if (w.fault_latency_ms || w.fault_error_rate) {
      tags.push(h("span", { class: "flag flag-fault",
        text: `⚠ fault: +${w.fault_latency_ms || 0} ms, ${((w.fault_error_rate || 0) * 100).toFixed(0)} % errors` }));
    }
    return tags.length ? h("span", { class: "flags" }, tags) : null;
  }

  function shareBar(w) {
    const share = w.share ?? 0;
    const promised = w.promised_share;
    const bar = h("div", { class: "share", role: "img",
      "aria-label": `share ${pct(w.share)}, promised ${promised === null ? "none" : pct(promised)}` },
      h("div", { class: "share-fill", style: null }));
    bar.firstChild.style.width = `${Math.min(100, share * 100)}%`;
    if (promised !== null && promised !== undefined) {
      const tick = h("div", { class: "share-promised" });
      tick.style.left = `${Math.min(100, promised * 100)}%`;
      bar.append(tick);
    }
    return bar;
  }

  // The chart's scale: a little above the highest p99 it shows.
  const chartTop = (points) => Math.max(1, ...points.map((p) => p.p99 || 0)) * 1.1;

  function chart(points) {
    const width = 240;
    const height = 60;
    const top = chartTop(points);
    const el = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "aria-hidden": "true" });
    const line = (key, cls) => {
      const coords = points.map((p, i) => p[key] === null || p[key] === undefined ? null
        : `${(i / (HISTORY - 1)) * width},${height - (p[key] / top) * height}`).filter(Boolean);
      if (coords.length) el.append(svg("polyline", { points: coords.join(" "), class: cls }));
    };
    line("p99", "line-p99");
    line("p50", "line-p50");
    return el;
  }

  function detector(w, name) {
    const threshold = w.detector_threshold || 0;
    const value = w.detector_value || 0;
    const scale = Math.max(threshold * 1.5, value, 1e-9);
    const gauge = h("div", { class: "gauge", role: "img",
      "aria-label": `${name} ${value.toFixed(2)} of threshold ${threshold.toFixed(2)}` },
      h("div", { class: value >= threshold && threshold > 0 ? "gauge-fill over" : "gauge-fill" }),
      h("div", { class: "gauge-line" }));
    gauge.children[0].style.width = `${Math.min(100, (value / scale) * 100)}%`;
    gauge.children[1].style.left = `${(threshold / scale) * 100}%`;
    return gauge;
  }

  function drawWorkers(s) {
    const detectorName = s.detector === "phi-accrual" ? "φ" : "missed beats";
    const cards = s.workers.map((w) => {
      const points = state.history.get(w.id) || [];
      return h("article", { class: `worker state-${w.state}`, "data-worker": w.id, "aria-label": `worker ${w.id}` },
        h("header", {}, h("h3", { text: w.id }), badge(w.state), flags(w)),
        h("p", { class: "reason", text: w.reason || "" }),
        h("dl", { class: "figures" },
          h("dt", { text: "rate" }), h("dd", { class: "rate", text: `${w.rate.toFixed(0)} /s` }),
          h("dt", { text: "share" }), h("dd", { class: "share-value", "data-share": w.share ?? "",
            text: `${pct(w.share)} (promised ${w.promised_share === null ? "none: follows load or keys" : pct(w.promised_share)})` }),
          h("dt", { text: "in flight" }), h("dd", { class: "in-flight", text: String(w.in_flight) }),
          h("dt", { text: "weight" }), h("dd", { text: `${w.weight} (own ${w.advertised_weight})` }),
          h("dt", { text: "p50" }), h("dd", { class: "p50", "data-ms": w.p50_ms ?? "", text: ms(w.p50_ms) }),
          h("dt", { text: "p99" }), h("dd", { class: "p99", "data-ms": w.p99_ms ?? "", text: ms(w.p99_ms) }),
          h("dt", { text: detectorName }), h("dd", { class: "detector",
            text: `${(w.detector_value || 0).toFixed(2)} / ${(w.detector_threshold || 0).toFixed(2)}` })),
        shareBar(w),
        chart(points),
        h("p", { class: "legend subtle" }, h("span", { class: "key-p99", text: "— p99" }), " ",
          h("span", { class: "key-p50", text: "— p50" }),
          ` over 30 s, top of the chart ${ms(chartTop(points))}`),
        detector(w, detectorName));
    });
    $("workers").replaceChildren(...cards);
  }

  function drawAvailability(s) {
    const a = s.availability;
    const load = s.load;
    if (load) {
      $("load-status").textContent = `${load.running ? "running" : "finished"}: ${load.rate} calls/s, ` +
        `${load.elapsed_s.toFixed(0)} of ${load.seconds} s`;
    }
    if (!a) return;
    const rows = Object.entries(a.up_fractions).map(([id, f]) => h("li", { text: `${id}: up ${pct(f)} of the run` }));
    $("availability").replaceChildren(
      h("dl", { class: "figures big" },
        h("dt", { text: "measured (successful calls / calls)" }),
        h("dd", { id: "availability-measured", text: pct(a.measured) +
          (a.interval ? ` (95 %: ${pct(a.interval[0])} – ${pct(a.interval[1])})` : "") }),
        h("dt", { text: "formula R = 1 − Π(1 − pᵢ)" }),
        h("dd", { id: "availability-formula", text: pct(a.formula) })),
      h("ul", {}, rows),
      h("p", { class: "subtle", text: "Calls beat the formula when retries move them off a dying worker; they fall short of it while a death is not yet detected and during slow start." }));
  }

  function drawTransfers(s) {
    const infra = s.infrastructure || {};
    const t = s.transfers || { rate: 0, outcomes: {} };
    const audit = infra.audit;
    const outcomes = Object.entries(t.outcomes).map(([k, v]) => `${k} ${v}`).join(" · ") || "none yet";
    $("transfers").replaceChildren(h("dl", { class: "figures" },
      h("dt", { text: "rate (this gateway)" }), h("dd", { text: `${t.rate.toFixed(1)} /s` }),
      h("dt", { text: "outcomes" }), h("dd", { text: outcomes }),
      h("dt", { text: "in doubt" }), h("dd", { id: "in-doubt", text: infra.in_doubt ?? "–" }),
      h("dt", { text: "quarantined" }), h("dd", { text: infra.quarantined ?? "–" }),
      h("dt", { text: "audited total" }), h("dd", { id: "audit-total", text: audit
        ? `${audit.total} = balances ${audit.balances} + in flight ${audit.in_flight}, over ${audit.accounts} accounts`
        : "–" }),
      h("dt", { text: "money opened" }), h("dd", { id: "audit-opened", text: !audit ? "–"
        : audit.opened === null || audit.opened === undefined ? "not recorded (accounts older than the record)"
          : audit.opened === audit.total ? `${audit.opened}: ✓ equal to the audited total`
            : `${audit.opened}: ✕ differs from the audited total by ${audit.total - audit.opened}` }),
      h("dt", { text: "decision log" }), h("dd", { text: audit
        ? `${audit.transfers.committed} committed · ${audit.transfers.aborted} aborted · ${audit.transfers.preparing} preparing`
        : "–" })));
  }

  function drawLog() {
    const entries = [...state.log.values()].sort((a, b) => b.seq - a.seq);
    $("log").replaceChildren(...entries.map((e) => h("li", { class: `log-${e.kind}`, "data-kind": e.kind, "data-member": e.member },
      h("time", { text: time(e.at_ms) }), " ",
      h("span", { class: "kind", text: e.kind }), " ",
      h("span", { class: "text", text: e.text }),
      e.reason ? h("span", { class: "reason", text: ` (${e.reason})` }) : null)));
  }

  // --- Controls ---
  function syncControls(s) {
    // The strategy control starts at what is in force and follows changes
    // made elsewhere unless someone is using it; the data-path control
    // offers the other path, the one a switch would go to.
    if (state.shownStrategy !== s.strategy && document.activeElement !== $("strategy-select")) {
      state.shownStrategy = s.strategy;
      $("strategy-select").value = s.strategy;
      describe();
    }
    if (state.shownDataPath !== s.data_path) {
      state.shownDataPath = s.data_path;
      $(`data-path-${s.data_path === "direct" ? "proxy" : "direct"}`).checked = true;
      describe();
    }
    const select = $("worker-select");
    const chosen = select.value;
    const ids = s.workers.map((w) => w.id);
    if ([...select.options].map((o) => o.value).join() !== ids.join()) {
      select.replaceChildren(...ids.map((id) => h("option", { value: id, text: id })));
      if (ids.includes(chosen)) select.value = chosen;
      describe();
    }
  }

  function describe() {
    const strategy = $("strategy-select").value;
    $("strategy-will").textContent = `Will send PUT /v1/strategy {"strategy":"${strategy}"}: every load-balancer ` +
      `and gateway switches to ${strategy} within milliseconds, and the share ticks move to its promise.`;
    const path = document.querySelector('input[name="data-path"]:checked')?.value || "the other";
    $("data-path-will").textContent = `Will send PUT /v1/data-path {"data_path":"${path}"}: ` +
      (path === "direct" ? "the gateway picks workers itself; the load-balancers only advise."
        : "calls go through a load-balancer replica, which picks and retries.");
    const worker = $("worker-select").value || "(no worker)";
    $("weight-will").textContent = `Will send PUT /v1/workers/${worker}/weight {"weight":${$("weight-input").value}}; ` +
      `"Back to its own weight" sends DELETE to the same path.`;
    $("faults-will").textContent = `Will send PUT /v1/workers/${worker}/faults {"latency_ms":${$("latency-input").value},` +
      `"error_rate":${$("error-rate-input").value}}: ${worker} delays and fails its calls so.`;
    $("load-will").textContent = `Will send PUT /v1/load {"rate":${$("load-rate").value},"seconds":${$("load-seconds").value}}: ` +
      `the gateway sends echo calls at that rate (at most 2000/s for 600 s) and measures their availability; ` +
      `"Stop load" sends DELETE /v1/load.`;
  }

  async function api(method, path, body) {
    const result = $("control-result");
    result.textContent = `${method} ${path} …`;
    try {
      const response = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      result.dataset.ok = String(response.ok);
      result.textContent = response.ok
        ? `✓ ${method} ${path}: ${response.status} ${JSON.stringify(answer)}`
        : `✕ ${method} ${path}: ${response.status} ${answer?.error?.message || ""}`;
    } catch (_) {
      result.dataset.ok = "false";
      result.textContent = `✕ ${method} ${path}: the gateway did not answer`;
    }
  }

  const number = (id) => Number($(id).value);
  $("strategy-apply").addEventListener("click", () => api("PUT", "/v1/strategy", { strategy: $("strategy-select").value }));
  $("data-path-apply").addEventListener("click", () => {
    const path = document.querySelector('input[name="data-path"]:checked')?.value;
    if (path) api("PUT", "/v1/data-path", { data_path: path });
  });
  $("weight-apply").addEventListener("click", () =>
    api("PUT", `/v1/workers/${encodeURIComponent($("worker-select").value)}/weight`, { weight: number("weight-input") }));
  $("weight-clear").addEventListener("click", () =>
    api("DELETE", `/v1/workers/${encodeURIComponent($("worker-select").value)}/weight`));
  $("faults-apply").addEventListener("click", () =>
    api("PUT", `/v1/workers/${encodeURIComponent($("worker-select").value)}/faults`,
      { latency_ms: number("latency-input"), error_rate: number("error-rate-input") }));
  $("heal-all").addEventListener("click", () => api("DELETE", "/v1/faults"));
  $("load-start").addEventListener("click", () => api("PUT", "/v1/load", { rate: number("load-rate"), seconds: number("load-seconds") }));
  $("load-stop").addEventListener("click", () => api("DELETE", "/v1/load"));
  for (const id of ["strategy-select", "worker-select", "weight-input", "latency-input", "error-rate-input", "load-rate", "load-seconds",
    "data-path-proxy", "data-path-direct"]) {
    $(id).addEventListener("input", describe);
    $(id).addEventListener("change", describe);
  }

  // --- Start ---
  describe();
  state.token = readToken();
  if (state.token) connect();
  else askForToken("no token yet");
})();

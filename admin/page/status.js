// The sidecar's status page: loads /api/status, follows /events (server-sent events:
// WatchStatus as JSON) and polls /api/stats. No framework, no build step. Every value
// from the server goes into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 5000;        // stats and observed state (active requests, checks)
  const EVENT_REFRESH_MS = 300;   // after an event: fetch the observed state it changed
  const RETRY_MS = 5000;          // a stream the server refused or closed for good
  const MAX_EVENTS = 100;
  const STATS_WINDOW = "1m";

  const model = {
    server: null,
    clusters: new Map(),   // name -> cluster (settings, as /api/status gives them)
    endpoints: new Map(),  // "cluster\u0000id" -> endpoint (proto JSON)
    routes: [],
    events: new Map(),     // sequence -> event (proto JSON)
    stats: null,           // GetStats JSON
    applied: 0,            // the newest sequence the endpoints reflect
    auth: null,
  };
  let source = null;
  let kinds = [];
  let refreshTimer = null;
  let retryTimer = null;

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const key = (cluster, id) => cluster + "\u0000" + id;
  const num = (value) => (value === undefined || value === null ? 0 : Number(value));

  // "BREAKER_STATE_HALF_OPEN" -> "HALF OPEN"
  function enumText(value, prefix) {
    if (!value || value.endsWith("_UNSPECIFIED")) return "";
    return value.startsWith(prefix) ? value.slice(prefix.length).replace(/_/g, " ") : value;
  }

  const TONES = {
    ACTIVE: "s-ok", CLOSED: "s-ok", HEALTHY: "s-ok", READY: "s-ok",
    "HALF OPEN": "s-warn", DRAINING: "s-warn", UNKNOWN: "s-warn", STARTING: "s-warn",
    OPEN: "s-bad", UNHEALTHY: "s-bad", STOPPED: "s-bad", PANIC: "s-bad",
    DISABLED: "s-off",
  };

  function badge(text, extraClass) {
    const tone = TONES[text] || "s-off";
    return el("span", { class: "badge " + tone + (extraClass ? " " + extraClass : ""), text: text || "—" });
  }

  function seconds(duration) {  // proto JSON Duration "0.012s" -> 0.012
    return duration === undefined || duration === null ? null : parseFloat(duration);
  }

  function latency(duration) {
    const s = seconds(duration);
    if (s === null || Number.isNaN(s)) return "—";
    if (s < 0.001) return (s * 1000).toFixed(2) + " ms";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
    return s.toFixed(2) + " s";
  }

  function percent(ratio) {
    if (ratio === undefined || ratio === null) return "—";
    const p = ratio * 100;
    return (p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(p > 99 || p < 1 ? 2 : 1)) + " %";
  }

  function rate(value) {
    const v = num(value);
    return v === 0 ? "0" : v < 10 ? v.toFixed(2) : v.toFixed(0);
  }

  function clock(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString([], { hour12: false });
  }

  function ago(iso) {
    if (!iso) return "";
    const secondsAgo = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (secondsAgo < 60) return secondsAgo + " s ago";
    if (secondsAgo < 3600) return Math.round(secondsAgo / 60) + " min ago";
    if (secondsAgo < 86400) return Math.round(secondsAgo / 3600) + " h ago";
    return Math.round(secondsAgo / 86400) + " d ago";
  }

  function when(iso) {
    return el("time", { datetime: iso, title: iso, text: clock(iso) + " (" + ago(iso) + ")" });
  }

  function setConnection(state, text) {
    const node = $("connection");
    if (node.textContent === text) return;  // a live region: announce changes only
    node.className = "badge conn-" + state;
    node.textContent = text;
  }

  // ---------------------------------------------------------------- fetching

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("logged out");
    }
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  async function refreshStatus() {
    const status = await getJSON("/api/status");
    const sequence = num(status.sequence);
    if (sequence < model.applied) {
      scheduleRefresh(EVENT_REFRESH_MS);  // older than events already shown: ask again
      return;
    }
    model.applied = sequence;
    model.server = status.server;
    model.routes = status.routes;
    model.auth = status.auth;
    model.clusters = new Map(status.clusters.map((c) => [c.name, c]));
    model.endpoints = new Map();
    for (const cluster of status.clusters) {
      for (const endpoint of cluster.endpoints) model.endpoints.set(key(endpoint.cluster, endpoint.id), endpoint);
    }
    for (const event of status.events) model.events.set(num(event.sequence), event);
    if (kinds.length === 0) {
      kinds = status.eventKinds;
      connect();
    }
    model.statsAvailable = status.statsAvailable;
    render();
  }

  async function refreshStats() {
    if (!model.statsAvailable) return;
    model.stats = await getJSON("/api/stats?window=" + STATS_WINDOW);
    render();
  }

  async function refresh() {
    try {
      await refreshStatus();
      await refreshStats();
      $("updated").textContent = new Date().toLocaleTimeString([], { hour12: false });
    } catch (error) {
      if (!source || source.readyState !== EventSource.OPEN) setConnection("down", "DISCONNECTED");
    }
  }

  function scheduleRefresh(delay) {
    if (refreshTimer !== null) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, delay);
  }

  // ---------------------------------------------------------------- the event stream

  function connect() {
    if (source) source.close();
    setConnection("connecting", "CONNECTING");
    source = new EventSource("/events");
    source.onopen = () => setConnection("live", "LIVE");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (too many streams, logged out) or gone: try again, with a fresh load,
        // which sends a logged-out browser to the login form.
        setConnection("down", "DISCONNECTED");
        if (retryTimer === null) {
          retryTimer = setTimeout(() => { retryTimer = null; refresh().then(connect); }, RETRY_MS);
        }
      } else {
        setConnection("down", "DISCONNECTED: reconnecting");
      }
    };
    source.addEventListener("snapshot", (message) => onSnapshot(JSON.parse(message.data).snapshot));
    for (const kind of kinds) {
      source.addEventListener(kind, (message) => onEvent(JSON.parse(message.data).event));
    }
  }

  function onSnapshot(snapshot) {
    setConnection("live", "LIVE");
    const sequence = num(snapshot.sequence);
    if (sequence < model.applied) return;
    model.applied = sequence;
    const endpoints = new Map();
    for (const endpoint of snapshot.endpoints || []) {
      endpoints.set(key(endpoint.cluster, endpoint.id), endpoint);
      ensureCluster(endpoint.cluster);
    }
    model.endpoints = endpoints;
    if (snapshot.config && model.server) model.server.config = snapshot.config;
    render();
  }

  function ensureCluster(name) {
    if (!model.clusters.has(name)) model.clusters.set(name, { name: name, endpoints: [] });
  }

  // What an event changes in the model; the observed details it does not carry
  // (active requests, check results) come with the refresh it schedules.
  function onEvent(event) {
    const sequence = num(event.sequence);
    model.events.set(sequence, event);
    if (sequence > model.applied) {
      model.applied = sequence;
      apply(event);
    }
    render();
    scheduleRefresh(EVENT_REFRESH_MS);
  }

  function merge(endpoint, changes) {
    const k = key(endpoint.cluster, endpoint.id);
    const known = model.endpoints.get(k) || endpoint;
    model.endpoints.set(k, Object.assign({}, known, changes));
    ensureCluster(endpoint.cluster);
  }

  function apply(event) {
    if (event.endpointAdded) {
      const endpoint = event.endpointAdded.endpoint;
      model.endpoints.set(key(endpoint.cluster, endpoint.id), endpoint);
      ensureCluster(endpoint.cluster);
    } else if (event.endpointRemoved) {
      const endpoint = event.endpointRemoved.endpoint;
      model.endpoints.delete(key(endpoint.cluster, endpoint.id));
    } else if (event.endpointStatusChanged) {
      const endpoint = event.endpointStatusChanged.endpoint;
      merge(endpoint, { status: endpoint.status });
    } else if (event.breakerChanged) {
      const change = event.breakerChanged;
      merge(change.endpoint, { status: change.endpoint.status, breakerState: change.state,
                               breakerReason: change.reason, breakerSince: event.time });
    } else if (event.healthChanged) {
      const change = event.healthChanged;
      merge(change.endpoint, { status: change.endpoint.status, health: change.status,
                               healthReason: change.reason });
    } else if (event.panicChanged) {
      const cluster = model.clusters.get(event.panicChanged.cluster);
      if (cluster) cluster.panic = Boolean(event.panicChanged.panic);
    } else if (event.lifecycleChanged && model.server) {
      model.server.state = event.lifecycleChanged.state;
      model.server.stateReason = event.lifecycleChanged.reason;
    } else if (event.configLoaded && model.server) {
      model.server.config = event.configLoaded.config;
    }
  }

  // ---------------------------------------------------------------- rendering

  function render() {
    renderServer();
    renderClusters();
    renderRoutes();
    renderEvents();
  }

  function renderServer() {
    const server = model.server;
    if (!server) return;
    const state = enumText(server.state, "SERVER_STATE_");
    $("server-state").replaceWith(Object.assign(badge(state), { id: "server-state" }));
    $("server-reason").textContent = server.stateReason || "";
    const config = server.config || {};
    $("config-version").textContent = (config.version || "").slice(0, 12) || "none";
    $("config-version").title = config.version || "";
    $("config-source").textContent = config.source || "—";
    $("config-loaded").replaceChildren(config.loadTime ? when(config.loadTime) : "—");
    $("server-start").replaceChildren(server.startTime ? when(server.startTime) : "—");
    $("server-version").textContent = server.version || "";
    $("server-pid").textContent = server.pid || "";
    $("server-log-level").textContent = enumText(server.logLevel, "LOG_LEVEL_").toLowerCase();
    const auth = model.auth;
    if (auth && auth.enabled) {
      $("who").hidden = false;
      $("who").textContent = "Logged in as " + auth.name + " (" + auth.role + ")";
      $("logout").hidden = false;
    }
  }

  function statsRows(kind) {
    const rows = new Map();
    for (const row of (model.stats && model.stats[kind]) || []) rows.set(key(row.cluster, row.name), row);
    return rows;
  }

  function renderClusters() {
    const container = $("clusters");
    const byCluster = new Map();
    for (const name of model.clusters.keys()) byCluster.set(name, []);
    for (const endpoint of model.endpoints.values()) {
      if (!byCluster.has(endpoint.cluster)) byCluster.set(endpoint.cluster, []);
      byCluster.get(endpoint.cluster).push(endpoint);
    }
    const endpointStats = statsRows("endpoints");
    const clusterStats = statsRows("clusters");
    const tables = [];
    for (const name of [...byCluster.keys()].sort()) {
      const cluster = model.clusters.get(name) || { name: name };
      const endpoints = byCluster.get(name).sort((a, b) => a.id.localeCompare(b.id));
      tables.push(clusterTable(cluster, endpoints, endpointStats, clusterStats.get(key(name, name))));
    }
    if (tables.length === 0) tables.push(el("p", { class: "empty", text: "No clusters." }));
    container.replaceChildren(...tables);
  }

  function clusterTable(cluster, endpoints, endpointStats, totals) {
    const notes = [];
    if (cluster.lbPolicy) notes.push(cluster.lbPolicy.replace(/_/g, " "));
    if (cluster.healthChecks !== undefined) notes.push(cluster.healthChecks ? "health checks on" : "no health checks");
    if (cluster.circuitBreaker === false) notes.push("circuit breaker off");
    if (cluster.declared === false) notes.push("created by registration");
    if (totals) {
      notes.push(rate(totals.requestsPerSecond) + " req/s");
      notes.push("success " + percent(totals.successRate));
    }
    const caption = el("caption", {}, "Cluster ", el("code", { text: cluster.name }),
      cluster.panic ? el("span", {}, " ", badge("PANIC")) : null,
      notes.length ? el("span", { class: "sub", text: notes.join(" · ") }) : null);
    const head = el("thead", { role: "rowgroup" }, el("tr", { role: "row" },
      ...["Endpoint", "Status", "Health", "Breaker", "Active", "Requests/s", "Success", "p50 / p99"]
        .map((label, i) => el("th", { scope: "col", role: "columnheader", class: i >= 4 ? "num" : null, text: label }))));
    const body = el("tbody", { role: "rowgroup" });
    for (const endpoint of endpoints) body.append(endpointRow(cluster, endpoint, endpointStats.get(key(endpoint.cluster, endpoint.id))));
    if (endpoints.length === 0) {
      body.append(el("tr", { role: "row" }, el("td", { role: "cell", colspan: 8, class: "empty", text: "No endpoints." })));
    }
    return el("table", { class: "grid cluster", role: "table", "data-cluster": cluster.name }, caption, head, body);
  }

  function endpointRow(cluster, endpoint, stats) {
    const status = enumText(endpoint.status, "ENDPOINT_STATUS_");
    const health = enumText(endpoint.health, "HEALTH_STATUS_");
    let breaker = enumText(endpoint.breakerState, "BREAKER_STATE_");
    if (cluster.circuitBreaker === false) breaker = "DISABLED";

    const healthCell = el("td", { role: "cell", class: "health", "data-label": "Health" },
      health ? badge(health) : el("span", { class: "sub", text: "not checked" }));
    if (endpoint.healthReason) healthCell.append(el("span", { class: "sub", text: endpoint.healthReason }));
    const checks = (endpoint.healthCheckResults || []).slice(0, 3);
    if (checks.length) {
      healthCell.append(el("span", { class: "sub checks", text: "last: " + checks.map((r) =>
        (r.passed ? "pass" : "FAIL") + " " + (r.statusCode ? r.statusCode : (r.error || "no answer")) +
        " " + latency(r.latency)).join(", ") }));
    }

    const breakerCell = el("td", { role: "cell", class: "breaker", "data-label": "Breaker" },
      breaker ? badge(breaker, "breaker-state") : "—");
    if (endpoint.breakerReason) breakerCell.append(el("span", { class: "sub breaker-reason", text: endpoint.breakerReason }));
    if (breaker && breaker !== "CLOSED" && breaker !== "DISABLED" && endpoint.breakerSince) {
      breakerCell.append(el("span", { class: "sub" }, "since ", when(endpoint.breakerSince)));
    }

    const s = stats || {};
    return el("tr", { role: "row", "data-endpoint": endpoint.cluster + "/" + endpoint.id },
      el("th", { scope: "row", role: "rowheader", "data-label": "Endpoint" },
        el("code", { text: endpoint.id }), el("span", { class: "sub", text: endpoint.url })),
      el("td", { role: "cell", class: "status", "data-label": "Status" }, badge(status)),
      healthCell,
      breakerCell,
      el("td", { role: "cell", class: "num", "data-label": "Active", text: num(endpoint.activeRequests) }),
      el("td", { role: "cell", class: "num", "data-label": "Requests/s", text: stats ? rate(s.requestsPerSecond) : "—" }),
      el("td", { role: "cell", class: "num", "data-label": "Success", text: percent(s.successRate) }),
      el("td", { role: "cell", class: "num", "data-label": "p50 / p99", text: latency(s.latencyP50) + " / " + latency(s.latencyP99) }));
  }

  function renderRoutes() {
    const body = $("routes").tBodies[0];
    const stats = new Map(((model.stats && model.stats.routes) || []).map((r) => [r.name, r]));
    const routes = model.routes.map((r) => Object.assign({}, r));
    for (const row of stats.values()) {
      if (!routes.some((r) => r.name === row.name)) routes.push({ name: row.name, prefix: "", cluster: row.cluster });
    }
    const rows = routes.map((route) => {
      const s = stats.get(route.name);
      const match = [route.host, route.prefix].filter(Boolean).join(" ") +
        (route.methods && route.methods.length ? " (" + route.methods.join(", ") + ")" : "");
      const errors = s && s.successRate !== undefined ? percent(1 - s.successRate) : "—";
      return el("tr", { role: "row", "data-route": route.name },
        el("th", { scope: "row", role: "rowheader", "data-label": "Route" }, el("code", { text: route.name })),
        el("td", { role: "cell", "data-label": "Match", text: match || "—" }),
        el("td", { role: "cell", "data-label": "Cluster" }, el("code", { text: route.cluster })),
        el("td", { role: "cell", class: "num", "data-label": "Requests/s", text: s ? rate(s.requestsPerSecond) : "—" }),
        el("td", { role: "cell", class: "num", "data-label": "Error rate", text: errors }),
        el("td", { role: "cell", class: "num", "data-label": "p50", text: s ? latency(s.latencyP50) : "—" }),
        el("td", { role: "cell", class: "num", "data-label": "p99", text: s ? latency(s.latencyP99) : "—" }));
    });
    if (rows.length === 0) rows.push(el("tr", { role: "row" }, el("td", { role: "cell", colspan: 7, class: "empty", text: "No routes." })));
    body.replaceChildren(...rows);
  }

  function where(endpoint) {
    return endpoint ? endpoint.cluster + "/" + endpoint.id : "";
  }

  function change(prefix, before, after) {
    const a = enumText(before, prefix), b = enumText(after, prefix);
    return [a ? a + " → " : "", badge(b)];
  }

  // One event as [what (nodes), where, why].
  function describe(event) {
    if (event.endpointAdded) {
      const e = event.endpointAdded.endpoint;
      return [["Endpoint added"], where(e), e.url];
    }
    if (event.endpointRemoved) return [["Endpoint removed"], where(event.endpointRemoved.endpoint), event.endpointRemoved.reason];
    if (event.endpointStatusChanged) {
      const c = event.endpointStatusChanged;
      return [["Status ", ...change("ENDPOINT_STATUS_", c.previousStatus, c.endpoint.status)], where(c.endpoint), c.reason];
    }
    if (event.breakerChanged) {
      const c = event.breakerChanged;
      return [["Breaker ", ...change("BREAKER_STATE_", c.previousState, c.state)], where(c.endpoint), c.reason];
    }
    if (event.healthChanged) {
      const c = event.healthChanged;
      return [["Health ", ...change("HEALTH_STATUS_", c.previousStatus, c.status)], where(c.endpoint), c.reason];
    }
    if (event.configLoaded) {
      const c = event.configLoaded.config || {};
      return [["Configuration loaded"], c.source || "",
        "version " + (c.version || "").slice(0, 12) + ": " + num(c.clusterCount) + " clusters, " + num(c.routeCount) + " routes"];
    }
    if (event.configRejected) {
      const c = event.configRejected;
      const issue = (c.issues || [])[0];
      return [["Configuration rejected ", badge("REJECTED")], c.source,
        (c.stage || "") + (issue ? ": " + (issue.path ? issue.path + ": " : "") + issue.message : "") + (c.trigger ? " (" + c.trigger + ")" : "")];
    }
    if (event.panicChanged) {
      const c = event.panicChanged;
      return [[c.panic ? "Panic mode entered " : "Panic mode left ", badge(c.panic ? "PANIC" : "OFF")], c.cluster, c.reason];
    }
    if (event.fallbackUsed) {
      const c = event.fallbackUsed;
      return [["Fallback used: " + enumText(c.kind, "FALLBACK_KIND_").toLowerCase()], c.route + " → " + c.cluster, c.reason];
    }
    if (event.lifecycleChanged) {
      const c = event.lifecycleChanged;
      return [["Lifecycle ", ...change("SERVER_STATE_", c.previousState, c.state)], "sidecar", c.reason];
    }
    if (event.stateFileCorrupt) {
      const c = event.stateFileCorrupt;
      return [["State file corrupt"], c.path, c.error + (c.movedTo ? "; moved to " + c.movedTo : "")];
    }
    const kind = Object.keys(event).find((k) => k !== "sequence" && k !== "time") || "event";
    return [[kind], "", ""];
  }

  function renderEvents() {
    const sequences = [...model.events.keys()].sort((a, b) => b - a);
    for (const old of sequences.slice(MAX_EVENTS)) model.events.delete(old);
    const rows = sequences.slice(0, MAX_EVENTS).map((sequence) => {
      const event = model.events.get(sequence);
      const [what, place, why] = describe(event);
      return el("tr", { role: "row", "data-sequence": sequence },
        el("td", { role: "cell", "data-label": "Time" }, when(event.time)),
        el("th", { scope: "row", role: "rowheader", class: "what", "data-label": "Event" }, ...what),
        el("td", { role: "cell", "data-label": "Where" }, el("code", { text: place || "" })),
        el("td", { role: "cell", class: "why", "data-label": "Why", text: why || "" }));
    });
    if (rows.length === 0) rows.push(el("tr", { role: "row" }, el("td", { role: "cell", colspan: 4, class: "empty", text: "No events yet." })));
    $("events").tBodies[0].replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- start

  document.addEventListener("DOMContentLoaded", () => {
    refresh();
    setInterval(refresh, REFRESH_MS);
  });
})();

// The fedbus dashboard: reads the API with the viewer token (from ?token=, kept in sessionStorage),
// follows /api/v1/stream with EventSource for live updates and falls back to polling.
"use strict";

(() => {
  const EVENT_TYPES = [
    "RunCreated", "ModelInitialized", "ClientRegistered", "ClientEvicted", "RoundStarted", "UpdateAccepted",
    "UpdateRejected", "ClientDeclined", "QuorumReached", "RoundAggregated", "RoundFailed", "RunCompleted",
  ];
  const POLL_MS = 5000, DEBOUNCE_MS = 150, FOLLOW_AGAIN_MS = 30000;

  const params = new URLSearchParams(window.location.search);
  if (params.has("token")) {
    sessionStorage.setItem("fedbus.token", params.get("token"));
    params.delete("token");  // keep the token out of the address bar, history and bookmarks
    const rest = params.toString();
    history.replaceState(null, "", window.location.pathname + (rest ? `?${rest}` : ""));
  }
  const token = sessionStorage.getItem("fedbus.token");
  const state = { runId: params.get("run"), pending: null, source: null };
  const $ = (selector) => document.querySelector(selector);

  async function api(path) {
    const response = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${path}: ${response.status} ${body.error || ""}`);
    return body;
  }

  function cell(row, value, className) {
    const td = row.insertCell();
    td.textContent = value === null || value === undefined ? "–" : String(value);
    if (className) td.className = className;
    return td;
  }

  const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : null);
  const when = (seconds) => (typeof seconds === "number" ? new Date(seconds * 1000).toLocaleTimeString() : null);

  function renderRuns(runs) {
    const body = $("#runs tbody");
    body.replaceChildren();
    for (const run of runs) {
      const row = body.insertRow();
      row.dataset.runId = run.run_id;
      if (run.run_id === state.runId) row.className = "selected";
      cell(row, run.run_id);
      cell(row, run.status, `status-${run.status}`);
      cell(row, `${run.rounds_completed}/${run.rounds_planned ?? "?"}`);
      cell(row, fixed(run.metrics.accuracy, 4));
      cell(row, when(run.created_at));
      row.addEventListener("click", () => { state.runId = run.run_id; refresh(); });
    }
  }

  function renderRun(run, rounds) {
    $("#run-title").textContent = `Run ${run.run_id}`;
    const facts = $("#run-facts");
    facts.replaceChildren();
    const items = [
      ["status", run.status + (run.reason ? ` (${run.reason})` : "")],
      ["rounds", `${run.rounds_completed} of ${run.rounds_planned ?? "?"}`],
      ["model", `v${run.model_version ?? "–"} ${run.model_digest ? run.model_digest.slice(0, 12) : ""}`],
      ["task", run.config.task ?? run.config.model],
    ];
    for (const [name, value] of items) {
      const span = document.createElement("span");
      span.className = "fact";
      span.dataset.fact = name;
      span.textContent = `${name}: ${value}`;
      facts.appendChild(span);
    }
    const planned = run.rounds_planned || Math.max(1, rounds.length);
    $("#round-progress-bar").style.width = `${Math.min(100, (100 * run.rounds_completed) / planned)}%`;
    const current = rounds[rounds.length - 1];
    const line = $("#current-round");
    line.dataset.round = current ? current.round : "";
    line.dataset.status = current ? current.status : "";
    line.textContent = current
      ? `round ${current.round} (attempt ${current.attempt}): ${current.status}, ` +
        `${current.accepted.length}/${current.selected.length} updates accepted, ${current.rejected.length} rejected`
      : "no round started yet";
  }

  function renderRounds(rounds) {
    const body = $("#rounds tbody");
    body.replaceChildren();
    for (const r of rounds.slice().reverse()) {
      const row = body.insertRow();
      row.dataset.round = r.round;
      cell(row, r.round);
      cell(row, r.status, `status-${r.status}`);
      cell(row, r.selected.length);
      cell(row, r.accepted.length);
      cell(row, r.rejected.map((x) => `${x.client_id}: ${x.reason}`).join(", ") || 0);
      cell(row, r.declined.length);
      cell(row, fixed(r.durations.aggregation_s, 2));
      cell(row, fixed(r.metrics.accuracy, 4));
      cell(row, fixed(r.metrics.loss, 4));
      // The round's cohort on its own test data, scoring the model the round started from.
      const fed = r.federated_evaluation;
      cell(row, fed ? `${fixed(fed.accuracy, 4)} (v${fed.model_version}, ${fed.samples})` : "–");
    }
    const done = rounds.filter((r) => r.status === "aggregated");
    window.FedbusCharts.lineChart($("#chart-metrics"), [
      { name: "accuracy", color: "#2f6fde", points: done.map((r) => ({ x: r.round, y: r.metrics.accuracy })) },
      { name: "loss", color: "#d9534f", points: done.map((r) => ({ x: r.round, y: r.metrics.loss })) },
    ]);
  }

  function renderPrivacy(privacy, rounds) {
    const series = [{ name: "run epsilon", color: "#7b4fd9", points: privacy.rounds.map((r) => ({ x: r.round, y: r.epsilon })) }];
    if (privacy.target_epsilon !== null && privacy.rounds.length) {
      const xs = privacy.rounds.map((r) => r.round);
      series.push({ name: "target", color: "#9aa1b1", points: [Math.min(...xs), Math.max(...xs)].map((x) => ({ x, y: privacy.target_epsilon })) });
    }
    // User-level DP (docs/privacy.md): the aggregator's epsilon for the released models, in each round's metrics.
    const user = rounds.filter((r) => r.status === "aggregated" && typeof r.metrics.user_epsilon === "number");
    if (user.length) {
      series.push({ name: "user-level epsilon", color: "#e08a1e", points: user.map((r) => ({ x: r.round, y: r.metrics.user_epsilon })) });
    }
    window.FedbusCharts.lineChart($("#chart-epsilon"), series);
    const last = user.length ? user[user.length - 1].metrics : null;
    $("#privacy-facts").textContent = (privacy.enabled
      ? `spent ${fixed(privacy.epsilon_spent, 3) ?? "0"} of ${privacy.target_epsilon}; budget left ${fixed(privacy.budget_left, 3)}` +
        `; noise multiplier ${privacy.noise_multiplier ?? "unknown"}`
      : "record-level differential privacy is off for this run") +
      (last ? `; user-level epsilon ${fixed(last.user_epsilon, 3)}${last.user_epsilon_amplified ? " (amplified by sampling)" : " (not amplified)"}` : "");
  }

  function renderClients(clients) {
    const body = $("#clients tbody");
    body.replaceChildren();
    for (const c of clients) {
      const row = body.insertRow();
      row.dataset.clientId = c.client_id;
      cell(row, c.client_id);
      cell(row, c.capabilities.device);
      cell(row, c.capabilities.hostname);
      cell(row, when(c.last_seen));
      cell(row, c.rounds_joined);
      cell(row, fixed(c.epsilon, 3));
      cell(row, c.evicted ? `yes: ${c.evicted_reason || ""}` : "no");
    }
  }

  async function refresh() {
    try {
      const [{ runs }, { clients }] = await Promise.all([api("/api/v1/runs"), api("/api/v1/clients")]);
      if (!state.runId && runs.length) state.runId = runs[0].run_id;
      renderRuns(runs);
      renderClients(clients);
      if (state.runId) {
        const id = encodeURIComponent(state.runId);
        const [run, { rounds }, privacy] = await Promise.all([
          api(`/api/v1/runs/${id}`), api(`/api/v1/runs/${id}/rounds`), api(`/api/v1/runs/${id}/privacy`),
        ]);
        renderRun(run, rounds);
        renderRounds(rounds);
        renderPrivacy(privacy, rounds);
      }
      $("#error").textContent = "";
      document.body.dataset.refreshedAt = String(Date.now());
    } catch (error) {
      $("#error").textContent = String(error.message || error);
    }
  }

  function soon() {
    if (state.pending) return;
    state.pending = setTimeout(() => { state.pending = null; refresh(); }, DEBOUNCE_MS);
  }

  function setStatus(value) {
    const badge = $("#live-status");
    badge.dataset.state = value;
    badge.textContent = value;
  }

  function follow() {
    if (!window.EventSource) { setStatus("polling"); return; }
    const url = "/api/v1/stream" + (token ? `?token=${encodeURIComponent(token)}` : "");
    const source = new EventSource(url);
    state.source = source;
    source.onopen = () => setStatus("live");
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) { setStatus("reconnecting"); return; }
      // Closed for good (e.g. 503: every stream slot taken): poll, and ask for a stream again later.
      setStatus("polling");
      setTimeout(follow, FOLLOW_AGAIN_MS);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, soon);
  }

  refresh();
  follow();
  // A slow poll as well: covers a closed stream and anything the stream cannot tell (time passing).
  setInterval(() => { if ($("#live-status").dataset.state !== "live") refresh(); }, POLL_MS);
})();

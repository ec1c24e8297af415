// cco-monitor dashboard. Served by the daemon with uPlot (vendored): no CDN, no build step.
// Figures come from the JSON API; accounted events are pushed by /api/stream, and each one
// refreshes the figures (at most once a second). Every value is written with textContent.
"use strict";
(function () {
  const TIERS = ["opus", "sonnet", "haiku", "other"]; // bottom to top of the stack
  const RANGES = {
    "1h": { bucket: "minute", since: "60m", step: 60, title: "Cost per minute, last hour", period: "daily" },
    "24h": { bucket: "hour", since: "24h", step: 3600, title: "Cost per hour, last 24 hours", period: "daily" },
    "7d": { bucket: "hour", since: "7d", step: 3600, title: "Cost per hour, last 7 days", period: "weekly" },
    "30d": { bucket: "day", since: "30d", step: 86400, title: "Cost per day, last 30 days", period: "monthly" },
  };
  // The cumulative chart: the budget period that goes with the range.
  const PERIODS = {
    daily: { key: "today", bucket: "hour", step: 3600, word: "today" },
    weekly: { key: "this_week", bucket: "hour", step: 3600, word: "this week" },
    monthly: { key: "this_month", bucket: "day", step: 86400, word: "this month" },
  };
  const STATE_WORDS = { ok: "ok", warning: "warning", exceeded: "exceeded", projected_to_exceed: "projected to exceed" };
  const FALLBACK_REFRESH_MS = 30000; // source health and burn rates also change without events
  const EVENT_ROWS = 20;

  // Optional bearer token: open the page as /#token=... (kept in this tab only).
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("cco-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("cco-token");
  const css = getComputedStyle(document.documentElement);
  const colour = (name) => css.getPropertyValue("--" + name).trim();

  function $(id) { return document.getElementById(id); }
  function usd(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    const abs = Math.abs(value);
    const sign = value < 0 ? "-" : "";
    if (abs > 0 && abs < 0.0001) return sign + "<$0.0001";
    const digits = abs > 0 && abs < 1 ? 4 : 2; // more digits only below a dollar
    return sign + "$" + abs.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function count(value) { return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US"); }
  function time(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
  function setText(id, text) { $(id).textContent = text; }
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function row(values, className) {
    const tr = el("tr", className);
    for (const value of values) {
      const td = el("td");
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
      if (typeof value === "string" && /^[-<]?\$|^[\d,.]+$/.test(value)) td.className = "num";
      tr.appendChild(td);
    }
    return tr;
  }
  function fill(table, rows) { table.tBodies[0].replaceChildren(...rows); }
  function tierCell(tier) {
    const span = el("span");
    span.append(el("i", "dot tier-" + tier), document.createTextNode(tier));
    return span;
  }
  function stateText(state) {
    const span = el("span", "state", STATE_WORDS[state] || state || "");
    span.dataset.state = state || "";
    return span;
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }
  function sumByTier(buckets) {
    const out = {};
    for (const bucket of buckets) {
      for (const [tier, cost] of Object.entries(bucket.cost_by_tier || {})) out[tier] = (out[tier] || 0) + cost;
    }
    return out;
  }

  // -- figures --------------------------------------------------------------------------

  function connectionState(summary) {
    const states = (summary.sources || []).map((s) => s.connection_status);
    if (states.length && states.every((s) => s === "connected")) return "connected";
    if (states.some((s) => s === "connected")) return "partial";
    return states[0] || "unknown";
  }

  function budgetFor(summary, period) {
    return (summary.budgets || []).find((b) => b.period === period && !b.tier) || null;
  }

  function periodCard(id, summary, periodKey, budgetPeriod) {
    const period = (summary.periods || {})[periodKey] || {};
    const budget = budgetFor(summary, budgetPeriod);
    setText(id + "-total", usd(period.cost_usd));
    const card = $(id + "-card");
    card.dataset.state = budget ? budget.state : "";
    setText(id + "-note", budget
      ? Math.round(budget.used_ratio * 100) + "% of " + usd(budget.limit_usd) + " · " + (STATE_WORDS[budget.state] || budget.state)
      : count(period.requests) + " requests");
  }

  function renderSummary(summary, health, today, month) {
    const state = connectionState(summary);
    $("connection").dataset.state = state;
    setText("connection", state);
    setText("updated", "updated " + new Date(summary.generated_at).toLocaleTimeString());
    const periods = summary.periods || {};
    periodCard("today", summary, "today", "daily");
    periodCard("month", summary, "this_month", "monthly");
    setText("hour-total", usd((periods.this_hour || {}).cost_usd));
    setText("hour-requests", count((periods.this_hour || {}).requests) + " requests");
    const last5m = periods.last_5m; // added by the summary's newer versions
    $("last5m-card").hidden = !last5m;
    if (last5m) {
      setText("last5m-total", usd(last5m.cost_usd));
      setText("last5m-requests", count(last5m.requests) + " requests");
    }
    const burn = summary.burn_rate_usd_per_hour || {};
    setText("burn-5m", usd(burn["5m"]) + "/h");
    setText("burn-1h", "1 h average " + usd(burn["1h"]) + "/h");
    const totals = summary.totals || {};
    setText("total-cost", usd(totals.cost_usd));
    setText("total-requests", count(totals.requests) + " requests · " + count(totals.cache_hits) + " cache hits");
    renderOptional(summary);
    renderTiers(summary, today, month);
    renderProjections(summary.projections);
    renderBudgets(summary.budgets);
    renderSources(summary, health);
  }

  function renderOptional(summary) { // fields of newer summaries: shown when present
    const savings = summary.cache_savings_usd;
    $("savings-card").hidden = typeof savings !== "number";
    if (typeof savings === "number") {
      setText("savings", usd(savings));
      const percent = summary.cache_savings_percent;
      setText("savings-note", typeof percent === "number"
        ? percent.toFixed(1) + "% of the cost without the cache"
        : "what the cache hits would have cost");
    }
    const eps = summary.events_per_second;
    $("eps-card").hidden = !eps;
    if (eps) {
      setText("eps-1m", Number(eps["1m"] || 0).toFixed(2) + "/s");
      setText("eps-5m", "5 min average " + Number(eps["5m"] || 0).toFixed(2) + "/s");
    }
  }

  function renderTiers(summary, today, month) {
    const totals = summary.totals || {};
    const byTier = summary.by_tier || {};
    const rows = TIERS.map((tier) => {
      const t = byTier[tier] || {};
      return row([tierCell(tier), usd(today[tier] || 0), usd(month[tier] || 0), usd(t.cost_usd || 0), count(t.requests || 0)]);
    });
    const unattributed = totals.unattributed_cost_usd || totals.unattributed_requests || today.unattributed || month.unattributed;
    if (unattributed) {
      rows.push(row([tierCell("unattributed"), usd(today.unattributed || 0), usd(month.unattributed || 0),
        usd(totals.unattributed_cost_usd || 0), count(totals.unattributed_requests || 0)], "unattributed"));
    }
    $("unattributed-note").hidden = !unattributed;
    fill($("tiers"), rows);
  }

  function renderProjections(projections) {
    const entries = Object.entries(projections || {});
    $("projections-section").hidden = !entries.length;
    fill($("projections"), entries.map(([horizon, p]) => row([
      horizon.replace(/^end_of_/, ""), usd(p.spent_usd), usd(p.cost_usd), usd(p.low_usd) + " – " + usd(p.high_usd)])));
  }

  function renderBudgets(budgets) {
    $("budgets-section").hidden = !(budgets && budgets.length);
    $("budgets").replaceChildren(...(budgets || []).map((b) => {
      const line = el("div", "budget");
      const bar = el("div", "bar");
      bar.dataset.state = b.state;
      const fillDiv = el("div", "fill");
      fillDiv.style.width = Math.min(100, (b.used_ratio || 0) * 100) + "%";
      const mark = el("div", "projected");
      mark.style.left = "calc(" + Math.min(100, (b.projected_ratio || 0) * 100) + "% - 1px)";
      mark.title = "projected " + usd(b.projected_usd);
      bar.append(fillDiv, mark);
      const text = el("span");
      text.append(usd(b.spent_usd) + " of " + usd(b.limit_usd) + " (" + ((b.used_ratio || 0) * 100).toFixed(1) +
        "%) · projected " + usd(b.projected_usd) + " · ", stateText(b.state));
      line.append(el("span", "", b.period + (b.tier ? " · " + b.tier : "") + " budget"), bar, text);
      return line;
    }));
  }

  function renderSources(summary, health) {
    const checks = {};
    for (const s of (health && health.sources) || []) checks[s.name] = s;
    fill($("sources"), (summary.sources || []).map((s) => {
      const h = checks[s.name] || {};
      const badge = el("span", "badge", h.status || "?");
      badge.dataset.state = h.status || "";
      const conn = el("span", "badge", s.connection_status);
      conn.dataset.state = s.connection_status;
      return row([s.name + " (" + s.kind + ")", badge, conn, s.reason || h.reason || "", count(s.proxy_restarts),
        count(s.gaps), time(h.last_snapshot_at)]);
    }));
  }

  function renderAlerts(alerts) {
    $("alerts-empty").hidden = alerts.length > 0;
    fill($("alerts"), alerts.map((a) => row([time(a.at), a.kind, (a.period || "") + (a.tier ? " · " + a.tier : ""), a.message])));
  }

  // -- events (pushed) ------------------------------------------------------------------

  const shown = [];
  function eventRow(e) {
    const hit = e.cache_hits > 0 || e.event_type === "cache_hit";
    return row([new Date(e.occurred_at).toLocaleTimeString(), e.event_type, tierCell(e.tier), e.model || "",
      e.tokens === null || e.tokens === undefined ? "" : count(e.tokens), usd(e.cost_usd), hit ? el("span", "hit", "cache hit") : ""]);
  }
  function addEvents(events) { // newest first; keyed, so a pushed event already listed is not repeated
    for (const e of events.slice().reverse()) {
      if (shown.some((s) => s.key === e.key && s.source === e.source)) continue;
      shown.unshift(e);
    }
    shown.sort((a, b) => Date.parse(b.occurred_at) - Date.parse(a.occurred_at));
    shown.length = Math.min(shown.length, EVENT_ROWS);
    fill($("events"), shown.map(eventRow));
  }

  let received = 0;
  let lastId = null;
  function setLive(state, text) { $("live").dataset.state = state; setText("live", text); }
  async function stream() { // /api/stream read with fetch (EventSource cannot send a token)
    for (;;) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (token) headers.Authorization = "Bearer " + token;
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await fetch("/api/stream", { headers: headers, cache: "no-store" });
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        setLive("live", "live · " + count(received) + " events pushed");
        if (lastId === null) loadEvents(); // after subscribing: nothing falls in between
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            onMessage(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (err) {
        setLive("connecting", "live: " + String(err && err.message ? err.message : err));
      }
      setLive("connecting", "live: reconnecting");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
  function onMessage(block) {
    const fields = {};
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      fields[name] = fields[name] === undefined ? value : fields[name] + "\n" + value;
    }
    if (fields.id !== undefined) lastId = fields.id;
    if (fields.event === "reset") lastId = String(JSON.parse(fields.data).last_event_id);
    if (fields.event !== "accounted") return;
    received += 1;
    addEvents([JSON.parse(fields.data)]);
    setLive("live", "live · " + count(received) + " events pushed");
    scheduleRefresh();
  }
  async function loadEvents() {
    try { addEvents((await getJSON("/api/events?limit=" + EVENT_ROWS)).events || []); } catch (err) { showError(err); }
  }

  // -- charts ---------------------------------------------------------------------------

  let range = RANGES[sessionStorage.getItem("cco-range")] ? sessionStorage.getItem("cco-range") : "1h";
  let zone = null;
  const charts = {};
  let shownCost = null;

  function slots(buckets, step, since, now) { // every bucket of the range, empty ones as 0
    const known = buckets.map((b) => Date.parse(b.start) / 1000);
    let first = known.length ? known[0] : Math.floor(now / step) * step;
    while (first - step >= since) first -= step;
    const xs = [];
    for (let t = first; t <= now; t += step) xs.push(t);
    const index = new Map();
    buckets.forEach((b, i) => {
      const at = Math.round((known[i] - first) / step); // day buckets may be 23 or 25 h long
      if (at >= 0 && at < xs.length) { xs[at] = known[i]; index.set(at, b); }
    });
    return { xs, at: (i) => index.get(i) };
  }

  function axes(step) {
    const grid = { stroke: colour("line"), width: 1 };
    return [
      { stroke: colour("muted"), grid: grid, ticks: grid },
      { stroke: colour("muted"), grid: grid, ticks: grid, size: 64,
        values: (u, values) => values.map((v) => usd(v)) },
    ];
  }

  function draw(name, target, series, data, step) {
    const width = Math.max(280, $(target).clientWidth);
    const key = series.map((s) => s.label).join("|") + "|" + step;
    const old = charts[name];
    if (old && old.key === key) {
      old.plot.setData(data);
      old.plot.setSize({ width: width, height: 220 });
      const cursor = old.plot.cursor; // keep a hover read-out current while data arrives
      if (cursor.left >= 0) old.plot.setCursor({ left: cursor.left, top: cursor.top });
      return;
    }
    if (old) old.plot.destroy();
    const options = {
      width: width, height: 220, series: series, axes: axes(step),
      cursor: { points: { size: 7 } }, legend: { live: true },
      // Bars start at their bucket's start: leave room for the last one.
      scales: { x: { time: true, range: (u, min, max) => [min, max + (name === "cost" ? step : 0)] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 0.01] } },
    };
    if (zone) options.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), zone);
    charts[name] = { key: key, plot: new uPlot(options, data, $(target)) };
  }

  function renderCostChart(buckets, spec) {
    const now = Date.now() / 1000;
    const since = now - { "60m": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 }[spec.since];
    const { xs, at } = slots(buckets, spec.step, since, now);
    const raw = {};
    for (const tier of [...TIERS, "unattributed"]) {
      raw[tier] = xs.map((_, i) => ((at(i) || {}).cost_by_tier || {})[tier] || 0);
    }
    const stacked = []; // running sums, bottom tier first
    let sums = xs.map(() => 0);
    for (const tier of TIERS) { sums = sums.map((s, i) => s + raw[tier][i]); stacked.push(sums); }
    const bars = uPlot.paths.bars({ size: [0.85, 48], align: 1 });
    // The read-outs look the figures up here: a redraw with new data keeps the old closures.
    shownCost = { raw: raw, totals: stacked[stacked.length - 1] };
    const series = [{ label: "time", value: (u, ts, si, i) => (i === null || i === undefined ? "–" :
      new Date(ts * 1000).toLocaleString() + " · total " + usd(shownCost.totals[i] + shownCost.raw.unattributed[i])) }];
    const data = [xs];
    for (let t = TIERS.length - 1; t >= 0; t--) { // top of the stack first: lower bars paint over it
      const tier = TIERS[t];
      series.push({ label: tier, stroke: colour(tier), fill: colour(tier), paths: bars, points: { show: false },
        value: (u, v, si, i) => (i === null || i === undefined ? "–" : usd(shownCost.raw[tier][i])) });
      data.push(stacked[t].map((v) => (v > 0 ? v : null))); // no zero-height bars
    }
    series.push({ label: "unattributed (not stacked)", stroke: colour("unattributed"), width: 0, paths: () => null,
      points: { show: true, size: 7, fill: colour("unattributed") },
      value: (u, v, si, i) => (i === null || i === undefined ? "–" : usd(shownCost.raw.unattributed[i])) });
    data.push(raw.unattributed.map((v) => (v > 0 ? v : null)));
    draw("cost", "cost-chart", series, data, spec.step);
  }

  function renderCumulative(summary, buckets, periodName) {
    const p = PERIODS[periodName];
    const budget = budgetFor(summary, periodName);
    const period = (summary.periods || {})[p.key] || {};
    const start = Date.parse((budget && budget.period_start) || period.start) / 1000;
    const end = Date.parse((budget && budget.period_end) || period.end) / 1000;
    const now = Math.min(end, Date.parse(summary.generated_at) / 1000);
    const xs = [start];
    const spent = [0];
    let total = 0;
    for (const b of buckets) {
      const at = Date.parse(b.start) / 1000;
      if (at < start) continue;
      total += b.cost_usd || 0;
      const x = Math.min(now, at + p.step);
      if (x > xs[xs.length - 1]) { xs.push(x); spent.push(total); } else spent[spent.length - 1] = total;
    }
    if (now > xs[xs.length - 1]) { xs.push(now); spent.push(total); }
    const projection = (summary.projections || {})["end_of_" + { daily: "day", weekly: "week", monthly: "month" }[periodName]];
    const projected = budget ? budget.projected_usd : projection ? projection.cost_usd : null;
    if (end > now) { xs.push(end); spent.push(null); }
    const series = [{ label: "time", value: (u, ts) => (ts ? new Date(ts * 1000).toLocaleString() : "–") },
      { label: "spent", stroke: colour("sonnet"), fill: colour("sonnet") + "33", width: 2, points: { show: false },
        value: (u, v) => usd(v) }];
    const data = [xs, spent];
    if (projected !== null && projected !== undefined) {
      series.push({ label: "projected", stroke: colour("fg"), dash: [5, 5], width: 1.5, spanGaps: true,
        points: { show: false }, value: (u, v) => usd(v) });
      data.push(xs.map((x, i) => (x === now ? total : i === xs.length - 1 && end > now ? projected : null)));
    }
    if (budget) {
      series.push({ label: periodName + " budget", stroke: colour("bad"), width: 2, points: { show: false },
        value: (u, v) => usd(v) });
      data.push(xs.map(() => budget.limit_usd));
    }
    setText("cumulative-title", "Spend " + p.word + (budget ? " vs the " + periodName + " budget" : ""));
    setText("cumulative-note", budget
      ? usd(total) + " of " + usd(budget.limit_usd) + " · projected " + usd(budget.projected_usd) + " · " + (STATE_WORDS[budget.state] || budget.state)
      : usd(total) + " so far; no " + periodName + " budget is set (budgets in config.toml).");
    draw("cumulative", "cumulative-chart", series, data, p.step);
  }

  // -- refresh --------------------------------------------------------------------------

  function showError(err) {
    $("connection").dataset.state = "unreachable";
    setText("connection", "monitor unreachable");
    $("error").hidden = false;
    setText("error", String(err && err.message ? err.message : err));
  }

  let refreshing = null;
  let again = false;
  async function refresh() {
    if (refreshing) { again = true; return refreshing; }
    refreshing = (async () => {
      try {
        const spec = RANGES[range];
        const summary = await getJSON("/api/summary");
        zone = summary.timezone || null;
        const periods = summary.periods || {};
        const cumulative = PERIODS[spec.period];
        const budget = budgetFor(summary, spec.period);
        const cumulativeStart = (budget && budget.period_start) || (periods[cumulative.key] || {}).start;
        const q = (s) => encodeURIComponent(s || "");
        const [series, cumulativeSeries, hours, days, health, alerts] = await Promise.all([
          getJSON("/api/timeseries?bucket=" + spec.bucket + "&since=" + spec.since),
          getJSON("/api/timeseries?bucket=" + cumulative.bucket + "&since=" + q(cumulativeStart)),
          getJSON("/api/timeseries?bucket=hour&since=" + q((periods.today || {}).start)),
          getJSON("/api/timeseries?bucket=day&since=" + q((periods.this_month || {}).start)),
          getJSON("/health").catch(() => null),
          getJSON("/api/alerts?limit=20"),
        ]);
        renderSummary(summary, health, sumByTier(hours.buckets || []), sumByTier(days.buckets || []));
        setText("cost-title", spec.title);
        renderCostChart(series.buckets || [], spec);
        renderCumulative(summary, cumulativeSeries.buckets || [], spec.period);
        renderAlerts(alerts.alerts || []);
        $("error").hidden = true;
      } catch (err) {
        showError(err);
      }
    })();
    await refreshing;
    refreshing = null;
    if (again) { again = false; refresh(); }
  }

  let scheduled = null;
  function scheduleRefresh() { // pushed events refresh the figures, at most once a second
    if (scheduled === null) scheduled = setTimeout(() => { scheduled = null; refresh(); }, 1000);
  }

  for (const button of document.querySelectorAll("#ranges button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      sessionStorage.setItem("cco-range", range);
      for (const b of document.querySelectorAll("#ranges button")) b.setAttribute("aria-pressed", String(b === button));
      refresh();
    });
  }
  for (const b of document.querySelectorAll("#ranges button")) b.setAttribute("aria-pressed", String(b.dataset.range === range));
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(refresh, 200); });

  refresh();
  stream();
  setInterval(refresh, FALLBACK_REFRESH_MS);
})();

// cco-monitor dashboard: polls the JSON API of the daemon that serves this page.
// Self-contained (no CDN, works offline). Every value is written with textContent.
"use strict";
(function () {
  const TIERS = ["opus", "sonnet", "haiku", "other", "unattributed"];
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  // Optional bearer token: open the page as /#token=... (kept in this tab only).
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("cco-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("cco-token");

  function $(id) { return document.getElementById(id); }
  function usd(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return "$" + Number(value).toFixed(4);
  }
  function setText(id, text) { $(id).textContent = text; }
  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }
  function fill(tbody, rows) {
    tbody.replaceChildren();
    for (const values of rows) {
      const tr = document.createElement("tr");
      for (const value of values) {
        if (value instanceof Node) cell(tr, "").appendChild(value); else cell(tr, value);
      }
      tbody.appendChild(tr);
    }
  }
  async function getJSON(path) {
    const headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }
  function sumByTier(buckets) {
    const out = {};
    for (const bucket of buckets) {
      for (const [tier, cost] of Object.entries(bucket.cost_by_tier || {})) {
        out[tier] = (out[tier] || 0) + cost;
      }
    }
    return out;
  }

  function connectionState(summary) {
    const states = (summary.sources || []).map((s) => s.connection_status);
    if (states.length && states.every((s) => s === "connected")) return "connected";
    if (states.some((s) => s === "connected")) return "partial";
    return states[0] || "unknown";
  }

  function renderSummary(summary, today, month) {
    const state = connectionState(summary);
    const badge = $("connection");
    badge.dataset.state = state;
    badge.textContent = state;
    setText("updated", "updated " + new Date(summary.generated_at).toLocaleTimeString());
    const periods = summary.periods || {};
    setText("hour-total", usd((periods.this_hour || {}).cost_usd));
    setText("today-total", usd((periods.today || {}).cost_usd));
    setText("month-total", usd((periods.this_month || {}).cost_usd));
    const burn = summary.burn_rate_usd_per_hour || {};
    setText("burn-5m", usd(burn["5m"]) + "/h");
    setText("burn-1h", "1 h average " + usd(burn["1h"]) + "/h");
    const totals = summary.totals || {};
    setText("total-cost", usd(totals.cost_usd));
    setText("total-requests", (totals.requests || 0) + " requests, " +
      usd(totals.unattributed_cost_usd) + " unattributed");
    const byTier = summary.by_tier || {};
    const rows = [];
    for (const tier of TIERS) {
      const t = byTier[tier] || {};
      if (tier === "unattributed") {
        if (!today[tier] && !month[tier]) continue;
        rows.push([tier, usd(today[tier] || 0), usd(month[tier] || 0),
          usd(totals.unattributed_cost_usd), String(totals.unattributed_requests || 0)]);
        continue;
      }
      rows.push([tier, usd(today[tier] || 0), usd(month[tier] || 0), usd(t.cost_usd || 0),
        String(t.requests || 0)]);
    }
    fill($("tiers").tBodies[0], rows);
    renderProjections(summary.projections);
    renderBudgets(summary.budgets);
    fill($("sources").tBodies[0], (summary.sources || []).map((s) => [
      s.name, s.connection_status, String(s.proxy_restarts), String(s.gaps), s.reason || ""]));
  }

  function bandBar(value, low, high, scale, state) {
    const bar = document.createElement("div");
    bar.className = "bar";
    if (state) bar.dataset.state = state;
    const fillDiv = document.createElement("div");
    fillDiv.className = "fill";
    fillDiv.style.width = Math.min(100, (value / scale) * 100) + "%";
    bar.appendChild(fillDiv);
    if (low !== null && high !== null && low !== undefined && high !== undefined) {
      const band = document.createElement("div");
      band.className = "band";
      band.style.left = Math.min(100, (low / scale) * 100) + "%";
      band.style.width = Math.max(0, Math.min(100, (high / scale) * 100) - Math.min(100, (low / scale) * 100)) + "%";
      bar.appendChild(band);
    }
    return bar;
  }

  function renderProjections(projections) {
    const section = $("projections-section");
    if (!projections || !Object.keys(projections).length) { section.hidden = true; return; }
    section.hidden = false;
    const entries = Object.entries(projections);
    const scale = Math.max(1e-9, ...entries.map(([, p]) => p.high_usd || p.cost_usd || 0));
    fill($("projections").tBodies[0], entries.map(([horizon, p]) => [
      horizon.replace(/_/g, " "), usd(p.cost_usd), usd(p.low_usd) + " – " + usd(p.high_usd),
      bandBar(p.cost_usd || 0, p.low_usd, p.high_usd, scale, null)]));
  }

  function renderBudgets(budgets) {
    const section = $("budgets-section");
    const box = $("budgets");
    box.replaceChildren();
    if (!budgets || !budgets.length) { section.hidden = true; return; }
    section.hidden = false;
    for (const b of budgets) {
      const row = document.createElement("div");
      row.className = "budget";
      const label = document.createElement("span");
      label.textContent = b.period + (b.tier ? " · " + b.tier : "") + " (" + usd(b.limit_usd) + ")";
      const text = document.createElement("span");
      const ratio = b.used_ratio || 0;
      text.textContent = usd(b.spent_usd) + " · " + (ratio * 100).toFixed(1) + "%" +
        (b.projected_usd !== null && b.projected_usd !== undefined ? " · projected " + usd(b.projected_usd) : "") +
        (b.state ? " · " + b.state : "");
      row.append(label, bandBar(ratio, null, null, 1, b.state), text);
      box.appendChild(row);
    }
  }

  function renderChart(buckets) {
    const width = 720, height = 180, pad = 28;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("preserveAspectRatio", "none");
    const now = Date.now();
    const start = now - 60 * 60000;
    const slot = (width - pad) / 60;
    let max = 0;
    for (const b of buckets) max = Math.max(max, b.cost_usd || 0);
    max = max || 1e-6;
    for (const b of buckets) {
      const at = Date.parse(b.start);
      if (at < start - 60000) continue;
      const x = pad + Math.floor((at - start) / 60000) * slot;
      let y = height - 16;
      for (const tier of TIERS) {
        const cost = (b.cost_by_tier || {})[tier] || 0;
        if (!cost) continue;
        const h = (cost / max) * (height - 30);
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", String(x));
        rect.setAttribute("y", String(y - h));
        rect.setAttribute("width", String(Math.max(1, slot - 1)));
        rect.setAttribute("height", String(h));
        rect.setAttribute("class", "tier-" + tier);
        rect.style.fill = "var(--" + tier + ")";
        const title = document.createElementNS(SVG, "title");
        title.textContent = new Date(at).toLocaleTimeString() + " " + tier + " " + usd(cost);
        rect.appendChild(title);
        svg.appendChild(rect);
        y -= h;
      }
    }
    const axis = document.createElementNS(SVG, "text");
    axis.setAttribute("x", "2");
    axis.setAttribute("y", "12");
    axis.setAttribute("fill", "currentColor");
    axis.setAttribute("font-size", "10");
    axis.textContent = usd(max) + "/min";
    svg.appendChild(axis);
    $("chart").replaceChildren(svg);
    const legend = $("legend");
    legend.replaceChildren();
    for (const tier of TIERS) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = "var(--" + tier + ")";
      item.append(swatch, document.createTextNode(tier));
      legend.appendChild(item);
    }
  }

  function renderEvents(events) {
    fill($("events").tBodies[0], events.map((e) => [
      new Date(e.occurred_at).toLocaleTimeString(), e.event_type, e.tier, e.model || "",
      e.tokens === null || e.tokens === undefined ? "" : String(e.tokens), usd(e.cost_usd)]));
  }

  async function refresh() {
    try {
      const summary = await getJSON("/api/summary");
      const periods = summary.periods || {};
      const q = (s) => encodeURIComponent(s || "");
      const [minutes, hours, days, events] = await Promise.all([
        getJSON("/api/timeseries?bucket=minute&since=60m"),
        getJSON("/api/timeseries?bucket=hour&since=" + q((periods.today || {}).start)),
        getJSON("/api/timeseries?bucket=day&since=" + q((periods.this_month || {}).start)),
        getJSON("/api/events?limit=20"),
      ]);
      renderSummary(summary, sumByTier(hours.buckets || []), sumByTier(days.buckets || []));
      renderChart(minutes.buckets || []);
      renderEvents(events.events || []);
      $("error").hidden = true;
    } catch (err) {
      const badge = $("connection");
      badge.dataset.state = "unreachable";
      badge.textContent = "monitor unreachable";
      $("error").hidden = false;
      $("error").textContent = String(err && err.message ? err.message : err);
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();

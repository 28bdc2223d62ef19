/* mmops dashboard: polls the JSON endpoints of `mmops serve` and redraws in place.
 *
 * Money, quantities and ratios arrive as Decimal strings; tables format them with string and
 * BigInt arithmetic (no float rounding in a figure a person reads); plots use Numbers.
 * Everything the page draws is under window.mmops (charts by name, completed polls), which the
 * browser test reads. No inline script and nothing loaded from elsewhere (see the CSP header). */
"use strict";
(() => {
  // Every 5 s; `?poll=N` (seconds, at least 1) for a faster or slower page.
  const POLL_MS = Math.max(1, Number(new URLSearchParams(location.search).get("poll")) || 5) * 1000;
  const mmops = (window.mmops = { charts: {}, polls: 0, failures: 0 });

  // ---- Decimal strings ----------------------------------------------------------------------
  const DECIMAL = /^(-?)(\d+)(?:\.(\d+))?$/;

  /** The exact decimal string s × 10^n ("0.0123", 2 → "1.23"). */
  function shift(s, n) {
    const m = DECIMAL.exec(String(s));
    if (!m) return s;
    const [, sign, int, frac = ""] = m;
    const digits = int + frac;
    let point = int.length + n;
    const padded = point > digits.length ? digits.padEnd(point, "0") : digits;
    const lead = point < 1 ? "0".repeat(1 - point) : "";
    point = Math.max(point, 1);
    const all = lead + padded;
    return `${sign}${all.slice(0, point)}.${all.slice(point) || "0"}`;
  }

  /** A Decimal string rounded half away from zero to `places`, with thousands separators;
   * "–" for null. `signed` puts "+" before positive figures. */
  function fmt(s, places = 2, signed = false) {
    if (s === null || s === undefined || s === "") return "–";
    const m = DECIMAL.exec(String(s));
    if (!m) return String(s);
    const [, sign, int, frac = ""] = m;
    const kept = BigInt(int + frac.padEnd(places + 1, "0").slice(0, places + 1));
    const rounded = ((kept + 5n) / 10n).toString().padStart(places + 1, "0");
    const cut = rounded.length - places;
    const whole = rounded.slice(0, cut).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const text = places > 0 ? `${whole}.${rounded.slice(cut)}` : whole;
    const zero = /^[0.,]+$/.test(text);
    if (zero) return text;
    return (sign ? "−" : signed ? "+" : "") + text;
  }

  const pct = (ratio, places = 2) => (ratio == null ? "–" : `${fmt(shift(ratio, 2), places)} %`);
  const num = (s) => (s === null || s === undefined ? null : Number(s));
  /** "pos", "neg" or "" (zero, null) for a Decimal string: the colour of a P&L figure. */
  function signClass(s) {
    const m = s == null ? null : DECIMAL.exec(String(s));
    if (!m || /^0*$/.test(m[2] + (m[3] || ""))) return "";
    return m[1] ? "neg" : "pos";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    let s = Math.round(Number(seconds));
    if (s < 60) return `${s} s`;
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${String(m).padStart(2, "0")} m`;
    return `${m} m ${String(s).padStart(2, "0")} s`;
  }

  const utc = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  const hhmm = (ms) => new Date(ms).toISOString().slice(11, 16);
  const tierName = (t) => (t === null || t === undefined ? "unpriced" : Number(t) % 60 === 0 && Number(t) > 0 ? `${Number(t) / 60} h` : `${t} min`);

  // ---- DOM ----------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function td(text, cls) {
    const cell = document.createElement("td");
    if (text instanceof Node) cell.append(text);
    else cell.textContent = text;
    if (cls) cell.className = cls;
    return cell;
  }

  function badge(text) {
    const b = document.createElement("span");
    b.className = `badge ${String(text).toLowerCase()}`;
    b.textContent = text;
    return b;
  }

  function set(id, value, cls) {
    const node = $(id);
    if (!node) return;
    node.replaceChildren(value instanceof Node ? value : document.createTextNode(value));
    node.classList.remove("pos", "neg");
    if (cls) node.classList.add(cls);
  }

  function fillTable(id, rows, columns) {
    const body = $(id).tBodies[0];
    if (!rows.length) {
      const cell = td("no data yet", "empty");
      cell.colSpan = columns;
      const tr = document.createElement("tr");
      tr.append(cell);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      tr.append(...cells);
      return tr;
    }));
  }

  function showErrors(errors) {
    const banner = $("errors");
    banner.hidden = errors.length === 0;
    banner.textContent = errors.join(" · ");
  }

  // ---- fetching and polling -----------------------------------------------------------------
  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      throw new Error(`${url}: HTTP ${response.status}`);
    }
    if (!response.ok) throw new Error(`${url}: ${body.error || (body.errors || []).join("; ") || response.status}`);
    return { body, text };
  }

  function poll(refresh) {
    const updated = $("updated");
    const run = async () => {
      try {
        await refresh();
        updated.classList.remove("failing");
        updated.textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC · every ${POLL_MS / 1000} s`;
        mmops.polls += 1;
        document.body.dataset.polls = String(mmops.polls);
      } catch (e) {
        mmops.failures += 1;
        updated.classList.add("failing");
        updated.textContent = `update failed ${new Date().toISOString().slice(11, 19)} UTC`;
        showErrors([String(e.message || e)]);
      }
      setTimeout(run, POLL_MS);
    };
    run();
  }

  // ---- the overview ------------------------------------------------------------------------
  function lowestCoverage(row) {
    let worst = null;
    for (const c of row.coverage || []) {
      if (worst === null || Number(c.percent) < Number(worst.percent)) worst = c;
    }
    return worst;
  }

  const SEVERITY = { none: 0, warn: 1, halt: 2, flatten: 3 };
  const stopLevel = (row) => (row.last_settlement && row.last_settlement.stoploss_level) || (row.warehouse && row.warehouse.stoploss_level) || null;

  function sessionCells(row) {
    const w = row.warehouse || {};
    const last = row.last_settlement || {};
    const worst = lowestCoverage(row);
    const uncovered = (row.coverage || []).reduce((n, c) => n + (c.uncovered_positions || 0), 0);
    const link = document.createElement("a");
    link.href = `/sessions/${encodeURIComponent(row.session)}`;
    link.textContent = row.session;
    const status = row.stale && row.status === "active" ? badge("stale") : badge(row.status);
    const level = stopLevel(row);
    return [
      td(link, "id"),
      td(status),
      td(`${row.mode || ""} · ${row.exchange || ""}`, "muted"),
      td(String((row.pairs || []).length), "num"),
      td(worst ? `${fmt(worst.percent)} %` : "–", `num ${worst && Number(worst.percent) < 100 ? "neg" : ""}`),
      td(String(uncovered), `num ${uncovered ? "neg" : ""}`),
      td(level ? badge(level) : "–"),
      td(fmt(w.realized_pnl_today, 2, true), `num ${signClass(w.realized_pnl_today)}`),
      td(fmt(w.realized_pnl, 2, true), `num ${signClass(w.realized_pnl)}`),
      td(last.state ? badge(last.state) : "–"),
      td(duration(last.age_s), "num"),
      td(row.migration_completed_at ? "yes" : "no", row.migration_completed_at ? "" : "muted"),
    ];
  }

  async function refreshOverview() {
    const { body } = await getJSON("/api/sessions");
    const rows = body.sessions;
    showErrors(body.errors || []);
    fillTable("sessions", rows.map(sessionCells), 12);
    const running = rows.filter((r) => r.status === "active").length;
    set("c-running", String(running));
    set("c-total", `${rows.length} recent`);
    let worst = null;
    for (const row of rows) {
      const c = lowestCoverage(row);
      if (c && (worst === null || Number(c.percent) < Number(worst.c.percent))) worst = { row, c };
    }
    set("c-coverage", worst ? `${fmt(worst.c.percent)} %` : "–", worst && Number(worst.c.percent) < 100 ? "neg" : "pos");
    set("c-coverage-where", worst ? `${worst.c.pair} · ${worst.row.session}` : "");
    let top = null;
    for (const row of rows) {
      const level = stopLevel(row);
      if (level && (top === null || SEVERITY[level] > SEVERITY[top.level])) top = { row, level };
    }
    set("c-stoploss", top ? badge(top.level) : "–");
    set("c-stoploss-where", top ? top.row.session : "no measurement yet");
    set("c-stale", String(rows.filter((r) => r.stale).length));
  }

  // ---- the session page: plots -------------------------------------------------------------
  const PALETTE = ["#5fb3f9", "#f0883e", "#3fb950", "#d2a8ff", "#e3b341", "#39c5cf", "#ff7eb6", "#f85149", "#a5d6ff", "#7ee787"];
  const color = (i) => PALETTE[i % PALETTE.length];

  function bySymbol(rows) {
    const groups = new Map();
    for (const r of rows) {
      if (!groups.has(r.symbol)) groups.set(r.symbol, []);
      groups.get(r.symbol).push(r);
    }
    return groups;
  }

  const MINUTE = 60000;
  const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * MINUTE);

  /** Ticks on whole minutes, hours or days (at most 8), not at Chart.js's round milliseconds. */
  function clockTicks(scale) {
    const span = scale.max - scale.min;
    const step = STEPS.find((s) => span / s <= 8) || STEPS[STEPS.length - 1];
    const ticks = [];
    for (let t = Math.ceil(scale.min / step) * step; t <= scale.max; t += step) ticks.push({ value: t });
    scale.ticks = ticks;
  }

  function timeAxis() {
    return {
      type: "linear",
      afterBuildTicks: clockTicks,
      ticks: { callback: (v) => hhmm(v) },
      title: { display: true, text: "UTC" },
    };
  }

  function lineConfig(yTitle, yFormat, extra = {}) {
    return {
      type: "line",
      data: { datasets: [] },
      options: {
        parsing: true,
        interaction: { mode: "nearest", intersect: false },
        elements: { point: { radius: 0, hoverRadius: 4 }, line: { borderWidth: 2 } },
        scales: { x: timeAxis(), y: { title: { display: true, text: yTitle }, ticks: { callback: yFormat }, ...(extra.y || {}) } },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { title: (items) => (items.length ? utc(items[0].parsed.x) : "") } },
        },
      },
    };
  }

  function barConfig(xTitle, yTitle, extra = {}) {
    return {
      type: "bar",
      data: { labels: [], datasets: [] },
      options: {
        scales: {
          x: { title: { display: true, text: xTitle }, grid: { display: false } },
          y: { beginAtZero: true, title: { display: true, text: yTitle }, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        ...extra,
      },
    };
  }

  /** Create the chart on its first data, then swap its data in place (no reload, no flicker). */
  function draw(name, config, data) {
    let chart = mmops.charts[name];
    if (!chart) {
      const cfg = config();
      cfg.data = data;
      chart = new Chart($(`chart-${name}`), cfg);
      mmops.charts[name] = chart;
    } else {
      chart.data.labels = data.labels;
      chart.data.datasets = data.datasets;
      chart.update("none");
    }
    const points = data.datasets.reduce((n, d) => n + d.data.filter((p) => p !== null && (p.y === undefined || p.y !== null)).length, 0);
    $(`chart-${name}`).parentElement.querySelector(".nodata").hidden = points > 0;
  }

  function pnlData(rows) {
    const datasets = [...bySymbol(rows)].map(([symbol, points], i) => ({
      label: symbol,
      data: points.map((r) => ({ x: Date.parse(r.at), y: num(r.cumulative_pnl) })),
      borderColor: color(i), backgroundColor: color(i), stepped: true,
    }));
    return { datasets };
  }

  function coverageData(rows) {
    const datasets = [...bySymbol(rows)].map(([symbol, points], i) => ({
      label: symbol,
      data: points.filter((r) => r.ratio !== null).map((r) => ({ x: Date.parse(r.at), y: num(shift(r.ratio, 2)) })),
      borderColor: color(i), backgroundColor: color(i), stepped: true,
    }));
    return { datasets };
  }

  const FUNNEL = [["placed", "#5fb3f9"], ["repriced", "#e3b341"], ["filled", "#3fb950"], ["open", "#8a96a3"]];

  function funnelData(rows) {
    return {
      labels: rows.map((r) => tierName(r.tier)),
      datasets: FUNNEL.map(([key, c]) => ({ label: key, data: rows.map((r) => num(r[key])), backgroundColor: c, borderColor: c })),
    };
  }

  const BINS = [[60, "< 1 min"], [300, "1–5 min"], [900, "5–15 min"], [3600, "15–60 min"], [14400, "1–4 h"], [43200, "4–12 h"], [86400, "12–24 h"], [Infinity, "> 24 h"]];

  function ttfData(rows) {
    const tiers = [...new Set(rows.map((r) => r.tier))].sort((a, b) => (a === null) - (b === null) || a - b);
    const datasets = tiers.map((tier, i) => {
      const counts = BINS.map(() => 0);
      for (const r of rows.filter((x) => x.tier === tier)) {
        counts[BINS.findIndex(([upper]) => Number(r.seconds) < upper)] += 1;
      }
      return { label: `tier ${tierName(tier)}`, data: counts, backgroundColor: color(i), borderColor: color(i) };
    });
    return { labels: BINS.map(([, label]) => label), datasets };
  }

  function quantile(sorted, q) {
    return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null;
  }

  const HORIZONS = [["pair_avg_1m_bps", "markout_1m_bps", "1 min"], ["pair_avg_5m_bps", "markout_5m_bps", "5 min"], ["pair_avg_1h_bps", "markout_1h_bps", "1 h"]];

  function markoutData(rows) {
    const datasets = [...bySymbol(rows)].map(([symbol, points], i) => ({
      label: symbol,
      data: HORIZONS.map(([avg]) => num(points[0][avg])),
      borderColor: color(i), backgroundColor: color(i), pointRadius: 4, spanGaps: true,
    }));
    return { labels: HORIZONS.map(([, , label]) => label), datasets };
  }

  function markoutConfig() {
    return {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        scales: {
          x: { title: { display: true, text: "after the buy" } },
          y: { title: { display: true, text: "mid move, bps (+ = price rose)" } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    };
  }

  // ---- the session page: tables and cards ----------------------------------------------------
  function tierCells(r) {
    return [
      td(r.symbol), td(tierName(r.tier), "num"), td(String(r.placed), "num"), td(String(r.repriced), "num"),
      td(String(r.filled), "num"), td(String(r.open), "num"),
      td(duration(r.fill_to_tp_p50_s), "num"), td(duration(r.tp_to_fill_p50_s), "num"), td(duration(r.tp_to_fill_p90_s), "num"),
      td(pct(r.markup_planned, 3), "num"), td(pct(r.markup_captured, 3), `num ${signClass(r.markup_captured)}`),
      td(fmt(r.realized_pnl, 2, true), `num ${signClass(r.realized_pnl)}`), td(fmt(r.inventory_hours, 1), "num"),
    ];
  }

  function pairCells(c) {
    return [
      td(c.pair), td(`${fmt(c.percent)} %`, `num ${Number(c.percent) < 100 ? "neg" : ""}`),
      td(String(c.positions), "num"), td(String(c.uncovered_positions), `num ${c.uncovered_positions ? "neg" : ""}`),
      td(c.oldest_uncovered_s ? duration(c.oldest_uncovered_s) : "–", "num"), td(fmt(c.unconfirmed, 4), "num"),
    ];
  }

  function sessionCards(row) {
    if (!row) {
      set("s-status", "not recent");
      return;
    }
    const w = row.warehouse || {};
    const last = row.last_settlement || {};
    set("s-status", row.stale && row.status === "active" ? badge("stale") : badge(row.status));
    set("s-mode", `${row.mode || ""} · ${row.exchange || ""} · ${(row.pairs || []).length} pairs`);
    const worst = lowestCoverage(row);
    set("s-coverage", worst ? `${fmt(worst.percent)} %` : "–", worst && Number(worst.percent) < 100 ? "neg" : "pos");
    set("s-coverage-where", worst ? `lowest: ${worst.pair}` : "no open positions");
    const level = stopLevel(row);
    set("s-stoploss", level ? badge(level) : "–");
    set("s-drawdown", w.drawdown != null ? `drawdown ${pct(w.drawdown)}` : "no measurement yet");
    set("s-pnl-today", fmt(w.realized_pnl_today, 2, true), signClass(w.realized_pnl_today));
    set("s-pnl-total", w.realized_pnl != null ? `session ${fmt(w.realized_pnl, 2, true)}` : "not migrated yet");
    set("s-settlement", last.state ? badge(last.state) : "–");
    set("s-settlement-age", last.age_s != null ? `${duration(last.age_s)} ago · ${last.placed} placed, ${last.failed} failed` : "");
    fillTable("pairs", (row.coverage || []).map(pairCells), 6);
  }

  function sessionPage() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    document.title = `mmops · ${id}`;
    set("crumb", id);
    const api = (name) => `/api/sessions/${encodeURIComponent(id)}/${name}`;
    const links = $("api-links");
    links.replaceChildren(...["pnl", "coverage", "funnel", "time-to-fill", "markouts", "tiers"].flatMap((name, i) => {
      const a = document.createElement("a");
      a.href = api(name);
      a.textContent = name;
      return i ? [document.createTextNode(" · "), a] : [a];
    }));
    Chart.defaults.color = "#8a96a3";
    Chart.defaults.borderColor = "#2a3440";
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.animation = false;
    Chart.defaults.maintainAspectRatio = false;
    const seen = {};
    const changed = (name, text) => (seen[name] === text ? false : ((seen[name] = text), true));
    const money = (v) => Number(v).toLocaleString("en-US", { maximumFractionDigits: 2 });

    poll(async () => {
      const [overview, pnl, coverage, funnel, ttf, markouts, tiers] = await Promise.all(
        ["/api/sessions", api("pnl"), api("coverage"), api("funnel"), api("time-to-fill"), api("markouts"), api("tiers")].map(getJSON),
      );
      showErrors(overview.body.errors || []);
      sessionCards(overview.body.sessions.find((r) => r.session === id));
      if (changed("pnl", pnl.text)) {
        draw("pnl", () => lineConfig("realized P&L (quote)", money), pnlData(pnl.body.rows));
        set("m-pnl", `${pnl.body.rows.length} fills`);
      }
      if (changed("coverage", coverage.text)) {
        draw("coverage", () => lineConfig("covered, % of bought", (v) => `${v} %`, { y: { suggestedMin: 0, suggestedMax: 100 } }), coverageData(coverage.body.rows));
        set("m-coverage", `${coverage.body.rows.length} steps`);
      }
      if (changed("funnel", funnel.text)) {
        draw("funnel", () => barConfig("tier (position age)", "take-profits"), funnelData(funnel.body.rows));
        const placed = funnel.body.rows.reduce((n, r) => n + r.placed, 0);
        const filled = funnel.body.rows.reduce((n, r) => n + r.filled, 0);
        set("m-funnel", `${filled} of ${placed} filled`);
      }
      if (changed("ttf", ttf.text)) {
        draw("ttf", () => barConfig("placement to fill", "filled take-profits"), ttfData(ttf.body.rows));
        const sorted = ttf.body.rows.map((r) => Number(r.seconds)).sort((a, b) => a - b);
        set("m-ttf", sorted.length ? `n ${sorted.length} · p50 ${duration(quantile(sorted, 0.5))} · p90 ${duration(quantile(sorted, 0.9))}` : "");
      }
      if (changed("markouts", markouts.text)) {
        draw("markouts", markoutConfig, markoutData(markouts.body.rows));
        set("m-markouts", `${markouts.body.rows.length} buy fills`);
      }
      if (changed("tiers", tiers.text)) fillTable("tiers", tiers.body.rows.map(tierCells), 13);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "overview") poll(refreshOverview);
    else if (page === "session") sessionPage();
  });
  mmops.format = { fmt, shift, pct, duration };
})();

/* syncstats dashboard: reads the JSON API and draws figures, charts and limits.
 *
 * Everything comes from this server (no CDN), so the page works offline.
 * The distance chart derives km per hour from consecutive TotalDistanceSynced
 * values: each activity counts once, when it is first synced.
 */
"use strict";

(function () {
  const REFRESH_MS = 60000;
  const SPANS = { 6: "last 6 hours", 24: "last 24 hours", 168: "last 7 days" };
  const CHART_HEIGHT = window.matchMedia("(max-width: 600px)").matches ? 170 : 200;

  const CHARTS = [
    { id: "queue-wait", label: "Queue wait", unit: "min",
      values: (s) => s.map((e) => scaled(e.SyncQueueHeadTime, 1 / 60)) },
    { id: "pending", label: "Pending", unit: "users",
      values: (s) => s.map((e) => number(e.Pending)) },
    { id: "worker-time", label: "Worker time", unit: "h",
      values: (s) => s.map((e) => scaled(e.SyncTimeUsed, 1 / 3600)) },
    { id: "error-users", label: "With errors", unit: "users",
      values: (s) => s.map((e) => number(e.ErrorUsers)) },
    { id: "locked", label: "Locked", unit: "users",
      values: (s) => s.map((e) => number(e.Locked)) },
    { id: "distance", label: "Distance", unit: "km/h", values: distancePerHour },
  ];

  const charts = new Map();
  let span = readSpan();
  let xRange = [0, 1];
  let busy = false;

  document.addEventListener("DOMContentLoaded", start);

  function start() {
    for (const button of document.querySelectorAll("[data-span]")) {
      button.addEventListener("click", () => chooseSpan(Number(button.dataset.span)));
    }
    markSpan();
    window.addEventListener("resize", debounce(resizeCharts, 150));
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refresh();
    });
    window.setInterval(refresh, REFRESH_MS);
    refresh();
  }

  function readSpan() {
    const match = /span=(\d+)/.exec(window.location.hash);
    const hours = match ? Number(match[1]) : 24;
    return hours in SPANS ? hours : 24;
  }

  function chooseSpan(hours) {
    span = hours;
    window.history.replaceState(null, "", `#span=${hours}`);
    markSpan();
    refresh();
  }

  function markSpan() {
    for (const button of document.querySelectorAll("[data-span]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.span) === span));
    }
    document.getElementById("span-label").textContent = SPANS[span];
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [stats, history, limits] = await Promise.allSettled([
        getJson("api/stats"),
        getJson(`api/history?hours=${span}`),
        getJson("api/limits"),
      ]);
      render(value(stats), value(history), value(limits),
        [stats, history, limits].filter((r) => r.status === "rejected")
          .map((r) => r.reason.message));
    } finally {
      busy = false;
    }
  }

  async function getJson(path) {
    const response = await fetch(path, {
      headers: { Accept: "application/json" },
      cache: "no-store",
      credentials: "same-origin",
    });
    if (response.status === 404 && path === "api/stats") return null;
    if (response.status === 401) {
      throw new Error("This dashboard needs the token: open login?token=… once.");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(`${path}: ${body.error || response.statusText}`);
    }
    return body;
  }

  function value(result) {
    return result.status === "fulfilled" ? result.value : undefined;
  }

  function render(stats, history, limits, errors) {
    const messages = errors.slice();
    if (history) {
      const snapshots = history.snapshots;
      xRange = [epoch(history.since), epoch(history.now)];
      renderFigures(snapshots[snapshots.length - 1], stats);
      renderCharts(snapshots);
    }
    if (stats !== undefined) {
      messages.push(...problems(stats, history));
      renderUpdated(stats, history);
    }
    if (limits) renderLimits(limits);
    renderBanner(messages);
    document.body.dataset.state = "ready";
  }

  /* The figures at a glance: from the newest snapshot of the span. */
  function renderFigures(latest, stats) {
    const e = latest || {};
    const steps = (stats && stats.Steps) || {};
    const queue = e.SyncQueueHeadTime == null && steps.queue === true
      ? "unknown (stalled)" : duration(e.SyncQueueHeadTime);
    setFigure("queue-wait", queue);
    setFigure("enqueue-wait", duration(e.SyncEnqueueTime));
    setFigure("pending", count(e.Pending));
    setFigure("locked", count(e.Locked));
    setFigure("error-users", count(e.ErrorUsers));
    setFigure("total-errors", count(e.TotalErrors));
    setFigure("syncs", count(e.LastHourSynchronizationCount));
    setFigure("worker-time", hours(e.SyncTimeUsed));
    setFigure("sync-duration", duration(e.AverageSyncDuration));
    setFigure("distance-hour", km(e.LastHourDistanceSynced));
    setFigure("distance-day", km(e.LastDayDistanceSynced));
    setFigure("distance-total", km(e.TotalDistanceSynced));
  }

  function setFigure(name, text) {
    const figure = document.querySelector(`[data-figure="${name}"]`);
    figure.querySelector(".value").textContent = text;
    figure.classList.toggle("missing", text === "–");
  }

  function renderUpdated(stats, history) {
    const element = document.getElementById("updated");
    if (!stats) {
      element.textContent = "No snapshot stored yet.";
      return;
    }
    const now = history ? epoch(history.now) : Date.now() / 1000;
    const age = now - epoch(stats.Updated);
    element.textContent = `Latest snapshot ${when(stats.Updated)} (${ago(age)})`;
  }

  /* Why the figures may mislead: no snapshot, a stale one, failed steps. */
  function problems(stats, history) {
    if (!stats) return ["No snapshot stored yet: the first stats pass has not run."];
    const messages = [];
    if (history) {
      const age = epoch(history.now) - epoch(stats.Updated);
      const limit = 2 * history.interval_seconds;
      if (age >= limit) {
        messages.push(`Stale data: the latest snapshot is from ${ago(age)}, and a pass ` +
          `should run every ${duration(history.interval_seconds)}.`);
      }
    }
    const failed = Object.entries(stats.Steps || {})
      .filter(([, ok]) => !ok).map(([step]) => step);
    if (failed.length) {
      messages.push(`Failed in the latest pass: ${failed.join(", ")}. ` +
        "Figures from these steps are missing or kept from an earlier pass.");
    }
    return messages;
  }

  function renderBanner(messages) {
    const banner = document.getElementById("banner");
    banner.replaceChildren(...messages.map((text) => {
      const line = document.createElement("p");
      line.textContent = text;
      return line;
    }));
    banner.hidden = messages.length === 0;
  }

  function renderCharts(snapshots) {
    const xs = snapshots.map((e) => epoch(e.Timestamp));
    for (const def of CHARTS) {
      const element = document.querySelector(`[data-chart="${def.id}"]`);
      const data = [xs, def.values(snapshots, xs)];
      element.dataset.points = String(xs.length);
      const chart = charts.get(def.id);
      if (chart) {
        chart.setData(data);
      } else {
        charts.set(def.id, new uPlot(chartOptions(def, element), data, element));
      }
    }
  }

  function chartOptions(def, element) {
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const axis = {
      stroke: color("--muted"),
      grid: { stroke: color("--grid"), width: 1 },
      ticks: { stroke: color("--grid"), width: 1 },
    };
    return {
      width: element.clientWidth,
      height: CHART_HEIGHT,
      cursor: { y: false },
      scales: {
        x: { time: true, range: () => xRange },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [axis, Object.assign({ size: 52 }, axis)],
      hooks: { setData: [showLatest], setCursor: [showLatest] },
      series: [
        { value: (u, v) => (v == null ? "–" : when(new Date(v * 1000).toISOString())) },
        {
          label: def.label,
          stroke: color("--accent"),
          fill: color("--accent") + "22",
          width: 2,
          points: { show: false },
          value: (u, v) => (v == null ? "–" : `${round(v)} ${def.unit}`),
        },
      ],
    };
  }

  /* The legend shows the newest point whenever the cursor is off the chart. */
  function showLatest(u) {
    const last = u.data[0].length - 1;
    if (u.cursor.idx == null && last >= 0) u.setLegend({ idx: last });
  }

  function resizeCharts() {
    for (const [id, chart] of charts) {
      const element = document.querySelector(`[data-chart="${id}"]`);
      chart.setSize({ width: element.clientWidth, height: CHART_HEIGHT });
    }
  }

  /* km per hour between consecutive snapshots; null where it cannot be told. */
  function distancePerHour(snapshots, xs) {
    return snapshots.map((e, i) => {
      if (i === 0) return null;
      const before = number(snapshots[i - 1].TotalDistanceSynced);
      const after = number(e.TotalDistanceSynced);
      const hoursBetween = (xs[i] - xs[i - 1]) / 3600;
      if (before == null || after == null || after < before || hoursBetween <= 0) {
        return null;
      }
      return (after - before) / 1000 / hoursBetween;
    });
  }

  function renderLimits(limits) {
    const container = document.getElementById("limits");
    const cards = [];
    for (const [service, windows] of Object.entries(limits.services)) {
      for (const w of windows) cards.push(limitCard(service, w));
    }
    if (!cards.length) {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = "No rate limits are configured.";
      cards.push(note);
    }
    container.replaceChildren(...cards);
  }

  function limitCard(service, w) {
    const share = w.max > 0 ? Math.min(1, w.used / w.max) : 1;
    const card = element("div", "limit");
    card.dataset.service = service;
    card.dataset.window = String(w.window_seconds);
    card.dataset.used = String(w.used);
    card.dataset.max = String(w.max);
    const head = element("div", "limit-head");
    head.append(element("span", "", `${service} · ${windowName(w.window_seconds)}`),
      element("span", "", `${count(w.used)} / ${count(w.max)}`));
    const bar = element("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(w.max));
    bar.setAttribute("aria-valuenow", String(w.used));
    bar.setAttribute("aria-label", `${service} ${windowName(w.window_seconds)} window`);
    const fill = element("div", share >= 1 ? "fill full" : share >= 0.8 ? "fill warn" : "fill");
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    bar.append(fill);
    const foot = element("div", "limit-foot");
    foot.append(element("span", "", `${Math.round(share * 100)} % spent`),
      element("span", "", `resets ${when(w.resets_at)}`));
    card.append(head, bar, foot);
    return card;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function windowName(seconds) {
    if (seconds % 86400 === 0) return seconds === 86400 ? "day" : `${seconds / 86400} days`;
    if (seconds % 3600 === 0) return `${seconds / 3600} h`;
    if (seconds % 60 === 0) return `${seconds / 60} min`;
    return `${seconds} s`;
  }

  function number(v) {
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  function scaled(v, factor) {
    const n = number(v);
    return n == null ? null : n * factor;
  }

  function epoch(iso) {
    return Date.parse(iso) / 1000;
  }

  const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const tenth = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function round(v) {
    return Math.abs(v) >= 100 ? whole.format(v) : tenth.format(v);
  }

  function count(v) {
    return number(v) == null ? "–" : whole.format(v);
  }

  const compact = new Intl.NumberFormat(undefined, {
    notation: "compact", maximumFractionDigits: 1,
  });

  function km(metres) {
    if (number(metres) == null) return "–";
    const value = metres / 1000;
    if (value >= 1e6) return `${compact.format(value)} km`;
    return `${value >= 1000 ? whole.format(value) : tenth.format(value)} km`;
  }

  function hours(seconds) {
    return number(seconds) == null ? "–" : `${tenth.format(seconds / 3600)} h`;
  }

  function duration(seconds) {
    if (number(seconds) == null) return "–";
    if (seconds < 120) return `${whole.format(seconds)} s`;
    if (seconds < 7200) return `${tenth.format(seconds / 60)} min`;
    return `${tenth.format(seconds / 3600)} h`;
  }

  function ago(seconds) {
    if (seconds < 60) return "just now";
    return `${duration(seconds)} ago`;
  }

  function when(iso) {
    const date = new Date(iso);
    const today = new Date().toDateString() === date.toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return today ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function debounce(fn, ms) {
    let timer = 0;
    return () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(fn, ms);
    };
  }
})();

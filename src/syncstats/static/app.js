/* syncstats dashboard: reads the JSON API and draws figures, charts, limits,
 * the distance per destination and the common sync errors.
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
  const ERROR_GROUPS = 100;
  // One colour per destination series, matched by the swatch in its table row.
  const PALETTE = ["#1f6feb", "#e8590c", "#2da44e", "#8250df", "#cf222e", "#1b998b",
    "#bf8700", "#d6409f"];

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
      const results = await Promise.allSettled([
        getJson("api/stats"),
        getJson(`api/history?hours=${span}`),
        getJson("api/limits"),
        getJson(`api/errors?limit=${ERROR_GROUPS}`),
      ]);
      const [stats, history, limits, errors] = results.map(value);
      render(stats, history, limits, errors,
        results.filter((r) => r.status === "rejected").map((r) => r.reason.message));
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

  function render(stats, history, limits, errors, failures) {
    const messages = failures.slice();
    if (history) {
      const snapshots = history.snapshots;
      const latest = snapshots[snapshots.length - 1];
      xRange = [epoch(history.since), epoch(history.now)];
      renderFigures(latest, stats);
      renderCharts(snapshots);
      const order = renderDestinations(latest);
      renderDestinationChart(snapshots, order);
    }
    if (stats !== undefined) {
      messages.push(...problems(stats, history));
      renderUpdated(stats, history);
    }
    if (limits) renderLimits(limits);
    if (errors) renderErrors(errors);
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
      const drawn = data[1].filter((v) => v != null);
      element.dataset.peak = drawn.length ? String(Math.max(...drawn)) : "";
      const chart = charts.get(def.id);
      if (chart) {
        chart.setData(data);
      } else {
        charts.set(def.id, new uPlot(chartOptions(def, element), data, element));
      }
    }
  }

  function chartOptions(def, element) {
    const accent = cssColor("--accent");
    return baseOptions(element, [{
      label: def.label,
      stroke: accent,
      fill: accent + "22",
      width: 2,
      points: { show: false },
      value: (u, v) => (v == null ? "–" : `${round(v)} ${def.unit}`),
    }]);
  }

  /* Options every chart shares: the span's time axis, a y axis from zero. */
  function baseOptions(element, series) {
    const axis = {
      stroke: cssColor("--muted"),
      grid: { stroke: cssColor("--grid"), width: 1 },
      ticks: { stroke: cssColor("--grid"), width: 1 },
    };
    return {
      width: element.clientWidth,
      height: CHART_HEIGHT,
      cursor: { y: false },
      scales: {
        x: { time: true, range: () => xRange },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [axis, Object.assign({ size: axisWidth }, axis)],
      hooks: { setData: [showLatest], setCursor: [showLatest] },
      series: [
        { value: (u, v) => (v == null ? "–" : when(new Date(v * 1000).toISOString())) },
        ...series,
      ],
    };
  }

  /* Wide enough for the longest tick label, such as "75,000". */
  function axisWidth(u, values) {
    const longest = Math.max(0, ...(values || []).map((v) => String(v).length));
    return Math.max(52, 16 + 8 * longest);
  }

  function cssColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
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

  /* The distance per destination of a snapshot: {service: {all, day, hour}}.
   * Empty when the snapshot predates per-destination figures, or when its
   * distance step failed. */
  function destinationsOf(snapshot) {
    const stored = (snapshot && snapshot.ByDestination) || {};
    const rows = {};
    for (const [service, f] of Object.entries(stored)) {
      if (f && typeof f === "object") {
        rows[service] = {
          all: number(f.TotalDistanceSynced),
          day: number(f.LastDayDistanceSynced),
          hour: number(f.LastHourDistanceSynced),
        };
      }
    }
    return rows;
  }

  /* The table of the newest snapshot, most distance in the last 24 h first.
   * Returns the destinations in that order, for the chart's colours. */
  function renderDestinations(latest) {
    const rows = destinationsOf(latest);
    const order = Object.keys(rows).sort((a, b) =>
      (rows[b].day ?? -1) - (rows[a].day ?? -1) || a.localeCompare(b));
    const body = document.getElementById("destinations");
    if (!order.length) {
      const row = element("tr");
      const cell = element("td", "muted",
        "No per-destination figures in the latest snapshot.");
      cell.colSpan = 4;
      row.append(cell);
      body.replaceChildren(row);
      return order;
    }
    body.replaceChildren(...order.map((service, index) => {
      const d = rows[service];
      const row = element("tr");
      row.dataset.destination = service;
      const name = element("th");
      name.scope = "row";
      const swatch = element("span", "swatch");
      swatch.style.background = PALETTE[index % PALETTE.length];
      name.append(swatch, service);
      row.append(name, ...[d.hour, d.day, d.all].map((metres) =>
        element("td", "num", kmNumber(metres))));
      return row;
    }));
    return order;
  }

  /* The last-24-h distance of each destination over the span, one line each. */
  function renderDestinationChart(snapshots, order) {
    const container = document.querySelector('[data-chart="destinations"]');
    const perSnapshot = snapshots.map(destinationsOf);
    const seen = new Set(perSnapshot.flatMap((rows) => Object.keys(rows)));
    const services = order.filter((s) => seen.has(s))
      .concat([...seen].filter((s) => !order.includes(s)).sort());
    const xs = snapshots.map((e) => epoch(e.Timestamp));
    const data = [xs, ...services.map((service) => perSnapshot.map((rows) => {
      const day = rows[service] ? rows[service].day : null;
      return day == null ? null : day / 1000;
    }))];
    container.dataset.points = String(xs.length);
    container.dataset.series = services.join(",");

    const old = charts.get("destinations");
    const same = old && old.series.slice(1).map((s) => s.label).join(",") === services.join(",");
    if (same) {
      old.setData(data);
      return;
    }
    if (old) old.destroy();
    charts.delete("destinations");
    if (!services.length) {
      container.replaceChildren(element("p", "empty",
        "No per-destination figures in this span."));
      return;
    }
    container.replaceChildren();
    const series = services.map((service, index) => ({
      label: service,
      stroke: PALETTE[index % PALETTE.length],
      width: 2,
      points: { show: false },
      value: (u, v) => (v == null ? "–" : `${round(v)} km`),
    }));
    charts.set("destinations", new uPlot(baseOptions(container, series), data, container));
  }

  /* The stored groups of similar errors, each opening onto its connections.
   * Groups left open stay open when the list is redrawn. */
  function renderErrors(body) {
    const container = document.getElementById("errors");
    const open = new Set([...container.querySelectorAll("details[open]")]
      .map((d) => d.dataset.key));
    const total = body.total_groups;
    document.getElementById("errors-note").textContent = total > body.groups.length
      ? `the ${count(body.groups.length)} largest of ${count(total)} groups`
      : `${count(total)} ${total === 1 ? "group" : "groups"}, latest pass`;
    if (!body.groups.length) {
      container.replaceChildren(element("p", "muted", "No sync errors are grouped."));
      return;
    }
    container.replaceChildren(...body.groups.map((group) => {
      const details = errorGroup(group);
      details.open = open.has(details.dataset.key);
      return details;
    }));
  }

  function errorGroup(g) {
    const details = element("details", "error-group");
    details.dataset.key = JSON.stringify([g.service, g.stem]);
    details.dataset.service = g.service ?? "";
    details.dataset.count = String(g.count);
    const connections = g.connections.length;
    const head = element("span", "error-head");
    head.append(
      element("span", "error-service", g.service ?? "no service"),
      element("span", "error-count", plural(g.count, "error")),
      element("span", "error-age", `mean age ${age(g.recency_avg)}`),
      element("span", "error-connections", plural(connections, "connection")),
    );
    const summary = element("summary");
    summary.append(head, element("code", "error-exemplar", g.exemplar ?? g.stem ?? ""));
    const list = element("ul", "connection-ids");
    list.setAttribute("aria-label", "Affected connection ids");
    for (const id of g.connections) {
      const item = element("li");
      item.append(element("code", "", id));
      list.append(item);
    }
    details.append(summary, list);
    return details;
  }

  function plural(n, noun) {
    return number(n) == null ? `? ${noun}s` : `${count(n)} ${n === 1 ? noun : noun + "s"}`;
  }

  /* km per hour between consecutive snapshots; null where it cannot be told.
   * Totals are sums of floating-point distances: a change of under a metre
   * either way is rounding, not distance, and draws as none. */
  function distancePerHour(snapshots, xs) {
    return snapshots.map((e, i) => {
      if (i === 0) return null;
      const before = number(snapshots[i - 1].TotalDistanceSynced);
      const after = number(e.TotalDistanceSynced);
      const hoursBetween = (xs[i] - xs[i - 1]) / 3600;
      if (before == null || after == null || hoursBetween <= 0) return null;
      const metres = after - before;
      if (Math.abs(metres) < 1) return 0;
      return metres < 0 ? null : metres / 1000 / hoursBetween;
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
    return number(metres) == null ? "–" : `${kmNumber(metres)} km`;
  }

  /* Kilometres without the unit, for columns that name it in their header. */
  function kmNumber(metres) {
    if (number(metres) == null) return "–";
    const value = metres / 1000;
    if (value >= 1e6) return compact.format(value);
    return value >= 1000 ? whole.format(value) : tenth.format(value);
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

  /* How old, in minutes, hours or days; "unknown" when no error carried a date. */
  function age(seconds) {
    if (number(seconds) == null) return "unknown";
    if (seconds < 60) return "under 1 min";
    if (seconds < 3600) return `${whole.format(seconds / 60)} min`;
    if (seconds < 172800) return `${tenth.format(seconds / 3600)} h`;
    return `${tenth.format(seconds / 86400)} d`;
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

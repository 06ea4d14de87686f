// Shared by every page: the API client, element building, formatting, charts.

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail;
    super(Array.isArray(detail) ? detail.join("; ") : (detail || (body && body.error) || `HTTP ${status}`));
    this.status = status;
    this.body = body || {};
    this.problems = Array.isArray(detail) ? detail : (detail ? [String(detail)] : []);
  }
}

// Every page talks to the API under /api/v1; the sign-in cookie rides along.
export async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new ApiError(401, { error: "unauthorized" });
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { data = { error: response.statusText }; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function num(value, digits = 3) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

// "1 row", "2 rows", "0 rows": counts a person reads.
export function plural(count, word, many = `${word}s`) {
  return `${Number(count).toLocaleString()} ${count === 1 ? word : many}`;
}

export function pct(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(digits)}%`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return `${value.toFixed(1)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

export function badge(status, message) {
  return h("span", { class: `badge status-${status}`, title: message || null, text: status });
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = `show ${kind}`;
  clearTimeout(box._timer);
  box._timer = setTimeout(() => { box.className = ""; }, 5000);
}

export const ACTIVE = new Set(["pending", "running"]);

// One look for every chart: readable axes, the legend above the plot, no logo.
export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

// Epoch axes count whole epochs: a tick every 1, 2, 5, ... epochs, never at 1.5.
export function epochTicks(epochs) {
  const step = [1, 2, 5, 10, 20, 50, 100].find((s) => epochs / s <= 10) || Math.ceil(epochs / 10);
  return { tick0: 1, dtick: step, rangemode: "nonnegative" };
}

export function layout(title, { x = "epoch", y = "", extra = {} } = {}) {
  return {
    title: { text: title, font: { size: 14 }, x: 0, xanchor: "left" },
    margin: { l: 60, r: 16, t: 40, b: 100 },
    font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 12, color: "#1f2937" },
    xaxis: { title: { text: x }, gridcolor: "#e5e7eb", zeroline: false },
    yaxis: { title: { text: y }, gridcolor: "#e5e7eb", zeroline: false },
    // Below the axis title: a legend of any length never covers the chart's title or data.
    legend: { orientation: "h", x: 0, y: -0.36, yanchor: "top", font: { size: 11 } },
    paper_bgcolor: "#ffffff",
    plot_bgcolor: "#ffffff",
    hovermode: "closest",
    ...extra,
  };
}

export function showProblems(box, problems) {
  box.replaceChildren(...problems.map((p) => h("div", { text: p })));
  box.hidden = problems.length === 0;
}

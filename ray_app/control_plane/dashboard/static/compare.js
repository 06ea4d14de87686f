// Two or more runs side by side: overlaid curves, results, and the config keys that differ.
import { api, badge, epochTicks, h, layout, num, pct, PALETTE, PLOT_CONFIG, plural } from "./common.js";

const names = document.getElementById("compare").dataset.names;
const CURVES = {
  "cmp-accuracy": ["val_select/accuracy", "val_select accuracy"],
  "cmp-val-loss": ["val_select/loss", "val_select loss"],
  "cmp-train-loss": ["train/loss", "train loss"],
  "cmp-f1": ["val_select/macro_f1", "val_select macro-F1"],
};

function cell(value) {
  if (value === undefined || value === null) return h("td", { class: "muted", text: "–" });
  return h("td", {}, h("code", { text: typeof value === "object" ? JSON.stringify(value) : String(value) }));
}

try {
  const result = await api(`/runs/compare?names=${encodeURIComponent(names)}`);
  const runs = result.runs;
  document.getElementById("compare-names").textContent = plural(runs.length, "run");
  for (const [id, [key, title]] of Object.entries(CURVES)) {
    const traces = runs.map((run, i) => {
      const rows = result.curves[run].filter((r) => r[key] !== undefined);
      return { x: rows.map((r) => r.epoch + 1), y: rows.map((r) => r[key]), name: run, mode: "lines+markers",
        line: { color: PALETTE[i % PALETTE.length], width: 2 }, marker: { size: 5 } };
    });
    const chartLayout = layout(title, { y: title.split(" ").pop() });
    Object.assign(chartLayout.xaxis, epochTicks(Math.max(1, ...traces.map((t) => t.x.length))));
    Plotly.newPlot(id, traces, chartLayout, PLOT_CONFIG);
  }
  const header = h("tr", {}, h("th", { text: "" }), runs.map((run) => h("th", {}, h("a", { href: `/runs/${encodeURIComponent(run)}`, text: run }))));
  const results = [
    ["Status", (r) => badge(r.status, r.message)],
    ["Family / variant", (r) => `${r.family || "–"} / ${r.backbone || "–"}`],
    ["Template", (r) => r.template || "–"],
    ["Best epoch", (r) => (r.best_epoch === null || r.best_epoch === undefined ? "–" : `${r.best_epoch + 1} of ${r.epochs_run}`)],
    ["Best val_select accuracy", (r) => num(r.best_accuracy)],
    ["Best val_select macro-F1", (r) => num(r.best_macro_f1)],
    ["val_test accuracy", (r) => num(r.val_test_accuracy)],
    ["Coverage under the policy", (r) => pct(r.coverage)],
    ["Model version", (r) => r.model_version || "–"],
  ];
  document.getElementById("cmp-results").replaceChildren(h("thead", {}, header),
    h("tbody", {}, results.map(([label, value]) => h("tr", {}, h("th", { text: label }), runs.map((run) => h("td", {}, value(result.results[run])))))));
  const diffHeader = h("tr", {}, h("th", { text: "Config key" }), runs.map((run) => h("th", { text: run })));
  const diffRows = result.config_diff.map((d) => h("tr", { dataset: { key: d.key } }, h("th", {}, h("code", { text: d.key })), runs.map((run) => cell(d.values[run]))));
  document.getElementById("cmp-diff").replaceChildren(h("thead", {}, diffHeader),
    h("tbody", {}, diffRows.length ? diffRows : h("tr", {}, h("td", { colspan: String(runs.length + 1), class: "muted", text: "The configs are the same." }))));
} catch (error) {
  const box = document.getElementById("compare-error");
  box.hidden = false;
  box.textContent = `${error.message} — select two or more runs on the Runs page.`;
}

// One run: status and stage timeline, live charts (history first, then the metrics
// stream), the log (tail, then live; it follows the end unless the reader scrolled up),
// stop / rerun, and once it is done its summary, calibration, meaning map and storyboard.
import { ACTIVE, api, badge, epochTicks, h, layout, num, pct, PALETTE, PLOT_CONFIG, plural, seconds, toast } from "./common.js";

const name = document.getElementById("run").dataset.run;
const path = `/runs/${encodeURIComponent(name)}`;
const CHARTS = {
  "chart-loss": { title: "Loss", y: "loss", series: [["train/loss", "train"], ["val_select/loss", "val_select"]] },
  "chart-accuracy": { title: "Accuracy (val_select)", y: "accuracy", series: [["val_select/accuracy", "val_select"]] },
  "chart-f1": { title: "Macro-F1 (val_select)", y: "macro-F1", series: [["val_select/macro_f1", "val_select"]] },
  "chart-lr": { title: "Learning rate", y: "lr", series: [["lr", "lr"]] },
};
let detail = null;
let finishedShown = false;
let chartsDrawn = false;
let lrRangeShown = false;
let logLines = null;  // null until the log's tail is read
let streams = [];

// --- status, stages, buttons -------------------------------------------------------

function showDetail(run) {
  detail = run;
  document.getElementById("run-status").replaceWith(Object.assign(badge(run.status, run.message), { id: "run-status" }));
  const facts = [run.family, run.backbone, run.dataset, run.mode, run.template ? `template ${run.template}` : null,
    run.job ? `job ${run.job.submission_id} (${run.job.state})` : null, reviewedFact(run)].filter(Boolean);
  document.getElementById("run-facts").textContent = facts.join(" · ");
  const message = document.getElementById("run-message");
  message.hidden = !run.message || run.status === "succeeded";
  message.textContent = run.message || "";
  // Only a failure is an error; a job's "currently running" is news, not a problem.
  message.className = run.status === "failed" ? "errors" : "notice";
  const trained = run.stages.train && run.stages.train.status === "complete";
  document.getElementById("recalibrate").hidden = !(run.status === "failed" && trained
    && run.stages.calibrate && run.stages.calibrate.status === "failed");
  if (!chartsDrawn) showNoEpochs(run.status);
  if (logLines !== null) showLogEmpty();
  const timeline = document.getElementById("timeline");
  // The stage order is the pipeline's own (ray_app.stages), as the API gives it.
  timeline.replaceChildren(...run.stage_order.map((stage) => {
    const info = run.stages[stage] || {};
    const status = info.status || "waiting";
    return h("div", { class: `stage stage-${status}`, style: `flex-grow: ${Math.max(1, Math.log2(2 + (info.seconds || 0)))}`,
      title: info.error || "" },
      h("strong", { text: stage }), h("span", { text: info.seconds ? `${status} · ${seconds(info.seconds)}` : status }));
  }));
  const active = ACTIVE.has(run.status);
  document.getElementById("stop").hidden = !active;
  document.getElementById("rerun-box").hidden = active;
  if (!active && !finishedShown && run.stages.export && run.stages.export.status === "complete") {
    finishedShown = true;
    showFinished(run).catch((error) => toast(`Could not show the results: ${error.message}`, "error"));
  }
}

async function refresh() {
  showDetail(await api(path));
  const auto = detail.stages.train && detail.stages.train.lr_auto;
  if (auto && !lrRangeShown) {
    lrRangeShown = true;
    showLrRange().catch((error) => toast(`Could not show the learning-rate range test: ${error.message}`, "error"));
  }
}

// lr: auto: the range test's loss against the learning rate, the chosen rate marked.
async function showLrRange() {
  const test = await api(`${path}/lr-range`);
  const box = document.getElementById("chart-lr-range");
  box.hidden = false;
  const low = Math.min(...test.losses);
  const high = Math.min(Math.max(...test.losses), test.losses[0] * 1.5);  // the diverging tail would squash the rest
  Plotly.newPlot(box, [
    { x: test.lrs, y: test.losses, mode: "lines", name: "smoothed loss", line: { color: PALETTE[0], width: 2 } },
    { x: [test.suggested_lr, test.suggested_lr], y: [low, high], mode: "lines", name: `chosen ${test.suggested_lr.toPrecision(2)}`,
      line: { color: PALETTE[1], dash: "dash" } },
  ], layout(`Learning-rate range test (${test.steps_run} steps)`, { x: "learning rate", y: "loss",
    extra: { xaxis: { type: "log", title: { text: "learning rate (log)" } }, yaxis: { range: [low * 0.95, high * 1.02], title: { text: "loss" } } } }),
  PLOT_CONFIG);
}

document.getElementById("stop").addEventListener("click", async (event) => {
  event.target.disabled = true;
  try { await api(`${path}/stop`, { method: "POST" }); toast("Stopping…"); } catch (error) { toast(error.message, "error"); }
  event.target.disabled = false;
});
// A finished run is never retrained in place unasked: a rerun is a new run unless the
// reader picks resume or replace, and replace (which deletes results) is asked twice.
document.getElementById("rerun-mode").addEventListener("change", () => {
  const button = document.getElementById("rerun");
  delete button.dataset.armed;
  button.textContent = "Run again";
});
document.getElementById("rerun").addEventListener("click", async (event) => {
  const button = event.target;
  const mode = document.getElementById("rerun-mode").value;
  if (mode === "replace" && !button.dataset.armed) {
    button.dataset.armed = "1";
    button.textContent = "Delete its results and run again?";
    return;
  }
  button.disabled = true;
  try {
    const withReviewed = document.getElementById("rerun-reviewed").checked;
    const launched = await api(`${path}/rerun`, { method: "POST", body: { on_exists: mode, with_reviewed: withReviewed } });
    location.href = `/runs/${encodeURIComponent(launched.run)}`;
  } catch (error) { toast(error.message, "error"); button.disabled = false; }
});

// A run trained on people's labels says so: the splits stage records each review export
// it read and how many of its rows were new to train.
function reviewedFact(run) {
  const reviewed = (run.stages.splits && run.stages.splits.reviewed) || [];
  if (!reviewed.length) return null;
  return reviewed.map((r) => `review export: ${plural(r.rows, "labelled answer")}, ${r.added_to_train} new to train`
    + (r.already_in_source ? ` (${r.already_in_source} already in the source)` : "")).join(" · ");
}

// A policy with no assist band (its sweep found none worth it) sends a person only the
// answers it abstains on: the review link opens on those, not on an empty queue.
function pointReviewLink(run) {
  const policy = run.evaluation && run.evaluation.policy;
  if (!policy || policy.assist_rate > 0 || !(policy.abstain_rate > 0)) return;
  const link = document.getElementById("review-link");
  link.href = `/runs/${encodeURIComponent(name)}/review?decisions=assist,abstain`;
  link.textContent = "Review the abstained answers";
}

// Once people have labelled some of its served answers, the run can be trained again on
// its source plus those labels: the server exports them and adds them to data.reviewed.
async function showReviewedChoice() {
  const queue = await api(`${path}/review?decisions=assist,abstain,accept&status=labelled&limit=1`);
  const labelled = queue.counts.labelled;
  document.getElementById("rerun-reviewed-count").textContent = plural(labelled, "reviewed label");
  document.getElementById("rerun-reviewed-box").hidden = labelled === 0;
}

// --- training charts ------------------------------------------------------------------

// A run with no epoch yet has nothing to chart: a sentence says why instead of empty axes.
function showNoEpochs(status) {
  const why = ACTIVE.has(status) ? "No epoch has finished yet: the charts start with the first one."
    : status === "stopped" ? "This run was stopped before its first epoch finished: there is nothing to chart."
      : status === "failed" ? "This run failed before its first epoch finished: the log below says why."
        : "This run recorded no epochs.";
  const note = document.getElementById("charts-empty");
  note.textContent = why;
  note.hidden = false;
  document.getElementById("charts").hidden = true;
}

function drawCharts(rows) {
  chartsDrawn = true;
  document.getElementById("charts-empty").hidden = true;
  document.getElementById("charts").hidden = false;
  for (const [id, chart] of Object.entries(CHARTS)) {
    const traces = chart.series.map(([key, label], i) => ({
      x: rows.filter((r) => r[key] !== undefined).map((r) => r.epoch + 1),
      y: rows.filter((r) => r[key] !== undefined).map((r) => r[key]),
      name: label, mode: "lines+markers", line: { color: PALETTE[i], width: 2 }, marker: { size: 5 }, meta: key,
    }));
    const epochs = (detail && detail.config && detail.config.training && detail.config.training.epochs) || rows.length || 1;
    const chartLayout = layout(chart.title, { y: chart.y, extra: { showlegend: chart.series.length > 1 } });
    Object.assign(chartLayout.xaxis, epochTicks(epochs), { range: [0.5, epochs + 0.5] });
    if (chart.series.length === 1) chartLayout.margin.b = 56;  // no legend below to make room for
    Plotly.newPlot(id, traces, chartLayout, PLOT_CONFIG);
  }
}

function appendRow(row) {
  if (!chartsDrawn) { drawCharts([row]); return; }
  for (const [id, chart] of Object.entries(CHARTS)) {
    const indices = [];
    const xs = [];
    const ys = [];
    chart.series.forEach(([key], i) => {
      if (row[key] === undefined) return;
      indices.push(i); xs.push([row.epoch + 1]); ys.push([row[key]]);
    });
    if (indices.length) Plotly.extendTraces(id, { x: xs, y: ys }, indices);
  }
}

function noteEpoch(row) {
  const best = row.best_epoch !== undefined ? ` · best so far: epoch ${row.best_epoch + 1}` : "";
  document.getElementById("epoch-note").textContent = `epoch ${row.epoch + 1}${best}`;
}

async function followMetrics() {
  const history = await api(`${path}/metrics?limit=10000&order=asc`);
  if (history.rows.length) drawCharts(history.rows);
  else showNoEpochs(detail.status);
  let last = history.rows.length ? history.rows[history.rows.length - 1].epoch : -1;
  if (history.rows.length) noteEpoch(history.rows[history.rows.length - 1]);
  const source = new EventSource(`/api/v1${path}/metrics/stream?since_epoch=${last}`);
  streams.push(source);
  source.addEventListener("metrics", (event) => {
    const row = JSON.parse(event.data);
    if (row.epoch <= last) return;
    last = row.epoch;
    appendRow(row);
    noteEpoch(row);
  });
  source.addEventListener("end", () => { source.close(); refresh(); });
}

// --- the log --------------------------------------------------------------------------

// An empty log says why in a sentence, which follows the run's status.
function showLogEmpty() {
  const empty = document.getElementById("log-empty");
  empty.textContent = ACTIVE.has(detail.status) ? "Nothing logged yet: the log fills in once the job starts."
    : "This run wrote no log lines.";
  empty.hidden = logLines > 0;
  document.getElementById("log").hidden = logLines === 0;
}

async function followLog() {
  const box = document.getElementById("log");
  const tail = await api(`${path}/logs?tail=400`);
  box.textContent = tail.lines.join("\n");
  box.scrollTop = box.scrollHeight;
  document.getElementById("log-note").textContent = tail.path;
  logLines = tail.lines.length;
  showLogEmpty();
  const source = new EventSource(`/api/v1${path}/logs/stream?offset=${tail.offset}`);
  streams.push(source);
  source.addEventListener("log", (event) => {
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    const lines = JSON.parse(event.data).lines;
    logLines += lines.length;
    showLogEmpty();
    box.textContent += (box.textContent ? "\n" : "") + lines.join("\n");
    if (atEnd) box.scrollTop = box.scrollHeight;  // follows the tail unless the reader scrolled up
  });
  source.addEventListener("end", () => source.close());
}

// --- results ----------------------------------------------------------------------------

function stat(label, value, hint) {
  return h("div", { class: "stat", title: hint || null }, h("span", { class: "label", text: label }), h("span", { class: "value", text: value }));
}

function showSummary(run) {
  const evaluation = run.evaluation || {};
  const policy = evaluation.policy || {};
  const train = run.stages.train || {};
  document.getElementById("summary").replaceChildren(
    stat("val_test accuracy", num(evaluation.accuracy)),
    stat("val_test macro-F1", num(evaluation.macro_f1)),
    stat("Best epoch", train.best_epoch === undefined ? "–" : `${train.best_epoch + 1} of ${train.epochs_run}`),
    stat("Best val_select accuracy", num(run.best_accuracy)),
    stat("Coverage (accepted)", pct(policy.coverage ?? run.coverage)),
    stat("Accepted accuracy", num(policy.accepted_accuracy)),
    stat("Assist rate", pct(policy.assist_rate)),
    stat("Abstain rate", pct(policy.abstain_rate)),
    stat("ECE after temperature", num(evaluation.calibrated && evaluation.calibrated.ece)),
  );
  const serve = document.getElementById("serve");
  if (run.bundle) {
    serve.replaceChildren(h("div", {}, h("span", { class: "label", text: "Serve it" }), h("code", { text: run.bundle.serve_command })),
      h("div", {}, h("span", { class: "label", text: "Model version" }), h("code", { text: run.bundle.model_version })));
  }
}

function showCalibration(views) {
  const bins = (which) => views.reliability[which].bins.filter((b) => b.count > 0);
  const traces = ["before", "after"].map((which, i) => ({
    x: bins(which).map((b) => b.confidence), y: bins(which).map((b) => b.accuracy),
    text: bins(which).map((b) => plural(b.count, "sample")), name: which === "before" ? "before temperature" : `after (T=${num(views.temperature, 2)})`,
    mode: "lines+markers", marker: { size: bins(which).map((b) => 5 + Math.min(10, Math.sqrt(b.count))), color: PALETTE[i] },
    hovertemplate: "confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{text}<extra></extra>",
  }));
  traces.unshift({ x: [0, 1], y: [0, 1], mode: "lines", name: "perfect", line: { dash: "dot", color: "#9ca3af" }, hoverinfo: "skip" });
  Plotly.newPlot("chart-reliability", traces, layout("Reliability", { x: "confidence", y: "accuracy",
    extra: { xaxis: { range: [0, 1], title: { text: "confidence" } }, yaxis: { range: [0, 1.02], title: { text: "accuracy" } } } }), PLOT_CONFIG);

  const hist = views.decision_histogram;
  const centers = hist.edges.slice(0, -1).map((e, i) => (e + hist.edges[i + 1]) / 2);
  const colors = { accept: "#16a34a", assist: "#ca8a04", abstain: "#dc2626" };
  Plotly.newPlot("chart-decisions", Object.keys(colors).map((decision) => ({
    x: centers, y: hist.counts[decision], type: "bar", name: `${decision} (${hist.totals[decision]})`, marker: { color: colors[decision] },
  })), layout("Confidence by decision", { x: "calibrated confidence", y: "samples", extra: { barmode: "stack", bargap: 0.05 } }), PLOT_CONFIG);

  const risk = views.risk_coverage;
  const points = Object.entries(risk.rules).map(([rule, p], i) => ({
    x: [p.coverage], y: [p.selective_risk], name: rule, mode: "markers", marker: { size: 11, color: PALETTE[i + 1], symbol: "diamond" },
  }));
  Plotly.newPlot("chart-risk", [{ x: risk.curve.map((p) => p.coverage), y: risk.curve.map((p) => p.selective_risk), mode: "lines",
    name: "threshold sweep", line: { color: PALETTE[0] } }, ...points],
  layout("Risk vs coverage (risk: errors among accepted)", { x: "coverage", y: "selective risk" }), PLOT_CONFIG);
}

const COLORS = { accept: "#16a34a", assist: "#ca8a04", abstain: "#dc2626", true: "#2563eb", false: "#dc2626" };
let mapExampleTimer = null;

async function showExample(id) {
  const box = document.getElementById("example");
  const example = await api(`${path}/examples/${encodeURIComponent(id)}?thumbnail_px=160`);
  box.replaceChildren(
    example.kind === "image"
      ? h("img", { src: `data:${example.media_type};base64,${example.image}`, alt: `example ${example.id}`, class: "pixelated" })
      : h("blockquote", { text: example.text }),
    h("dl", {},
      h("dt", { text: "label" }), h("dd", { text: example.label }),
      h("dt", { text: "prediction" }), h("dd", { text: example.prediction }),
      h("dt", { text: "confidence" }), h("dd", { text: num(example.confidence) }),
      h("dt", { text: "decision" }), h("dd", {}, h("span", { class: `badge decision-${example.decision}`, text: example.decision })),
      h("dt", { text: "source" }), h("dd", { class: "small", text: example.source })),
  );
}

async function showMap() {
  const color = document.getElementById("map-color").value;
  const method = document.getElementById("map-method").value;
  const note = document.getElementById("map-note");
  note.textContent = method === "tsne" ? "computing t-SNE…" : "";
  note.classList.remove("error");
  let map;
  try {
    map = await api(`${path}/meaning-map?color=${color}&method=${method}`);
  } catch (error) {
    // The API's reason (e.g. too few points for t-SNE's perplexity) stays on screen.
    note.textContent = `${method === "tsne" ? "t-SNE" : "PCA"} could not be computed: ${error.message}`;
    note.classList.add("error");
    return;
  }
  const groups = [...new Set(map.points.map((p) => String(p.color)))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const traces = groups.map((group, i) => {
    const points = map.points.filter((p) => String(p.color) === group);
    return {
      x: points.map((p) => p.x), y: points.map((p) => p.y), customdata: points.map((p) => p.id),
      text: points.map((p) => `label ${p.label} · predicted ${p.prediction}<br>confidence ${num(p.confidence, 2)} · ${p.decision}`),
      hovertemplate: "%{text}<extra></extra>", name: color === "correct" ? (group === "true" ? "right" : "wrong") : group,
      type: "scatter", mode: "markers", marker: { size: 7, opacity: 0.85, color: COLORS[group] || PALETTE[i % PALETTE.length] },
    };
  });
  const explained = map.explained_variance_ratio ? ` · variance explained ${pct(map.explained_variance_ratio[0] + map.explained_variance_ratio[1])}` : "";
  document.getElementById("map-note").textContent =
    `${map.rows.shown} of ${map.rows.total} val_test rows · ${map.method.toUpperCase()}${explained}${map.cached ? " · cached" : ""}`;
  const chart = document.getElementById("chart-map");
  await Plotly.react(chart, traces, layout("", { x: "component 1", y: "component 2",
    extra: { dragmode: "pan", margin: { l: 48, r: 16, t: 24, b: 48 }, legend: { title: { text: color }, orientation: "v", x: 1.01, y: 1, yanchor: "top" } } }),
  { ...PLOT_CONFIG, scrollZoom: true });
  if (!chart._wired) {
    chart._wired = true;
    chart.on("plotly_click", (event) => showExample(event.points[0].customdata));
    chart.on("plotly_hover", (event) => {
      clearTimeout(mapExampleTimer);
      mapExampleTimer = setTimeout(() => showExample(event.points[0].customdata).catch(() => {}), 150);
    });
  }
}

// What an empty group means, said as a sentence (after "None of the N val_test rows").
const EMPTY_STORY = {
  confident_right: "was accepted and right",
  confident_wrong: "was accepted and wrong",
  assist: "fell in the assist band, so none went to a person",
  abstain: "was abstained on",
};

async function showStoryboard(board) {
  const box = document.getElementById("storyboard");
  const sections = Object.entries(board.categories).map(([category, info]) => {
    const tiles = (info.examples || []).map((example) => {
      // The tile's colour is the outcome (right green, wrong red); the badge is the decision.
      const outcome = example.label === example.prediction ? "right" : "wrong";
      const tile = h("figure", { class: `tile outcome-${outcome}`, dataset: { id: example.id, category, outcome } },
        h("div", { class: "thumb" }), h("figcaption", {},
          h("span", { text: `label ${example.label} → ${example.prediction}` }), h("span", { class: "muted", text: ` ${num(example.confidence, 2)}` }),
          h("span", { class: `badge decision-${example.decision}`, text: example.decision })));
      api(`${path}/examples/${encodeURIComponent(example.id)}?thumbnail_px=96`).then((full) => {
        tile.querySelector(".thumb").append(full.kind === "image"
          ? h("img", { src: `data:${full.media_type};base64,${full.image}`, alt: `example ${full.id}`, class: "pixelated" })
          : h("p", { class: "text-example", text: full.text }));
      }).catch(() => {});
      return tile;
    });
    return h("section", { class: "story", dataset: { category } },
      h("h3", {}, h("span", { class: "category", text: category.replace("_", " ") }), h("span", { class: "muted", text: ` · ${plural(info.count, "row")}` })),
      h("p", { class: "muted small", text: info.available ? info.description : info.reason }),
      info.available && info.count === 0
        ? h("p", { class: "empty-story", text: `None of the ${plural(board.n, "val_test row")} ${EMPTY_STORY[category] || "is in this group"}.` })
        : h("div", { class: "tiles" }, tiles));
  });
  const pairs = (board.confused_pairs || []).map((pair) => h("li", {}, `${pair.classes.join(" ↔ ")}: ${plural(pair.count, "mistake")}`));
  const legend = h("p", { class: "legend small" }, h("span", { class: "swatch outcome-right" }), " right ",
    h("span", { class: "swatch outcome-wrong" }), " wrong · the badge is the policy's decision (accept, assist, abstain)");
  box.replaceChildren(legend, ...sections, pairs.length ? h("section", { class: "story" }, h("h3", { text: "Most confused classes" }), h("ul", {}, pairs)) : "");
}

// --- monitor ------------------------------------------------------------------------------

// How the served model is doing: drift of its confidences from val_calib's, the decision
// mix against the policy's promise, the accuracy estimated from calibrated confidences.
async function showMonitor() {
  const windowS = document.getElementById("monitor-window").value;
  const versionSelect = document.getElementById("monitor-version");
  const version = versionSelect.value ? `&model_version=${encodeURIComponent(versionSelect.value)}` : "";
  let view;
  try {
    view = await api(`${path}/monitor?window_s=${windowS}${version}`);
  } catch (error) {
    document.getElementById("monitor-body").hidden = true;
    const empty = document.getElementById("monitor-empty");
    empty.hidden = false;
    empty.textContent = `The monitor could not be read: ${error.message}`;
    return;
  }
  const shown = view.versions.length ? view.versions : [view.model_version].filter(Boolean);
  if (versionSelect.options.length !== shown.length) {
    versionSelect.replaceChildren(...shown.map((v) => h("option", { value: v, text: v })));
    if (view.model_version) versionSelect.value = view.model_version;
  }
  const label = document.getElementById("monitor-window").selectedOptions[0].textContent;
  document.getElementById("monitor-note").textContent = `${plural(view.answers, "answer")} in the ${label}`;
  const empty = document.getElementById("monitor-empty");
  empty.hidden = view.answers > 0;
  document.getElementById("monitor-body").hidden = view.answers === 0;
  if (view.answers === 0) {
    empty.textContent = `No recorded answers in the ${label}. Serve the bundle (the command above) and every answer it `
      + "gives shows here: its decision mix, its confidences against the calibration data's, its estimated accuracy.";
    return;
  }
  const drift = view.drift;
  const banner = document.getElementById("monitor-drift");
  banner.className = drift.flagged ? "errors" : "notice";
  const p = (value) => (value < 0.01 ? value.toExponential(1) : num(value, 2));
  const confidenceSays = `confidences PSI ${num(drift.psi, 2)}, KS p ${p(drift.ks_p_value)}`;
  const predictionSays = `predicted classes PSI ${num(drift.prediction_psi, 2)}, χ² p ${p(drift.chi2_p_value)}`;
  const moved = [
    drift.by_confidence ? `its calibrated confidences (PSI ${num(drift.psi, 2)}, KS p ${p(drift.ks_p_value)}) moved away from val_calib's` : null,
    drift.by_prediction ? `the classes it predicts (PSI ${num(drift.prediction_psi, 2)}, χ² p ${p(drift.chi2_p_value)}) moved away from val_test's` : null,
  ].filter(Boolean);
  banner.textContent = drift.flagged
    ? `Drift: ${moved.join(", and ")} (flagged at PSI > ${num(drift.psi_threshold, 2)} with p < ${drift.p_threshold}). `
      + "The inputs no longer look like the data the model was checked on; the accuracy estimate may not hold: "
      + "label the audit sample of accepted answers to measure it."
    : `No drift: ${confidenceSays}; ${predictionSays} (flagged at PSI > ${num(drift.psi_threshold, 2)} with p < ${drift.p_threshold}).`;
  const estimate = view.estimated_accuracy;
  const measured = view.measured_accuracy;
  const audited = view.audited_accuracy;
  const auditLink = `/runs/${encodeURIComponent(name)}/review?decisions=accept`;
  const auditNote = document.getElementById("monitor-audit");
  auditNote.hidden = !(drift.flagged || (audited && audited.contradicts_estimate));
  auditNote.className = audited && audited.contradicts_estimate ? "errors" : "notice";
  auditNote.replaceChildren(
    audited && audited.contradicts_estimate
      ? `People labelled ${plural(audited.n, "accepted answer")} of the audit sample: ${pct(audited.accuracy)} were right `
        + `(${pct(audited.low)}–${pct(audited.high)}), against an estimated ${pct(estimate.estimate)}. `
        + "The model is confidently wrong on this traffic; its confidences no longer say how it is doing. "
      : `${audited ? `${plural(audited.n, "audited answer")} so far. ` : "No audited answer yet. "}`
        + "The audit sample is a random share of the accepted answers, kept for a person to check. ",
    h("a", { href: auditLink, text: "Review the audit sample" }),
  );
  document.getElementById("monitor-stats").replaceChildren(
    stat("Answers / s", num(view.request_rate, 2)),
    stat("Latency p50 / p99", view.latency_ms.requests ? `${num(view.latency_ms.p50, 1)} / ${num(view.latency_ms.p99, 1)} ms` : "–",
      "How long a replica took to answer a request (the HTTP in front of it not included)."),
    stat("Estimated accuracy (accepted)", estimate.estimate === null ? "–" : `${pct(estimate.estimate)} (${pct(estimate.low)}–${pct(estimate.high)})`,
      "Mean calibrated confidence of the accepted answers; the range adds the sampling spread and val_calib's ECE."),
    stat("Accepted accuracy on val_test", num(detail.evaluation && detail.evaluation.policy && detail.evaluation.policy.accepted_accuracy)),
    stat("Audited accepted answers", audited ? `${pct(audited.accuracy)} of ${audited.n} (${pct(audited.low)}–${pct(audited.high)})` : "none audited",
      "Accuracy on the reviewed audit sample: a random share of the accepted answers, labelled by people."),
    stat("Measured on reviewed assist / abstain", measured ? `${pct(measured.accuracy)} of ${measured.n}` : "none reviewed",
      "Below the accepted answers' accuracy by design: these are the answers the policy did not trust."),
  );
  const shares = (counts) => { const total = counts.reduce((a, b) => a + b, 0) || 1; return counts.map((c) => c / total); };
  const centers = view.confidence.edges.slice(0, -1).map((e, i) => (e + view.confidence.edges[i + 1]) / 2);
  Plotly.react("chart-monitor-confidence", [
    { x: centers, y: shares(view.confidence.reference), type: "bar", name: "val_calib", marker: { color: "#9ca3af" }, opacity: 0.7 },
    { x: centers, y: shares(view.confidence.live), type: "bar", name: "live", marker: { color: PALETTE[0] }, opacity: 0.7 },
  ], layout("Calibrated confidence: live vs val_calib", { x: "calibrated confidence", y: "share of answers",
    extra: { barmode: "overlay", bargap: 0.05 } }), PLOT_CONFIG);
  Plotly.react("chart-monitor-classes", [
    { x: view.label_names, y: shares(view.predicted.reference), type: "bar", name: "val_test", marker: { color: "#9ca3af" } },
    { x: view.label_names, y: shares(view.predicted.live), type: "bar", name: "live", marker: { color: PALETTE[0] } },
  ], layout("Predicted classes: live vs val_test", { x: "predicted class", y: "share of answers",
    extra: { barmode: "group", xaxis: { type: "category", title: { text: "predicted class" } } } }), PLOT_CONFIG);
  const names = ["accept", "assist", "abstain"];
  const rates = names.map((d) => view.decisions[d]);
  Plotly.react("chart-monitor-decisions", [
    { x: names, y: rates.map((r) => r.rate), type: "bar", name: "live (95% interval)", marker: { color: names.map((d) => ({ accept: "#16a34a", assist: "#ca8a04", abstain: "#dc2626" })[d]) },
      error_y: { type: "data", symmetric: false, array: rates.map((r) => r.high - r.rate), arrayminus: rates.map((r) => r.rate - r.low) } },
    { x: names, y: rates.map((r) => r.promised), type: "scatter", mode: "markers", name: "promised on val_test",
      marker: { symbol: "line-ew-open", size: 36, color: "#111827", line: { width: 3 } } },
  ], layout("Decision mix: live vs the policy's promise", { x: "decision", y: "share of answers", extra: { yaxis: { range: [0, 1], title: { text: "share of answers" } } } }), PLOT_CONFIG);
}

async function showFinished(run) {
  document.getElementById("finished").hidden = false;
  showSummary(run);
  const [views, board] = await Promise.all([api(`${path}/calibration-views`), api(`${path}/storyboard`)]);
  showCalibration(views);
  await showStoryboard(board);
  await showMap();
  pointReviewLink(run);
  await showMonitor();
  await showReviewedChoice();
  setInterval(() => showMonitor().catch(() => {}), 10_000);  // the window slides
}

document.getElementById("monitor-window").addEventListener("change", () => showMonitor().catch((e) => toast(e.message, "error")));
document.getElementById("monitor-version").addEventListener("change", () => showMonitor().catch((e) => toast(e.message, "error")));
document.getElementById("map-color").addEventListener("change", () => showMap().catch((e) => toast(e.message, "error")));
document.getElementById("map-method").addEventListener("change", () => showMap().catch((e) => toast(e.message, "error")));
window.addEventListener("beforeunload", () => streams.forEach((s) => s.close()));

async function main() {
  try {
    await refresh();
  } catch (error) {
    const message = document.getElementById("run-message");
    message.hidden = false;
    message.textContent = error.status === 404 ? `${error.message}. All runs are on the Runs page.` : error.message;
    return;
  }
  await Promise.all([followMetrics(), followLog()]);
  setInterval(() => { if (!detail || ACTIVE.has(detail.status)) refresh().catch(() => {}); }, 2000);
}

main();

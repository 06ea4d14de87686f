// The review queue: one recorded answer at a time (the input, the model's top guesses),
// labelled with the keyboard; the labels are exported as a dataset the next run trains on.
import { api, h, num, plural, toast, when } from "./common.js";

const name = document.getElementById("review").dataset.run;
const path = `/runs/${encodeURIComponent(name)}/review`;
const state = { items: [], index: 0, labelNames: [], keys: new Map(), history: [], exportPath: null };
// Keys pressed faster than the server answers are done in order, none dropped: a
// reviewer who knows the digit types ahead.
let pending = Promise.resolve();
function enqueue(action) { pending = pending.then(action).catch((error) => toast(error.message, "error")); }
const reviewer = document.getElementById("reviewer");
reviewer.value = localStorage.getItem("ray-app-reviewer") || "";
reviewer.addEventListener("change", () => localStorage.setItem("ray-app-reviewer", reviewer.value.trim()));

// Single-character class names are their own keys (press 7 for "7"); longer ones get
// 1-9, 0, then a-z (s and u stay skip and undo).
function assignKeys(labels) {
  const keys = new Map();
  if (labels.every((l) => l.length === 1) && !labels.some((l) => "su".includes(l.toLowerCase()))) {
    for (const label of labels) keys.set(label.toLowerCase(), label);
    return keys;
  }
  const pool = [..."1234567890abcdefghijklmnopqrtvwxyz"];
  labels.forEach((label, i) => { if (i < pool.length) keys.set(pool[i], label); });
  return keys;
}

// The page can be opened on a choice of decisions (the run page links abstain answers
// when its policy has no assist band).
const decisionsSelect = document.getElementById("review-decisions");
const askedDecisions = new URLSearchParams(location.search).get("decisions");
if ([...decisionsSelect.options].some((o) => o.value === askedDecisions)) decisionsSelect.value = askedDecisions;

function query() {
  const decisions = document.getElementById("review-decisions").value;
  const status = document.getElementById("review-status").value;
  return `?decisions=${encodeURIComponent(decisions)}&status=${status}&limit=200`;
}

async function load() {
  const queue = await api(`${path}${query()}`);
  state.items = queue.items;
  state.index = 0;
  state.labelNames = queue.label_names;
  state.keys = assignKeys(queue.label_names);
  const c = queue.counts;
  document.getElementById("review-counts").textContent =
    `${plural(c.pending, "answer")} to review · ${c.labelled} labelled · ${c.skipped} skipped`;
  document.getElementById("review-keys").replaceChildren(...[...state.keys].map(([key, label]) =>
    h("button", { type: "button", class: "key", dataset: { label }, onclick: () => enqueue(() => submit({ label })) },
      h("kbd", { text: key }), ` ${label}`)));
  await show();
}

async function show() {
  const item = state.items[state.index];
  const card = document.getElementById("review-item");
  const empty = document.getElementById("review-empty");
  card.hidden = !item;
  empty.hidden = Boolean(item);
  if (!item) {
    empty.textContent = state.items.length
      ? "That was the last one shown: every answer here has been seen."
      : "Nothing to review here: no recorded answer of this run's served model matches. Serve its bundle, and the answers its policy sends to a person queue up here.";
    return;
  }
  card.dataset.item = item.id;
  const full = await api(`${path}/items/${encodeURIComponent(item.id)}?thumbnail_px=256`);
  if (card.dataset.item !== item.id) return;  // moved on meanwhile
  const input = full.input;
  document.getElementById("review-input").replaceChildren(
    !input ? h("p", { class: "empty", text: "This answer's input was not kept (abstain inputs can be switched off): skip it." })
      : input.kind === "image" ? h("img", { src: `data:${input.media_type};base64,${input.image}`, alt: "the input to label", class: "pixelated" })
        : input.kind === "text" ? h("blockquote", { text: input.text })
          : h("p", { class: "empty", text: `The kept input cannot be shown: ${input.reason}` }));
  document.getElementById("review-decision").replaceChildren(h("span", { class: `badge decision-${item.decision}`, text: item.decision }),
    ` predicted ${item.prediction} at ${num(item.confidence, 2)}`);
  document.getElementById("review-when").textContent = `· answered ${when(new Date(item.answered_at * 1000).toISOString())} by ${item.model_version}`;
  document.getElementById("review-topk").replaceChildren(...item.top_k.map((guess) => h("li", {},
    h("span", { class: "bar", style: `width: ${Math.round(100 * guess.probability)}%` }),
    h("span", { text: `${guess.label} · ${num(guess.probability, 2)}` }))));
  const review = item.review;
  document.getElementById("review-state").textContent = review
    ? (review.skipped ? `skipped by ${review.reviewer}` : `labelled ${review.label} by ${review.reviewer}`) : "";
}

async function submit(body) {
  const item = state.items[state.index];
  if (!item) return;
  const stored = await api(`${path}/items/${encodeURIComponent(item.id)}`, { method: "PUT",
    body: { ...body, reviewer: reviewer.value.trim() || undefined } });
  item.review = stored;
  state.history.push(item);
  state.index += 1;
  toast(body.skip ? "Skipped" : `Labelled ${body.label}`);
  await refreshCounts();
  await show();
}

async function undo() {
  const item = state.history.pop();
  if (!item) return;
  await api(`${path}/items/${encodeURIComponent(item.id)}`, { method: "DELETE" });
  item.review = null;
  state.index = Math.max(0, state.items.indexOf(item));
  toast("Undone");
  await refreshCounts();
  await show();
}

async function refreshCounts() {
  const c = (await api(`${path}${query()}&limit=1`)).counts;
  document.getElementById("review-counts").textContent =
    `${plural(c.pending, "answer")} to review · ${c.labelled} labelled · ${c.skipped} skipped`;
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "u" || event.key === "Backspace") { event.preventDefault(); enqueue(undo); return; }
  if (key === "s") { event.preventDefault(); enqueue(() => submit({ skip: true })); return; }
  const label = state.keys.get(key);
  if (label !== undefined) { event.preventDefault(); enqueue(() => submit({ label })); }
});
for (const id of ["review-decisions", "review-status"]) {
  document.getElementById(id).addEventListener("change", () => load().catch((e) => toast(e.message, "error")));
}

document.getElementById("review-export").addEventListener("click", async (event) => {
  event.target.disabled = true;
  try {
    const exported = await api(`${path}/export`, { method: "POST" });
    state.exportPath = exported.path;
    document.getElementById("review-export-result").textContent =
      `${plural(exported.rows, "labelled answer")} written to ${exported.path} (sha256 ${exported.fingerprint.slice(0, 12)}…)`;
    document.getElementById("review-exported").hidden = false;
  } catch (error) {
    toast(error.message, "error");
  } finally {
    event.target.disabled = false;
  }
});

document.getElementById("review-rerun").addEventListener("click", async (event) => {
  event.target.disabled = true;
  try {
    // The server exports the labels again (unchanged ones give this same export) and keeps
    // the exports the run already trained on.
    const launched = await api(`/runs/${encodeURIComponent(name)}/rerun`, { method: "POST",
      body: { with_reviewed: true, on_exists: "new" } });
    location.href = `/runs/${encodeURIComponent(launched.run)}`;
  } catch (error) {
    toast(error.message, "error");
    event.target.disabled = false;
  }
});

load().catch((error) => {
  const empty = document.getElementById("review-empty");
  empty.hidden = false;
  empty.textContent = `The review queue could not be read: ${error.message}`;
});

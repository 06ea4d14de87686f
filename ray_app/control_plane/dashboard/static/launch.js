// The launch form. A preset or template is the starting config; the form's fields are
// sent as `dotted.key=value` overrides on top of it (the API validates everything at
// once and its problems are shown next to their fields), and the family's parameters
// become the config's model.backbone section through /families/{name}/backbone. The run
// name it will train under is resolved live, and a run of that name already there is
// shown with the choices the API offers (on_exists: new, resume, replace).
import { api, ApiError, h, plural, seconds, showProblems, toast } from "./common.js";

const form = document.getElementById("launch-form");
const picker = document.getElementById("source-picker");
const familySelect = document.getElementById("family");
const errors = document.getElementById("form-errors");
const state = { source: null, base: null, resolved: null, family: null, defaults: {}, given: {}, existing: null, run: null };

const get = (object, dotted) => dotted.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), object);
const clone = (value) => JSON.parse(JSON.stringify(value));

function fields() { return [...form.querySelectorAll("[data-key]")]; }

function fieldValue(input) {
  if (input.type === "checkbox") return input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  // A list item that is not a number is sent as typed, so the API's reason quotes it.
  if (input.dataset.list !== undefined) {
    return text.split(",").map((t) => t.trim()).map((t) => (t !== "" && Number.isFinite(Number(t)) ? Number(t) : t));
  }
  if (input.type === "number") return Number(text);
  // A number or a word (the learning rate: 0.001 or auto).
  if (input.inputMode === "decimal" && Number.isFinite(Number(text))) return Number(text);
  return text;
}

function setField(input, value) {
  if (input.type === "checkbox") input.checked = Boolean(value);
  else if (Array.isArray(value)) input.value = value.join(", ");
  else input.value = value === null || value === undefined ? "" : String(value);
}

function clearErrors() {
  for (const span of form.querySelectorAll(".error")) span.textContent = "";
  for (const label of form.querySelectorAll("label.invalid")) label.classList.remove("invalid");
  showProblems(errors, []);
}

// The field a problem's key is about: the key's own, or the nearest enclosing key's
// ("calibration.guardrail.widths.1" is item 2 of the widths field), or a family parameter.
function fieldFor(key) {
  const parts = key.split(".");
  for (let n = parts.length; n > 0; n--) {
    const input = form.querySelector(`[data-key="${parts.slice(0, n).join(".")}"]`);
    if (input) return { input, rest: parts.slice(n) };
  }
  const input = form.querySelector(`[data-param="${parts[parts.length - 1]}"]`);
  return input ? { input, rest: [] } : null;
}

// "training.lr: Input should be greater than 0" goes next to the field of training.lr
// (or of the nearest enclosing key); what matches no field is listed above the form.
function showErrors(problems) {
  clearErrors();
  const unplaced = [];
  for (const problem of problems) {
    // "key: why" names its field; a family's cross-field rule starts with the field it
    // is about ("hidden_size 33 is not a multiple of ...") and is shown whole.
    const match = /^(?:override '[^']*': )?([A-Za-z0-9_.]+)(?:=[^:]*)?(: )?/.exec(problem);
    const found = match ? fieldFor(match[1]) : null;
    if (found) {
      const label = found.input.closest("label");
      label.classList.add("invalid");
      const span = label.querySelector(".error");
      const where = found.rest.map((part) => (/^\d+$/.test(part) ? `item ${Number(part) + 1}` : part)).join(" ");
      const why = (where ? `${where}: ` : "") + (match[2] ? problem.slice(match[0].length) : problem);
      span.textContent = span.textContent ? `${span.textContent}; ${why}` : why;
    } else {
      unplaced.push(problem);
    }
  }
  showProblems(errors, unplaced);
  const first = form.querySelector("label.invalid") || errors;
  first.scrollIntoView({ block: "center", behavior: "smooth" });
}

function familyOf(backbone) {
  if (backbone.id) return "pretrained";
  const type = backbone.config && backbone.config.model_type;
  const known = [...familySelect.options].find((o) => o.dataset.modelType === type);
  return known ? known.value : "generic";
}

async function showFamily(name, values = {}) {
  const info = await api(`/families/${encodeURIComponent(name)}`);
  state.family = name;
  familySelect.value = name;
  document.getElementById("family-description").textContent = info.description;
  const box = document.getElementById("family-params");
  state.defaults = {};
  const properties = info.params_schema.properties || {};
  // Values carried from another family keep only the parameters this family has.
  state.given = Object.fromEntries(Object.entries(values).filter(([key]) => key in properties));
  const required = new Set(info.params_schema.required || []);
  const inputs = Object.entries(properties).map(([key, spec]) => {
    const type = spec.type || (spec.anyOf || []).map((s) => s.type).find((t) => t && t !== "null") || "string";
    state.defaults[key] = spec.default;
    const input = type === "boolean"
      ? h("input", { type: "checkbox", "data-param": key })
      : h("input", { type: type === "integer" || type === "number" ? "number" : "text", step: type === "integer" ? "1" : "any",
          "data-param": key, "data-list": type === "array",  // a list (ConvNeXt's hidden_sizes) is typed comma-separated
          placeholder: spec.default === undefined ? (required.has(key) ? "required" : "") : [spec.default].flat().join(", ") });
    setField(input, key in state.given ? state.given[key] : spec.default);
    return h("label", { class: type === "boolean" ? "check" : (type === "string" ? "wide" : null), title: spec.description || "" },
      type === "boolean" ? [input, ` ${key}`] : [key, input],
      h("small", { class: "hint", text: spec.description || "" }), h("span", { class: "error" }));
  });
  box.replaceChildren(...inputs);
}

// Every parameter as the form shows it: what a switch to another family carries over,
// so a DINOv2 started from the digits preset keeps its 8-px, 1-channel, small shape.
function shownParams() {
  const params = {};
  for (const input of document.querySelectorAll("#family-params [data-param]")) {
    const value = fieldValue(input);
    if (value !== undefined) params[input.dataset.param] = value;
  }
  return params;
}

function familyParams() {
  const params = {};
  for (const input of document.querySelectorAll("#family-params [data-param]")) {
    const key = input.dataset.param;
    const value = fieldValue(input);
    if (value === undefined) continue;
    // Keys the config gave stay; a default left alone is not written (the variant name keeps its short form).
    if (key in state.given || JSON.stringify(value) !== JSON.stringify(state.defaults[key])) params[key] = value;
  }
  return params;
}

function syncPeft() {
  const peft = form.querySelector('[data-key="training.mode"]').value === "peft";
  document.getElementById("peft-fields").hidden = !peft;
}

// The body every action sends: the source (template by name, so the run records it;
// else the preset's config) and the form as overrides, the backbone section included.
// Problems of the family's parameters and of the rest of the form are raised together.
async function requestBody() {
  const problems = [];
  const overrides = [];
  try {
    const section = await api(`/families/${encodeURIComponent(state.family)}/backbone`, { method: "POST", body: familyParams() });
    const backbone = clone(section.backbone);
    const previous = state.base.model && state.base.model.backbone;
    if (backbone.config && previous && previous.config && previous.config.model_type === backbone.config.model_type) {
      // Keys the family's form does not show (pass-through HF config keys) stay as the source gave them.
      backbone.config = { ...previous.config, ...backbone.config };
    }
    overrides.push(`model.backbone=${JSON.stringify(backbone)}`);
  } catch (error) {
    if (error.status !== 422) throw error;
    problems.push(...error.problems);
  }
  const peft = form.querySelector('[data-key="training.mode"]').value === "peft";
  for (const input of fields()) {
    if (input.dataset.peft !== undefined && !peft) continue;
    const value = fieldValue(input);
    if (value === undefined) continue;
    if (input.dataset.key === "data.source.path" && form.querySelector('[data-key="data.source.kind"]').value === "sklearn_digits") continue;
    overrides.push(`${input.dataset.key}=${JSON.stringify(value)}`);
  }
  const body = state.source.kind === "template" ? { template: state.source.name, overrides } : { config: state.base, overrides };
  if (problems.length) {
    try {
      await api("/configs/resolve", { method: "POST", body });
    } catch (error) {
      if (error.status !== 422 && error.status !== 400) throw error;
      problems.push(...error.problems);
    }
    throw new ApiError(422, { detail: problems });
  }
  return body;
}

// --- the run name, live ------------------------------------------------------------------

function onExists() { return form.querySelector("input[name=on_exists]:checked").value; }

function showRunName() {
  const label = document.getElementById("run-name");
  const existing = state.existing;
  const choice = existing ? onExists() : null;
  label.dataset.run = state.run || "";
  label.textContent = !state.run ? "the run's name shows once the form is valid (Launch lists what to fix)"
    : !existing ? `will train run ${state.run}`
      : { refuse: `run ${state.run} exists: choose above what to do`, new: `will train run ${existing.next_free}`,
          resume: `will resume run ${state.run}`, replace: `will delete and retrain run ${state.run}` }[choice];
}

function showExisting(existing) {
  const changed = (existing && existing.run) !== (state.existing && state.existing.run);
  state.existing = existing;
  const box = document.getElementById("exists");
  box.hidden = !existing;
  if (changed) {  // a new name: ask again
    form.querySelector("input[name=on_exists][value=refuse]").checked = true;
    document.getElementById("exists-refused").hidden = true;
  }
  if (existing) {
    document.getElementById("exists-text").replaceChildren("A run named ", h("a", { href: existing.link, text: existing.run }),
      ` exists (${existing.status}, ${existing.same_config ? "the same config" : "a different config"}). `,
      "A finished run is never changed without being asked:");
    document.getElementById("exists-next").textContent = existing.next_free;
  }
  showRunName();
}

let previewTimer = null;
let previewCount = 0;

// Resolves the form as it is (debounced): the run name it gives and any run of that name.
async function preview() {
  const count = ++previewCount;
  let resolved = null;
  try {
    resolved = await api("/configs/resolve", { method: "POST", body: await requestBody() });
  } catch (error) {
    if (error.status !== 422 && error.status !== 400) throw error;
  }
  if (count !== previewCount) return;  // a later edit's answer wins
  state.run = resolved ? resolved.run : null;
  showExisting(resolved ? resolved.existing || null : null);
}

function schedulePreview(event) {
  if (!state.source || (event && event.target.closest("#save-fields, #exists, #source-picker, #family"))) return;
  clearTimeout(previewTimer);
  previewTimer = setTimeout(() => preview().catch((error) => toast(error.message, "error")), 250);
}

// A source is a template, a preset, or a run's own recorded config (to change it and
// resume that run, e.g. a run whose calibration found no policy: its training is kept).
async function sourceConfig(kind, name) {
  if (kind === "template") return api(`/templates/${encodeURIComponent(name)}`);
  if (kind === "run") return { config: (await api(`/runs/${encodeURIComponent(name)}`)).config, description: "the config this run recorded" };
  return { config: await api(`/presets/${encodeURIComponent(name)}`) };
}

async function loadSource(kind, name) {
  const base = await sourceConfig(kind, name);
  state.source = { kind, name };
  state.base = base.config;
  const resolved = await api("/configs/resolve", { method: "POST", body: { config: state.base } });
  state.resolved = resolved.config;
  for (const input of fields()) setField(input, get(state.resolved, input.dataset.key));
  const backbone = state.resolved.model.backbone;
  const family = familyOf(backbone);
  await showFamily(family, family === "pretrained" ? { path: backbone.id } : Object.fromEntries(
    Object.entries(backbone.config || {}).filter(([k]) => k !== "model_type")));
  picker.value = kind === "run" ? "" : `${kind}:${name}`;
  document.getElementById("source-loaded").hidden = false;
  document.getElementById("source-name").textContent = `${kind} ${name}`;
  document.getElementById("source-description").textContent = base.description || "";
  state.run = resolved.run;
  showExisting(resolved.existing || null);
  syncPeft();
  clearErrors();
}

async function fillPicker() {
  const [presets, templates] = await Promise.all([api("/presets"), api("/templates")]);
  const groups = [];
  if (templates.length) groups.push(h("optgroup", { label: "Templates" }, templates.map((t) => h("option", { value: `template:${t.name}`, text: t.name }))));
  if (presets.length) groups.push(h("optgroup", { label: "Presets (configs/)" }, presets.map((p) => h("option", { value: `preset:${p.name}`, text: p.name }))));
  picker.replaceChildren(h("option", { value: "", text: "— choose —" }), ...groups);
  return { presets, templates };
}

async function clearSource(defaults) {
  const preset = defaults.presets.find((p) => p.name === "digits") || defaults.presets[0];
  if (preset) await loadSource("preset", preset.name);
  else showProblems(errors, ["No preset or template to start from: save a template with `ray-app templates save CONFIG`."]);
}

function showBudget(budget) {
  const rows = budget.data.rows;
  const estimate = budget.estimate;
  const stat = (label, value) => h("div", { class: "stat" }, h("span", { class: "label", text: label }), h("span", { class: "value", text: value }));
  const inputs = budget.inputs.kind === "text"
    ? stat("Tokens / epoch", `${budget.inputs.tokens_per_epoch.real.toLocaleString()} real + ${budget.inputs.tokens_per_epoch.padding.toLocaleString()} padding`)
    : stat("Patches / epoch", budget.inputs.patches_per_epoch ? budget.inputs.patches_per_epoch.toLocaleString() : "–");
  document.getElementById("budget-result").replaceChildren(h("div", { class: "stats" },
    stat("Rows", `train ${rows.train.toLocaleString()} · val_select ${rows.val_select.toLocaleString()}`),
    inputs,
    stat("Parameters", `${budget.parameters.total.toLocaleString()} (${(100 * budget.parameters.trainable_share).toFixed(1)}% trained)`),
    stat("FLOPs / epoch", `${(budget.flops.per_epoch / 1e9).toFixed(2)} G`),
    stat("Epoch (training steps)", seconds(estimate.epoch_train_seconds)),
    stat(plural(estimate.epochs, "epoch"), seconds(estimate.train_seconds_all_epochs)),
  ), h("p", { class: "muted small", text: `${budget.cached ? "From the cache" : "Measured now"} · ${estimate.note}` }));
}

async function withButton(button, work) {
  button.disabled = true;
  const label = button.textContent;
  button.classList.add("busy");
  try {
    return await work();
  } catch (error) {
    if (error.status === 422 || error.status === 400) showErrors(error.problems);
    else if (error.status !== 401) toast(error.message, "error");
    return undefined;
  } finally {
    button.disabled = false;
    button.classList.remove("busy");
    button.textContent = label;
  }
}

const defaults = await fillPicker();
const families = await api("/families");
familySelect.replaceChildren(...families.map((f) => h("option", { value: f.name, text: f.title, dataset: { modelType: f.model_type || "" } })));

picker.addEventListener("change", () => {
  const [kind, ...rest] = picker.value.split(":");
  if (kind) loadSource(kind, rest.join(":")).catch((e) => toast(e.message, "error"));
});
document.getElementById("source-clear").addEventListener("click", () => clearSource(defaults));
familySelect.addEventListener("change", () => showFamily(familySelect.value, shownParams()).then(preview)
  .catch((e) => toast(e.message, "error")));
form.addEventListener("input", schedulePreview);
form.addEventListener("change", schedulePreview);
for (const radio of form.querySelectorAll("input[name=on_exists]")) {
  radio.addEventListener("change", () => { document.getElementById("exists-refused").hidden = true; showRunName(); });
}
form.querySelector('[data-key="training.mode"]').addEventListener("change", syncPeft);

// The estimate runs in a process of the server's own (it never blocks other requests);
// the seconds count up while it measures and stay as how long it took.
document.getElementById("budget").addEventListener("click", (event) => withButton(event.target, async () => {
  event.target.textContent = "Measuring…";
  clearErrors();
  const progress = document.getElementById("budget-progress");
  const started = performance.now();
  const elapsed = () => seconds((performance.now() - started) / 1000);
  progress.hidden = false;
  progress.textContent = "measuring…";
  const ticker = setInterval(() => { progress.textContent = `measuring… ${elapsed()}`; }, 500);
  try {
    const budget = await api("/budget", { method: "POST", body: await requestBody() });
    showBudget(budget);
    progress.textContent = `${budget.cached ? "from the cache" : "measured"} in ${elapsed()}`;
  } catch (error) {
    progress.hidden = true;
    throw error;
  } finally {
    clearInterval(ticker);
  }
}));

document.getElementById("suggest").addEventListener("click", (event) => withButton(event.target, async () => {
  clearErrors();
  const suggestion = await api("/templates/suggest", { method: "POST", body: await requestBody() });
  document.getElementById("template-name").value = suggestion.name;
  document.getElementById("template-description").value = suggestion.description;
  document.getElementById("save-fields").hidden = false;
}));

document.getElementById("save-template").addEventListener("click", (event) => withButton(event.target, async () => {
  clearErrors();
  const body = await requestBody();
  const config = body.config || (await api(`/templates/${encodeURIComponent(body.template)}`)).config;
  const name = document.getElementById("template-name").value.trim();
  try {
    await api("/templates", { method: "POST", body: { name, description: document.getElementById("template-description").value, config, overrides: body.overrides } });
  } catch (error) {
    if (error.status === 409 || error.status === 400) {
      const label = document.getElementById("template-name").closest("label");
      label.classList.add("invalid");
      label.querySelector(".error").textContent = error.message;
      return;
    }
    throw error;
  }
  toast(`Saved template ${name}`);
  await fillPicker();
  await loadSource("template", name);
}));

form.addEventListener("submit", (event) => {
  event.preventDefault();
  withButton(document.getElementById("launch"), async () => {
    clearErrors();
    const body = { ...(await requestBody()), on_exists: onExists() };
    let launched;
    try {
      launched = await api("/runs", { method: "POST", body });
    } catch (error) {
      if (error.status !== 409) throw error;
      await preview();  // the run met (or its job still active), with the choices
      const refused = document.getElementById(state.existing ? "exists-refused" : "form-errors");
      refused.textContent = error.message;
      refused.hidden = false;
      refused.scrollIntoView({ block: "center", behavior: "smooth" });
      return;
    }
    location.href = `/runs/${encodeURIComponent(launched.run)}`;
  });
});

const wanted = new URLSearchParams(location.search);
if (wanted.get("template")) await loadSource("template", wanted.get("template"));
else if (wanted.get("run")) await loadSource("run", wanted.get("run"));
else await clearSource(defaults);
if (wanted.get("family") && wanted.get("family") !== state.family) {
  await showFamily(wanted.get("family"), shownParams());
  await preview();
}

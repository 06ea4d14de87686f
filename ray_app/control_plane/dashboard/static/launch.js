// The launch form. A preset or template is the starting config; the form's fields are
// sent as `dotted.key=value` overrides on top of it (the API validates everything at
// once and its problems are shown next to their fields), and the family's parameters
// become the config's model.backbone section through /families/{name}/backbone.
import { api, h, seconds, showProblems, toast } from "./common.js";

const form = document.getElementById("launch-form");
const picker = document.getElementById("source-picker");
const familySelect = document.getElementById("family");
const errors = document.getElementById("form-errors");
const state = { source: null, base: null, resolved: null, family: null, defaults: {}, given: {} };

const get = (object, dotted) => dotted.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), object);
const clone = (value) => JSON.parse(JSON.stringify(value));

function fields() { return [...form.querySelectorAll("[data-key]")]; }

function fieldValue(input) {
  if (input.type === "checkbox") return input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (input.dataset.list !== undefined) return text.split(",").map((t) => Number(t.trim()));
  if (input.type === "number") return Number(text);
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

// "training.lr: Input should be greater than 0" goes next to the field of training.lr
// (or of the nearest enclosing key); what matches no field is listed above the form.
function showErrors(problems) {
  clearErrors();
  const unplaced = [];
  for (const problem of problems) {
    // "key: why" names its field; a family's cross-field rule starts with the field it
    // is about ("hidden_size 33 is not a multiple of ...") and is shown whole.
    const match = /^(?:override '[^']*': )?([A-Za-z0-9_.]+)(?:=[^:]*)?(: )?/.exec(problem);
    let input = null;
    if (match) {
      const key = match[1];
      input = form.querySelector(`[data-key="${key}"]`) || form.querySelector(`[data-param="${key.split(".").pop()}"]`);
    }
    if (input) {
      const label = input.closest("label");
      label.classList.add("invalid");
      const span = label.querySelector(".error");
      const why = match[2] ? problem.slice(match[0].length) : problem;
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
  state.given = { ...values };
  const required = new Set(info.params_schema.required || []);
  const inputs = Object.entries(info.params_schema.properties || {}).map(([key, spec]) => {
    const type = spec.type || (spec.anyOf || []).map((s) => s.type).find((t) => t && t !== "null") || "string";
    state.defaults[key] = spec.default;
    const input = type === "boolean"
      ? h("input", { type: "checkbox", "data-param": key })
      : h("input", { type: type === "integer" || type === "number" ? "number" : "text", step: type === "integer" ? "1" : "any",
          "data-param": key, placeholder: spec.default === undefined ? (required.has(key) ? "required" : "") : String(spec.default) });
    setField(input, key in values ? values[key] : spec.default);
    return h("label", { class: type === "boolean" ? "check" : (type === "string" ? "wide" : null), title: spec.description || "" },
      type === "boolean" ? [input, ` ${key}`] : [key, input],
      h("small", { class: "hint", text: spec.description || "" }), h("span", { class: "error" }));
  });
  box.replaceChildren(...inputs);
}

function familyParams() {
  const params = {};
  for (const input of document.querySelectorAll("#family-params [data-param]")) {
    const key = input.dataset.param;
    const value = input.type === "checkbox" ? input.checked : (input.value.trim() === "" ? undefined : (input.type === "number" ? Number(input.value) : input.value.trim()));
    if (value === undefined) continue;
    // Keys the config gave stay; a default left alone is not written (the variant name keeps its short form).
    if (key in state.given || value !== state.defaults[key]) params[key] = value;
  }
  return params;
}

function syncPeft() {
  const peft = form.querySelector('[data-key="training.mode"]').value === "peft";
  document.getElementById("peft-fields").hidden = !peft;
}

// The body every action sends: the source (template by name, so the run records it;
// else the preset's config) and the form as overrides, the backbone section included.
async function requestBody() {
  let section;
  try {
    section = await api(`/families/${encodeURIComponent(state.family)}/backbone`, { method: "POST", body: familyParams() });
  } catch (error) {
    if (error.status === 422) showErrors(error.problems);
    throw error;
  }
  const backbone = clone(section.backbone);
  const previous = state.base.model && state.base.model.backbone;
  if (backbone.config && previous && previous.config && previous.config.model_type === backbone.config.model_type) {
    // Keys the family's form does not show (pass-through HF config keys) stay as the source gave them.
    backbone.config = { ...previous.config, ...backbone.config };
  }
  const overrides = [`model.backbone=${JSON.stringify(backbone)}`];
  const peft = form.querySelector('[data-key="training.mode"]').value === "peft";
  for (const input of fields()) {
    if (input.dataset.peft !== undefined && !peft) continue;
    const value = fieldValue(input);
    if (value === undefined) continue;
    if (input.dataset.key === "data.source.path" && form.querySelector('[data-key="data.source.kind"]').value === "sklearn_digits") continue;
    overrides.push(`${input.dataset.key}=${JSON.stringify(value)}`);
  }
  return state.source.kind === "template"
    ? { template: state.source.name, overrides }
    : { config: state.base, overrides };
}

async function loadSource(kind, name) {
  const base = kind === "template" ? (await api(`/templates/${encodeURIComponent(name)}`)) : { config: await api(`/presets/${encodeURIComponent(name)}`) };
  state.source = { kind, name };
  state.base = base.config;
  const resolved = await api("/configs/resolve", { method: "POST", body: { config: state.base } });
  state.resolved = resolved.config;
  for (const input of fields()) setField(input, get(state.resolved, input.dataset.key));
  const backbone = state.resolved.model.backbone;
  const family = familyOf(backbone);
  await showFamily(family, family === "pretrained" ? { path: backbone.id } : Object.fromEntries(
    Object.entries(backbone.config || {}).filter(([k]) => k !== "model_type")));
  picker.value = `${kind}:${name}`;
  document.getElementById("source-loaded").hidden = false;
  document.getElementById("source-name").textContent = `${kind === "template" ? "template" : "preset"} ${name}`;
  document.getElementById("source-description").textContent = base.description || "";
  document.getElementById("run-name").textContent = `will train run ${resolved.run}`;
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
    stat(`${estimate.epochs} epochs`, seconds(estimate.train_seconds_all_epochs)),
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
familySelect.addEventListener("change", () => showFamily(familySelect.value).catch((e) => toast(e.message, "error")));
form.querySelector('[data-key="training.mode"]').addEventListener("change", syncPeft);

document.getElementById("budget").addEventListener("click", (event) => withButton(event.target, async () => {
  event.target.textContent = "Measuring…";
  clearErrors();
  showBudget(await api("/budget", { method: "POST", body: await requestBody() }));
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
    const launched = await api("/runs", { method: "POST", body: await requestBody() });
    location.href = `/runs/${encodeURIComponent(launched.run)}`;
  });
});

const wanted = new URLSearchParams(location.search);
if (wanted.get("template")) await loadSource("template", wanted.get("template"));
else await clearSource(defaults);
if (wanted.get("family") && wanted.get("family") !== state.family) await showFamily(wanted.get("family"));

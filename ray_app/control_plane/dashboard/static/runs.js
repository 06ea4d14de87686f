// The runs table: filters, sorting, live status (polled from the index), selection for comparing.
import { api, h, badge, num, pct, when } from "./common.js";

const table = document.querySelector("#runs-table tbody");
const selected = new Set();
const sorting = { key: "created", order: null };
let loading = false;

function params() {
  const query = new URLSearchParams({ sort: sorting.key, limit: "200" });
  if (sorting.order) query.set("order", sorting.order);
  for (const [id, name] of [["filter-status", "status"], ["filter-family", "family"], ["filter-template", "template"], ["filter-text", "q"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) query.set(name, value);
  }
  return query;
}

function row(run) {
  const box = h("input", { type: "checkbox", "aria-label": `select ${run.name}`, onchange: (e) => {
    if (e.target.checked) selected.add(run.name); else selected.delete(run.name);
    updateCompare();
  } });
  box.checked = selected.has(run.name);
  return h("tr", { dataset: { run: run.name } },
    h("td", { class: "check" }, box),
    h("td", {}, h("a", { href: `/runs/${encodeURIComponent(run.name)}`, text: run.name }),
      run.backbone ? h("div", { class: "muted small", text: `${run.backbone} · ${run.dataset || ""} · ${run.mode || ""}` }) : null),
    h("td", {}, badge(run.status, run.message)),
    h("td", { text: run.family || "–" }),
    h("td", { text: run.template || "–" }),
    h("td", { class: "num", text: num(run.best_accuracy) }),
    h("td", { class: "num", text: num(run.val_test_accuracy) }),
    h("td", { class: "num", text: pct(run.coverage) }),
    h("td", { text: when(run.created) }),
  );
}

function updateCompare() {
  const button = document.getElementById("compare");
  button.disabled = selected.size < 2;
  button.textContent = selected.size >= 2 ? `Compare ${selected.size} runs` : "Compare selected";
}

async function load() {
  if (loading) return;
  loading = true;
  try {
    const page = await api(`/runs?${params()}`);
    table.replaceChildren(...page.runs.map(row));
    document.getElementById("runs-total").textContent = `${page.total} run${page.total === 1 ? "" : "s"}`;
    document.getElementById("runs-empty").hidden = page.total > 0;
  } finally {
    loading = false;
  }
}

async function fillFilters() {
  const [families, templates] = await Promise.all([api("/families"), api("/templates")]);
  document.getElementById("filter-family").append(...families.map((f) => h("option", { value: f.name, text: `${f.name} (${f.variants})` })));
  document.getElementById("filter-template").append(...templates.map((t) => h("option", { value: t.name, text: t.name })));
}

for (const th of document.querySelectorAll("th[data-sort]")) {
  th.classList.add("sortable");
  th.addEventListener("click", () => {
    sorting.order = sorting.key === th.dataset.sort ? (sorting.order === "asc" ? "desc" : "asc") : null;
    sorting.key = th.dataset.sort;
    for (const other of document.querySelectorAll("th[data-sort]")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", sorting.order === "asc" ? "ascending" : "descending");
    load();
  });
}
for (const id of ["filter-status", "filter-family", "filter-template"]) document.getElementById(id).addEventListener("change", load);
document.getElementById("filter-text").addEventListener("input", load);
document.getElementById("compare").addEventListener("click", () => {
  location.href = `/compare?names=${encodeURIComponent([...selected].join(","))}`;
});

await fillFilters();
const wanted = new URLSearchParams(location.search);
for (const [id, name] of [["filter-status", "status"], ["filter-family", "family"], ["filter-template", "template"], ["filter-text", "q"]]) {
  if (wanted.get(name)) document.getElementById(id).value = wanted.get(name);
}
await load();
setInterval(load, 3000);

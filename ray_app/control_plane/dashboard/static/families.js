// Each model family, its parameters, and the variants trained from it (with their runs).
import { api, h, badge, num } from "./common.js";

function variantTable(variants) {
  if (!variants.length) return h("p", { class: "muted", text: "No runs of this family yet." });
  return h("table", { class: "grid compact" },
    h("thead", {}, h("tr", {}, h("th", { text: "Variant" }), h("th", { class: "num", text: "Best val_select acc." }), h("th", { text: "Runs" }))),
    h("tbody", {}, variants.map((v) => h("tr", { dataset: { variant: v.variant || "" } },
      h("td", {}, h("strong", { text: v.variant || "–" })),
      h("td", { class: "num", text: num(v.best_accuracy) }),
      h("td", {}, v.runs.map((r) => h("div", { class: "run-line" }, badge(r.status), " ",
        h("a", { href: `/runs/${encodeURIComponent(r.name)}`, text: r.name })))),
    ))),
  );
}

async function card(family) {
  const [info, variants] = await Promise.all([api(`/families/${family.name}`), api(`/families/${family.name}/variants`)]);
  const properties = Object.entries(info.params_schema.properties || {});
  return h("section", { class: "card family", dataset: { family: family.name } },
    h("div", { class: "title-row" }, h("h2", { text: info.title }), h("span", { class: "pill", text: info.modality }),
      h("span", { class: "spacer" }), h("a", { class: "button", href: `/launch?family=${encodeURIComponent(family.name)}`, text: "Launch one" })),
    h("p", { text: info.description }),
    h("p", { class: "muted small" }, `Variants are named ${info.variant_pattern}`, info.model_type ? ` · model_type ${info.model_type}` : ""),
    h("details", {}, h("summary", { text: `${properties.length} parameter${properties.length === 1 ? "" : "s"}` }),
      h("table", { class: "grid compact" }, h("tbody", {}, properties.map(([name, spec]) => h("tr", {},
        h("td", {}, h("code", { text: name })), h("td", { class: "num", text: spec.default === undefined ? "required" : JSON.stringify(spec.default) }),
        h("td", { class: "muted", text: spec.description || "" })))))),
    h("h3", { text: `Trained variants (${family.variants} run${family.variants === 1 ? "" : "s"})` }),
    variantTable(variants),
  );
}

const families = await api("/families");
document.getElementById("families").replaceChildren(...(await Promise.all(families.map(card))));

// Saved templates: open in the launch form, launch as they are, delete (asked twice).
import { api, h, toast, when } from "./common.js";

async function launch(name, button) {
  button.disabled = true;
  try {
    const launched = await api("/runs", { method: "POST", body: { template: name } });
    location.href = `/runs/${encodeURIComponent(launched.run)}`;
  } catch (error) {
    toast(error.message, "error");
    button.disabled = false;
  }
}

function remove(name, button) {
  if (button.dataset.armed !== "yes") {
    button.dataset.armed = "yes";
    button.textContent = "Delete? Click again";
    setTimeout(() => { button.dataset.armed = ""; button.textContent = "Delete"; }, 4000);
    return;
  }
  api(`/templates/${encodeURIComponent(name)}`, { method: "DELETE" })
    .then(() => { toast(`Deleted template ${name}`); load(); })
    .catch((error) => toast(error.message, "error"));
}

async function load() {
  const templates = await api("/templates");
  document.querySelector("#templates-table tbody").replaceChildren(...templates.map((t) => {
    const launchButton = h("button", { class: "primary", text: "Launch" });
    launchButton.addEventListener("click", () => launch(t.name, launchButton));
    const deleteButton = h("button", { class: "danger", text: "Delete" });
    deleteButton.addEventListener("click", () => remove(t.name, deleteButton));
    return h("tr", { dataset: { template: t.name } },
      h("td", {}, h("strong", { text: t.name })),
      h("td", { text: t.family || "–" }),
      h("td", { class: "description", text: t.description || "–" }),
      h("td", { class: "num" }, t.runs ? h("a", { href: `/?template=${encodeURIComponent(t.name)}`, text: String(t.runs) }) : "0"),
      h("td", { text: when(t.created) }),
      h("td", { class: "buttons" }, h("a", { class: "button", href: `/launch?template=${encodeURIComponent(t.name)}`, text: "Open in form" }),
        launchButton, deleteButton),
    );
  }));
  document.getElementById("templates-empty").hidden = templates.length > 0;
}

await load();

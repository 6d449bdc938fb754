// Policies: a project's lifecycle rules, one section each (retention here).

import { clear, h } from "../ui.js";
import { retentionSection } from "./retention.js";

export async function policiesView(main, ctx) {
  const { project } = ctx;
  document.title = `Policies · ${project.name} · Berth`;
  const retention = h("section", { "aria-label": "Retention" });
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Policies"), h("p", { class: "muted" }, "Rules that decide which images this project keeps."))),
    retention,
  );
  await retentionSection(retention, ctx);
}

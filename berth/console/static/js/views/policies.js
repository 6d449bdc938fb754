// Policies: a project's lifecycle rules, one section each (immutable tags, retention).

import { clear, h } from "../ui.js";
import { immutableTagsSection } from "./immutability.js";
import { retentionSection } from "./retention.js";

export async function policiesView(main, ctx) {
  document.title = `Policies · ${ctx.project.name} · Berth`;
  const immutable = h("section", { "aria-labelledby": "immutable-tags" });
  const retention = h("section", { "aria-label": "Retention" });
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Policies"), h("p", { class: "muted" }, "Rules that decide what stays in this project's repositories."))),
    immutable,
    retention,
  );
  await Promise.all([immutableTagsSection(immutable, ctx), retentionSection(retention, ctx)]);
}

// Policies: a project's rules, one section each (immutable tags, retention, vulnerable images).

import { clear, h } from "../ui.js";
import { immutableTagsSection } from "./immutability.js";
import { pullPolicySection } from "./pullpolicy.js";
import { retentionSection } from "./retention.js";

export async function policiesView(main, ctx) {
  document.title = `Policies · ${ctx.project.name} · Berth`;
  const immutable = h("section", { "aria-labelledby": "immutable-tags" });
  const retention = h("section", { "aria-label": "Retention" });
  const pullPolicy = h("section", { "aria-labelledby": "pull-policy" });
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Policies"), h("p", { class: "muted" }, "Rules that decide what stays in this project's repositories and what may be pulled."))),
    immutable,
    retention,
    pullPolicy,
  );
  await Promise.all([immutableTagsSection(immutable, ctx), retentionSection(retention, ctx), pullPolicySection(pullPolicy, ctx)]);
}

// Immutable tags: the section of the Policies page with the project's immutable tag rules,
// a form to add one and a button to remove one (project admins; others only see them).

import { api, seg } from "../api.js";
import { clear, confirmDialog, emptyState, errorBox, field, focusAfterRedraw, h, table, timeElement, toast } from "../ui.js";

const ADD_FORM = "Add an immutable tag rule";

export async function immutableTagsSection(section, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}/immutable-tag-rules`;
  const canEdit = project.role === "admin" || project.server_admin;
  const body = h("div", { class: "loading" }, "Loading immutable tag rules…");
  clear(
    section,
    h("h2", { id: "immutable-tags" }, "Immutable tags"),
    h(
      "p",
      { class: "muted" },
      "A tag matching a rule cannot be moved to another image or deleted by any client (docker, podman, skopeo, the API, this console), and retention never deletes its image. A repository whose tag overwrite is disabled has every tag immutable.",
    ),
    body,
  );
  const rules = await api.get(base);
  if (ctx.stale()) return;
  const columns = [
    { title: "Tags", cell: (r) => h("code", {}, r.tag_pattern) },
    { title: "Repositories", cell: (r) => (r.repository_pattern ? h("code", {}, r.repository_pattern) : "All") },
    { title: "Added by", cell: (r) => r.created_by },
    { title: "Added", cell: (r) => timeElement(r.created_at) },
  ];
  if (canEdit) columns.push({ title: "Actions", cell: (r) => removeRule(ctx, base, r) });
  clear(
    body,
    table(columns, rules, {
      caption: "Immutable tag rules",
      rowKey: (r) => r.id,
      empty: emptyState("No immutable tag rules", h("p", {}, canEdit ? "Add one to fix release tags such as v* for good." : "Project admins add them.")),
    }),
    canEdit ? addForm(ctx, base) : null,
  );
}

function addForm(ctx, base) {
  const tagPattern = h("input", { type: "text", required: true, maxLength: 128, autocomplete: "off", spellcheck: false, placeholder: "v*" });
  const repositoryPattern = h("input", { type: "text", maxLength: 255, autocomplete: "off", spellcheck: false, placeholder: "every repository" });
  const tagField = field("Tag pattern", tagPattern, "Matched against the whole tag: * any characters, ? one, [abc] one of.");
  const repositoryField = field("Repository pattern (optional)", repositoryPattern, "A repository name, or repository/image; empty: every repository.");
  const problem = h("div");
  const form = h(
    "form",
    { class: "inline-form", "aria-label": ADD_FORM },
    tagField,
    repositoryField,
    h("button", { type: "submit", class: "primary" }, "Add rule"),
    problem,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    tagField.setError("");
    repositoryField.setError("");
    const repository = repositoryPattern.value.trim();
    try {
      await api.post(base, { tag_pattern: tagPattern.value.trim(), repository_pattern: repository || null });
      toast("Immutable tag rule added");
      ctx.refresh();
    } catch (err) {
      tagField.setError(err.forField?.("tag_pattern"));
      repositoryField.setError(err.forField?.("repository_pattern"));
      clear(problem, errorBox(err));
    }
  });
  return form;
}

function removeRule(ctx, base, rule) {
  const scope = rule.repository_pattern ? ` in repositories ${rule.repository_pattern}` : "";
  // With no rule left, the focus goes to the form that adds one.
  const addFormField = () => document.querySelector(`form[aria-label="${ADD_FORM}"] input`);
  const button = h(
    "button",
    {
      type: "button",
      class: "small danger-text",
      "aria-label": `Remove the rule ${rule.tag_pattern}${scope}`,
      onclick: async () => {
        const focus = focusAfterRedraw(button, addFormField);
        const done = await confirmDialog({
          title: "Remove immutable tag rule",
          confirmLabel: "Remove",
          body: h("p", {}, "Tags matching ", h("code", {}, rule.tag_pattern), scope, " can then be moved and deleted again, unless another rule matches them."),
          action: () => api.delete(`${base}/${rule.id}`),
        });
        if (done) {
          toast("Immutable tag rule removed");
          ctx.afterRender(focus);
          ctx.refresh();
        }
      },
    },
    "Remove",
  );
  return button;
}

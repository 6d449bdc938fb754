// What Members and a repository's Permissions share: the form that gives a user a role, and
// the button that takes it away.

import { clear, confirmDialog, errorBox, field, h, toast } from "../ui.js";

/**
 * An inline form: a user name, a role (`roles`: [[value, label]]) and a submit button.
 * `save(user, role)` calls the API and returns the message to show; the view then refreshes.
 */
export function userRoleForm(ctx, { label, roles, initial, submitLabel, save }) {
  const user = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "user name" });
  const role = h("select", {}, roles.map(([value, text]) => h("option", { value, selected: value === initial }, text)));
  const problem = h("div");
  const form = h(
    "form",
    { class: "inline-form", "aria-label": label },
    field("User", user),
    field("Role", role),
    h("button", { type: "submit", class: "primary" }, submitLabel),
    problem,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    try {
      toast(await save(user.value.trim(), role.value));
      ctx.refresh();
    } catch (err) {
      clear(problem, errorBox(err));
    }
  });
  return form;
}

/** A "Remove" button that asks first (`title`, `message`), then `remove()`s and refreshes. */
export function removeButton(ctx, { title, message, remove }) {
  return h(
    "button",
    {
      type: "button",
      class: "small danger-text",
      onclick: async () => {
        const done = await confirmDialog({ title, confirmLabel: "Remove", body: h("p", {}, message), action: remove });
        if (done) ctx.refresh();
      },
    },
    "Remove",
  );
}

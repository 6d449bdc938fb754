// What Members and a repository's Permissions share: the form that gives a user a role, and
// the button that takes it away.

import { api, query } from "../api.js";
import { badge, clear, confirmDialog, errorBox, field, focusAfterRedraw, h, rowControl, toast } from "../ui.js";

const SUGGESTIONS = 8;

/**
 * A user name input that searches existing users as it is typed (GET /users) and offers them
 * in a list to pick from (mouse, or arrow keys and Enter). Whether the typed name is a user
 * is the API's to say when the form is sent (the list shows only the first few matches). A
 * search the API refuses is said through `sayProblem(message)` ("" once one is answered).
 */
export function userPicker(sayProblem = () => {}) {
  const listId = `users-${Math.random().toString(36).slice(2, 9)}`;
  const input = h("input", {
    type: "text",
    required: true,
    autocomplete: "off",
    spellcheck: false,
    role: "combobox",
    "aria-autocomplete": "list",
    "aria-expanded": "false",
    "aria-controls": listId,
    placeholder: "search users",
  });
  const list = h("ul", { id: listId, class: "picker-list", role: "listbox", "aria-label": "Matching names", hidden: true });
  let found = [];
  let active = -1;
  let searching = null;
  const show = (open) => {
    list.hidden = !open;
    input.setAttribute("aria-expanded", String(open));
    if (!open) input.removeAttribute("aria-activedescendant");
  };
  const pick = (name) => {
    input.value = name;
    show(false);
  };
  const highlight = (index) => {
    active = index;
    [...list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
    if (index >= 0) input.setAttribute("aria-activedescendant", list.children[index].id);
  };
  const search = async (text) => (text ? (await api.get(`/users${query({ query: text, per_page: SUGGESTIONS })}`)).items : []);
  const refresh = async () => {
    const text = input.value.trim().toLowerCase();
    const ticket = (searching = {});
    let users = [];
    let problem = "";
    try {
      users = await search(text);
    } catch (err) {
      problem = `No users found: ${err.fieldErrors?.[0]?.message || err.message || String(err)}`;
    }
    if (ticket !== searching) return;
    sayProblem(problem);
    found = users;
    clear(
      list,
      users.map((u, i) =>
        h(
          "li",
          { id: `${listId}-${i}`, role: "option", "aria-selected": "false", onmousedown: (e) => (e.preventDefault(), pick(u.name)) },
          u.name,
          u.service_account ? badge("service account") : null,
        ),
      ),
    );
    active = -1;
    show(users.length > 0 && !(users.length === 1 && users[0].name === text));
  };
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 150);
  });
  input.addEventListener("blur", () => show(false));
  input.addEventListener("keydown", (e) => {
    if (list.hidden || !found.length) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const step = e.key === "ArrowDown" ? 1 : -1;
      highlight((active + step + found.length) % found.length);
    } else if (e.key === "Enter" && active >= 0) {
      e.preventDefault();
      pick(found[active].name);
    } else if (e.key === "Escape") {
      e.preventDefault();
      show(false);
    }
  });
  const wrap = h("div", { class: "picker" }, input, list);
  return { input, control: wrap };
}

/**
 * An inline form: a user name, a role (`roles`: [[value, label]]) and a submit button.
 * `save(user, role)` calls the API and returns the message to show; the view then refreshes,
 * and the focus goes to the user's row in the table captioned `caption` (keyed by user name).
 */
export function userRoleForm(ctx, { label, caption, roles, initial, submitLabel, save }) {
  let userField = null;
  const { input: user, control } = userPicker((message) => userField.setError(message));
  userField = field("User", user, null, control);
  const role = h("select", {}, roles.map(([value, text]) => h("option", { value, selected: value === initial }, text)));
  const problem = h("div");
  const form = h(
    "form",
    { class: "inline-form", "aria-label": label },
    userField,
    field("Role", role),
    h("button", { type: "submit", class: "primary" }, submitLabel),
    problem,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    userField.setError("");
    try {
      const name = user.value.trim().toLowerCase();
      toast(await save(name, role.value));
      ctx.afterRender(focusAfterRedraw(null, () => rowControl(caption, name) || userFieldOf(label)));
      ctx.refresh();
    } catch (err) {
      if (err.status === 404 && err.message.startsWith("user ")) {
        // The API's "user 'x' does not exist": said on the field it is about.
        userField.setError(`${err.message}: pick one from the list (server administrators create users).`);
      } else {
        clear(problem, errorBox(err));
      }
    }
  });
  return form;
}

/** A "Remove" button that asks first (`title`, `message`, `confirmLabel`), then `remove()`s
 * and refreshes; the focus then goes to the next row's Remove, or to `fallback()` when no row
 * is left. With `removed`, that runs instead of the refresh (the page is no longer the user's
 * to see). */
export function removeButton(ctx, { title, message, remove, fallback, confirmLabel = "Remove", removed = null }) {
  const button = h(
    "button",
    {
      type: "button",
      class: "small danger-text",
      onclick: async () => {
        const focus = focusAfterRedraw(button, fallback);
        const done = await confirmDialog({ title, confirmLabel, body: h("p", {}, message), action: remove });
        if (!done) return;
        if (removed) return removed();
        ctx.afterRender(focus);
        ctx.refresh();
      },
    },
    "Remove",
  );
  return button;
}

/** The user name field of the form that adds a user's role (`label` names the form). */
export function userFieldOf(label) {
  return document.querySelector(`form[aria-label="${label}"] input`);
}

// Server administration (server administrators): users (create, reset a password, delete)
// and projects (delete).

import { api, query, seg } from "../api.js";
import { badge, clear, confirmDialog, errorBox, field, focusAfterRedraw, h, leftPastLastPage, number, openDialog, pager, plural, radios, searchRefusal, table, timeElement, toast } from "../ui.js";
import { newPasswordFields } from "./account.js";
import { auditTable } from "./members.js";

const PER_PAGE = 100;

export async function adminView(main, ctx) {
  const { session, projects } = ctx; // the projects app.js holds (reloaded after a change)
  document.title = "Server administration · Berth";
  if (!session.server_admin) {
    clear(main, h("h1", {}, "Server administration"), h("p", {}, "This page is for server administrators."));
    return;
  }
  const search = ctx.query.query || "";
  const page = Math.max(1, Number(ctx.query.page) || 1);
  const auditPage = Math.max(1, Number(ctx.query.audit_page) || 1);
  const go = (changes, how) => ctx.navigate("/admin", { query: search, page, audit_page: auditPage, ...changes }, how);
  const [users, audit] = await Promise.all([
    // A refused search is shown in the list's place; the rest of the page still works.
    api.get(`/users${query({ query: search, page, per_page: PER_PAGE })}`).catch((err) => {
      if (err.status !== 422 || !search) throw err;
      return err;
    }),
    api.get(`/audit${query({ page: auditPage, per_page: 20 })}`),
  ]);
  if (ctx.stale()) return;
  if (!(users instanceof Error) && leftPastLastPage(users, (p) => go({ page: p }, { replace: true }))) return;
  if (leftPastLastPage(audit, (p) => go({ audit_page: p }, { replace: true }))) return;
  const searchBox = h("input", { type: "search", value: search, "aria-label": "Search users", placeholder: "Search users" });
  const searchForm = h("form", { class: "toolbar", role: "search" }, searchBox, h("button", { type: "submit" }, "Search"));
  searchForm.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.navigate("/admin", { query: searchBox.value.trim() });
  });
  clear(
    main,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Server administration"), h("p", { class: "muted" }, "Users of every project, and the projects themselves.")),
      h("button", { type: "button", class: "primary", onclick: () => createUser(ctx) }, "Create user"),
    ),
    h("h2", {}, "Users"),
    searchForm,
    users instanceof Error ? searchRefusal(users) : table(
      [
        { title: "User", cell: (u) => [u.name, u.name === session.user ? h("span", { class: "muted" }, " (you)") : null] },
        { title: "Kind", cell: (u) => h("span", { class: "user-kind" }, u.service_account ? badge("service account") : h("span", {}, "person"), u.admin ? badge("server admin") : null) },
        { title: "Created", cell: (u) => timeElement(u.created_at) },
        {
          title: "Actions",
          cell: (u) =>
            h(
              "span",
              { class: "actions" },
              // Your own password: Change password at the top (it asks for the current one).
              u.service_account || u.name === session.user ? null : h("button", { type: "button", class: "small", "aria-label": `Reset password of ${u.name}`, onclick: () => resetPassword(u) }, "Reset password"),
              u.name === session.user ? null : h("button", { type: "button", class: "small danger-text", "aria-label": `Delete user ${u.name}`, onclick: (e) => deleteUser(ctx, u, e.currentTarget) }, "Delete"),
            ),
        },
      ],
      users.items,
      { caption: "Users", rowKey: (u) => u.name, empty: search ? `No user name contains ${search}.` : "No users." },
    ),
    users instanceof Error ? null : pager(users, (p) => go({ page: p }), "Pages of users"),
    h("h2", {}, "Projects"),
    table(
      [
        { title: "Project", cell: (p) => h("a", { href: `#/projects/${seg(p.name)}/repositories` }, p.name) },
        { title: "Repositories", cell: (p) => number(p.repositories), class: "num" },
        { title: "Created", cell: (p) => timeElement(p.created_at) },
        { title: "Actions", cell: (p) => h("button", { type: "button", class: "small danger-text", "aria-label": `Delete project ${p.name}`, onclick: (e) => deleteProject(ctx, p, e.currentTarget) }, "Delete") },
      ],
      projects,
      { caption: "Projects", rowKey: (p) => p.name, empty: "No projects yet." },
    ),
    h("h2", {}, "Audit log outside projects"),
    h("p", { class: "muted" }, "Users created and deleted, passwords set, projects deleted and sign-ins with what is no access key ID, newest first. Each project's own events are in its Audit log."),
    auditTable(audit.items, "Server audit log"),
    pager(audit, (p) => go({ audit_page: p }), "Pages of the audit log"),
  );
}

function createUser(ctx) {
  openDialog({
    title: "Create user",
    build(close) {
      const name = h("input", { type: "text", required: true, maxLength: 64, autocomplete: "off", spellcheck: false });
      const nameField = field("User name", name, "Lowercase letters and digits, with '.', '_', '__' or '-' between them; at most 64 characters.");
      const kind = radios("kind", "Kind", [
        ["person", "Person", "signs in to the console with a password and makes their own access keys"],
        ["service", "Service account", "for CI: access keys only, no password"],
      ], "person");
      const admin = h("input", { type: "checkbox" });
      const password = newPasswordFields("Password");
      const passwordBox = h("div", {}, password.fields);
      kind.addEventListener("change", () => {
        // A hidden required field would block the submit with no message: it is disabled too.
        passwordBox.hidden = kind.value !== "person";
        password.setEnabled(!passwordBox.hidden);
      });
      const problem = h("div");
      const form = h(
        "form",
        {},
        h(
          "div",
          { class: "dialog-body" },
          nameField,
          kind,
          h("label", { class: "check" }, admin, " Server administrator (administers every project)"),
          passwordBox,
          problem,
        ),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Create user")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        nameField.setError("");
        const person = kind.value === "person";
        const secret = person ? password.check() : null;
        if (person && secret === null) return;
        try {
          const body = { name: name.value.trim(), admin: admin.checked, service_account: !person };
          if (person) body.password = secret;
          const user = await api.post("/users", body);
          close(user);
          toast(`User ${user.name} created`);
          ctx.refresh();
        } catch (err) {
          nameField.setError(err.forField?.("name"));
          password.setError(err.forField?.("password"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
}

function resetPassword(user) {
  openDialog({
    title: `Reset the password of ${user.name}`,
    label: "Reset password",
    build(close) {
      const password = newPasswordFields();
      const problem = h("div");
      const form = h(
        "form",
        {},
        h("div", { class: "dialog-body" }, h("p", {}, `${user.name} is signed out of the console and signs in with the new password.`), password.fields, problem),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Set password")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        const secret = password.check();
        if (secret === null) return;
        try {
          await api.put(`/users/${seg(user.name)}/password`, { password: secret });
          close(true);
          toast(`Password of ${user.name} set`);
        } catch (err) {
          password.setError(err.forField?.("password"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
}

async function deleteUser(ctx, user, button) {
  // With no user left in the list (a search's), the focus goes to the search box.
  const focus = focusAfterRedraw(button, () => document.querySelector('main input[type="search"]'));
  const done = await confirmDialog({
    title: "Delete user",
    body: h("p", {}, `Delete ${user.name}? Their access keys and console sessions stop working within a second, and they lose every role.`),
    action: () => api.delete(`/users/${seg(user.name)}`),
  });
  if (done) {
    toast(`User ${user.name} deleted`);
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

async function deleteProject(ctx, project, button) {
  const focus = focusAfterRedraw(button);
  const held = project.repositories;
  const done = await confirmDialog({
    title: "Delete project",
    body: h(
      "p",
      {},
      held
        ? `Delete ${project.name} with its ${plural(held, "repository", "repositories")}, their images, access keys and members? Stored data no other project uses is removed by the next garbage collection.`
        : `Delete ${project.name} with its access keys and members?`,
    ),
    phrase: held ? project.name : null,
    action: () => api.delete(`/projects/${seg(project.name)}${query({ confirm: held ? project.name : null })}`),
  });
  if (done) {
    toast(`Project ${project.name} deleted`);
    await ctx.reloadProjects();
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

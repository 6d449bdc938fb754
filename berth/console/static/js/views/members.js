import { api, query, seg } from "../api.js";
import { clear, h, pager, shortenDigests, table, timeElement, toast } from "../ui.js";
import { removeButton, userFieldOf, userRoleForm } from "./roles.js";

const ROLES = {
  admin: "Admin: everything, including members and permissions",
  member: "Member: repositories, images, push and pull, garbage collection",
  reader: "Reader: view and pull",
};

const ADD_MEMBER = "Add a member";
const CAPTION = "Members";

export async function membersView(main, ctx) {
  const { project, session } = ctx;
  const base = `/projects/${seg(project.name)}/members`;
  const admin = project.role === "admin" || project.server_admin;
  document.title = `Members · ${project.name} · Berth`;
  const body = h("div", { class: "loading" }, "Loading members…");
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Members"), h("p", { class: "muted" }, "People and service accounts with a role in the whole project. Roles on a single repository are under each repository's Permissions."))),
    body,
  );
  const members = await api.get(base);
  if (ctx.stale()) return;
  const roleSelect = (m) => {
    const select = h(
      "select",
      { "aria-label": `Role of ${m.user}` },
      Object.keys(ROLES).map((r) => h("option", { value: r, selected: r === m.role }, r)),
    );
    select.addEventListener("change", async () => {
      try {
        await api.put(`${base}/${seg(m.user)}`, { role: select.value });
        toast(`${m.user} is now ${select.value}`);
      } catch (err) {
        toast(err.message, "error");
        select.value = m.role;
      }
    });
    return select;
  };
  clear(
    body,
    table(
      [
        { title: "User", cell: (m) => [m.user, m.user === session.user ? h("span", { class: "muted" }, " (you)") : null] },
        { title: "Role", cell: (m) => (admin ? roleSelect(m) : m.role) },
        { title: "Since", cell: (m) => timeElement(m.since) },
        admin
          ? {
              title: "Actions",
              cell: (m) =>
                removeButton(ctx, {
                  title: "Remove member",
                  message: `Remove ${m.user} from ${project.name}? Their access keys here stop working within a second.`,
                  remove: () => api.delete(`${base}/${seg(m.user)}`),
                  fallback: () => userFieldOf(ADD_MEMBER),
                }),
            }
          : null,
      ].filter(Boolean),
      members,
      { caption: CAPTION, rowKey: (m) => m.user, empty: "No members." },
    ),
    admin ? addMemberForm(ctx, base) : null,
    h("dl", { class: "roles" }, Object.entries(ROLES).map(([role, text]) => h("div", {}, h("dt", {}, role), h("dd", {}, text.split(": ")[1])))),
  );
}

function addMemberForm(ctx, base) {
  return userRoleForm(ctx, {
    label: ADD_MEMBER,
    caption: CAPTION,
    roles: Object.keys(ROLES).map((r) => [r, r]),
    initial: "member",
    submitLabel: "Add member",
    save: async (user, role) => {
      await api.put(`${base}/${seg(user)}`, { role });
      return `${user} added as ${role}`;
    },
  });
}

export async function auditView(main, ctx) {
  const { project } = ctx;
  const page = Math.max(1, Number(ctx.query.page) || 1);
  document.title = `Audit log · ${project.name} · Berth`;
  const found = await api.get(`/projects/${seg(project.name)}/audit${query({ page, per_page: 50 })}`);
  if (ctx.stale()) return;
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Audit log"), h("p", { class: "muted" }, "Sign-ins, access keys, roles, repository changes, image and tag deletes and restores, newest first."))),
    auditTable(found.items, "Audit log"),
    pager(found, (p) => ctx.navigate(`/projects/${seg(project.name)}/audit`, { page: p })),
  );
}

// One audit log table for a project's log and the server's own.
export function auditTable(entries, caption) {
  return table(
    [
      { title: "When", cell: (e) => timeElement(e.at) },
      { title: "Who", cell: (e) => e.actor },
      { title: "Action", cell: (e) => h("code", {}, e.action) },
      { title: "Target", cell: (e) => (e.target ? h("span", { title: e.target }, shortenDigests(e.target)) : "–"), class: "target" },
      { title: "Detail", cell: (e) => (e.detail ? h("code", { class: "detail" }, JSON.stringify(e.detail)) : "–"), class: "wrap" },
      { title: "Client", cell: (e) => e.client || "–" },
    ],
    entries,
    { caption, empty: "Nothing recorded yet." },
  );
}

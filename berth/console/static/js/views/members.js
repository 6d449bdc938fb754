import { api, query, seg } from "../api.js";
import { clear, confirmDialog, focusAfterRedraw, h, leftPastLastPage, pager, shortenDigests, table, timeElement, toast, wrappingAddress, wrappingJson } from "../ui.js";
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
  // A project admin's own role is what lets them see and manage the project; a server
  // administrator's is not (they see every project).
  const ownRole = (m) => m.user === session.user && !session.server_admin;
  const roleSelect = (m) => {
    const select = h(
      "select",
      { "aria-label": `Role of ${m.user}` },
      Object.keys(ROLES).map((r) => h("option", { value: r, selected: r === m.role }, r)),
    );
    select.addEventListener("change", async () => {
      const role = select.value;
      const change = () => api.put(`${base}/${seg(m.user)}`, { role });
      if (ownRole(m)) return demoteYourself(ctx, select, m.role, change);
      try {
        await change();
        toast(`${m.user} is now ${role}`);
      } catch (err) {
        toast(err.message, "error");
        select.value = m.role;
      }
    });
    return select;
  };
  const remove = (m) => () => api.delete(`${base}/${seg(m.user)}`);
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
                removeButton(
                  ctx,
                  ownRole(m)
                    ? {
                        title: "Remove yourself",
                        message: `Remove yourself from ${project.name}? You will no longer see the project (only repositories where you hold a role of your own), and your access keys here stop working within a second. Only another admin of ${project.name} can add you again.`,
                        confirmLabel: "Remove yourself",
                        remove: remove(m),
                        removed: () => {
                          toast(`You are no longer a member of ${project.name}`);
                          ctx.navigate("/");
                        },
                      }
                    : {
                        title: m.user === session.user ? "Remove yourself" : "Remove member",
                        message:
                          m.user === session.user
                            ? `Remove yourself from ${project.name}? As a server administrator you still see and manage it.`
                            : `Remove ${m.user} from ${project.name}? Their access keys here stop working within a second.`,
                        remove: remove(m),
                        fallback: () => userFieldOf(ADD_MEMBER),
                      },
                ),
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

/** The user's own role lowered from admin (`from`) to the one chosen in `select`: asked first,
 * as they cannot raise it again; then the page is drawn for the new role, without the
 * controls it no longer allows. Cancelled, the select shows the role kept. */
async function demoteYourself(ctx, select, from, change) {
  const role = select.value;
  const done = await confirmDialog({
    title: "Change your own role",
    body: h("p", {}, `Make yourself ${role} in ${ctx.project.name}? You will no longer manage its members, roles, webhooks or settings, nor see its audit log. Only another admin of ${ctx.project.name} can make you admin again.`),
    confirmLabel: `Make me ${role}`,
    action: change,
  });
  if (!done) {
    select.value = from;
    return;
  }
  toast(`You are now ${role} in ${ctx.project.name}`);
  ctx.afterRender(focusAfterRedraw(null));
  ctx.refresh();
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
  if (ctx.stale() || leftPastLastPage(found, (p) => ctx.navigate(`/projects/${seg(project.name)}/audit`, { page: p }, { replace: true }))) return;
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
      { title: "Target", cell: (e) => (e.target ? h("span", { title: e.target }, wrappingAddress(shortenDigests(e.target))) : "–"), class: "target" },
      { title: "Detail", cell: (e) => (e.detail ? h("code", { class: "detail" }, wrappingJson(e.detail)) : "–"), class: "detail" },
      { title: "Client", cell: (e) => e.client || "–" },
    ],
    entries,
    { caption, empty: "Nothing recorded yet." },
  );
}

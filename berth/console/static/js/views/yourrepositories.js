// A project where the user has roles on single repositories only: those repositories, with
// what docker pulls and pushes there. The project's own pages are not theirs (the API says so).

import { api, seg } from "../api.js";
import { clear, copyable, emptyState, h, table } from "../ui.js";

const ROLES = { member: "Member: push and pull", viewer: "Viewer: pull" };

/** Projects (as the console holds them) made from `GET /account/repository-roles`, for those
 * of the user's repository roles in projects not among `projects` (their project roles). */
export function repositoryOnlyProjects(projects, repositoryRoles) {
  const withProjectRole = new Set(projects.map((p) => p.name));
  const found = new Map();
  for (const held of repositoryRoles) {
    if (withProjectRole.has(held.project)) continue;
    if (!found.has(held.project)) {
      found.set(held.project, {
        name: held.project,
        registry_address: held.registry_address,
        image_prefix: held.image_prefix,
        role: null,
        server_admin: false,
        can_manage: false,
        repository_access_only: true,
        repositories: 0,
      });
    }
    found.get(held.project).repositories += 1;
  }
  return [...found.values()];
}

export async function yourRepositoriesView(main, ctx) {
  const { project } = ctx;
  document.title = `Your repositories · ${project.name} · Berth`;
  const body = h("div", { class: "loading" }, "Loading your repositories…");
  clear(
    main,
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("h1", {}, "Your repositories"),
        h(
          "p",
          { class: "muted" },
          `In project ${project.name} you have roles on these repositories only. Sign in to `,
          h("code", {}, project.registry_address),
          " with one of your ",
          h("a", { href: `#/projects/${seg(project.name)}/keys` }, "access keys"),
          " (docker login), then pull and push as shown.",
        ),
      ),
    ),
    body,
  );
  // Fresh each time: the newest tag changes with every push.
  const held = (await api.get("/account/repository-roles")).filter((r) => r.project === project.name);
  if (ctx.stale()) return;
  clear(
    body,
    table(
      [
        { title: "Repository", cell: (r) => r.repository },
        { title: "Your role", cell: (r) => ROLES[r.role] || r.role },
        {
          title: "Pull",
          cell: (r) =>
            r.newest_tagged_image
              ? copyable(`docker pull ${r.newest_tagged_image}`, { name: `Copy pull command of ${r.repository}`, testid: "pull-command" })
              : h("span", { class: "muted" }, "Nothing tagged yet"),
        },
        {
          title: "Push",
          // A name pattern, not a command to paste: IMAGE and TAG are the user's to choose.
          cell: (r) =>
            r.role === "member"
              ? h("code", { "data-testid": "push-name" }, `${r.address}[/IMAGE]:TAG`)
              : h("span", { class: "muted" }, "Pull only"),
        },
      ],
      held,
      {
        caption: "Your repositories",
        rowKey: (r) => r.repository,
        empty: emptyState("No repository roles here any more", h("p", {}, "Ask a project admin for a role on a repository.")),
      },
    ),
  );
}

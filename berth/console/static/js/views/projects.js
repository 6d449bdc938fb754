import { api, seg } from "../api.js";
import { badge, clear, emptyState, errorBox, field, h, number, openDialog, plural, table, toast } from "../ui.js";

export async function projectsView(main, ctx) {
  const { projects, session } = ctx;
  if (projects.length === 1 && !session.server_admin) {
    return ctx.navigate(`/projects/${seg(projects[0].name)}/repositories`);
  }
  const create = session.server_admin
    ? h("button", { type: "button", class: "primary", onclick: () => createProject(ctx) }, "Create project")
    : null;
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Projects"), h("p", { class: "muted" }, "Each project has its own registry, repositories, access keys and members.")), create),
    table(
      [
        { title: "Project", cell: (p) => h("a", { href: `#/projects/${seg(p.name)}/repositories` }, p.name) },
        {
          title: "Your role",
          cell: (p) => (p.repository_access_only ? badge("Repository access only", "limited") : p.role || (p.server_admin ? "server admin" : "–")),
        },
        {
          title: "Repositories",
          // Of a project where they hold repository roles only, a user learns only their own.
          cell: (p) => (p.repository_access_only ? `${plural(p.repositories, "repository", "repositories")} of yours` : `${number(p.repositories)} / ${number(p.repository_quota)}`),
          class: "num",
        },
        { title: "Registry", cell: (p) => h("code", { "data-testid": "project-registry" }, p.image_prefix) },
      ],
      projects,
      {
        empty: emptyState(
          session.server_admin ? "No projects yet" : "You are not in any project yet",
          h("p", {}, session.server_admin ? "Create the first project." : "Ask a project admin to add you as a member."),
        ),
      },
    ),
  );
}

function createProject(ctx) {
  openDialog({
    title: "Create project",
    build(close) {
      const name = h("input", { type: "text", required: true, maxLength: 63, autocomplete: "off" });
      const nameField = field("Project name", name, "Lowercase letters, digits and '-', up to 63 characters. It becomes the first part of the project's registry host name.");
      const problem = h("div");
      const form = h(
        "form",
        {},
        h("div", { class: "dialog-body" }, nameField, problem),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Create")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        try {
          const project = await api.post("/projects", { name: name.value.trim() });
          await ctx.reloadProjects();
          close(project);
          toast(`Project ${project.name} created`);
          ctx.navigate(`/projects/${seg(project.name)}/repositories`);
        } catch (err) {
          // A refused name is said once, under the field; anything else in the box below.
          const nameProblem = err.forField?.("name");
          nameField.setError(nameProblem);
          if (!nameProblem) clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
}


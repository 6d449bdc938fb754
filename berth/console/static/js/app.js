// The console's shell: the session, the hash router, the header and the project menu.
// Each screen is a view in ./views/ that renders into <main> from the API's answers.

import { api, currentSession, seg, signOut, whenUnauthorized } from "./api.js";
import { clear, errorBox, h, toast } from "./ui.js";
import { loginView } from "./views/login.js";
import { projectsView } from "./views/projects.js";
import { repositoriesView } from "./views/repositories.js";
import { repositoryView } from "./views/repository.js";
import { managementView } from "./views/management.js";
import { monitoringView } from "./views/monitoring.js";
import { keysView } from "./views/keys.js";
import { membersView, auditView } from "./views/members.js";
import { adminView } from "./views/admin.js";
import { webhooksView } from "./views/webhooks.js";
import { policiesView } from "./views/policies.js";
import { repositoryOnlyProjects, yourRepositoriesView } from "./views/yourrepositories.js";
import { changePasswordDialog } from "./views/account.js";

const root = document.getElementById("app");
// session: undefined until the server is asked (once a page load), null when signed out.
const state = { session: undefined, projects: null, leave: [] };

// [pattern, view, menu entry it belongs to, view for a user with only repository roles there,
//  what the page is called where it is for project admins only]
const ROUTES = [
  [/^\/projects\/([^/]+)\/repositories$/, repositoriesView, "repositories", yourRepositoriesView],
  [/^\/projects\/([^/]+)\/repositories\/([^/]+)(?:\/([a-z]+))?$/, repositoryView, "repositories"],
  [/^\/projects\/([^/]+)\/management$/, managementView, "management"],
  [/^\/projects\/([^/]+)\/monitoring$/, monitoringView, "monitoring"],
  [/^\/projects\/([^/]+)\/keys$/, keysView, "keys", keysView],
  [/^\/projects\/([^/]+)\/members$/, membersView, "members"],
  [/^\/projects\/([^/]+)\/audit$/, auditView, "audit", null, "audit log"],
  [/^\/projects\/([^/]+)\/webhooks$/, webhooksView, "webhooks", null, "webhooks"],
  [/^\/projects\/([^/]+)\/policies$/, policiesView, "policies"],
];

/** `replace`: the page shown takes the place of this one in the history (Back does not come
 * to this one again): for a page that only sends on to another. */
export function navigate(path, params = null, { replace = false } = {}) {
  const search = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)).toString() : "";
  const target = "#" + path + (search ? "?" + search : "");
  if (location.hash === target) render();
  else if (replace) location.replace(target);
  else location.hash = target;
}

function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?");
  return { path: path || "/", query: Object.fromEntries(new URLSearchParams(search)) };
}

whenUnauthorized(() => {
  state.session = null;
  const { path } = currentRoute();
  if (path !== "/login") navigate("/login", { next: location.hash.slice(1) });
});

/** A menu link to the page already shown loads it again (no hashchange would fire). */
function reloadIfHere(event) {
  if (event.currentTarget.getAttribute("href") === location.hash) {
    event.preventDefault();
    render();
  }
}

function menu(project, active) {
  const base = `/projects/${seg(project.name)}`;
  // Repository roles alone give the registry and one's own keys, not the project's pages.
  const entries = project.repository_access_only ? [["repositories", "Your repositories"], ["keys", "Access keys"]] : [
    ["repositories", "Repositories"],
    ["management", "Management"],
    ["monitoring", "Monitoring"],
    ["policies", "Policies"],
    ["keys", "Access keys"],
    ["members", "Members"],
  ];
  if (projectAdmin(project)) entries.push(["audit", "Audit log"], ["webhooks", "Webhooks"]);
  return h(
    "nav",
    { class: "sidenav", "aria-label": "Project" },
    h(
      "p",
      { class: "sidenav-project" },
      h("span", { class: "muted" }, "Project"),
      h("strong", {}, project.name),
      project.repository_access_only ? h("span", { class: "muted" }, "Repository access only") : null,
    ),
    h(
      "ul",
      {},
      entries.map(([key, label]) =>
        h("li", {}, h("a", { href: `#${base}/${key}`, "aria-current": key === active ? "page" : false, onclick: reloadIfHere }, label)),
      ),
    ),
  );
}

function header(projectName) {
  const projects = state.projects || [];
  const switcher =
    projects.length > 1
      ? h(
          "label",
          { class: "switcher" },
          h("span", { class: "sr-only" }, "Project"),
          h(
            "select",
            { title: projectName || false, onchange: (e) => navigate(`/projects/${seg(e.target.value)}/repositories`) },
            projectName ? null : h("option", { value: "" }, "Choose a project"),
            projects.map((p) => h("option", { value: p.name, selected: p.name === projectName }, p.name)),
          ),
        )
      : null;
  return h(
    "header",
    { class: "topbar" },
    h("a", { class: "brand", href: "#/", onclick: reloadIfHere }, h("img", { src: "favicon.svg", alt: "", width: 24, height: 24 }), "Berth"),
    h("span", { class: "product muted" }, "Container Registry"),
    switcher,
    h("span", { class: "spacer" }),
    state.session.server_admin ? h("a", { class: "admin-link", href: "#/admin", onclick: reloadIfHere }, "Server administration") : null,
    h("span", { class: "user", "data-testid": "signed-in-user" }, state.session.user, state.session.server_admin ? h("span", { class: "badge" }, "server admin") : null),
    h("button", { type: "button", class: "small", onclick: () => changePasswordDialog() }, "Change password"),
    h(
      "button",
      {
        type: "button",
        class: "small",
        onclick: async () => {
          await signOut().catch(() => {});
          state.session = null;
          state.projects = null;
          navigate("/login");
        },
      },
      "Sign out",
    ),
  );
}

/** The projects the user has a project role in, and those where they have roles on single
 * repositories only (marked `repository_access_only`), by name. */
async function loadProjects(force = false) {
  if (!state.projects || force) {
    const [projects, repositoryRoles] = await Promise.all([api.get("/projects"), api.get("/account/repository-roles")]);
    state.projects = [...projects, ...repositoryOnlyProjects(projects, repositoryRoles)].sort((a, b) => (a.name < b.name ? -1 : 1));
  }
  return state.projects;
}

let renderCount = 0;
// What moves the focus once the page drawn next is complete (see ui.js focusAfterRedraw).
let afterRender = null;

async function render() {
  const ticket = ++renderCount;
  await draw(ticket);
  if (ticket !== renderCount || !afterRender) return;
  const focus = afterRender;
  afterRender = null;
  focus();
}

async function draw(ticket) {
  for (const leave of state.leave.splice(0)) leave();
  const { path, query } = currentRoute();
  const stale = () => ticket !== renderCount;
  const ctx = { query, navigate, stale, onLeave: (fn) => state.leave.push(fn), refresh: render, afterRender: (fn) => (afterRender = fn) };

  // Asked once: a signed-out visitor's page goes on to the sign-in page without asking again.
  if (state.session === undefined) state.session = await currentSession().catch(() => null);
  if (stale()) return;
  root.removeAttribute("aria-busy");
  if (path === "/login" || !state.session) {
    if (state.session && path === "/login") return navigate("/");
    if (path !== "/login") return navigate("/login", { next: path === "/" ? "" : location.hash.slice(1) });
    document.title = "Sign in · Berth";
    return loginView(root, {
      ...ctx,
      signedIn(session) {
        state.session = session;
        state.projects = null;
        const next = query.next && query.next.startsWith("/") ? query.next : "/";
        location.hash = "#" + next;
      },
    });
  }

  const main = h("main", { id: "main", tabindex: "-1" });
  try {
    // The projects page always asks again, and so does a project the list lacks: a role
    // given since sign-in shows without a reload of the page.
    const wanted = path.match(/^\/projects\/([^/]+)/);
    await loadProjects(path === "/");
    if (wanted && !state.projects.some((p) => p.name === decodeURIComponent(wanted[1]))) await loadProjects(true);
    if (stale()) return;
    if (path === "/") {
      clear(root, header(null), h("div", { class: "layout no-menu" }, main));
      document.title = "Projects · Berth";
      return await projectsView(main, { ...ctx, projects: state.projects, session: state.session, reloadProjects: () => loadProjects(true) });
    }
    if (path === "/admin") {
      clear(root, header(null), h("div", { class: "layout no-menu" }, main));
      return await adminView(main, { ...ctx, projects: state.projects, session: state.session, reloadProjects: () => loadProjects(true) });
    }
    for (const [pattern, view, active, repositoryOnlyView, adminPage] of ROUTES) {
      const match = path.match(pattern);
      if (!match) continue;
      const [, projectName, ...rest] = match.map((m) => (m === undefined ? m : decodeURIComponent(m)));
      const limited = state.projects.find((p) => p.name === projectName && p.repository_access_only);
      const project = limited || (await api.get(`/projects/${seg(projectName)}`));
      if (stale()) return;
      clear(root, header(project.name), h("div", { class: "layout" }, menu(project, active), main));
      if (limited && !repositoryOnlyView) return notForRepositoryRoles(main, project);
      if (adminPage && !projectAdmin(project)) return forProjectAdmins(main, project, adminPage);
      return await (limited ? repositoryOnlyView : view)(main, { ...ctx, project, params: rest, session: state.session });
    }
    clear(root, header(null), h("div", { class: "layout no-menu" }, main));
    clear(main, h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "#/" }, "Back to your projects")));
  } catch (err) {
    if (stale() || err.status === 401) return;
    if (!root.contains(main)) clear(root, header(null), h("div", { class: "layout no-menu" }, main));
    clear(main, h("h1", {}, "Something went wrong"), errorBox(err), h("p", {}, h("a", { href: "#/" }, "Back to your projects")));
  }
}

function projectAdmin(project) {
  return project.role === "admin" || project.server_admin;
}

/** A page of project admins opened by its link (the menu has no entry) by another member. */
function forProjectAdmins(main, project, page) {
  clear(
    main,
    h("h1", {}, "Not available with your role"),
    h("p", {}, `Only project admins and server administrators see the ${page} of project ${project.name}. Your role here is ${project.role}.`),
    h("p", {}, h("a", { href: `#/projects/${seg(project.name)}/repositories` }, "Repositories")),
  );
}

function notForRepositoryRoles(main, project) {
  const base = `#/projects/${seg(project.name)}`;
  clear(
    main,
    h("h1", {}, "Not available with repository roles"),
    h("p", {}, `Your roles in project ${project.name} are on single repositories: they let you pull and push there and manage your own access keys, not this page.`),
    h("p", {}, h("a", { href: `${base}/repositories` }, "Your repositories"), " · ", h("a", { href: `${base}/keys` }, "Access keys")),
  );
}

// The skip link's `#main` would be taken for a route (and the page not found): it moves the
// focus to the page's content instead, the route left as it is.
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  const main = root.querySelector("main");
  if (!main) return; // still loading
  main.tabIndex = -1;
  main.focus();
});

window.addEventListener("hashchange", render);
window.addEventListener("unhandledrejection", (e) => toast(e.reason?.message || String(e.reason), "error"));
render();

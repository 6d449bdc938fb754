import { api, query, seg } from "../api.js";
import { imagePrefix } from "../registry.js";
import {
  badge, characters, clear, countedText, emptyState, errorBox, field, h, leftPastLastPage, number, openDialog, pager, radios, searchRefusal, table, timeElement, toast,
} from "../ui.js";

// As the API validates (berth/api/deps.py COMPONENT_PATTERN, services MAX_*).
export const NAME_PATTERN = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
export const MAX_NAME = 128;
export const MAX_DESCRIPTION = 100;
// In the server's words (berth/domain/descriptions.py): control characters (bidirectional
// overrides too) and line breaks.
const DESCRIPTION_RULE = `a description is at most ${MAX_DESCRIPTION} characters, with no line breaks or control characters`;
const REFUSED = /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const NAMED = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };
const PER_PAGE = 20;

/** A refused character as the server quotes it: '\n', '\x07', '\u2028'. */
function quoted(c) {
  const code = c.charCodeAt(0);
  const escaped = NAMED[c] || (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`);
  return `'${escaped}'`;
}

export function descriptionProblem(text) {
  const length = characters(text);
  if (length > MAX_DESCRIPTION) return `${DESCRIPTION_RULE}; this one has ${length} characters`;
  const refused = text.match(REFUSED);
  if (refused) return `${DESCRIPTION_RULE}; this one has ${quoted(refused[0])}`;
  return null;
}

export async function repositoriesView(main, ctx) {
  const { project } = ctx;
  const q = ctx.query.q || "";
  const sort = ["name", "images", "updated_at"].includes(ctx.query.sort) ? ctx.query.sort : "name";
  const order = ctx.query.order === "desc" ? "desc" : "asc";
  const page = Math.max(1, Number(ctx.query.page) || 1);
  const here = `/projects/${seg(project.name)}/repositories`;
  // The view re-renders only once the new listing arrives: a control used in between must
  // build on the change just made (a sort chosen, then the order flipped), not on this render's.
  let state = { q, sort, order, page };
  const go = (changes, how) => {
    state = { ...state, ...changes };
    ctx.navigate(here, state, how);
  };
  document.title = `Repositories · ${project.name} · Berth`;

  const search = h("input", { type: "search", placeholder: "Search by name", value: q, "aria-label": "Search repositories by name" });
  let timer;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => go({ q: search.value.trim(), page: 1 }), 300);
  });
  const sortSelect = h(
    "select",
    { "aria-label": "Sort by", onchange: (e) => go({ sort: e.target.value, page: 1 }) },
    [["name", "Name"], ["images", "Images"], ["updated_at", "Last modified"]].map(([v, l]) => h("option", { value: v, selected: v === sort }, `Sort: ${l}`)),
  );
  const orderButton = h(
    "button",
    { type: "button", class: "small", "aria-label": order === "asc" ? "Ascending; switch to descending" : "Descending; switch to ascending", onclick: () => go({ order: state.order === "asc" ? "desc" : "asc" }) },
    order === "asc" ? "↑ Ascending" : "↓ Descending",
  );
  const create = project.can_manage
    ? h("button", { type: "button", class: "primary", onclick: () => createRepository(ctx) }, "Create repository")
    : null;
  const body = h("div", { class: "loading" }, "Loading repositories…");
  clear(
    main,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Repositories"), h("p", { class: "muted" }, `${number(project.repositories)} of ${number(project.repository_quota)} repositories · push to `, h("code", {}, imagePrefix(project) + "REPOSITORY[/IMAGE]:TAG"))),
      create,
    ),
    h("div", { class: "toolbar" }, search, sortSelect, orderButton),
    body,
  );
  if (q) search.focus();

  let found;
  try {
    found = await api.get(`${here}${query({ q, sort, order, page, per_page: PER_PAGE })}`);
  } catch (err) {
    if (err.status !== 422 || !q) throw err;
    if (!ctx.stale()) clear(body, searchRefusal(err));
    return;
  }
  if (ctx.stale() || leftPastLastPage(found, (p) => go({ page: p }, { replace: true }))) return;
  const none = q
    ? emptyState(`No repository name contains “${q}”`, h("button", { type: "button", onclick: () => go({ q: "", page: 1 }) }, "Clear the search"))
    : emptyState(
        "No repositories yet",
        h("p", {}, "A repository holds images and their tags. Create one, then push to it with docker or podman."),
        create ? h("button", { type: "button", class: "primary", onclick: () => createRepository(ctx) }, "Create repository") : null,
      );
  clear(
    body,
    table(
      [
        { title: "Name", cell: (r) => h("a", { href: `#${here}/${seg(r.name)}` }, r.name) },
        { title: "Description", cell: (r) => r.description || h("span", { class: "muted" }, "–"), class: "wrap" },
        { title: "Images", cell: (r) => number(r.images), class: "num" },
        { title: "Image scan", cell: (r) => (r.scan_mode === "auto" ? "Auto" : "Manual") },
        { title: "Tag overwrite", cell: (r) => (r.tag_overwrite ? "Enabled" : "Disabled") },
        { title: "Visibility", cell: (r) => badge(r.visibility === "public" ? "Public" : "Private", r.visibility) },
        { title: "Last modified", cell: (r) => timeElement(r.updated_at) },
      ],
      found.items,
      { empty: none, caption: "Repositories", rowKey: (r) => r.name },
    ),
    pager(found, (p) => go({ page: p })),
  );
}

/** The repository form's fields (create: every field; settings: all but the name). */
export function repositoryFields(values = {}) {
  const fields = {
    visibility: radios("visibility", "Visibility", [
      ["private", "Private", "Pulling needs an access key with a role here."],
      ["public", "Public", "Anyone can pull; pushing still needs an access key."],
    ], values.visibility || "private"),
    description: countedText(MAX_DESCRIPTION, values.description || "", { name: "description" }),
    tag_overwrite: radios("tag_overwrite", "Tag overwrite", [
      ["true", "Enabled", "Pushing an existing tag moves it to the new image."],
      ["false", "Disabled", "An existing tag always names the same image."],
    ], values.tag_overwrite === false ? "false" : "true"),
    scan_mode: radios("scan_mode", "Image scan", [
      ["manual", "Manual", "Scan images on request."],
      ["auto", "Auto", "Scan each image when it is pushed."],
    ], values.scan_mode || "manual"),
  };
  fields.descriptionField = field("Description (optional)", fields.description.area, null, fields.description);
  return fields;
}

export function readRepositoryFields(fields) {
  return {
    visibility: fields.visibility.value,
    description: fields.description.area.value,
    tag_overwrite: fields.tag_overwrite.value === "true",
    scan_mode: fields.scan_mode.value,
  };
}

function createRepository(ctx) {
  const { project } = ctx;
  openDialog({
    title: "Create repository",
    wide: true,
    build(close) {
      const fields = repositoryFields();
      const name = h("input", { type: "text", name: "name", required: true, maxLength: MAX_NAME, autocomplete: "off", spellcheck: false });
      const nameField = field("Repository name", name, "Lowercase letters and digits, with '.', '_', '__' or '-' between them. Fixed once created.");
      const preview = h("code", {}, imagePrefix(project) + "…");
      name.addEventListener("input", () => {
        preview.textContent = imagePrefix(project) + (name.value || "…") + "[/IMAGE]:TAG";
        nameField.setError(null);
      });
      const problem = h("div");
      const form = h(
        "form",
        { novalidate: true },
        h(
          "div",
          { class: "dialog-body" },
          fields.visibility,
          nameField,
          h("p", { class: "hint" }, "Images will be named ", preview),
          fields.descriptionField,
          fields.tag_overwrite,
          fields.scan_mode,
          problem,
        ),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Create")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        const value = name.value.trim();
        const nameProblem = !value ? "enter a name" : value.length > MAX_NAME ? `at most ${MAX_NAME} characters` : NAME_PATTERN.test(value) ? null : "lowercase letters and digits, with '.', '_', '__' or '-' between them";
        const descriptionError = descriptionProblem(fields.description.area.value);
        nameField.setError(nameProblem);
        fields.descriptionField.setError(descriptionError);
        if (nameProblem || descriptionError) return;
        try {
          const created = await api.post(`/projects/${seg(project.name)}/repositories`, { name: value, ...readRepositoryFields(fields) });
          close(created);
          toast(`Repository ${created.name} created`);
          ctx.navigate(`/projects/${seg(project.name)}/repositories/${seg(created.name)}`);
        } catch (err) {
          nameField.setError(err.forField?.("name"));
          fields.descriptionField.setError(err.forField?.("description"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
}


import { api, query, seg } from "../api.js";
import { imageName } from "../registry.js";
import {
  badge, bytes, clear, confirmDialog, copyButton, copyable, emptyState, errorBox, field, focusAfterRedraw, h, leftPastLastPage, number, pager, plural, shortDigest, table, timeElement, toast,
} from "../ui.js";
import { descriptionProblem, readRepositoryFields, repositoryFields } from "./repositories.js";
import { removeButton, userFieldOf, userRoleForm } from "./roles.js";
import { findingsDialog, scanCell } from "./scans.js";

const TABS = [
  ["images", "Images"],
  ["tags", "Tags"],
  ["history", "History"],
  ["permissions", "Permissions"],
  ["settings", "Settings"],
];
const PER_PAGE = 20;

export async function repositoryView(main, ctx) {
  const { project } = ctx;
  const [name, tabName] = ctx.params;
  const tab = TABS.some(([t]) => t === tabName) ? tabName : "images";
  const base = `/projects/${seg(project.name)}/repositories/${seg(name)}`;
  const repo = await api.get(base);
  const pull = await pullCommand(project, repo, base);
  if (ctx.stale()) return;
  document.title = `${repo.name} · ${project.name} · Berth`;

  const panel = h("section", { class: "tab-panel", id: "tab-panel", role: "tabpanel", "aria-label": tab });
  clear(
    main,
    h("nav", { class: "breadcrumbs", "aria-label": "Breadcrumbs" }, h("a", { href: `#/projects/${seg(project.name)}/repositories` }, "Repositories"), " / ", h("span", {}, repo.name)),
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("h1", {}, repo.name, " ", badge(repo.visibility === "public" ? "Public" : "Private", repo.visibility)),
        h("p", { class: "muted" }, repo.description || "No description."),
      ),
    ),
    h(
      "dl",
      { class: "facts" },
      fact("Images", h("span", { "data-testid": "image-count" }, number(repo.images))),
      fact("Tag overwrite", repo.tag_overwrite ? "Enabled" : "Disabled"),
      fact("Image scan", repo.scan_mode === "auto" ? "Auto" : "Manual"),
      fact("Created", timeElement(repo.created_at)),
      fact("Last modified", timeElement(repo.updated_at)),
    ),
    pull ? h("div", { class: "pull" }, h("span", { class: "muted" }, "Pull"), copyable(pull, { name: "Copy pull command", testid: "pull-command" })) : null,
    h(
      "div",
      { class: "tabs", role: "tablist" },
      TABS.filter(([t]) => t !== "settings" || project.can_manage).map(([t, label]) =>
        h("a", { role: "tab", href: `#${base}/${t}`, "aria-selected": t === tab ? "true" : "false", "aria-controls": "tab-panel" }, label),
      ),
    ),
    panel,
  );
  const tabCtx = { ...ctx, repo, base, panel };
  await { images: imagesTab, tags: tagsTab, history: historyTab, permissions: permissionsTab, settings: settingsTab }[tab](tabCtx);
}

/** `docker pull` of the newest image (by a tag when it has one): a command that works as
 * shown. Images live under the repository (`repository/image`), so none is named without one. */
async function pullCommand(project, repo, base) {
  if (!repo.images) return null;
  const found = await api.get(`${base}/images${query({ page: 1, per_page: PER_PAGE, referrers: false })}`);
  const newest = found.items.find((i) => i.tags.length) || found.items[0];
  if (!newest) return null;
  const reference = newest.tags.length ? `:${newest.tags[0]}` : `@${newest.digest}`;
  return `docker pull ${imageName(project, repo.name, newest.image)}${reference}`;
}

/** A row's name for its buttons (as the Scan button names it): `[image@]sha256:0123456789ab`,
 * `[image:]tag`. */
function imageLabel(image) {
  return `${image.image ? `${image.image}@` : ""}${shortDigest(image.digest)}`;
}

function tagLabel(tag) {
  return `${tag.image ? `${tag.image}:` : ""}${tag.tag}`;
}

/** An immutable tag rule as refusals name it: 'v*' (repositories 'app/*'). */
function ruleLabel(rule) {
  return `'${rule.tag_pattern}'${rule.repository_pattern === null ? "" : ` (repositories '${rule.repository_pattern}')`}`;
}

function fact(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

/** The tab shown: where the focus goes when its list has no row left to take it. */
function selectedTab() {
  return document.querySelector('[role="tab"][aria-selected="true"]');
}

function pageOf(ctx) {
  return Math.max(1, Number(ctx.query.page) || 1);
}

// ------------------------------------------------------------------ images

async function imagesTab(ctx) {
  const { project, repo, base, panel } = ctx;
  const page = pageOf(ctx);
  clear(panel, h("p", { class: "loading" }, "Loading images…"));
  // Signatures, SBOMs and other referrers are listed under the image they refer to.
  const found = await api.get(`${base}/images${query({ page, per_page: PER_PAGE, referrers: false })}`);
  if (ctx.stale() || leftPastLastPage(found, (p) => ctx.navigate(`${base}/images`, { ...ctx.query, page: p }, { replace: true }))) return;
  const showImageName = found.items.some((i) => i.image);
  const columns = [
    showImageName ? { title: "Image", cell: (i) => i.image || h("span", { class: "muted" }, "(repository)") } : null,
    { title: "Digest", cell: (i) => h("span", { class: "digest" }, h("code", { title: i.digest }, shortDigest(i.digest)), copyButton(i.digest, `Copy digest ${shortDigest(i.digest)}`)) },
    { title: "Tags", cell: (i) => tagsCell(i) },
    { title: "Size", cell: (i) => bytes(i.size), class: "num" },
    { title: "Platforms", cell: (i) => (i.platforms.length ? platformsCell(i) : kindOf(i)) },
    { title: "Pushed", cell: (i) => timeElement(i.pushed_at) },
    { title: "Vulnerabilities", cell: (i) => scanCell(ctx, i) },
    { title: "Referrers", cell: (i) => referrers(i) },
    {
      title: "Actions",
      cell: (i) =>
        h(
          "span",
          { class: "actions" },
          copyButton(`docker pull ${imageName(project, repo.name, i.image)}@${i.digest}`, `Copy pull command of ${imageLabel(i)}`, "Copy pull"),
          project.can_manage ? deleteImageButton(ctx, i) : null,
        ),
    },
  ].filter(Boolean);
  clear(
    panel,
    table(columns, found.items, {
      caption: "Images",
      rowKey: (i) => i.digest,
      empty: emptyState(
        "No images in this repository yet",
        // A name pattern, not a command to paste: IMAGE and TAG are the user's to choose.
        h("p", {}, "Sign in with an access key, then push an image named ", h("code", { "data-testid": "push-name" }, `${imageName(project, repo.name)}[/IMAGE]:TAG`), "."),
      ),
    }),
    pager(found, (p) => ctx.navigate(`${base}/images`, { page: p })),
  );
  // `?findings=DIGEST[&image=NAME]`: the link a scan.finished webhook event carries.
  if (/^[a-z0-9]+:[a-f0-9]+$/.test(ctx.query.findings || "")) {
    const opened = location.hash;
    findingsDialog(ctx, { digest: ctx.query.findings, image: ctx.query.image || "" }).then(() => {
      // Closed: drop `?findings=` from the address, unless the user has gone elsewhere since
      // (a page whose render has not begun yet is not stale, and would be sent back here).
      if (!ctx.stale() && location.hash === opened) ctx.navigate(`${base}/images`, { page: ctx.query.page });
    });
  }
}

/** A short name for an artifact type: signature, SBOM, attestation, or its last part. */
function artifactLabel(type) {
  const lower = type.toLowerCase();
  if (lower.includes("sig")) return "signature";
  if (/sbom|spdx|cyclonedx/.test(lower)) return "SBOM";
  if (/attestation|in-toto|intoto/.test(lower)) return "attestation";
  return type.split("/").pop().replace(/^vnd\./, "").split("+")[0];
}

/** An image's tags, then the tags on the manifests its index lists (a platform pushed under a
 * tag of its own, as `docker manifest create` does), marked as theirs. */
function tagsCell(image) {
  const childTags = image.child_tags || [];
  if (!image.tags.length && !childTags.length) return h("span", { class: "muted" }, "untagged");
  return h(
    "span",
    { class: "chips" },
    image.tags.map((t) => badge(t, "tag")),
    childTags.length ? h("span", { class: "muted" }, "entries:") : null,
    childTags.map((t) => h("span", { class: "badge tag", title: `${t}: a tag on a manifest this index lists` }, t)),
  );
}

/** An image's platforms; the listing gives at most 64 of an index's, and says how many more. */
function platformsCell(image) {
  const beyond = image.platform_count - image.platforms.length;
  return h(
    "span",
    { class: "chips" },
    image.platforms.map((p) => badge(p, "platform")),
    beyond > 0 ? h("span", { class: "muted", "data-testid": "platforms-cut" }, `showing ${number(image.platforms.length)} of ${plural(image.platform_count, "platform")}`) : null,
  );
}

function isIndex(image) {
  return image.media_type.includes("index") || image.media_type.includes("list");
}

function kindOf(image) {
  if (image.artifact_type) return h("span", { class: "muted", title: image.artifact_type }, artifactLabel(image.artifact_type));
  // A single-platform image lists its own platform (from its config); this is for the rest.
  return h("span", { class: "muted" }, isIndex(image) ? "index" : "no platform");
}

function referrers(image) {
  if (!image.referrers.length) return h("span", { class: "muted" }, "–");
  return h(
    "details",
    {},
    h("summary", {}, `${image.referrers.length}`),
    h(
      "ul",
      { class: "plain" },
      image.referrers.map((r) =>
        h("li", {}, badge(artifactLabel(r.artifact_type || r.media_type), "referrer"), " ", h("code", { title: `${r.digest}\n${r.artifact_type || r.media_type}` }, shortDigest(r.digest))),
      ),
    ),
  );
}

/** With tag overwrite disabled an image's tags always name it, as an immutable tag rule's
 * tags do: the server refuses to delete such an image, so the button says why instead of
 * offering it (an untagged one goes). */
function deleteImageButton(ctx, image) {
  const name = `Delete ${imageLabel(image)}`;
  const [held] = image.protected_tags || [];
  let why = null;
  if (ctx.repo.tag_overwrite === false && image.tags.length) why = "Tag overwrite is disabled in this repository's settings: an image with tags cannot be deleted.";
  else if (held) why = `The immutable tag rule ${ruleLabel(held.protected_by)} protects its tag ${held.tag}: the image cannot be deleted while the rule stays.`;
  if (why) return h("button", { type: "button", class: "small", disabled: true, "aria-label": name, title: why }, "Delete");
  return h("button", { type: "button", class: "small danger-text", "aria-label": name, onclick: (e) => deleteImage(ctx, image, e.currentTarget) }, "Delete");
}

async function deleteImage(ctx, image, button) {
  const focus = focusAfterRedraw(button, () => selectedTab());
  const at = `${ctx.base}/images/${seg(image.digest)}`;
  const asked = h("p", {}, "Delete ", h("code", {}, shortDigest(image.digest)), image.tags.length ? [" and its tags ", image.tags.join(", ")] : null, "?");
  // What goes and what stays, by the rule the delete follows (read before asking).
  let deletion;
  try {
    deletion = await api.get(`${at}/deletion${query({ image: image.image })}`);
  } catch (err) {
    // Said in the dialog the user opened (the image deleted meanwhile, say), not as a toast.
    await confirmDialog({ title: "Delete image", body: asked, refusal: err });
    if (err.status === 404) {
      ctx.afterRender(focus);
      ctx.refresh(); // it is gone: the listing drops it
    }
    return;
  }
  const goes = (n) => (n === 1 ? "goes" : "go");
  const done = await confirmDialog({
    title: "Delete image",
    body: h(
      "div",
      {},
      asked,
      deletion.platform_manifest_count
        ? h("p", { "data-testid": "platforms-going" }, `${plural(deletion.platform_manifest_count, "platform manifest")} it lists ${goes(deletion.platform_manifest_count)} with it.`)
        : null,
      deletion.referrer_count
        ? h(
            "p",
            { "data-testid": "referrers-going" },
            `${plural(deletion.referrer_count, "referrer")} (signatures, SBOMs) ${goes(deletion.referrer_count)} with it: its own and their referrers${isIndex(image) ? ", and those of the platform manifests going" : ""}.`,
          )
        : null,
      deletion.kept_count ? keptByDeletion(deletion) : null,
      h("p", { class: "muted" }, "Its tags can be restored from the history until garbage collection removes the image's data."),
    ),
    action: () => api.delete(`${at}${query({ image: image.image })}`),
  });
  if (done) {
    toast("Image deleted");
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

/** What an image's delete reaches and leaves, each with why it stays. */
function keptByDeletion(deletion) {
  const digests = (list) => list.flatMap((d, i) => [i ? ", " : "", h("code", { title: d }, shortDigest(d))]);
  const why = (k) => {
    const reasons = [];
    if (k.listed_by.length) reasons.push([`another index lists it (`, ...digests(k.listed_by), ")"]);
    if (k.tags.length) reasons.push([`it has ${k.tags.length === 1 ? "a tag" : "tags"} of its own (${k.tags.join(", ")})`]);
    return reasons.flatMap((r, i) => [i ? " and " : "", ...r]);
  };
  const more = deletion.kept_count - deletion.kept.length;
  return h(
    "div",
    { "data-testid": "kept" },
    h("p", {}, `${plural(deletion.kept_count, "manifest")} it reaches ${deletion.kept_count === 1 ? "stays" : "stay"}:`),
    h(
      "ul",
      {},
      deletion.kept.map((k) => h("li", {}, k.kind === "referrer" ? "referrer " : "platform manifest ", h("code", { title: k.digest }, shortDigest(k.digest)), ": ", ...why(k))),
      more > 0 ? h("li", { class: "muted" }, `and ${number(more)} more`) : null,
    ),
  );
}

// ------------------------------------------------------------------ tags

async function tagsTab(ctx) {
  const { project, repo, base, panel } = ctx;
  const page = pageOf(ctx);
  clear(panel, h("p", { class: "loading" }, "Loading tags…"));
  const found = await api.get(`${base}/tags${query({ page, per_page: PER_PAGE })}`);
  if (ctx.stale() || leftPastLastPage(found, (p) => ctx.navigate(`${base}/tags`, { page: p }, { replace: true }))) return;
  clear(
    panel,
    table(
      [
        { title: "Tag", cell: (t) => badge(t.tag, "tag") },
        { title: "Image", cell: (t) => t.image || h("span", { class: "muted" }, "(repository)") },
        { title: "Digest", cell: (t) => h("code", { title: t.digest }, shortDigest(t.digest)) },
        { title: "Updated", cell: (t) => timeElement(t.updated_at) },
        {
          title: "Actions",
          cell: (t) =>
            h(
              "span",
              { class: "actions" },
              copyButton(`docker pull ${imageName(project, repo.name, t.image)}:${t.tag}`, `Copy pull command of ${tagLabel(t)}`, "Copy pull"),
              project.can_manage ? deleteTagButton(ctx, t) : null,
            ),
        },
      ],
      found.items,
      { caption: "Tags", rowKey: (t) => `${t.image}:${t.tag}`, empty: "No tags." },
    ),
    pager(found, (p) => ctx.navigate(`${base}/tags`, { page: p })),
  );
}

/** With tag overwrite disabled, or an immutable tag rule protecting it, a tag always names
 * the same image: the server refuses its deletion, so the button says why instead of
 * offering it. */
function deleteTagButton(ctx, tag) {
  const name = `Delete ${tagLabel(tag)}`;
  let why = null;
  if (ctx.repo.tag_overwrite === false) why = "Tag overwrite is disabled in this repository's settings: its tags cannot be deleted.";
  else if (tag.protected_by) why = `The immutable tag rule ${ruleLabel(tag.protected_by)} protects this tag: it cannot be deleted while the rule stays.`;
  if (why) return h("button", { type: "button", class: "small", disabled: true, "aria-label": name, title: why }, "Delete");
  return h("button", { type: "button", class: "small danger-text", "aria-label": name, onclick: (e) => deleteTag(ctx, tag, e.currentTarget) }, "Delete");
}

async function deleteTag(ctx, tag, button) {
  const focus = focusAfterRedraw(button, () => selectedTab());
  const done = await confirmDialog({
    title: "Delete tag",
    body: h("p", {}, "Remove the tag ", h("strong", {}, tag.tag), "? The image stays, and the tag can be restored from the history."),
    action: () => api.delete(`${ctx.base}/tags/${seg(tag.tag)}${query({ image: tag.image })}`),
  });
  if (done) {
    toast(`Tag ${tag.tag} deleted`);
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

// ------------------------------------------------------------------ history

const ACTIONS = { push: "Pushed", tag: "Tagged", untag: "Tag deleted", move: "Tag moved", delete: "Image deleted", restore: "Tag restored" };

async function historyTab(ctx) {
  const { project, base, panel } = ctx;
  const page = pageOf(ctx);
  clear(panel, h("p", { class: "loading" }, "Loading history…"));
  const found = await api.get(`${base}/history${query({ page, per_page: PER_PAGE })}`);
  if (ctx.stale() || leftPastLastPage(found, (p) => ctx.navigate(`${base}/history`, { page: p }, { replace: true }))) return;
  const digest = (d) => (d ? h("code", { title: d }, shortDigest(d)) : h("span", { class: "muted" }, "–"));
  clear(
    panel,
    h("p", { class: "muted" }, "Every push, tag, tag deletion and restore, newest first. A deleted tag can be restored while its image is stored (garbage collection ends that)."),
    table(
      [
        { title: "When", cell: (e) => timeElement(e.at) },
        { title: "Action", cell: (e) => ACTIONS[e.action] || e.action },
        { title: "Image", cell: (e) => e.image || h("span", { class: "muted" }, "(repository)") },
        { title: "Tag", cell: (e) => (e.tag ? badge(e.tag, "tag") : h("span", { class: "muted" }, "–")) },
        { title: "Old digest", cell: (e) => digest(e.old_digest) },
        { title: "New digest", cell: (e) => digest(e.new_digest) },
        { title: "By", cell: (e) => e.actor },
        {
          title: "Restore",
          cell: (e) =>
            e.restorable && project.can_manage
              ? h("button", { type: "button", class: "small", onclick: (click) => restoreTag(ctx, e, click.currentTarget) }, `Restore ${e.tag}`)
              : h("span", { class: "muted" }, "–"),
        },
      ],
      found.items,
      { caption: "History", rowKey: (e) => String(e.id), empty: "Nothing has happened in this repository yet." },
    ),
    pager(found, (p) => ctx.navigate(`${base}/history`, { page: p })),
  );
}

async function restoreTag(ctx, event, button) {
  const focus = focusAfterRedraw(button, () => selectedTab());
  const done = await confirmDialog({
    title: "Restore tag",
    confirmLabel: "Restore",
    danger: false,
    body: h("p", {}, "Put the tag ", h("strong", {}, event.tag), " back on ", h("code", {}, shortDigest(event.old_digest)), "?"),
    action: () => api.post(`${ctx.base}/tags/restore`, { image: event.image, tag: event.tag }),
  });
  if (done) {
    toast(`Tag ${event.tag} restored`);
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

// ------------------------------------------------------------------ permissions

const GRANT_FORM = "Give a user a role on this repository";
const GRANTS = "Repository permissions";

async function permissionsTab(ctx) {
  const { project, base, panel, repo } = ctx;
  clear(panel, h("p", { class: "loading" }, "Loading permissions…"));
  const grants = await api.get(`${base}/grants`);
  if (ctx.stale()) return;
  const admin = project.role === "admin" || project.server_admin;
  const form = admin ? grantForm(ctx) : null;
  clear(
    panel,
    h("p", { class: "muted" }, `Project members reach every repository by their project role. Here, give people outside the project a role on ${repo.name} alone: member (push and pull) or viewer (pull).`),
    table(
      [
        { title: "User", cell: (g) => g.user },
        { title: "Role", cell: (g) => (g.role === "member" ? "Member (push and pull)" : "Viewer (pull)") },
        { title: "Since", cell: (g) => timeElement(g.since) },
        admin
          ? {
              title: "Actions",
              cell: (g) =>
                removeButton(ctx, {
                  title: "Remove permission",
                  message: `Remove ${g.user}'s role on ${repo.name}? Their access keys stop working here.`,
                  remove: () => api.delete(`${base}/grants/${seg(g.user)}`),
                  fallback: () => userFieldOf(GRANT_FORM),
                }),
            }
          : null,
      ].filter(Boolean),
      grants,
      { caption: GRANTS, rowKey: (g) => g.user, empty: "Nobody outside the project has a role on this repository." },
    ),
    form,
  );
}

function grantForm(ctx) {
  return userRoleForm(ctx, {
    label: GRANT_FORM,
    caption: GRANTS,
    roles: [["viewer", "Viewer (pull)"], ["member", "Member (push and pull)"]],
    initial: "viewer",
    submitLabel: "Add permission",
    save: async (user, role) => {
      await api.put(`${ctx.base}/grants/${seg(user)}`, { role });
      return `${user} is now a ${role} of ${ctx.repo.name}`;
    },
  });
}

// ------------------------------------------------------------------ settings

async function settingsTab(ctx) {
  const { project, repo, base, panel } = ctx;
  const fields = repositoryFields(repo);
  const problem = h("div");
  const save = h("button", { type: "submit", class: "primary" }, "Save changes");
  const form = h(
    "form",
    { class: "settings", novalidate: true },
    field("Repository name", h("input", { type: "text", value: repo.name, disabled: true }), "Fixed once created."),
    fields.visibility,
    fields.descriptionField,
    fields.tag_overwrite,
    fields.scan_mode,
    problem,
    h("div", { class: "form-actions" }, save),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    const descriptionError = descriptionProblem(fields.description.area.value);
    fields.descriptionField.setError(descriptionError);
    if (descriptionError) return;
    try {
      await api.patch(base, readRepositoryFields(fields));
      toast("Settings saved");
      ctx.afterRender(focusAfterRedraw(save));
      ctx.refresh();
    } catch (err) {
      fields.descriptionField.setError(err.forField?.("description"));
      clear(problem, errorBox(err));
    }
  });
  const remove = h(
    "section",
    { class: "danger-zone" },
    h("h2", {}, "Delete repository"),
    h("p", {}, "Deletes the repository with all its images and tags. Their data is freed at the next garbage collection. This cannot be undone."),
    h(
      "button",
      {
        type: "button",
        class: "danger",
        onclick: async () => {
          const done = await confirmDialog({
            title: "Delete repository",
            phrase: repo.name,
            body: h("p", {}, "Delete ", h("strong", {}, `${project.name}/${repo.name}`), ` and its ${plural(repo.images, "image")}?`),
            action: () => api.delete(base),
          });
          if (done) {
            toast(`Repository ${repo.name} deleted`);
            ctx.navigate(`/projects/${seg(project.name)}/repositories`);
          }
        },
      },
      "Delete repository",
    ),
  );
  clear(panel, form, remove);
}

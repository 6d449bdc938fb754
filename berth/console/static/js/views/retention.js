// Retention (a section of the Policies page): the project's rules and schedule, a dry-run
// preview of what a run would delete, running it, and the history of runs.

import { api, query, seg } from "../api.js";
import { badge, clear, confirmDialog, emptyState, errorBox, field, focusAfterRedraw, h, leftPastLastPage, number, openDialog, pager, plural, shortDigest, table, timeElement, toast } from "../ui.js";

// What each kind of rule keeps, and the value it needs.
// The largest values a rule takes (berth/domain/retention.py Rule.check).
const MAX_COUNT = 100000;
const MAX_DAYS = 36500;

const KINDS = {
  last: { label: "Keep the N most recently pushed images (per repository)", value: "count", unit: "images" },
  pushed_within: { label: "Keep images pushed within D days", value: "days", unit: "days" },
  pulled_within: { label: "Keep images pulled within D days", value: "days", unit: "days" },
  tagged: { label: "Keep images with a tag matching a pattern", value: "pattern", unit: "tag pattern" },
  untagged_within: { label: "Remove untagged images older than D days (tagged images are kept)", value: "days", unit: "days" },
};

export function describeRule(rule) {
  const value = rule[KINDS[rule.keep].value];
  const what = {
    last: `Keep the ${value} most recently pushed ${value === 1 ? "image" : "images"}`,
    pushed_within: `Keep images pushed within ${value} days`,
    pulled_within: `Keep images pulled within ${value} days`,
    tagged: `Keep images with a tag matching ${value}`,
    untagged_within: `Remove untagged images older than ${value} days`,
  }[rule.keep];
  const scope = `in ${rule.repositories}${rule.tags ? `, images whose tags all match ${rule.tags}` : ""}`;
  return `${what} (${scope})`;
}

/** Renders the Retention section into `section`. */
export async function retentionSection(section, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}/retention`;
  const admin = project.role === "admin" || project.server_admin;
  const manager = admin || project.role === "member";
  clear(section, h("h2", {}, "Retention"), h("div", { class: "loading" }, "Loading retention…"));
  const policy = await api.get(base);
  if (ctx.stale()) return;
  const preview = h("div", { "aria-live": "polite" });
  const history = h("div");
  clear(
    section,
    h("h2", {}, "Retention"),
    h("p", { class: "combination" }, h("strong", {}, policy.combination)),
    h(
      "p",
      { class: "muted" },
      "A rule's scope is a repository pattern (matched against the repository and repository/image, so app covers every image of app; * any characters, ? one, [abc] one of, as immutable tag rules read it) and, optionally, a tag pattern: the rule then covers only tagged images whose every tag matches it, so an image that also carries another tag (a CI build promoted with a release tag) is outside the rule. Index platform manifests and referrers (signatures, SBOMs) go with their image; an image with a protected tag (tag overwrite off, or an immutable tag rule) is never deleted. Freed storage comes back at the next garbage collection.",
    ),
    table(
      [
        { title: "#", cell: (r) => String(policy.rules.indexOf(r) + 1) },
        { title: "Rule", cell: (r) => describeRule(r) },
      ],
      policy.rules,
      { caption: "Retention rules", empty: emptyState("No retention rules", h("p", {}, "Without rules, retention deletes nothing.")) },
    ),
    h("p", {}, policy.schedule ? ["Schedule: ", h("code", {}, policy.schedule), " (UTC); next run ", timeElement(policy.next_run_at)] : "No schedule: runs only when started."),
    h(
      "div",
      { class: "actions" },
      admin ? h("button", { type: "button", onclick: (e) => editPolicy(ctx, base, policy, e.currentTarget) }, "Edit rules") : null,
      manager ? h("button", { type: "button", onclick: () => dryRun(ctx, base, preview, history) }, "Dry run") : null,
      admin ? h("button", { type: "button", class: "danger", onclick: () => runNow(ctx, base, preview, history) }, "Run now") : null,
    ),
    preview,
    h("h3", {}, "History"),
    history,
  );
  await showHistory(ctx, base, history, 1);
}

function imagesTable(run, caption) {
  return table(
    [
      { title: "Repository", cell: (i) => h("code", {}, i.repository) },
      { title: "Digest", cell: (i) => h("code", { title: i.digest }, shortDigest(i.digest)) },
      { title: "Tags", cell: (i) => (i.tags.length ? i.tags.join(", ") : "untagged") },
      { title: "Pushed", cell: (i) => timeElement(i.pushed_at) },
      { title: "Last pulled", cell: (i) => (i.last_pulled_at ? timeElement(i.last_pulled_at) : "never") },
      { title: "With it", cell: (i) => [i.platform_manifests ? plural(i.platform_manifests, "platform manifest") : null, i.referrers ? ` ${plural(i.referrers, "referrer")}` : null].filter(Boolean).join(",") || "-" },
    ],
    run.images,
    { caption, rowKey: (i) => `${i.repository}@${i.digest}`, empty: emptyState("Nothing to delete", h("p", {}, "Every image is kept by a rule or outside every rule's scope.")) },
  );
}

async function dryRun(ctx, base, preview, history) {
  clear(preview, h("div", { class: "loading" }, "Planning…"));
  try {
    const run = await api.post(`${base}/dry-run`);
    if (ctx.stale()) return;
    const counts = `${number(run.images_kept)} kept by a rule, ${number(run.images_outside_rules)} outside every rule's scope (untouched).`;
    clear(preview, h("h3", {}, `Dry run: ${plural(run.images_deleted, "image")} would be deleted`), h("p", { class: "muted" }, `${counts} ${run.note}`), imagesTable(run, "Dry run preview"));
    await showHistory(ctx, base, history, 1);
  } catch (err) {
    clear(preview, errorBox(err));
  }
}

async function runNow(ctx, base, preview, history) {
  let run = null;
  const done = await confirmDialog({
    title: "Run retention",
    body: h("p", {}, "Delete every image of ", h("strong", {}, ctx.project.name), " that no rule keeps? Images pushed or re-tagged while it runs are kept. Use Dry run first to see the list."),
    confirmLabel: "Run now",
    action: async () => {
      run = await api.post(`${base}/runs`);
    },
  });
  if (!done || !run || ctx.stale()) return;
  toast(`Retention deleted ${plural(run.images_deleted, "image")}`);
  clear(preview, h("h3", {}, `Run: ${plural(run.images_deleted, "image")} deleted`), h("p", { class: "muted" }, run.note), imagesTable(run, "Deleted by the run"));
  await showHistory(ctx, base, history, 1);
}

// An interrupted run (its process stopped mid-run) shows what it deleted until then.
const RUN_STATES = { running: ["Running", "running"], succeeded: ["Succeeded", "succeeded"], failed: ["Failed", "failed"], interrupted: ["Interrupted", "failed"] };

async function showHistory(ctx, base, container, page) {
  const data = await api.get(`${base}/runs${query({ page, per_page: 10 })}`);
  if (ctx.stale() || leftPastLastPage(data, (p) => showHistory(ctx, base, container, p))) return;
  clear(
    container,
    table(
      [
        { title: "Started", cell: (r) => timeElement(r.started_at) },
        { title: "Kind", cell: (r) => (r.dry_run ? badge("Dry run", "pending") : badge("Run", "active")) },
        { title: "By", cell: (r) => r.actor },
        { title: "State", cell: (r) => h("span", { "data-state": r.state }, badge(...RUN_STATES[r.state])) },
        { title: "Images", cell: (r) => `${r.images_deleted}${r.dry_run ? " would be deleted" : " deleted"}${r.images_skipped ? `, ${r.images_skipped} kept (changed during the run)` : ""}` },
        { title: "Rules", cell: (r) => r.rules.map((rule) => h("div", {}, describeRule(rule))) },
        { title: "Error", cell: (r) => r.error || "-" },
      ],
      data.items,
      { caption: "Retention runs", rowKey: (r) => r.id, empty: emptyState("No runs yet", h("p", {}, "A dry run shows what the rules would delete.")) },
    ),
    pager(data, (p) => showHistory(ctx, base, container, p)),
  );
}

// Longer descriptions are left out of a Remove button's name: a screen reader reads the whole name.
const SHORT_DESCRIPTION = 80;

/** A rule's fields in the edit dialog; `onRemove` runs after its Remove button takes it out,
 * and `addButton` takes the focus when no rule is left. */
function ruleRow(rule, onRemove, addButton) {
  const kind = h("select", { "aria-label": "Rule" }, Object.entries(KINDS).map(([k, v]) => h("option", { value: k, selected: k === rule.keep }, v.label)));
  // The value's placeholder says what it counts (images, days, a tag pattern) as the kind changes.
  const value = h("input", { type: "text", size: 8, placeholder: KINDS[kind.value].unit, value: rule.keep ? String(rule[KINDS[rule.keep].value] ?? "") : "" });
  kind.addEventListener("change", () => (value.placeholder = KINDS[kind.value].unit));
  const repositories = h("input", { type: "text", size: 12, value: rule.repositories || "*" });
  const tags = h("input", { type: "text", size: 10, placeholder: "any", value: rule.tags || "" });
  // Each field labelled where it is seen: in a row of three boxes, which is which is not obvious.
  const labelled = (text, input) => h("label", { class: "rule-field" }, h("span", {}, text), input);
  const remove = h(
    "button",
    {
      type: "button",
      class: "small",
      onclick: () => {
        // The focus goes to the next rule's Remove (the rows close up), else the previous
        // one's: removed with its row, it would fall to <body>, out of the dialog.
        const neighbour = row.nextElementSibling || row.previousElementSibling;
        row.remove();
        onRemove();
        (neighbour ? neighbour.querySelector("button") : addButton).focus();
      },
    },
    "Remove",
  );
  const row = h(
    "div",
    { class: "rule-row" },
    kind,
    labelled("Value", value),
    labelled("Repositories", repositories),
    labelled("Covered tags (optional)", tags),
    remove,
  );
  row.read = () => {
    const spec = KINDS[kind.value];
    const raw = value.value.trim();
    const out = { keep: kind.value, repositories: repositories.value.trim() || "*", tags: tags.value.trim() || null };
    out[spec.value] = spec.value === "pattern" ? raw : Number(raw);
    return out;
  };
  /** What is wrong with the value, or null: Number("abc") would be sent as null, and the
   * server's answer ("needs 'count'") would not say that a number was expected. */
  const valueProblem = () => {
    const spec = KINDS[kind.value];
    const raw = value.value.trim();
    const whole = spec.value === "count";
    if (spec.value === "pattern") return null;
    if ((whole ? /^\d+$/ : /^\d+(?:\.\d+)?$/).test(raw)) {
      // Past the API's bound its own answer names a field path (rules.0.count), not the rule.
      const most = whole ? MAX_COUNT : MAX_DAYS;
      return Number(raw) > most ? `the number of ${spec.unit} is at most ${most}, not '${raw}'` : null;
    }
    if (!raw) return `enter the number of ${spec.unit}`;
    return `the number of ${spec.unit} is ${whole ? "a whole number" : "a number"}, not '${raw}'`;
  };
  row.problem = () => {
    const why = valueProblem();
    value.toggleAttribute("aria-invalid", !!why);
    return why;
  };
  // Each row's Remove button is named after its rule ("Remove rule 2: Keep images pushed
  // within 30 days (in *)"), as other pages name row buttons: several bare "Remove"s do not
  // say which rule goes. Renamed as the rule is edited and as rows above it are removed.
  let position = 0;
  const name = () => {
    const said = valueProblem() || !value.value.trim() ? null : describeRule(row.read());
    const label = said && said.length <= SHORT_DESCRIPTION ? `Remove rule ${position}: ${said}` : `Remove rule ${position}`;
    remove.setAttribute("aria-label", label);
  };
  row.renumber = (n) => {
    position = n;
    name();
  };
  row.addEventListener("input", name);
  row.addEventListener("change", name);
  return row;
}

async function editPolicy(ctx, base, policy, opener) {
  // Taken while the page shows the button: once the saved rules are drawn, back on Edit rules.
  const focus = focusAfterRedraw(opener);
  const saved = await openDialog({
    title: "Retention rules",
    wide: true,
    build(close) {
      const renumber = () => [...rows.children].forEach((r, i) => r.renumber(i + 1));
      const addRule = h(
        "button",
        {
          type: "button",
          class: "small",
          onclick: () => {
            rows.append(ruleRow({ keep: "last", repositories: "*" }, renumber, addRule));
            renumber();
          },
        },
        "Add rule",
      );
      const rows = h("div", { class: "rule-rows" }, policy.rules.map((r) => ruleRow(r, renumber, addRule)));
      renumber();
      const schedule = h("input", { type: "text", placeholder: "daily 03:00 or 30 3 * * *", value: policy.schedule || "", autocomplete: "off", spellcheck: false });
      const scheduleField = field("Schedule (optional, UTC)", schedule, "daily HH:MM, or a cron expression of five fields. Empty: runs only when started.");
      const problem = h("div");
      const form = h(
        "form",
        {},
        h(
          "div",
          { class: "dialog-body" },
          h("p", {}, h("strong", {}, policy.combination)),
          h("p", { class: "hint" }, "Each rule: what it keeps, its value (a count of at least 1, or more than 0 days), the repositories it covers (* any characters, ? one, [abc] one of), and optionally a tag pattern: then it covers only images whose every tag matches."),
          rows,
          addRule,
          scheduleField,
          problem,
        ),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Save")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        const wrong = [...rows.children].map((r, i) => [i + 1, r.problem()]).filter(([, why]) => why).map(([n, why]) => `rule ${n}: ${why}`);
        if (wrong.length) {
          clear(problem, errorBox(new Error(wrong.join("; "))));
          return;
        }
        try {
          const rules = [...rows.children].map((r) => r.read());
          close(await api.put(base, { rules, schedule: schedule.value.trim() || null }));
        } catch (err) {
          scheduleField.setError(err.forField?.("schedule"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
  if (saved) {
    toast("Retention rules saved");
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

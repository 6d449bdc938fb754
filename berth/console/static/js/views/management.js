import { api, query, seg } from "../api.js";
import { badge, bytes, clear, duration, emptyState, errorBox, every, h, leftPastLastPage, number, openDialog, pager, plural, table, tableWrap, timeElement, toast } from "../ui.js";

const PHRASE = "data deletion";
const PHASES = {
  queued: "Queued",
  marking: "Deciding what to delete (writes restricted)",
  sweeping: "Removing files (writes allowed again)",
  done: "Done",
};
const STATES = { running: "Running", succeeded: "Succeeded", failed: "Failed", rolled_back: "Rolled back" };

export async function managementView(main, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}`;
  document.title = `Management · ${project.name} · Berth`;
  const summaryBox = h("div", { class: "loading" }, "Loading the summary…");
  const runBox = h("div", { "data-testid": "gc-current" });
  const historyBox = h("div");
  const lastRun = h("span", { "data-testid": "gc-last-run" }, "…");
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Management"), h("p", { class: "muted" }, "What the registry of this project holds, and garbage collection."))),
    summaryBox,
    h("h2", {}, "Garbage collection"),
    runBox,
    h("h3", {}, "History"),
    historyBox,
  );

  let polling = null;
  let followed = null; // the run the panel shows
  let running = false;
  let refreshing = Promise.resolve();
  let generation = 0;
  let graceSeconds = null;
  ctx.onLeave(() => clearTimeout(polling));

  async function loadSummary() {
    const summary = await api.get(`${base}/summary`);
    if (ctx.stale()) return;
    graceSeconds = summary.gc_grace_period_seconds;
    clear(summaryBox, summaryTable(ctx, summary, lastRun, { startGc, collect }));
    const button = summaryBox.querySelector("[data-testid=gc-button]");
    if (button) button.disabled = running;
  }

  // The run panel, the last run in the summary and the history are drawn from one read of
  // the history's first page (the running run, if any, is its first row), so they always
  // agree; a run shown once is never shown in an earlier state afterwards.
  async function refresh() {
    clearTimeout(polling);
    const mine = ++generation; // only the latest read is drawn
    const page = Math.max(1, Number(ctx.query.page) || 1);
    const first = await api.get(`${base}/gc/runs${query({ page: 1, per_page: 10 })}`);
    const shown = page === 1 ? first : await api.get(`${base}/gc/runs${query({ page, per_page: 10 })}`);
    if (ctx.stale() || mine !== generation) return;
    if (leftPastLastPage(shown, (p) => ctx.navigate(`${base}/management`, { page: p }, { replace: true }))) return;
    const current = first.items.find((r) => r.state === "running") || null;
    const run = current || (followed && first.items.find((r) => r.id === followed)) || first.items[0] || null;
    const finished = first.items.find((r) => r.state !== "running") || null;
    running = current !== null;
    clear(runBox, run ? runCard(run) : null);
    clear(historyBox, historyTable(shown), pager(shown, (p) => ctx.navigate(`${base}/management`, { page: p })));
    clear(lastRun, finished ? lastRunText(finished) : "never");
    const button = summaryBox.querySelector("[data-testid=gc-button]");
    if (button) button.disabled = running;
    if (running) {
      followed = current.id;
      polling = setTimeout(() => {
        refreshing = refresh().catch((err) => clear(runBox, errorBox(err)));
      }, 700);
    } else if (followed !== null && run && run.id === followed && run.state !== "running") {
      followed = null;
      await loadSummary(); // the run changed what is stored
    }
  }

  async function startGc() {
    const run = await gcDialog(project, base, graceSeconds);
    if (!run) return;
    toast("Garbage collection started");
    followed = run.id;
    await refreshing;
    refreshing = refresh();
    await refreshing;
  }

  async function collect(button) {
    // The server measures at most once every few seconds: an early request waits its turn.
    button.disabled = true;
    button.textContent = "Collecting…";
    try {
      await api.post(`${base}/storage/collect`);
      await loadSummary();
      toast("Storage usage collected");
    } catch (err) {
      toast(err.message, "error");
      button.disabled = false;
      button.textContent = "Collect now";
    }
  }

  await loadSummary();
  refreshing = refresh();
  await refreshing;
}

function lastRunText(run) {
  return h(
    "span",
    {},
    `${STATES[run.state] || run.state}${run.dry_run ? " (dry run)" : ""}, `,
    timeElement(run.finished_at),
  );
}

function graceText(seconds) {
  if (seconds === null || seconds === undefined) return "the grace period";
  return `the grace period (${every(seconds)}, setting gc_grace_period)`;
}

function summaryTable(ctx, summary, lastRun, { startGc, collect }) {
  const { project } = ctx;
  const storage = summary.storage;
  const gcButton = project.can_manage
    ? h("button", { type: "button", class: "primary", "data-testid": "gc-button", onclick: startGc }, "Garbage collection")
    : h("span", { class: "muted" }, "Project admins and members run it.");
  const collectButton = h("button", { type: "button", class: "small", onclick: (e) => collect(e.target) }, "Collect now");
  const row = (item, value, description) => h("tr", {}, h("th", { scope: "row" }, item), h("td", { class: "value" }, value), h("td", { class: "muted" }, description));
  return tableWrap(
    h(
      "table",
      { class: "summary", "data-testid": "management-summary" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Item"), h("th", { scope: "col" }, "Value"), h("th", { scope: "col" }, "Description"))),
      h(
        "tbody",
        {},
        row("Repository", h("span", { "data-testid": "summary-repositories" }, `${number(summary.repositories.stored)} / ${number(summary.repositories.maximum)}`), "Repositories stored in the registry / maximum number"),
        row("Image", h("span", { "data-testid": "summary-images" }, number(summary.images.stored)), `Images stored in the registry. Up to ${number(summary.images.limit_per_repository)} images can be created per repository.`),
        row(
          "Storage",
          h("span", {}, h("span", { "data-testid": "summary-storage", "data-bytes": storage.bytes }, bytes(storage.bytes)), " ", collectButton),
          [
            "Object usage by the registry (each layer counted once). ",
            // The same sample Monitoring shows (the server records the first one).
            "Collected ",
            h("span", { "data-testid": "storage-collected-at" }, timeElement(storage.collected_at)),
            "; ",
            `collected every ${every(summary.storage_collect_interval_seconds)}.`,
          ],
        ),
        row("Outbound traffic", bytes(summary.traffic_this_month.bytes), `This month so far, ${plural(summary.traffic_this_month.requests, "download")}.`),
        row("Garbage collection", gcButton, ["Deletes layer data no image references. Last run: ", lastRun, "."]),
      ),
    ),
  );
}

function gcDialog(project, base, graceSeconds) {
  return openDialog({
    title: "Garbage collection",
    wide: true,
    build(close) {
      // No placeholder: the phrase itself would make the box look filled in.
      const phrase = h("input", { type: "text", autocomplete: "off", spellcheck: false, "aria-label": `Type ${PHRASE} to confirm` });
      const execute = h("button", { type: "submit", class: "danger", disabled: true }, "Execute");
      phrase.addEventListener("input", () => (execute.disabled = phrase.value.trim() !== PHRASE));
      const untagged = h("input", { type: "checkbox", name: "delete_untagged" });
      const dryRun = h("input", { type: "checkbox", name: "dry_run" });
      const problem = h("div");
      const form = h(
        "form",
        {},
        h(
          "div",
          { class: "dialog-body" },
          h("p", {}, "Garbage collection deletes the layer data stored in project ", h("strong", {}, project.name), "'s registry that no remaining image references. Manifests of images that are still referenced are not affected."),
          h(
            "div",
            { class: "alert caution", role: "note" },
            h("strong", {}, "Caution"),
            h(
              "ul",
              {},
              h("li", {}, "Images with multi-architecture manifests may be deleted: with “also delete untagged images”, an untagged index goes with the platform images only it lists. (The platform images of a kept index and the signatures of a kept image always stay.)"),
              h("li", {}, "Registry use (repository creation, repository deletion, image push and tag addition) is restricted until garbage collection has finished deciding what to delete. Pulls keep working."),
              h("li", {}, "After garbage collection, tags cannot be restored to the state they were in before it ran."),
              h("li", { "data-testid": "gc-grace" }, `Images and layer data pushed within ${graceText(graceSeconds)} are kept, tagged or not; the result says how many and from when they can be collected.`),
            ),
          ),
          h("label", { class: "check" }, untagged, h("span", {}, "Also delete untagged images that no other image references")),
          h("label", { class: "check" }, dryRun, h("span", {}, "Dry run: only report what would be deleted")),
          h("label", { class: "field" }, h("span", {}, "To run it, type ", h("strong", {}, PHRASE)), phrase),
          problem,
        ),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), execute),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (execute.disabled) return;
        execute.disabled = true;
        try {
          close(await api.post(`${base}/gc`, { delete_untagged: untagged.checked, dry_run: dryRun.checked }));
        } catch (err) {
          clear(problem, errorBox(err));
          execute.disabled = false;
        }
      });
      return form;
    },
  });
}

function runCard(run) {
  const running = run.state === "running";
  const total = run.progress_total || 0;
  const percent = total ? Math.round((run.progress_done / total) * 100) : running ? null : 100;
  const marking = run.phase === "marking";
  let detail;
  if (run.phase === "sweeping") detail = total ? `${number(run.progress_done)} of ${number(total)} files removed` : "Listing the files to remove…";
  else if (marking) detail = run.dry_run ? "Deciding what would be deleted (a dry run: nothing changes, writes go on)" : "Deciding what to delete · pushes, new tags and repository changes are refused meanwhile";
  else detail = "Waiting to start…";
  return h(
    "section",
    { class: `run-card ${run.state}`, "aria-live": "polite", "data-state": run.state, "data-phase": run.phase, "data-run": run.id },
    h("h3", {}, running ? "Garbage collection is running" : `Last run: ${STATES[run.state]}`, run.dry_run ? badge("dry run") : null, run.delete_untagged ? badge("delete untagged") : null),
    running
      ? [
          h("p", {}, run.dry_run && marking ? "Deciding what would be deleted" : PHASES[run.phase] || run.phase, " · started ", timeElement(run.started_at), ` by ${run.actor}`),
          h("progress", { max: 100, value: percent ?? undefined, "aria-label": "Progress" }),
          h("p", { class: "muted" }, detail),
        ]
      : [
          h(
            "dl",
            { class: "facts", "data-testid": "gc-result" },
            h("div", {}, h("dt", {}, run.dry_run ? "Images that would go" : "Images deleted"), h("dd", { "data-testid": "gc-images" }, number(run.images_deleted))),
            h("div", {}, h("dt", {}, run.dry_run ? "Blobs that would go" : "Blobs deleted"), h("dd", { "data-testid": "gc-blobs" }, number(run.blobs_deleted))),
            h("div", {}, h("dt", {}, run.dry_run ? "Would free" : "Freed"), h("dd", { "data-testid": "gc-freed", "data-bytes": run.bytes_freed }, bytes(run.bytes_freed))),
            h("div", {}, h("dt", {}, "Duration"), h("dd", {}, duration(run.duration_seconds))),
            h("div", {}, h("dt", {}, "Writes restricted"), h("dd", {}, duration(run.restricted_seconds))),
            run.error ? h("div", {}, h("dt", {}, "Error"), h("dd", {}, run.error)) : null,
          ),
          keptText(run),
        ],
  );
}

/** What the run kept only because it was younger than the grace period, and from when it goes. */
function keptText(run) {
  if (!run.young_images_kept && !run.young_blobs_kept) return null;
  return h(
    "p",
    { class: "hint", "data-testid": "gc-kept-young" },
    `Kept ${plural(run.young_images_kept, "image")} and ${plural(run.young_blobs_kept, "blob")} because they are younger than ${graceText(run.grace_period_seconds)}; they can be collected from `,
    timeElement(run.young_collectable_at),
    " on.",
  );
}

function historyTable(runs) {
  return table(
    [
      { title: "Started", cell: (r) => timeElement(r.started_at) },
      { title: "By", cell: (r) => r.actor },
      { title: "State", cell: (r) => h("span", { "data-state": r.state, "data-phase": r.phase }, badge(STATES[r.state] || r.state, r.state), r.dry_run ? badge("dry run") : null) },
      { title: "Delete untagged", cell: (r) => (r.delete_untagged ? "yes" : "no") },
      { title: "Images deleted", cell: (r) => number(r.images_deleted), class: "num" },
      { title: "Blobs deleted", cell: (r) => number(r.blobs_deleted), class: "num" },
      { title: "Freed", cell: (r) => bytes(r.bytes_freed), class: "num" },
      // Not `num`: the two counts may go on two lines for the table to fit the page.
      { title: "Kept (too young)", cell: (r) => `${plural(r.young_images_kept, "image")}, ${plural(r.young_blobs_kept, "blob")}` },
      { title: "Duration", cell: (r) => duration(r.duration_seconds), class: "num" },
      { title: "Writes restricted", cell: (r) => duration(r.restricted_seconds), class: "num" },
    ],
    runs.items,
    { caption: "Garbage collection runs", rowKey: (r) => String(r.id), empty: emptyState("No garbage collection has run in this project yet") },
  );
}

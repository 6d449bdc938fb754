// Image scans on the repository page: the severity badge of each image, the Scan button that
// queues a scan and follows it until it finishes, and the findings of one image.
import { api, query, seg } from "../api.js";
import { badge, clear, datetime, h, number, openDialog, plural, saveFile, shortDigest, tableWrap, toast, webLink } from "../ui.js";

export const SEVERITIES = ["critical", "high", "medium", "low", "unknown"];
const RANK = Object.fromEntries(SEVERITIES.map((s, i) => [s, SEVERITIES.length - i]));
const POLL_MS = 1000;

function scanPath(ctx, image) {
  return `${ctx.base}/images/${seg(image.digest)}/scan${query({ image: image.image })}`;
}

/** The scan's state in a few badges: its counts by severity, or queued / scanning / failed.
 * While a rescan is queued or running the counts are still the previous result's: they are
 * shown as that, with its time, beside the state. */
export function scanBadge(scan) {
  if (scan.status === "not_scanned") return h("span", { class: "muted" }, "not scanned");
  if (scan.status === "failed") return badge(`failed: ${scan.reason}`, "failed scan-failed");
  // Scanned while the vulnerability database was empty: nothing was checked, never "no findings".
  const noData = h("span", { class: "badge failed", title: scan.reason || "" }, "no vulnerability data");
  if (scan.status === "no_data") return noData;
  const busy = scan.status === "queued" || scan.status === "scanning";
  const state = busy ? badge(scan.status === "queued" ? "scan queued" : "scanning", "running") : null;
  if (busy && !scan.scanned_at) return state; // the first scan: no result yet
  if (!scan.counts) return h("span", { class: "chips" }, state, noData); // the previous one had no data
  const counts = SEVERITIES.filter((s) => scan.counts[s]).map((s) => badge(`${scan.counts[s]} ${s}`, `sev-${s}`));
  return h(
    "span",
    { class: "chips", title: scan.scanned_at ? `scanned ${datetime(scan.scanned_at)}` : null },
    state,
    busy ? h("span", { class: "muted", "data-testid": "previous-scan" }, `previous scan, ${datetime(scan.scanned_at)}:`) : null,
    counts.length ? counts : badge("no findings", "succeeded"),
    scan.stale ? h("span", { class: "badge stale", title: "vulnerability data was imported since; the next rescan updates it" }, "stale") : null,
  );
}

/** The images table's scan cell: the badge, a Findings button once scanned, and for project
 * managers a Scan button that queues a scan and keeps the cell current until it finishes. */
export function scanCell(ctx, image) {
  const cell = h("span", { class: "scan-cell" });
  const show = (scan) => {
    const busy = scan.status === "queued" || scan.status === "scanning";
    clear(
      cell,
      h("span", { "data-testid": "scan-state" }, scanBadge(scan)),
      // During a rescan the previous result's findings stay readable (the dialog says whose).
      scan.status === "done" || (busy && scan.scanned_at && scan.counts)
        ? h("button", { type: "button", class: "small", "aria-label": `Findings of ${shortDigest(image.digest)}`, onclick: () => findingsDialog(ctx, image) }, "Findings")
        : null,
      // No findings to show, but the packages the scan listed: the dialog offers the SBOM.
      scan.status === "no_data" || (busy && scan.scanned_at && !scan.counts)
        ? h("button", { type: "button", class: "small", "aria-label": `SBOM of ${shortDigest(image.digest)}`, onclick: () => findingsDialog(ctx, image) }, "SBOM")
        : null,
      ctx.project.can_manage
        ? h("button", { type: "button", class: "small", disabled: busy, "aria-label": `Scan ${shortDigest(image.digest)}`, onclick: () => requestScan(busy) }, scan.status === "not_scanned" ? "Scan" : "Rescan")
        : null,
    );
    if (busy) follow();
  };
  let following = false;
  const follow = async () => {
    if (following) return;
    following = true;
    try {
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        if (!cell.isConnected) return; // the user left the page
        const result = await api.get(scanPath(ctx, image));
        const scan = summaryOf(result);
        if (scan.status === "done" || scan.status === "failed" || scan.status === "no_data") {
          following = false;
          show(scan);
          const outcome = {
            done: `Scanned ${shortDigest(image.digest)}: ${plural(result.findings.length, "finding")}`,
            failed: `Scan of ${shortDigest(image.digest)} failed: ${scan.reason}`,
            no_data: `Scan of ${shortDigest(image.digest)} checked nothing: ${scan.reason}`,
          }[scan.status];
          toast(outcome, scan.status === "done" ? "info" : "error");
          return;
        }
        show(scan); // still queued or scanning: this loop goes on following it
      }
    } catch (err) {
      toast(err.message, "error");
    } finally {
      following = false;
    }
  };
  const requestScan = async (busy) => {
    if (busy) return;
    try {
      show(summaryOf(await api.post(scanPath(ctx, image))));
    } catch (err) {
      toast(err.message, "error");
    }
  };
  show(image.scan);
  return cell;
}

/** A full scan result (GET/POST .../scan) as the listing's summary of it. */
function summaryOf(result) {
  return { status: result.state, reason: result.reason, counts: result.counts, stale: result.stale, scanned_at: result.finished_at };
}

// ------------------------------------------------------------------ findings

const COLUMNS = [
  { key: "package", title: "Package", value: (f) => f.name.toLowerCase() },
  { key: "installed", title: "Installed", value: (f) => f.installed },
  { key: "fixed", title: "Fixed in", value: (f) => f.fixed || "" },
  { key: "severity", title: "Severity", value: (f) => RANK[f.severity] || 0 },
  { key: "advisory", title: "Advisory", value: (f) => f.advisory_id },
  { key: "summary", title: "Summary", value: (f) => f.summary.toLowerCase() },
];

/** Which result the dialog's findings are: this scan's, or while a rescan is queued or running
 * the previous one's (none before the first scan finishes). */
function findingsOf(result) {
  const made = `${plural(result.findings.length, "finding")} in ${plural(result.packages, "package")}`;
  if (result.state === "no_data") return `The scan of ${datetime(result.finished_at)} checked nothing: ${result.reason}.`;
  if (result.state === "queued" || result.state === "scanning") {
    const now = result.state === "queued" ? "A scan is queued" : "A scan is running";
    if (result.finished_at && !result.counts) return `${now}; the previous scan had no vulnerability data to check against.`;
    return result.finished_at
      ? `${now}; until it finishes these are the previous scan's: ${made}, scanned ${datetime(result.finished_at)}.`
      : `${now}; the image has no findings until it finishes.`;
  }
  if (result.state === "failed") return `The scan of ${datetime(result.finished_at)} failed: ${result.reason}`;
  return `${made}, scanned ${datetime(result.finished_at)}${result.stale ? " (vulnerability data was imported since: the next rescan updates it)" : ""}.`;
}

/** The findings of one image in a dialog (it resolves when the dialog closes), with its SBOM
 * to download (an index: each platform's). */
export async function findingsDialog(ctx, image) {
  let result;
  let detail;
  try {
    [result, detail] = await Promise.all([
      api.get(scanPath(ctx, image)),
      api.get(`${ctx.base}/images/${seg(image.digest)}${query({ image: image.image })}`),
    ]);
  } catch (err) {
    toast(err.message, "error");
    return;
  }
  const state = { severity: "", fixable: false, sort: "severity", descending: true };
  await openDialog({
    // A scan that had no vulnerability data listed packages only: the dialog offers the SBOM.
    title: `${result.finished_at && result.state !== "failed" && !result.counts ? "SBOM" : "Findings"} · ${shortDigest(image.digest)}`,
    wide: true,
    build() {
      // A failed scan, or a first one not finished yet: no findings to list.
      if (result.state === "failed" || !result.finished_at) {
        return h("div", { class: "dialog-body" }, h("p", { class: "muted", "data-testid": "findings-of" }, findingsOf(result)));
      }
      // Scanned with no vulnerability data: nothing was checked, but the packages were listed
      // (the SBOM does not depend on the data).
      if (!result.counts) {
        return h("div", { class: "dialog-body" }, h("p", { class: "muted", "data-testid": "findings-of" }, findingsOf(result)), h("div", { class: "toolbar" }, sbomButtons(ctx, image, detail)));
      }
      const holder = h("div", { class: "findings" });
      const severity = h(
        "select",
        { onchange: (e) => ((state.severity = e.target.value), render()) },
        h("option", { value: "" }, "All severities"),
        SEVERITIES.map((s) => h("option", { value: s }, `${s[0].toUpperCase()}${s.slice(1)} (${result.counts[s]})`)),
      );
      const fixable = h("input", { type: "checkbox", onchange: (e) => ((state.fixable = e.target.checked), render()) });
      const render = () => clear(holder, findingsTable(result.findings, state, render));
      render();
      return h(
        "div",
        { class: "dialog-body" },
        h("p", { class: "muted", "data-testid": "findings-of" }, findingsOf(result)),
        h("div", { class: "toolbar" }, h("label", {}, "Severity ", severity), h("label", {}, fixable, " Fix available"), sbomButtons(ctx, image, detail)),
        holder,
      );
    },
  });
}

// ------------------------------------------------------------------ SBOM

/** The SBOM (CycloneDX JSON, what the scan found) of an image manifest, or of each platform of
 * an index: the API has one per manifest. Buildkit's attestations (platform unknown) have none.
 * The details list an index's first 256 manifests: past that, it says how many it shows. */
function sbomButtons(ctx, image, detail) {
  if (!detail.child_count) {
    return h("button", { type: "button", class: "small", onclick: () => downloadSbom(ctx, image.image, image.digest) }, "Download SBOM");
  }
  const platforms = detail.children.filter((c) => c.platform && !c.platform.startsWith("unknown/"));
  const cut = detail.child_count > detail.children.length;
  return h(
    "span",
    { class: "actions" },
    h(
      "span",
      { class: "muted" },
      "Download SBOM",
      // Before the buttons: after 256 of them it would go unseen.
      cut ? [" (", h("span", { "data-testid": "sbom-cut" }, `showing the first ${number(detail.children.length)} of the ${number(detail.child_count)} manifests this index lists`), ")"] : null,
      ":",
    ),
    platforms.map((c) =>
      h("button", { type: "button", class: "small", "aria-label": `Download SBOM ${c.platform}`, onclick: () => downloadSbom(ctx, image.image, c.digest) }, c.platform),
    ),
  );
}

async function downloadSbom(ctx, imageName, digest) {
  try {
    const sbom = await api.file(`${ctx.base}/images/${seg(digest)}/sbom${query({ image: imageName })}`);
    const name = [ctx.repo.name, imageName].filter(Boolean).join("-").replaceAll("/", "-");
    saveFile(sbom, `${name}-${digest.replace(":", "-").slice(0, 19)}.cdx.json`);
  } catch (err) {
    toast(err.message, "error");
  }
}

function findingsTable(findings, state, render) {
  const shown = findings.filter((f) => (!state.severity || f.severity === state.severity) && (!state.fixable || f.fixed));
  const column = COLUMNS.find((c) => c.key === state.sort);
  const sign = state.descending ? -1 : 1;
  shown.sort((a, b) => {
    const [x, y] = [column.value(a), column.value(b)];
    return (x < y ? -1 : x > y ? 1 : 0) * sign || a.advisory_id.localeCompare(b.advisory_id);
  });
  const header = (c) =>
    h(
      "th",
      { scope: "col", "aria-sort": c.key === state.sort ? (state.descending ? "descending" : "ascending") : "none" },
      h(
        "button",
        {
          type: "button",
          class: "sort",
          onclick: () => {
            state.descending = c.key === state.sort ? !state.descending : c.key === "severity";
            state.sort = c.key;
            render();
          },
        },
        c.title,
        c.key === state.sort ? (state.descending ? " ▼" : " ▲") : "",
      ),
    );
  const advisory = (f) =>
    h(
      "span",
      {},
      f.link ? webLink(f.link, f.advisory_id) : f.advisory_id,
      f.aliases.length ? h("span", { class: "muted aliases" }, h("br"), f.aliases.join(", ")) : null,
    );
  return [
    h("p", { class: "muted", "data-testid": "findings-shown" }, `Showing ${shown.length} of ${plural(findings.length, "finding")}`),
    shown.length
      ? tableWrap(
          h(
            "table",
            {},
            h("caption", { class: "sr-only" }, "Findings"),
            h("thead", {}, h("tr", {}, COLUMNS.map(header))),
            h(
              "tbody",
              {},
              shown.map((f) =>
                h(
                  "tr",
                  { dataset: { key: `${f.advisory_id} ${f.purl}` } },
                  h("td", { "data-label": "Package", title: f.purl }, f.name),
                  h("td", { "data-label": "Installed" }, h("code", {}, f.installed)),
                  h("td", { "data-label": "Fixed in" }, f.fixed ? h("code", {}, f.fixed) : h("span", { class: "muted" }, "no fix")),
                  h("td", { "data-label": "Severity" }, badge(f.severity, `sev-${f.severity}`)),
                  h("td", { "data-label": "Advisory" }, advisory(f)),
                  h("td", { "data-label": "Summary", class: "wrap" }, f.summary),
                ),
              ),
            ),
          ),
        )
      : h("p", { class: "empty" }, findings.length ? "No finding matches the filter." : "No known vulnerabilities in this image's packages."),
  ];
}

import { api, query, seg } from "../api.js";
import { barChart, lineChart } from "../charts.js";
import { bytes, clear, datetime, emptyState, every, h, number, plural, table, timeElement } from "../ui.js";

const STORAGE_DAYS = 30;

export async function monitoringView(main, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}`;
  const repository = ctx.query.repository || "";
  document.title = `Monitoring · ${project.name} · Berth`;
  const trafficBox = h("div", { class: "loading" }, "Loading outbound traffic…");
  const storageBox = h("div", { class: "loading" }, "Loading storage usage…");
  // How long a change takes to show is the server's storage_collect_interval, said once read.
  const storageNote = h("li", { "data-testid": "storage-note" }, "For storage usage, actual usage is collected and reflected periodically.");
  clear(
    main,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Monitoring"), h("p", { class: "muted" }, "Outbound traffic and storage usage of this project's registry."))),
    h(
      "div",
      { class: "alert info", role: "note" },
      h("strong", {}, "Info"),
      h(
        "ul",
        {},
        h("li", {}, "Outbound traffic is charged by the registry's outbound traffic price; the usage shown here may differ slightly from the actual billed usage."),
        storageNote,
      ),
    ),
    h("h2", {}, "Outbound traffic"),
    trafficBox,
    h("h2", {}, "Storage usage"),
    storageBox,
  );
  const [traffic, storage] = await Promise.all([
    api.get(`${base}/traffic${query({ days: 92, repository })}`),
    api.get(`${base}/storage${query({ days: STORAGE_DAYS })}`),
  ]);
  if (ctx.stale()) return;
  clear(trafficBox, trafficSection(ctx, traffic, repository));
  clear(storageNote, `For storage usage, it takes up to ${every(storage.collect_interval_seconds)} for actual usage to be collected and reflected (Collect now, under Management, measures it at once).`);
  clear(storageBox, storageSection(storage));
}

/** `1,234.50 USD`: the amount with the server's currency (setting currency). */
function money(value, currency) {
  return `${value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })} ${currency}`;
}

function change(month) {
  if (month.change_percent === null) return month.bytes ? "new" : "–";
  const sign = month.change_percent > 0 ? "+" : "";
  const arrow = month.change_percent > 0 ? "▲" : month.change_percent < 0 ? "▼" : "";
  return `${arrow} ${sign}${month.change_percent.toFixed(1)}%`;
}

function trafficSection(ctx, traffic, repository) {
  const { project } = ctx;
  const names = (traffic.repositories || []).filter((r) => r.repository).map((r) => r.repository);
  const select = h(
    "select",
    { "aria-label": "Repository", onchange: (e) => ctx.navigate(`/projects/${seg(project.name)}/monitoring`, { repository: e.target.value }) },
    h("option", { value: "" }, "All repositories"),
    [...new Set([...names, repository].filter(Boolean))].map((n) => h("option", { value: n, selected: n === repository }, n)),
  );
  const points = traffic.daily.map((d) => ({
    label: d.day.slice(5),
    value: d.bytes,
    title: `${d.day}: ${bytes(d.bytes)} in ${plural(d.requests, "download")}`,
  }));
  const month = traffic.this_month;
  const pricing = traffic.pricing;
  return h(
    "div",
    { class: "panel" },
    h("div", { class: "toolbar" }, select, h("span", { class: "muted" }, `${traffic.first_day} – ${traffic.last_day} (UTC days)`)),
    h(
      "dl",
      { class: "facts big" },
      h("div", {}, h("dt", {}, "Past three months"), h("dd", { "data-testid": "traffic-total" }, bytes(traffic.total_bytes))),
      h("div", {}, h("dt", {}, "This month"), h("dd", {}, bytes(month.bytes))),
      h("div", {}, h("dt", {}, "Change over last month"), h("dd", { "data-testid": "traffic-change" }, change(month))),
      h("div", {}, h("dt", {}, "Estimated charge this month"), h("dd", { "data-testid": "traffic-charge" }, money(month.estimated_charge, month.currency))),
    ),
    barChart(points, { label: `Outbound traffic per day, ${traffic.first_day} to ${traffic.last_day}`, format: bytes, every: 14, testid: "traffic-chart" }),
    h("h3", {}, "By month"),
    table(
      [
        { title: "Month", cell: (m) => m.month },
        { title: "Outbound traffic", cell: (m) => h("span", { "data-bytes": m.bytes }, bytes(m.bytes)), class: "num" },
        { title: "Downloads", cell: (m) => number(m.requests), class: "num" },
        { title: "Change", cell: (m) => change(m), class: "num" },
        { title: "Estimated charge", cell: (m) => money(m.estimated_charge, m.currency), class: "num" },
      ],
      traffic.months,
      { caption: "Outbound traffic by month", rowKey: (m) => m.month },
    ),
    h(
      "p",
      { class: "hint" },
      pricing.price_per_gb > 0
        ? `Estimated charge: traffic past ${pricing.free_gb_per_month} GB a month, at ${pricing.price_per_gb} ${pricing.currency} per GB (1 GB = ${number(pricing.gb)} bytes).`
        : "No price per GB is set on this server (setting traffic_price_per_gb), so the estimated charge is 0.",
    ),
    traffic.repositories && traffic.repositories.length
      ? [
          h("h3", {}, "By repository"),
          table(
            [
              { title: "Repository", cell: (r) => r.repository || h("span", { class: "muted" }, "(deleted)") },
              { title: "Outbound traffic", cell: (r) => bytes(r.bytes), class: "num" },
              { title: "Downloads", cell: (r) => number(r.requests), class: "num" },
            ],
            traffic.repositories,
            { caption: "Outbound traffic by repository" },
          ),
        ]
      : null,
  );
}

function storageSection(storage) {
  if (!storage.samples.length) {
    return emptyState("No storage usage collected yet", h("p", {}, `It is collected every ${every(storage.collect_interval_seconds)}, or now from Management.`));
  }
  const points = storage.samples.map((s) => ({
    label: datetime(s.collected_at).slice(5, 10),
    value: s.bytes,
    title: `${datetime(s.collected_at)}: ${bytes(s.bytes)}, ${plural(s.images, "image")}, ${plural(s.blobs, "blob")}`,
  }));
  const labelEvery = Math.max(1, Math.ceil(points.length / 10));
  return h(
    "div",
    { class: "panel" },
    h(
      "dl",
      { class: "facts big" },
      h("div", {}, h("dt", {}, "Storage used"), h("dd", { "data-testid": "storage-used" }, bytes(storage.last.bytes))),
      h("div", {}, h("dt", {}, "Images"), h("dd", {}, number(storage.last.images))),
      h("div", {}, h("dt", {}, "Collected"), h("dd", {}, timeElement(storage.collected_at))),
    ),
    lineChart(points, { label: `Storage used over the past ${STORAGE_DAYS} days`, format: bytes, every: labelEvery, testid: "storage-chart" }),
  );
}

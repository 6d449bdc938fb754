// Charts drawn as SVG from data: a bar chart for daily traffic, a line chart for storage.
// Every mark has a <title> (the browser's tooltip) and the chart a text summary for screen
// readers; they scale to their container through the viewBox.

import { h } from "./ui.js";

const WIDTH = 900;
const HEIGHT = 260;
const MARGIN = { top: 12, right: 12, bottom: 36, left: 64 };

/** Round axis maximum and ticks: 0, m/4, ..., m with m a 1/2/2.5/5 × 10^k. */
function ticks(max) {
  if (max <= 0) return [0, 1];
  const raw = max / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((s) => s >= raw);
  return [0, 1, 2, 3, 4].map((i) => i * step);
}

/** The first and last x labels lean inwards, so they stay clear of the axis and the edge. */
function anchor(i, count) {
  if (count > 1 && i === 0) return "start";
  if (count > 1 && i === count - 1) return "end";
  return "middle";
}

function frame(label, yTicks, format, plot) {
  const innerH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const top = yTicks[yTicks.length - 1];
  const y = (v) => MARGIN.top + innerH - (v / top) * innerH;
  const grid = yTicks.map((t) =>
    h(
      "svg:g",
      { class: "grid" },
      h("svg:line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(t), y2: y(t) }),
      h("svg:text", { x: MARGIN.left - 8, y: y(t) + 4, "text-anchor": "end" }, format(t)),
    ),
  );
  return h(
    "svg:svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label, class: "chart", preserveAspectRatio: "xMidYMid meet" },
    grid,
    plot(y),
  );
}

/** points: [{label, value, title}] in order; `every` labels one x tick in so many. */
export function barChart(points, { label, format, every = 7, testid = null }) {
  const max = Math.max(0, ...points.map((p) => p.value));
  const yTicks = ticks(max);
  const innerW = WIDTH - MARGIN.left - MARGIN.right;
  const slot = innerW / Math.max(1, points.length);
  const barW = Math.max(1, slot * 0.7);
  const svg = frame(label, yTicks, format, (y) =>
    points.map((p, i) => {
      const x = MARGIN.left + i * slot + (slot - barW) / 2;
      const top = y(p.value);
      return h(
        "svg:g",
        { class: "mark", "data-label": p.label, "data-value": p.value },
        h("svg:rect", { class: "bar", x, y: top, width: barW, height: Math.max(0, y(0) - top) }, h("svg:title", {}, p.title)),
        i % every === 0 || i === points.length - 1
          ? h("svg:text", { class: "x-label", x: x + barW / 2, y: HEIGHT - MARGIN.bottom + 18, "text-anchor": anchor(i, points.length) }, p.label)
          : null,
      );
    }),
  );
  return h("figure", { class: "chart-figure", "data-testid": testid }, svg);
}

/** points: [{label, value, title}] in time order. */
export function lineChart(points, { label, format, every = 1, testid = null }) {
  const max = Math.max(0, ...points.map((p) => p.value));
  const yTicks = ticks(max);
  const innerW = WIDTH - MARGIN.left - MARGIN.right;
  const x = (i) => MARGIN.left + (points.length <= 1 ? innerW / 2 : (i / (points.length - 1)) * innerW);
  const svg = frame(label, yTicks, format, (y) => [
    h("svg:polyline", { class: "line", points: points.map((p, i) => `${x(i)},${y(p.value)}`).join(" ") }),
    points.map((p, i) =>
      h(
        "svg:g",
        { class: "mark", "data-label": p.label, "data-value": p.value },
        h("svg:circle", { class: "dot", cx: x(i), cy: y(p.value), r: 4 }, h("svg:title", {}, p.title)),
        i % every === 0 || i === points.length - 1
          ? h("svg:text", { class: "x-label", x: x(i), y: HEIGHT - MARGIN.bottom + 18, "text-anchor": anchor(i, points.length) }, p.label)
          : null,
      ),
    ),
  ]);
  return h("figure", { class: "chart-figure", "data-testid": testid }, svg);
}

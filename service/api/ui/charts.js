// Line charts drawn as SVG by hand: a few series over a shared x axis, with ticks and a legend.

import { h, s } from "./dom.js";

const WIDTH = 520;
const HEIGHT = 220;
const MARGIN = { top: 12, right: 14, bottom: 34, left: 66 };
// Points are marked with dots up to this many per series; beyond, the line alone reads better.
const MAX_DOTS = 60;

/** About ``count`` round tick values covering [low, high]. */
export function ticks(low, high, count = 5) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((candidate) => candidate >= raw);
  const values = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) {
    values.push(Number(value.toPrecision(12)));
  }
  // A range just past a round step can leave one tick: ask for finer ones.
  return values.length < 3 && count < 40 ? ticks(low, high, count * 2) : values;
}

function extent(values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (low === high) {
    const pad = Math.abs(low) * 0.05 || 1;
    low -= pad;
    high += pad;
  }
  return [low, high];
}

function label(value) {
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? String(value) : value.toPrecision(3);
}

/**
 * A chart of ``series`` ([{name, points: [[x, y], ...]}]) as a <figure>.
 *
 * Each series is a <polyline data-series=NAME data-points=N>; the figure's data-points is the
 * count over all series, so a reader (or a test) can tell that a live chart grew.
 */
export function lineChart({ title, xLabel, yLabel, series, integerX = false }) {
  const drawn = series.map((line) => ({ ...line, points: line.points.filter(([x, y]) => Number.isFinite(x)
    && Number.isFinite(y)) }));
  const total = drawn.reduce((sum, line) => sum + line.points.length, 0);
  const figure = h("figure", { class: "chart", "data-chart": title, "data-points": total },
    h("figcaption", {}, title));
  if (total === 0) {
    figure.append(h("p", { class: "muted chart-empty" }, "No points yet."));
    return figure;
  }
  const all = drawn.flatMap((line) => line.points);
  const [x0, x1] = integerX && all.every(([x]) => x === all[0][0]) ? [all[0][0] - 1, all[0][0] + 1]
    : extent(all.map(([x]) => x));
  const [y0, y1] = extent(all.map(([, y]) => y));
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const px = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotWidth;
  const py = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * plotHeight;

  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart-svg", role: "img",
    "aria-label": `${title}: ${drawn.map((line) => line.name).join(", ")}` });
  const xTicks = ticks(x0, x1, 6).filter((x) => !integerX || Number.isInteger(x));
  for (const y of ticks(y0, y1, 4)) {
    svg.append(s("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: py(y), y2: py(y) }),
      s("text", { class: "tick", x: MARGIN.left - 6, y: py(y) + 4, "text-anchor": "end" }, label(y)));
  }
  for (const x of xTicks) {
    svg.append(s("line", { class: "grid", x1: px(x), x2: px(x), y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }),
      s("text", { class: "tick", x: px(x), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, label(x)));
  }
  svg.append(
    s("rect", { class: "frame", x: MARGIN.left, y: MARGIN.top, width: plotWidth, height: plotHeight }),
    s("text", { class: "axis-label", x: MARGIN.left + plotWidth / 2, y: HEIGHT - 4, "text-anchor": "middle" },
      xLabel),
    yLabel ? s("text", { class: "axis-label", x: 12, y: MARGIN.top + plotHeight / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${MARGIN.top + plotHeight / 2})` }, yLabel) : null);
  drawn.forEach((line, index) => {
    const points = line.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { class: `series series-${index}`, "data-series": line.name,
      "data-points": line.points.length, points }));
    if (line.points.length <= MAX_DOTS) {
      for (const [x, y] of line.points) {
        svg.append(s("circle", { class: `dot series-${index}`, cx: px(x), cy: py(y), r: 2.5 },
          s("title", {}, `${line.name} at ${xLabel} ${x}: ${label(y)}`)));
      }
    }
  });
  figure.append(svg, h("div", { class: "legend" }, drawn.map((line, index) => h("span", { class: "legend-item" },
    h("span", { class: `swatch series-${index}` }), `${line.name} (${line.points.length})`))));
  return figure;
}

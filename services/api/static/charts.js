// Hand-written SVG line charts: no library, no network. Each point is a <circle class="point"> carrying
// data-series, data-round and data-value, so tests (and curious people) can read the plotted values.
"use strict";

window.FedbusCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 640, HEIGHT = 260, PAD = { left: 48, right: 110, top: 14, bottom: 32 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, attrs) {
    const node = el("text", Object.assign({ x, y }, attrs || {}), parent);
    node.textContent = content;
    return node;
  }

  function niceTicks(low, high, count) {
    if (high <= low) high = low + 1;
    const raw = (high - low) / count;
    const step = Math.pow(10, Math.floor(Math.log10(raw)));
    const unit = [1, 2, 5, 10].map((m) => m * step).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.floor(low / unit) * unit; v <= high + unit / 2; v += unit) ticks.push(Number(v.toFixed(10)));
    return ticks;
  }

  // series: [{name, color, points: [{x, y}]}]; options: {yLabel}
  function lineChart(svg, series, options) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.y));
    if (all.length === 0) {
      text(svg, WIDTH / 2, HEIGHT / 2, "no data yet", { "text-anchor": "middle", class: "empty" });
      return;
    }
    const xs = all.map((p) => p.x), ys = all.map((p) => p.y);
    const xMin = Math.min(...xs), xMax = Math.max(Math.max(...xs), xMin + 1);
    const yTicks = niceTicks(Math.min(0, ...ys), Math.max(...ys), 5);
    const yMin = yTicks[0], yMax = yTicks[yTicks.length - 1];
    const sx = (x) => PAD.left + ((x - xMin) / (xMax - xMin)) * (WIDTH - PAD.left - PAD.right);
    const sy = (y) => HEIGHT - PAD.bottom - ((y - yMin) / (yMax - yMin || 1)) * (HEIGHT - PAD.top - PAD.bottom);

    for (const tick of yTicks) {
      el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(tick), y2: sy(tick), class: "grid" }, svg);
      text(svg, PAD.left - 6, sy(tick) + 4, String(tick), { "text-anchor": "end" });
    }
    const xStep = Math.max(1, Math.ceil((xMax - xMin) / 10));
    for (let x = xMin; x <= xMax; x += xStep) text(svg, sx(x), HEIGHT - PAD.bottom + 16, String(x), { "text-anchor": "middle" });
    text(svg, (PAD.left + WIDTH - PAD.right) / 2, HEIGHT - 2, "round", { "text-anchor": "middle" });
    el("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "axis" }, svg);
    el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom, class: "axis" }, svg);

    series.forEach((s, index) => {
      const points = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
      const group = el("g", { class: "series", "data-series": s.name }, svg);
      if (points.length > 1) {
        el("polyline", { class: "line", stroke: s.color, points: points.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") }, group);
      }
      for (const p of points) {
        const dot = el("circle", {
          class: "point", cx: sx(p.x), cy: sy(p.y), r: 3.5, fill: s.color,
          "data-series": s.name, "data-round": p.x, "data-value": p.y,
        }, group);
        el("title", {}, dot).textContent = `${s.name} round ${p.x}: ${p.y}`;
      }
      const ly = PAD.top + 8 + index * 18;
      el("rect", { x: WIDTH - PAD.right + 12, y: ly - 8, width: 10, height: 10, fill: s.color }, svg);
      text(svg, WIDTH - PAD.right + 28, ly + 1, s.name);
    });
  }

  return { lineChart };
})();

// Grain's small SVG time-series chart: no library, no build step.
// GrainChart.draw(svg, opts) redraws the whole chart from plain arrays:
//   opts.series: [{values: [number|null], cls: "css class", area: bool, axis: "left"|"right"}]
//   opts.end: Unix second of the last value, opts.step: seconds per value,
//   opts.max / opts.rightMax: the top of each axis (rounded up to a nice number),
//   opts.unit / opts.rightUnit: appended to the axis labels.
// A null value is a gap (nothing was sampled that second).
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 180, L = 44, R = 44, T = 10, B = 24;

  function node(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // the smallest of 1, 2, 5 x 10^k at or above v
  function nice(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // SVG path data of one series: runs of non-null values, as lines (or closed areas)
  function pathOf(values, x, y, area) {
    let d = "", run = [];
    const flush = () => {
      if (!run.length) return;
      if (run.length === 1) run.push([run[0][0] + 1, run[0][1]]);
      d += "M" + run.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join("L");
      if (area) d += "L" + run[run.length - 1][0].toFixed(1) + "," + y(0).toFixed(1) +
        "L" + run[0][0].toFixed(1) + "," + y(0).toFixed(1) + "Z";
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined || Number.isNaN(v)) flush();
      else run.push([x(i), y(v)]);
    });
    flush();
    return d;
  }

  function draw(svg, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const n = Math.max(2, ...opts.series.map(s => s.values.length));
    const max = nice(opts.max || 0), rmax = nice(opts.rightMax || 0);
    const x = i => L + (W - L - R) * i / (n - 1);
    const yl = v => H - B - (H - T - B) * Math.min(v, max) / max;
    const yr = v => H - B - (H - T - B) * Math.min(v, rmax) / rmax;
    // grid and left axis labels: 0, half, top
    for (const f of [0, 0.5, 1]) {
      const yy = yl(max * f);
      svg.appendChild(node("line", {x1: L, x2: W - R, y1: yy, y2: yy, class: "gridline"}));
      svg.appendChild(node("text", {x: L - 6, y: yy + 4, class: "axis", "text-anchor": "end"},
        fmt(max * f) + (opts.unit || "")));
      if (opts.series.some(s => s.axis === "right")) {
        svg.appendChild(node("text", {x: W - R + 6, y: yy + 4, class: "axis"},
          fmt(rmax * f) + (opts.rightUnit || "")));
      }
    }
    // time axis: minutes before the last value
    const span = (n - 1) * (opts.step || 1);
    const every = span > 300 ? 120 : span > 120 ? 60 : 15;
    for (let s = 0; s <= span; s += every) {
      const xx = x(n - 1 - s / (opts.step || 1));
      svg.appendChild(node("line", {x1: xx, x2: xx, y1: T, y2: H - B, class: "gridline"}));
      svg.appendChild(node("text", {x: xx, y: H - 6, class: "axis", "text-anchor": "middle"},
        s === 0 ? "now" : s % 60 ? "-" + s + " s" : "-" + s / 60 + " min"));
    }
    for (const s of opts.series) {
      const y = s.axis === "right" ? yr : yl;
      const d = pathOf(s.values, x, y, !!s.area);
      if (d) svg.appendChild(node("path", {d: d, class: "series " + s.cls + (s.area ? " area" : "")}));
    }
  }

  window.GrainChart = {draw: draw, nice: nice};
})();

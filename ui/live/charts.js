// PagedChat live view, part 2: small canvas charts for time series (no library: a chart is a few
// hundred points redrawn a few times a second, and a canvas costs the main thread a millisecond).
(function (root) {
  "use strict";

  function niceStep(max, ticks) {
    const raw = max / ticks, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }

  function fmt(v, unit) {
    if (v === 0) return "0";
    if (unit === "ms") return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(0) : v.toFixed(1);
    if (unit === "%") return Number.isInteger(v) ? String(v) : v.toFixed(1);
    if (v >= 10000) return (v / 1000).toFixed(0) + "k";
    if (v >= 1000) return (v / 1000).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // Fit a canvas to its box at the device's pixel ratio; returns a context in CSS pixels.
  function fit(canvas) {
    const dpr = root.devicePixelRatio || 1;
    const w = Math.max(1, canvas.clientWidth), h = Math.max(1, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return {ctx, w, h};
  }

  // One chart. spec: {t0, t1, series: [{label, color, points: [[t, v]...], kind: "line"|"area"|"step"|"dots",
  // dash, frac (values are shares of the full height)}], yMax (optional floor of the y range), unit, font, theme: {fg, grid, bg}}
  function drawChart(canvas, spec) {
    const {ctx, w, h} = fit(canvas);
    const font = spec.font || 12, th = spec.theme;
    ctx.font = `${font}px system-ui, sans-serif`;
    // the legend's rows first: on a narrow chart it wraps, and the plot starts below it
    const rows = [[]];
    let lx = 0;
    for (const s of spec.series) {
      if (!s.label) continue;
      const need = 24 + ctx.measureText(s.label).width;
      if (lx + need > w - font * 4 && rows[rows.length - 1].length) { rows.push([]); lx = 0; }
      rows[rows.length - 1].push(s);
      lx += need;
    }
    const lineH = font * 1.4;
    const padL = font * 3.6, padR = font * 1.6, padT = lineH * rows.length + font * 0.6, padB = font * 1.8;
    const pw = w - padL - padR, ph = h - padT - padB;
    if (pw < 20 || ph < 20) return;
    let ymax = spec.yMax || 0;
    for (const s of spec.series) if (!s.frac) for (const p of s.points) if (p[1] > ymax && isFinite(p[1])) ymax = p[1];
    if (spec.yCap && ymax > spec.yCap) ymax = spec.yCap;
    if (ymax <= 0) ymax = 1;
    const step = niceStep(ymax, Math.max(2, Math.min(5, Math.floor(ph / (font * 2.6)))));
    ymax = Math.ceil(ymax / step) * step;
    const X = (t) => padL + ((t - spec.t0) / (spec.t1 - spec.t0)) * pw;
    const Y = (v) => padT + ph - (Math.min(v, ymax) / ymax) * ph;
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1;
    ctx.strokeStyle = th.grid;
    ctx.fillStyle = th.muted;
    ctx.textAlign = "right";
    for (let v = 0; v <= ymax + 1e-9; v += step) {
      const y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(padL + pw, y); ctx.stroke();
      ctx.fillText(fmt(v, spec.unit), padL - 4, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const span = spec.t1 - spec.t0;
    // the fewest seconds between time ticks that leaves each label room
    const tickEvery = [5, 10, 15, 20, 30, 60, 120].find((t) => (pw * t) / span >= font * 3.4) || 120;
    for (let s = 0; s <= span + 1e-9; s += tickEvery) {
      const x = X(spec.t1 - s);
      ctx.fillText(s === 0 ? "now" : `-${s}s`, x, padT + ph + 4);
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(padL, padT, pw, ph); ctx.clip();
    for (const s of spec.series) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width || 2;
      ctx.setLineDash(s.dash ? [5, 4] : []);
      const pts = s.frac ? s.points.map((p) => [p[0], p[1] * ymax]) : s.points; // frac: 1 is the full height
      if (s.kind === "dots") {
        for (const p of pts) { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 2.5, 0, 6.3); ctx.fill(); }
        continue;
      }
      if (!pts.length) continue;
      ctx.beginPath();
      pts.forEach((p, i) => {
        const x = X(p[0]), y = Y(p[1]);
        if (i === 0) ctx.moveTo(x, y);
        else if (s.kind === "step") { ctx.lineTo(x, Y(pts[i - 1][1])); ctx.lineTo(x, y); }
        else ctx.lineTo(x, y);
      });
      if (s.kind === "step" && s.until !== undefined) ctx.lineTo(X(s.until), Y(pts[pts.length - 1][1]));
      if (s.kind === "area" || s.fill) {
        ctx.stroke();
        const lastX = s.kind === "step" && s.until !== undefined ? X(s.until) : X(pts[pts.length - 1][0]);
        ctx.lineTo(lastX, Y(0)); ctx.lineTo(X(pts[0][0]), Y(0)); ctx.closePath();
        ctx.globalAlpha = 0.18; ctx.fill(); ctx.globalAlpha = 1;
      } else ctx.stroke();
    }
    ctx.restore();
    ctx.setLineDash([]);
    // legend, top left, each label in its series' colour
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    rows.forEach((row, i) => {
      let x = padL;
      const y = lineH * (i + 0.5);
      for (const s of row) {
        ctx.fillStyle = s.color;
        ctx.fillRect(x, y - 2, 12, 4);
        ctx.fillStyle = th.fg;
        ctx.fillText(s.label, x + 16, y);
        x += 24 + ctx.measureText(s.label).width;
      }
    });
  }

  root.PagedChatCharts = {drawChart, fit, fmt};
})(typeof window !== "undefined" ? window : globalThis);

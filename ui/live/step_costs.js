// PagedChat live view: prefill against decode. Each step a dot: its time against the tokens it fed,
// decode-only steps blue, steps carrying prefill orange. Decode steps stay flat as the batch grows
// (memory-bound: the weights are read once a step, whatever the batch); prefill rises with its
// tokens (compute-bound). With the model's size, each step's achieved bandwidth and FLOP/s too.
(function (root) {
  "use strict";
  const C = root.PagedChatConcepts;

  function modelOf(engine) {
    if (!engine || !engine.matmul_params) return null;
    // the weights a step reads as stored (quantized or not); older recordings: parameters x dtype
    return {params: engine.matmul_params, paramBytes: engine.weight_bytes || engine.num_params * engine.dtype_bytes,
            kvBytesPerToken: engine.kv_bytes_per_token, numLayers: engine.num_layers, hidden: engine.hidden_size};
  }

  // medians of the decode-only and prefill-bearing steps' roofline figures (pure)
  function summary(columns, engine) {
    const model = modelOf(engine);
    const decode = [], prefill = [];
    for (const c of columns) {
      if (c.duration <= 0 || c.prefill + c.decode === 0) continue;
      (c.prefill > 0 ? prefill : decode).push(c);
    }
    const med = (xs) => { if (!xs.length) return NaN; const s = xs.slice().sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
    const roof = (list) => model ? list.map((c) => C.stepRoofline({duration: c.duration, prefill: c.prefill, decode: c.decode,
                                                                     context: c.context, seqs: c.running}, model)) : [];
    const rd = roof(decode), rp = roof(prefill);
    return {decode: decode.length, prefill: prefill.length,
            decodeMs: med(decode.map((c) => c.duration * 1000)), prefillMs: med(prefill.map((c) => c.duration * 1000)),
            decodeBw: med(rd.map((r) => r.bandwidth)), prefillBw: med(rp.map((r) => r.bandwidth)),
            decodeFlops: med(rd.map((r) => r.flopRate)), prefillFlops: med(rp.map((r) => r.flopRate)),
            decodeIntensity: med(rd.map((r) => r.intensity)), prefillIntensity: med(rp.map((r) => r.intensity))};
  }

  // scatter: x = tokens in the step (log scale), y = step time (ms)
  function drawSteps(canvas, columns, spec) {
    const {ctx, w, h} = root.PagedChatCharts.fit(canvas);
    const font = spec.font || 12, th = spec.theme;
    const pts = columns.filter((c) => c.duration > 0 && c.prefill + c.decode > 0);
    const padL = font * 3.6, padB = font * 2.6, padT = font * 1.8, padR = font;
    const pw = w - padL - padR, ph = h - padT - padB;
    if (pw < 40 || ph < 40) return;
    let xmax = 16, ymax = 1;
    for (const c of pts) { xmax = Math.max(xmax, c.prefill + c.decode); ymax = Math.max(ymax, c.duration * 1000); }
    const lx1 = Math.log10(Math.max(10, xmax * 1.3));
    const X = (v) => padL + (Math.log10(Math.max(1, v)) / lx1) * pw;
    const ys = root.PagedChatCharts.niceMax ? root.PagedChatCharts.niceMax(ymax * 1.1) : ymax * 1.1;
    const Y = (v) => padT + ph - (v / ys) * ph;
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.strokeStyle = th.grid;
    ctx.fillStyle = th.fg;
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let d = 0; d <= Math.floor(lx1); d++) {
      const x = X(Math.pow(10, d));
      ctx.beginPath(); ctx.moveTo(x, padT); ctx.lineTo(x, padT + ph); ctx.stroke();
      ctx.fillText(String(Math.pow(10, d)), x, padT + ph + 4);
    }
    ctx.fillText("tokens fed in the step (log scale)", padL + pw / 2, padT + ph + font * 1.3);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = (ys * k) / 4, y = Y(v);
      ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(padL + pw, y); ctx.stroke();
      ctx.fillText(v >= 10 ? v.toFixed(0) : v.toFixed(1), padL - 4, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("step time (ms)", 0, 0);
    const r = Math.max(2.5, font / 4);
    for (const c of pts) {
      ctx.fillStyle = c.prefill > 0 ? "#f97316" : "#2563eb";
      ctx.globalAlpha = 0.75;
      ctx.beginPath();
      ctx.arc(X(c.prefill + c.decode), Y(c.duration * 1000), r, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    // legend
    ctx.textBaseline = "middle";
    let lx = padL + pw * 0.3;
    for (const [label, color] of [["decode-only steps", "#2563eb"], ["steps with prefill", "#f97316"]]) {
      ctx.fillStyle = color;
      ctx.beginPath(); ctx.arc(lx, font * 0.7, r + 1, 0, 2 * Math.PI); ctx.fill();
      ctx.fillStyle = th.fg;
      ctx.fillText(label, lx + r + 6, font * 0.7);
      lx += ctx.measureText(label).width + font * 2.5;
    }
  }

  // A live roofline: each step's arithmetic intensity (FLOP per byte moved: weights + KV read and
  // written) against the FLOP/s it achieved, log-log; with the device's measured peaks, the roof:
  // min(peak FLOP/s, intensity x peak bandwidth). Decode steps sit low on the sloped (memory) part,
  // prefill steps climb toward the flat (compute) part.
  function drawRoofline(canvas, columns, engine, spec) {
    const {ctx, w, h} = root.PagedChatCharts.fit(canvas);
    const model = modelOf(engine);
    const font = spec.font || 12, th = spec.theme;
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.fillStyle = th.fg;
    if (!model) { ctx.fillText("the model's size is not in this feed", 4, font); return; }
    const pts = [];
    for (const c of columns) {
      if (c.duration <= 0 || c.prefill + c.decode === 0) continue;
      const r = C.stepRoofline({duration: c.duration, prefill: c.prefill, decode: c.decode, context: c.context, seqs: c.running}, model);
      if (r.intensity > 0 && r.flopRate > 0) pts.push([r.intensity, r.flopRate, c.prefill > 0]);
    }
    const peakF = engine.peak_flops || 0, peakB = engine.peak_bandwidth || 0;
    let xmin = 0.5, xmax = 2000, ymin = Infinity, ymax = 0;
    for (const [x, y] of pts) { xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); ymin = Math.min(ymin, y); ymax = Math.max(ymax, y); }
    if (peakF) ymax = Math.max(ymax, peakF);
    if (!isFinite(ymin)) { ymin = 1e9; ymax = Math.max(ymax, 1e12); }
    const lx0 = Math.floor(Math.log10(xmin)), lx1 = Math.ceil(Math.log10(xmax));
    const ly0 = Math.floor(Math.log10(ymin)), ly1 = Math.ceil(Math.log10(ymax * 1.5));
    const padL = font * 4.2, padB = font * 2.6, padT = font * 1.8, padR = font;
    const pw = w - padL - padR, ph = h - padT - padB;
    if (pw < 40 || ph < 40) return;
    const X = (v) => padL + ((Math.log10(v) - lx0) / (lx1 - lx0)) * pw;
    const Y = (v) => padT + ph - ((Math.log10(v) - ly0) / Math.max(1, ly1 - ly0)) * ph;
    ctx.strokeStyle = th.grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let d = lx0; d <= lx1; d++) {
      const x = X(Math.pow(10, d));
      ctx.beginPath(); ctx.moveTo(x, padT); ctx.lineTo(x, padT + ph); ctx.stroke();
      ctx.fillText(d >= 0 ? String(Math.pow(10, d)) : Math.pow(10, d).toFixed(-d), x, padT + ph + 4);
    }
    ctx.fillText("FLOP per byte moved (log)", padL + pw / 2, padT + ph + font * 1.3);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const unit = (v) => (v >= 1e12 ? `${v / 1e12}T` : v >= 1e9 ? `${v / 1e9}G` : `${v / 1e6}M`);
    for (let d = ly0; d <= ly1; d++) {
      const y = Y(Math.pow(10, d));
      ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(padL + pw, y); ctx.stroke();
      ctx.fillText(unit(Math.pow(10, d)), padL - 4, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("FLOP/s achieved (log)", 0, 0);
    if (peakF && peakB) { // the roof
      ctx.strokeStyle = "#dc2626";
      ctx.lineWidth = 2;
      ctx.beginPath();
      const knee = peakF / peakB;
      const xa = Math.pow(10, lx0);
      ctx.moveTo(X(xa), Y(Math.max(Math.pow(10, ly0), xa * peakB)));
      ctx.lineTo(X(knee), Y(peakF));
      ctx.lineTo(X(Math.pow(10, lx1)), Y(peakF));
      ctx.stroke();
      ctx.fillStyle = "#dc2626";
      ctx.textAlign = "right";
      ctx.textBaseline = "bottom";
      ctx.fillText(`roof: measured ${(peakB / 1e9).toFixed(0)} GB/s, ${(peakF / 1e12).toFixed(0)} TFLOP/s`, padL + pw - 4, Y(peakF) - 3);
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
    } else {
      ctx.fillStyle = th.fg;
      ctx.fillText("no measured peaks on this device (a GPU measures them at start)", padL + 6, padT + 4);
    }
    const r = Math.max(2.5, font / 4);
    for (const [x, y, pre] of pts) {
      ctx.fillStyle = pre ? "#f97316" : "#2563eb";
      ctx.globalAlpha = 0.75;
      ctx.beginPath(); ctx.arc(X(x), Y(y), r, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
  }

  root.PagedChatSteps = {summary, drawSteps, drawRoofline, modelOf};
})(typeof window !== "undefined" ? window : globalThis);

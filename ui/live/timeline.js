// PagedChat live view: the step timeline. Each engine step a column, each request a row, coloured
// by what the request did in that step; beside it, the same finished requests under static batching
// (ui/live/concepts.js computes it from their real lengths and the measured step times).
(function (root) {
  "use strict";
  const C = root.PagedChatConcepts;

  // what a request did in one step, most telling first when its samples differ
  const CODES = {p: "prefill chunk", d: "decode", x: "preempted", f: "finished", w: "waiting", s: "running, not scheduled"};
  const RANK = {p: 6, d: 5, x: 4, f: 3, w: 2, s: 1};
  const COLORS = {p: "#f97316", d: "#2563eb", x: "#dc2626", f: "#111827", w: "#cbd5e1", s: "#94a3b8"};
  const RUNNING = new Set(["prefill", "decode", "forked"]);

  // A FeedState observer: the last `max` steps as columns, and the requests that finished (for the
  // static-batching counterfactual).
  class StepLog {
    constructor(max) {
      this.max = max || 160;
      this.reset();
    }
    reset() {
      this.columns = []; // [{step, t, duration, prefill, decode, output, batching, running, cells: Map(req -> code)}]
      // the requests that arrived while watched, the newest `keep`: {req, arrival, prompt, output, finish}
      // (finish NaN while live): the static-batching counterfactual replays them all, finished or not
      this.arrivals = new Map();
      this.firstSeen = new Map(); // req -> order of first appearance, for the rows
      this.order = 0;
      this.peakRunning = 0;
    }
    step(r, end, st) {
      if (r.duration <= 0 && !r.requests.length) return;
      const cells = new Map();
      const mark = (req, code) => {
        const had = cells.get(req);
        if (!had || RANK[code] > RANK[had]) cells.set(req, code);
        if (!this.firstSeen.has(req)) this.firstSeen.set(req, this.order++);
      };
      const touched = new Set();
      for (const e of r.requests) {
        touched.add(e.seq_id);
        const code = {prefill: "p", decode: "d", forked: "d", preempted: "x", finished: "f", waiting: "w"}[e.phase];
        if (code) mark(e.request_id, code);
      }
      let running = 0;
      for (const q of st.seqs.values()) {
        const on = RUNNING.has(q.phase);
        if (on) running++;
        if (!touched.has(q.seq)) mark(q.req, on ? "s" : "w");
      }
      if (r.duration > 0) this.peakRunning = Math.max(this.peakRunning, running);
      this.columns.push({step: r.step, t: end, duration: r.duration, prefill: r.num_prefill_tokens,
                         decode: r.num_decode_tokens, output: r.num_output_tokens, batching: r.batching || "continuous",
                         context: r.num_context_tokens || 0, running, cells});
      if (this.columns.length > this.max) this.columns.shift();
      if (this.firstSeen.size > 4 * this.max) this._forget();
    }
    _forget() { // rows no column shows any more
      const shown = new Set();
      for (const c of this.columns) for (const req of c.cells.keys()) shown.add(req);
      for (const req of [...this.firstSeen.keys()]) if (!shown.has(req)) this.firstSeen.delete(req);
    }
    arrive(q) {
      if (q.sample > 0 || isNaN(q.arrival)) return; // one entry a request: its first sample stands for it
      this.arrivals.set(q.req, {req: q.req, arrival: q.arrival, prompt: q.prompt, output: 0, finish: NaN, q});
      if (this.arrivals.size > 240) this.arrivals.delete(this.arrivals.keys().next().value);
    }
    leave(q) {
      const a = this.arrivals.get(q.req);
      if (!a || q.sample > 0) return;
      a.output = q.outputs;
      a.finish = isNaN(q.finish) ? a.arrival : q.finish;
      a.q = null;
    }
    rows() { // requests of the shown columns, in order of first appearance
      const seen = new Set();
      for (const c of this.columns) for (const req of c.cells.keys()) seen.add(req);
      return [...seen].sort((a, b) => (this.firstSeen.get(a) ?? 0) - (this.firstSeen.get(b) ?? 0));
    }
  }

  // The static-batching counterfactual of every request that arrived while watched (the newest 240):
  // finished ones with their real lengths, live ones with the tokens they have so far (and `now` as
  // their end), so that the measured side holds all the work the engine did for them and no other.
  function counterfactual(log, steps, now) {
    const reqs = [];
    let done = 0;
    for (const a of log.arrivals.values()) {
      const live = a.q !== null;
      const output = live ? a.q.outputs : a.output;
      if (output < 1) continue; // not served yet: in neither count
      reqs.push({id: a.req, arrival: a.arrival, prompt: a.prompt, output, finish: live ? now : a.finish, live});
      if (!live) done++;
    }
    if (done < 2 || reqs.length < 4) return null;
    reqs.sort((a, b) => a.arrival - b.arrival);
    const cost = C.fitStepCost(steps);
    const size = Math.max(1, log.peakRunning);
    const sim = C.staticBatching(reqs, size, cost);
    const actual = C.continuousThroughput(reqs);
    return {reqs, sim, size, actual, static: sim.throughput, ratio: C.throughputRatio(actual, sim.throughput), cost,
            live: reqs.length - done};
  }

  // Draw the timeline: columns are steps (newest right), rows requests. Returns the layout for hovers.
  function drawTimeline(canvas, log, spec) {
    const rows = log.rows(), cols = log.columns;
    const font = spec.font || 12, th = spec.theme;
    const maxH = spec.maxHeight || 260;
    const head = font * 1.6, gutter = 10;
    let rowH = Math.max(2, Math.min(16, Math.floor((maxH - head) / Math.max(1, rows.length))));
    const fitRows = Math.floor((maxH - head) / rowH);
    const shown = rows.length > fitRows ? rows.slice(rows.length - fitRows) : rows;
    const height = `${Math.ceil(head + shown.length * rowH + 2)}px`;
    if (canvas.style.height !== height) canvas.style.height = height; // a change of height costs a layout
    const {ctx, w} = root.PagedChatCharts.fit(canvas);
    const colW = (w - gutter) / Math.max(1, log.max);
    const x0 = w - cols.length * colW; // newest column at the right edge
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    // the top band: the scheduler's mode, and the step numbers
    for (let i = 0; i < cols.length; i++) {
      const c = cols[i];
      if (c.batching === "static") {
        ctx.fillStyle = "#a855f7";
        ctx.fillRect(x0 + i * colW, head - 5, Math.ceil(colW), 4);
      }
    }
    ctx.fillStyle = th.fg;
    if (cols.length) {
      ctx.textAlign = "right";
      ctx.fillText(`step ${cols[cols.length - 1].step}`, w, font * 0.6);
      ctx.textAlign = "left";
      const right = w - ctx.measureText(`step ${cols[cols.length - 1].step}`).width - font;
      const left = Math.max(gutter, x0);
      if (left + ctx.measureText(`step ${cols[0].step}`).width < right) ctx.fillText(`step ${cols[0].step}`, left, font * 0.6);
    }
    const index = new Map(shown.map((req, k) => [req, k]));
    for (const req of shown) { // each row's request colour in the gutter
      ctx.fillStyle = spec.colorOf(req);
      ctx.fillRect(0, head + index.get(req) * rowH, gutter - 3, Math.max(1, rowH - 1));
    }
    const gap = rowH >= 6 ? 1 : 0, cw = Math.max(1, colW - (colW >= 4 ? 1 : 0));
    for (let i = 0; i < cols.length; i++) {
      const x = x0 + i * colW;
      for (const [req, code] of cols[i].cells) {
        const k = index.get(req);
        if (k === undefined) continue;
        ctx.fillStyle = COLORS[code];
        const y = head + k * rowH;
        if (code === "f") ctx.fillRect(x, y, Math.max(2, cw / 2), rowH - gap);
        else ctx.fillRect(x, y, cw, rowH - gap);
      }
    }
    if (spec.hoverCol !== undefined && spec.hoverCol !== null && cols[spec.hoverCol]) {
      ctx.strokeStyle = th.fg;
      ctx.lineWidth = 1;
      ctx.strokeRect(x0 + spec.hoverCol * colW + 0.5, head, Math.max(1, colW - 1), shown.length * rowH);
    }
    return {x0, colW, head, rowH, rows: shown, hidden: rows.length - shown.length};
  }

  // Which column a point (canvas coordinates) falls in, or -1.
  function columnAt(layout, log, x) {
    if (!layout) return -1;
    const i = Math.floor((x - layout.x0) / layout.colW);
    return i >= 0 && i < log.columns.length ? i : -1;
  }

  function describeColumn(c) {
    const ms = (c.duration * 1000).toFixed(c.duration < 0.01 ? 1 : 0);
    const kinds = {};
    for (const code of c.cells.values()) kinds[code] = (kinds[code] || 0) + 1;
    const parts = Object.keys(CODES).filter((k) => kinds[k]).map((k) => `${kinds[k]} ${CODES[k]}`);
    return [`step ${c.step}: ${ms} ms (${c.batching} batching)`,
            `${c.prefill} prefill + ${c.decode} decode tokens, ${c.running} running`,
            parts.join(" · ")].join("\n");
  }

  // The static-batching lanes: each finished request a thin bar from arrival to its last token,
  // measured (continuous) above, computed (static) below, on one time axis.
  function drawCounterfactual(canvas, cf, spec) {
    const {ctx, w, h} = root.PagedChatCharts.fit(canvas);
    if (!cf) return;
    const font = spec.font || 12, th = spec.theme;
    const t0 = cf.reqs[0].arrival;
    const ends = cf.sim.requests.map((r) => r.finish).concat(cf.reqs.map((r) => r.finish));
    const t1 = Math.max(...ends);
    const padL = font * 7, lane = (h - font * 1.8) / 2;
    const X = (t) => padL + ((t - t0) / Math.max(1e-9, t1 - t0)) * (w - padL - 8);
    ctx.font = `${font}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    ctx.fillStyle = th.fg;
    ctx.fillText("continuous", 0, lane / 2);
    ctx.fillText("(measured)", 0, lane / 2 + font * 1.1);
    ctx.fillText("static", 0, lane * 1.5 + font * 0.2);
    ctx.fillText("(computed)", 0, lane * 1.5 + font * 1.3);
    const n = cf.reqs.length, bh = Math.max(1, (lane - 6) / n);
    const simById = new Map(cf.sim.requests.map((r) => [r.id, r]));
    cf.reqs.forEach((r, k) => {
      ctx.fillStyle = spec.colorOf(r.id);
      const y = 2 + k * bh;
      ctx.fillRect(X(r.arrival), y, Math.max(1, X(r.finish) - X(r.arrival)), Math.max(1, bh - (bh > 3 ? 1 : 0)));
      const s = simById.get(r.id);
      if (s) {
        ctx.globalAlpha = 0.35; // waiting for its batch
        ctx.fillRect(X(r.arrival), lane + y, Math.max(1, X(s.start) - X(r.arrival)), Math.max(1, bh - (bh > 3 ? 1 : 0)));
        ctx.globalAlpha = 1;
        ctx.fillRect(X(s.start), lane + y, Math.max(1, X(s.finish) - X(s.start)), Math.max(1, bh - (bh > 3 ? 1 : 0)));
      }
    });
    ctx.strokeStyle = th.grid;
    ctx.beginPath();
    ctx.moveTo(padL, lane);
    ctx.lineTo(w, lane);
    ctx.stroke();
    ctx.fillStyle = th.fg;
    ctx.textAlign = "left";
    ctx.fillText("0 s", padL, h - font * 0.7);
    ctx.textAlign = "right";
    ctx.fillText(`${(t1 - t0).toFixed(1)} s`, w - 4, h - font * 0.7);
    ctx.textAlign = "left";
  }

  root.PagedChatTimeline = {StepLog, counterfactual, drawTimeline, columnAt, describeColumn, drawCounterfactual,
                            COLORS, CODES};
})(typeof window !== "undefined" ? window : globalThis);

// PagedChat live view: the concept panels under the block map, one idea each, chosen by tabs:
// the block table of the pinned request, the step timeline with its static-batching counterfactual,
// the three wastes, the KV formula live, prefill against decode. Each reads the view's FeedState
// (ui/live/feed_state.js); the block table also asks the server for the request's tokens.
(function (root) {
  "use strict";
  const {el, setText, button} = root.PagedChatDom;
  const T = root.PagedChatTimeline, W = root.PagedChatWastes, BT = root.PagedChatBlockTable;
  const KV = root.PagedChatKv, S = root.PagedChatSteps;

  const PANELS = [
    ["timeline", "Step timeline"],
    ["table", "Block table"],
    ["wastes", "Three wastes"],
    ["kv", "KV memory"],
    ["steps", "Prefill vs decode"],
  ];
  const CAPTIONS = {
    timeline: "Each column is one engine step, each row one request. Requests join and leave the running batch at " +
      "every step (continuous batching); below, the same finished requests under static batching.",
    table: "A request's KV cache is a list of fixed-size blocks anywhere in the pool: logical block i maps to a " +
      "physical block. Samples of one prompt share its blocks (ref count) until they diverge (copy-on-write).",
    wastes: "A contiguous cache reserves each request's maximum length up front in one piece: slots reserved for tokens " +
      "not generated yet, slots never used, and holes too small to use. The paged cache wastes only the empty slots of " +
      "each request's last block.",
    kv: "Every token keeps a key and a value vector in every layer and KV head: that is the memory a token costs.",
    steps: "Decode steps read all the weights to make one token per sequence: their time hardly grows with the batch " +
      "(memory-bound). Prefill feeds many tokens through the same weights: its time grows with the tokens (compute-bound).",
  };

  function fmtRate(x) {
    return !isFinite(x) ? "–" : x >= 100 ? Math.round(x).toLocaleString() : x.toFixed(1);
  }

  class ConceptPanels {
    constructor(view) {
      this.view = view;
      const st = view.state;
      this.log = st.observe(new T.StepLog(160));
      this.waste = st.observe(new W.WasteModel());
      this.current = view.config.panel || "timeline";
      this.fetched = null; // the engine's answer for the pinned request
      this._build();
    }

    _build() {
      const box = el("div", "pc-panels");
      const tabs = el("div", "pc-tabs");
      tabs.setAttribute("role", "tablist");
      this.tabs = {};
      this.boxes = {};
      for (const [key, label] of PANELS) {
        const b = button("pc-tab", label, () => this.show(key));
        b.dataset.panel = key;
        b.setAttribute("role", "tab");
        tabs.appendChild(b);
        this.tabs[key] = b;
      }
      box.appendChild(tabs);
      this.caption = el("div", "pc-caption");
      box.appendChild(this.caption);
      const body = el("div", "pc-panel-body");
      // the timeline: a canvas, a hover tip, the counterfactual's line and lanes
      const tl = el("div", "pc-panel");
      this.tlCanvas = el("canvas", "pc-timeline");
      this.tlTip = el("div", "pc-tip");
      this.tlTip.hidden = true;
      const tlWrap = el("div", "pc-map-wrap");
      tlWrap.append(this.tlCanvas, this.tlTip);
      const key = el("div", "pc-key");
      for (const code of ["w", "p", "d", "x", "f", "s"]) {
        const i = el("i");
        i.style.background = T.COLORS[code];
        key.append(i, document.createTextNode(T.CODES[code] + " "));
      }
      const st = el("i");
      st.style.background = "#a855f7";
      key.append(st, document.createTextNode("static batching (top band)"));
      this.tlNote = el("div", "pc-note");
      this.cfLine = el("div", "pc-cf");
      this.cfCanvas = el("canvas", "pc-cf-lanes");
      tl.append(key, tlWrap, this.tlNote, this.cfLine, this.cfCanvas);
      this.tlCanvas.addEventListener("mousemove", (ev) => this._timelineHover(ev));
      this.tlCanvas.addEventListener("mouseleave", () => { this.tlHover = null; this.tlTip.hidden = true; this.stale = true; });
      this.boxes.timeline = tl;
      // the block table
      const tb = el("div", "pc-panel");
      this.tableBox = el("div", "pc-bt");
      tb.appendChild(this.tableBox);
      this.boxes.table = tb;
      // the three wastes
      const wb = el("div", "pc-panel");
      const modes = el("div", "pc-modes");
      this.modeButtons = {};
      for (const [mode, label] of [["context", "reserve the model's context"], ["limit", "reserve prompt + max_tokens"]]) {
        const b = button("pc-btn", label, () => { this.waste.setMode(mode, this.view.state); this.stale = true; this.draw(); });
        modes.appendChild(b);
        this.modeButtons[mode] = b;
      }
      this.fitLine = el("div", "pc-fit");
      this.wCanvas = el("canvas", "pc-wastes");
      this.wTable = el("div", "pc-wtable");
      const wkey = el("div", "pc-key");
      wkey.innerHTML = '<i style="background:#2563eb"></i>tokens <i style="background:#2563eb;opacity:.35"></i>reserved for tokens to come ' +
        '<i style="background:repeating-linear-gradient(135deg,#e5e7eb 0 3px,#9ca3af 3px 5px)"></i>internal fragmentation: beyond the request\'s limit, never used ' +
        '<i style="background:repeating-linear-gradient(135deg,#fff 0 3px,#dc2626 3px 5px)"></i>free, but a hole too small (external fragmentation)';
      wb.append(modes, this.fitLine, wkey, this.wCanvas, this.wTable);
      this.boxes.wastes = wb;
      // the KV formula
      const kb = el("div", "pc-panel");
      this.kvBox = el("div", "pc-kv");
      kb.appendChild(this.kvBox);
      this.boxes.kv = kb;
      // prefill vs decode
      const sb = el("div", "pc-panel");
      this.sCanvas = el("canvas", "pc-steps");
      this.rCanvas = el("canvas", "pc-steps");
      this.sLine = el("div", "pc-fit");
      const pair = el("div", "pc-charts");
      pair.append(this.sCanvas, this.rCanvas);
      sb.append(this.sLine, pair);
      this.boxes.steps = sb;
      for (const [k] of PANELS) body.appendChild(this.boxes[k]);
      box.appendChild(body);
      this.root = box;
      this.show(this.current);
    }

    show(key) {
      if (!this.boxes[key]) return;
      this.current = key;
      for (const [k] of PANELS) {
        this.boxes[k].hidden = k !== key;
        this.tabs[k].classList.toggle("pc-tab-on", k === key);
        this.tabs[k].setAttribute("aria-selected", String(k === key));
      }
      setText(this.caption, CAPTIONS[key]);
      this.stale = this._cfStale = true;
      this._tableKey = null;
      if (key === "table") this._fetch();
      if (this.view.state.owners) this.draw();
    }

    onPin() {
      this.fetched = null;
      this._tableKey = null;
      this.stale = true;
      if (this.view.pinned && this.current === "table") this._fetch();
    }

    // the engine's block table and tokens of the pinned request (not in a replay: no engine)
    _fetch() {
      const req = this.view.pinned;
      if (!req || this.view.config.replay || this._fetching) return;
      this._fetching = true;
      const url = `${this.view.config.requestUrl || "api/request"}/${encodeURIComponent(req)}`;
      fetch(url).then((r) => (r.ok ? r.json() : null)).then((data) => {
        if (this.view.pinned === req) { this.fetched = data && data.request_id === req ? data : null; this.stale = true; }
      }).catch(() => {}).finally(() => { this._fetching = false; this._fetchedAt = performance.now(); });
    }

    draw() {
      const v = this.view, st = v.state;
      if (!st.owners || !v.visible()) return;
      const now = performance.now();
      const every = this.current === "table" ? 250 : 1000;
      if (!this.stale && this._drawnAt && now - this._drawnAt < every) return;
      this._drawnAt = now;
      this.stale = false;
      const th = v._theme, big = v.root.classList.contains("pc-presenter") || window.innerWidth >= 1800;
      const font = big ? 18 : 12;
      const colorOf = (req) => st.colors.colorOf(req);
      if (this.current === "timeline") {
        const hoverCol = this.tlHover === null || this.tlHover === undefined ? null
          : this.log.columns.findIndex((c) => c.step === this.tlHover);
        this.tlLayout = T.drawTimeline(this.tlCanvas, this.log, {theme: th, font, colorOf, hoverCol,
                                                                 maxHeight: big ? 320 : 240});
        const hidden = this.tlLayout.hidden ? ` · ${this.tlLayout.hidden} earlier requests above the top` : "";
        setText(this.tlNote, `the last ${this.log.columns.length} steps · ${this.tlLayout.rows.length} requests in them${hidden}` +
                ` · hover a column for the step`);
        // the counterfactual moves slowly (requests take seconds): every 2 s is enough
        if (this._cfAt && now - this._cfAt < 2000 && !this._cfStale) return;
        this._cfAt = now;
        this._cfStale = false;
        const last = this.log.columns[this.log.columns.length - 1];
        const cf = T.counterfactual(this.log, this.log.columns, last ? last.t : 0);
        this.cf = cf;
        if (cf) {
          const ratio = isFinite(cf.ratio) ? `${cf.ratio.toFixed(2)}×` : "–";
          const cols = this.log.columns.filter((c) => c.duration > 0);
          const staticSteps = cols.filter((c) => c.batching === "static").length;
          const what = `the same ${cf.reqs.length} requests (${cf.live} still running) in batches of ${cf.size} (the peak ` +
            `running batch) in arrival order, each batch running until its longest member ends, at the measured step times`;
          setText(this.cfLine, staticSteps
            ? `The engine batched statically for ${staticSteps} of the last ${cols.length} steps: it made ` +
              `${fmtRate(cf.actual)} tok/s, and the model of static batching (${what}) gives ${fmtRate(cf.static)} tok/s. ` +
              `Switch back to continuous to compare the two.`
            : `Static batching, computed: ${what}: ${fmtRate(cf.static)} tok/s against ${fmtRate(cf.actual)} tok/s ` +
              `measured. Continuous batching: ${ratio} the throughput.`);
          this.cfCanvas.hidden = false;
          T.drawCounterfactual(this.cfCanvas, cf, {theme: th, font, colorOf});
        } else {
          setText(this.cfLine, "Static batching's counterfactual appears once a few requests have finished while the view watched.");
          this.cfCanvas.hidden = true;
        }
      } else if (this.current === "table") {
        this._drawTable(colorOf);
      } else if (this.current === "wastes") {
        const f = this.waste.figures(st);
        this.wasteFigures = f;
        for (const [m, b] of Object.entries(this.modeButtons)) b.classList.toggle("pc-btn-on", m === this.waste.mode);
        if (f) {
          setText(this.fitLine, `Users that fit now: contiguous ${f.cont.held}, paged ${f.pagedHeld}` +
                  (f.cont.refused ? ` (${f.cont.refused} of the ${f.live} live sequences have no room in the contiguous cache)` : ""));
          W.drawWastes(this.wCanvas, f, {theme: th, font, colorOf, seqs: st.seqs});
          this._wasteTable(f);
        }
      } else if (this.current === "kv") {
        const f = KV.kvFigures(st);
        const key = f ? `${f.stored}|${f.usedBlocks}|${f.live}|${f.capBlocks}` : "none";
        if (key !== this._kvKey) { this._kvKey = key; KV.render(this.kvBox, f, font); }
      } else if (this.current === "steps") {
        const s = S.summary(this.log.columns, st.engine);
        const ms = (x) => (isFinite(x) ? `${x.toFixed(x < 10 ? 1 : 0)} ms` : "–");
        const gbs = (x) => (isFinite(x) ? `${(x / 1e9).toFixed(1)} GB/s` : "–");
        const tf = (x) => (isFinite(x) ? `${(x / 1e12).toFixed(x < 1e12 ? 2 : 1)} TFLOP/s` : "–");
        setText(this.sLine, `median decode-only step ${ms(s.decodeMs)} (${s.decode} steps): moves ${gbs(s.decodeBw)}, ` +
                `computes ${tf(s.decodeFlops)} · median step with prefill ${ms(s.prefillMs)} (${s.prefill} steps): ` +
                `moves ${gbs(s.prefillBw)}, computes ${tf(s.prefillFlops)}`);
        S.drawSteps(this.sCanvas, this.log.columns, {theme: th, font});
        S.drawRoofline(this.rCanvas, this.log.columns, st.engine, {theme: th, font});
      }
    }

    _drawTable(colorOf) {
      const v = this.view, st = v.state;
      if (!v.pinned) {
        setText(this.tableBox, "Click a block on the map, or a request's chip, to pin a request: its block table shows here.");
        this._tableKey = null;
        return;
      }
      // ask the engine again when the feed says the request moved on (a new token, a block), or
      // every 0.7 s anyway
      const moved = this.fetched && this.fetched.samples.some((s) => {
        const q = st.seqs.get(s.seq_id);
        return q && q.tokens !== s.num_tokens;
      });
      if (!this.view.config.replay && (moved || !this._fetchedAt || performance.now() - this._fetchedAt > 700)) this._fetch();
      const d = BT.tableData(st, v.pinned, this.fetched);
      if (!d.samples.length) { setText(this.tableBox, `${v.pinned} has ended.`); return; }
      const key = BT.tableKey(d);
      if (key === this._tableKey) return;
      this._tableKey = key;
      this.tableData = d;
      BT.renderBlockTable(this.tableBox, d, colorOf);
    }

    _wasteTable(f) {
      const c = f.cont, p = f.paged, pct = (x, of) => (of ? `${((100 * x) / of).toFixed(1)}%` : "–");
      const n = (x) => x.toLocaleString();
      const rows = [
        ["", "contiguous", "paged"],
        ["sequences held", `${c.held} of ${f.live}`, `${f.pagedHeld} running`],
        ["slots reserved", n(c.reserved), n(p.reserved)],
        ["holding a token", n(c.stored), n(p.stored)],
        ["reserved for tokens to come", `${n(c.reservedUnused)} (${pct(c.reservedUnused, c.reserved)})`, "0: a block is taken when needed"],
        ["internal fragmentation", `${n(c.internal)} (${pct(c.internal, c.reserved)})`, `${n(p.lastBlockEmpty)} (${pct(p.lastBlockEmpty, p.reserved)}): last blocks' empty slots`],
        ["external fragmentation", `${n(c.external)} free slots in holes too small`, "0: any free block fits"],
      ];
      const key = JSON.stringify(rows);
      if (key === this._wKey) return;
      this._wKey = key;
      const table = el("table", "pc-wt");
      for (const [i, r] of rows.entries()) {
        const tr = el("tr");
        for (const cell of r) tr.appendChild(el(i === 0 ? "th" : "td", "", cell));
        table.appendChild(tr);
      }
      this.wTable.replaceChildren(table);
    }

    _timelineHover(ev) {
      const r = this.tlCanvas.getBoundingClientRect();
      const i = T.columnAt(this.tlLayout, this.log, ev.clientX - r.left);
      this.tlHover = i >= 0 ? this.log.columns[i].step : null; // the step stays hovered as columns scroll
      if (i < 0) { this.tlTip.hidden = true; return; }
      this.tlTip.textContent = T.describeColumn(this.log.columns[i]);
      this.tlTip.hidden = false;
      const w = this.tlCanvas.clientWidth;
      this.tlTip.style.left = `${Math.min(ev.clientX - r.left + 14, Math.max(0, w - 320))}px`;
      this.tlTip.style.top = `${ev.clientY - r.top + 14}px`;
      this.stale = true;
      this.draw();
    }
  }

  root.PagedChatPanels = {ConceptPanels, PANELS};
})(typeof window !== "undefined" ? window : globalThis);

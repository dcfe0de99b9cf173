// PagedChat live view, part 3: the dashboard drawn in the browser from GET /api/feed.
//
// PagedChatLive.mount(element, config) builds the view inside `element` (a gr.HTML), opens the
// feed while the view is on screen and closes it when hidden, applies each step record to a
// FeedState as it arrives, and redraws at most `fps` times a second, only what changed.
// config: {feedUrl, palette, presenter, replay (a label, or null), traceUrl}
(function (root) {
  "use strict";
  const {el, setText, button, chartGrid} = root.PagedChatDom;
  const {FeedState} = root.PagedChatFeed;
  const {drawChart, fit, fmt} = root.PagedChatCharts;

  const TILES = [
    ["users", "Requests", "running · waiting"],
    ["kv", "KV in use", "blocks"],
    ["tps", "Output tok/s (5 s)", "last 5 s"],
    ["ttft", "TTFT p50", "time to first token"],
    ["tpot", "TPOT p50", "time per output token"],
    ["preempt", "Preemptions", "last 60 s"],
  ];
  const MIN_CELL = 5; // px: below this, a cell stands for several blocks
  const MIN_READABLE = 12; // px: below this, the map shows the blocks in use unless asked for the whole pool

  function ms(seconds) {
    if (!isFinite(seconds)) return "–";
    const v = seconds * 1000;
    return v >= 10 ? `${v.toFixed(0)} ms` : `${v.toFixed(1)} ms`;
  }

  function theme(node) {
    const cs = getComputedStyle(node);
    const v = (name, fallback) => cs.getPropertyValue(name).trim() || fallback;
    return {fg: v("--body-text-color", "#1f2937"), muted: v("--body-text-color", "#374151"),
            grid: v("--border-color-primary", "#e5e7eb"), bg: v("--background-fill-primary", "#ffffff"),
            free: v("--pc-free", "#eceff3"), cachedFree: v("--pc-cached-free", "#b9c7d8")};
  }

  class LiveView {
    constructor(element, config) {
      this.element = element;
      this.config = config;
      this.state = new FeedState(config.palette);
      this.pinned = null; // a request id whose blocks stay highlighted until unpinned
      this.hover = null; // {x, y, cell}
      this.dirty = true;
      this.updates = 0; // redraws with new data, for the browser benchmark
      this.firstDrawAt = null;
      this.connected = false;
      this.ended = false;
      this.offset = null; // server wall clock minus ours, seconds
      this.lastHighlighted = new Set();
      this._build();
      this._timer = setInterval(() => this._tick(), Math.round(1000 / (config.fps || 5)));
      this._tick();
    }

    // ---- DOM -----------------------------------------------------------------------------------
    _build() {
      const root_ = el("div", "pc-live" + (this.config.presenter ? " pc-presenter" : "") + (this.config.replay ? " pc-replay" : ""));
      this.root = root_;
      if (this.config.replay) {
        const banner = el("div", "pc-banner", `Recording: ${this.config.replay}. The chat is off; the dashboard replays a recorded run.`);
        root_.appendChild(banner);
      }
      const bar = el("div", "pc-bar");
      this.status = el("span", "pc-status", "connecting…");
      const reset = button("pc-btn", "Reset view", () => this.reset());
      const trace = el("a", "pc-link", "Perfetto trace");
      trace.href = this.config.traceUrl || "api/feed/trace";
      trace.title = "the recent window as trace-event JSON: open it in ui.perfetto.dev";
      bar.append(this.status, reset, trace);
      root_.appendChild(bar);

      const tiles = el("div", "pc-tiles");
      this.tiles = {};
      for (const [key, label, sub] of TILES) {
        const t = el("div", "pc-tile");
        const v = el("div", "pc-v", "–"), l = el("div", "pc-l", label), s = el("div", "pc-s", sub);
        t.dataset.tile = key;
        t.append(l, v, s);
        tiles.appendChild(t);
        this.tiles[key] = {v, s};
      }
      root_.appendChild(tiles);

      const map = el("div", "pc-map-box");
      const head = el("div", "pc-map-head");
      this.mapTitle = el("span", "pc-title", "Block map");
      this.mapNote = el("span", "pc-note", "");
      const key = el("span", "pc-key");
      key.innerHTML = '<i class="pc-k-free"></i>free <i class="pc-k-cached"></i>free, cached prefix ' +
        '<i class="pc-k-shared">2</i>shared (ref count) <i class="pc-k-flash"></i>copy-on-write ' +
        '<i class="pc-k-flash pc-k-pre"></i>freed by a preemption <i class="pc-k-flash pc-k-ev"></i>cached prefix evicted';
      this.poolToggle = button("pc-btn", "Show the whole pool", () => { this.wholePool = !this.wholePool; this.dirty = true; this._tick(); });
      this.poolToggle.hidden = true;
      head.append(this.mapTitle, this.poolToggle, this.mapNote, key);
      this.canvas = el("canvas", "pc-map");
      this.tip = el("div", "pc-tip");
      this.tip.hidden = true;
      const wrap = el("div", "pc-map-wrap");
      wrap.append(this.canvas, this.tip);
      this.chips = el("div", "pc-chips");
      map.append(head, wrap, this.chips);
      root_.appendChild(map);
      this.panels = new root.PagedChatPanels.ConceptPanels(this);
      root_.appendChild(this.panels.root);

      const charts = chartGrid([["tput", "Throughput (tok/s)"], ["lat", "Latency (ms)"],
                                ["kv", "KV blocks"], ["batch", "Batch and engine busy"]]);
      this.charts = charts.canvases;
      root_.appendChild(charts.element);
      this.element.appendChild(root_);

      this.canvas.addEventListener("mousemove", (ev) => this._hover(ev));
      this.canvas.addEventListener("mouseleave", () => { this.hover = null; this.tip.hidden = true; });
      this.canvas.addEventListener("click", (ev) => this._click(ev));
      this.chips.addEventListener("click", (ev) => {
        const chip = ev.target.closest("[data-req]");
        if (chip) this.pin(chip.dataset.req === this.pinned ? null : chip.dataset.req);
      });
      this._resize = new ResizeObserver(() => { this.dirty = this._chartsStale = true; });
      this._resize.observe(this.root);
    }

    // ---- the feed --------------------------------------------------------------------------------
    visible() {
      return this.element.isConnected && this.element.offsetParent !== null && document.visibilityState !== "hidden";
    }

    _open() {
      this.source = new EventSource(this.config.feedUrl || "api/feed");
      this.status.textContent = "connecting…";
      this.source.addEventListener("snapshot", (m) => {
        this.state.snapshot(JSON.parse(m.data));
        this.connected = true;
        this.dirty = true;
      });
      this.source.addEventListener("steps", (m) => {
        const records = JSON.parse(m.data), now = Date.now() / 1000;
        for (const r of records) {
          const off = r.wall_time + r.duration - now;
          if (this.offset === null || off > this.offset) this.offset = off; // the least delayed record
          this.state.apply(r, this.now());
        }
        this.dirty = true;
      });
      this.source.addEventListener("device", (m) => { this.state.deviceSample(JSON.parse(m.data)); });
      this.source.addEventListener("gap", () => { this.source.close(); this.source = null; }); // reopen: a fresh snapshot
      this.source.onerror = () => { this.connected = false; this.status.textContent = "reconnecting…"; };
    }

    _close() {
      if (this.source) this.source.close();
      this.source = null;
      this.connected = false;
    }

    now() {
      return Date.now() / 1000 + (this.offset || 0);
    }

    _tick() {
      if (!this.element.isConnected) { this.destroy(); return; }
      const shown = this.visible();
      if (shown && !this.source) this._open();
      if (!shown) {
        if (this.source && (this._hiddenSince ??= Date.now()) < Date.now() - 2000) this._close();
        return;
      }
      this._hiddenSince = null;
      if (!this.state.owners) return;
      // new data draws at once; without any, the charts still move with time once a second
      if (!this.dirty && performance.now() - (this._drawnAt || 0) < 1000) return;
      this.draw();
      this._drawnAt = performance.now();
      this.frames = (this.frames || 0) + 1;
      if (this.dirty) this.updates++;
      this.dirty = false;
      if (this.firstDrawAt === null) this.firstDrawAt = performance.now();
    }

    destroy() {
      clearInterval(this._timer);
      this._close();
      if (this._resize) this._resize.disconnect();
    }

    reset() { // the charts and latency figures start again; the pool is the engine's, it stays
      this.state.reset();
      this.dirty = this._chartsStale = true;
      this._tick();
    }

    // a scenario started: its panel, and for the block table a request pinned for it (kept pinned,
    // and replaced when it ends, until the presenter pins or unpins one by hand)
    showScenario(key, panel) {
      this.reset(); // a new scenario: its own timeline, counterfactual and latencies
      this.panels.show(panel);
      this.autoPin = panel === "table" ? key : null;
      if (this.autoPin) this._pin(null);
    }

    _autoPin() {
      if (!this.autoPin || (this.pinned && this.state.requests().some((r) => r.req === this.pinned))) return;
      const many = this.autoPin === "parallel-sampling", hit = this.autoPin === "shared-prefix";
      const reqs = this.state.requests().filter((r) => r.phase === "decode" && (!many || r.seqs.length > 1) &&
                                                      (!hit || r.seqs.some((q) => q.cached > 0)));
      if (reqs.length) this._pin(reqs[reqs.length - 1].req); // the newest: it lives longest
    }

    pin(req) { // by hand
      this.autoPin = null;
      this._pin(req);
    }

    _pin(req) {
      this.pinned = req;
      this.panels.onPin();
      this.dirty = true;
      this._textAt = 0; // the chips show the pin at once
      this._tick();
    }

    // ---- drawing -------------------------------------------------------------------------------
    draw() {
      const now = this.now(), st = this.state;
      if (!this._theme || performance.now() - this._themeAt > 2000) { // a style read forces a style pass: rarely
        this._theme = theme(this.element);
        this._themeAt = performance.now();
      }
      const th = this._theme;
      // numbers in the page's text cost a layout each: twice a second is enough to read them
      if (!this._textAt || performance.now() - this._textAt >= 500 || this._chartsStale) {
        this._drawText(now);
        this._drawChips();
        this._textAt = performance.now();
      }
      this._autoPin();
      this._drawMap(th, now);
      this.panels.draw();
      // the charts span a minute: once a second moves them enough, at a fifth of the cost
      if (!this._chartsAt || performance.now() - this._chartsAt >= 1000 || this._chartsStale) {
        this._drawCharts(th, now);
        this._chartsAt = performance.now();
        this._chartsStale = false;
      }
    }

    _drawText(now) {
      const st = this.state;
      const kind = this.config.replay ? "replay" : "live";
      const live = this.connected ? (st.lastRecord ? `${kind} · step ${st.lastRecord.step}` : `${kind} · idle`) : "reconnecting…";
      setText(this.status, live);
      const c = st.counts(), rates = st.rates(now), lat = st.latency(now);
      const set = (k, v, s) => { setText(this.tiles[k].v, v); if (s !== undefined) setText(this.tiles[k].s, s); };
      set("users", `${c.running} · ${c.waiting}`);
      const capped = st.blockCap < c.total; // memory pressure: the share of what the scheduler may use
      const pct = (100 * c.used) / Math.max(1, capped ? st.blockCap : c.total);
      const hits = st.prefixHits();
      const hitText = hits.cached > 0 ? ` · prefix hits ${Math.round(100 * hits.rate)}% of prompt tokens` : "";
      const of = capped ? `${st.blockCap.toLocaleString()} usable (memory pressure; pool ${c.total.toLocaleString()})`
        : `${c.total.toLocaleString()} blocks`;
      set("kv", `${pct > 0 && pct < 10 ? pct.toFixed(1) : Math.round(pct)}%`, `${c.used.toLocaleString()} / ${of} · ${c.shared} shared${hitText}`);
      const dev = st.device ? ` · ${st.device.kind === "gpu" ? "GPU" : "CPU"} ${Math.round(st.device.compute_pct)}%` : "";
      set("tps", fmt(Math.round(rates.output)), `prefill ${fmt(Math.round(rates.prefill))} tok/s · engine busy ${Math.min(100, Math.round(100 * rates.busy))}%${dev}`);
      set("ttft", ms(lat.ttft50), `p95 ${ms(lat.ttft95)}`);
      set("tpot", ms(lat.tpot50), `ITL p50 ${ms(lat.itl50)} · p95 ${ms(lat.itl95)}`);
      set("preempt", String(st.preemptions.length), "last 60 s");
    }

    _layout(w, n) {
      const presenter = this.root.classList.contains("pc-presenter");
      const maxH = presenter ? Math.max(120, window.innerHeight * 0.17) : Math.min(360, Math.max(160, window.innerHeight * 0.36));
      let group = 1;
      for (;;) {
        const cells = Math.ceil(n / group);
        // the largest cell that fits every cell in w x maxH
        let size = Math.floor(Math.sqrt((w * maxH) / cells));
        size = Math.min(size, presenter ? 40 : 28);
        while (size > MIN_CELL && Math.ceil(cells / Math.floor(w / size)) * size > maxH) size--;
        if (size >= MIN_CELL || group >= n) {
          const cols = Math.max(1, Math.floor(w / size));
          return {group, size, cols, rows: Math.ceil(cells / cols), cells};
        }
        group *= 2;
      }
    }

    // The blocks the map draws, in order: the whole pool, or (a pool too large for cells a room can
    // read, a GPU's above all) only the blocks in use, so that each gets a cell of its own.
    _shownBlocks(w) {
      const st = this.state;
      const whole = this._layout(w, st.numBlocks);
      this.compactable = whole.group > 1 || whole.size < MIN_READABLE;
      if (!this.compactable || this.wholePool) return null;
      const ids = [];
      st.owners.forEach((h, b) => { if (h.length) ids.push(b); });
      return ids;
    }

    _drawMap(th, now) {
      const st = this.state, w = this.canvas.parentElement.clientWidth;
      const ids = this._shownBlocks(w), n = ids ? ids.length : st.numBlocks;
      const at = ids ? (i) => ids[i] : (i) => i;
      const L = this._layout(w, Math.max(1, n));
      L.ids = ids;
      L.n = n;
      this.mapLayout = L;
      this.canvas.style.height = `${L.rows * L.size}px`;
      const {ctx} = fit(this.canvas);
      if (this.pinned && !st.requests().some((r) => r.req === this.pinned)) this.pinned = null; // it ended
      const pinned = this.pinned ? st.blocksOfRequest(this.pinned) : null;
      const gap = L.size >= 10 ? 2 : 1, s = L.size - gap, bs = st.blockSize;
      const highlighted = new Set();
      ctx.font = `bold ${Math.max(9, Math.floor(s * 0.5))}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      for (let cell = 0; cell < L.cells && cell * L.group < n; cell++) {
        const x = (cell % L.cols) * L.size, y = Math.floor(cell / L.cols) * L.size;
        const i0 = cell * L.group, i1 = Math.min(n, i0 + L.group);
        // the cell's colour: its most common holder's request; the used share sets the fill height
        let used = 0, cachedFree = 0, maxRef = 0, best = null, hit = false, fill = 0;
        const votes = new Map();
        for (let i = i0; i < i1; i++) {
          const b = at(i), h = st.owners[b];
          if (h.length) {
            used++;
            maxRef = Math.max(maxRef, h.length);
            const q = st.seqs.get(h[0]);
            const req = q ? q.req : null;
            votes.set(req, (votes.get(req) || 0) + 1);
            fill += L.group === 1 ? st.fillOf(b) / bs : 1;
            if (pinned && pinned.has(b)) { hit = true; highlighted.add(b); }
          } else if (st.cached[b]) cachedFree++;
        }
        let top = 0;
        for (const [req, v] of votes) if (v > top) { top = v; best = req; }
        const dim = pinned && !hit ? 0.25 : 1;
        ctx.globalAlpha = dim;
        if (!used) {
          ctx.fillStyle = cachedFree ? th.cachedFree : th.free;
          ctx.fillRect(x, y, s, s);
        } else {
          const color = best ? st.colors.colorOf(best) : "#888";
          const share = L.group === 1 ? fill : used / (i1 - i0);
          ctx.fillStyle = th.free;
          ctx.fillRect(x, y, s, s);
          ctx.fillStyle = color;
          ctx.globalAlpha = dim * (L.group === 1 ? 0.45 : 1); // slots reserved but empty: a paler block
          ctx.fillRect(x, y, s, s);
          ctx.globalAlpha = dim;
          const hFill = Math.max(1, Math.round(s * Math.min(1, share)));
          ctx.fillRect(x, y + s - hFill, s, hFill);
          if (maxRef > 1) {
            ctx.fillStyle = "#ffffff";
            if (s >= 12) {
              ctx.strokeStyle = "rgba(0,0,0,0.6)";
              ctx.lineWidth = 2;
              ctx.strokeText(String(maxRef), x + s / 2, y + s / 2 + 1);
              ctx.fillText(String(maxRef), x + s / 2, y + s / 2 + 1);
            } else ctx.fillRect(x + s / 2 - 1, y + s / 2 - 1, 2, 2);
          }
        }
        ctx.globalAlpha = 1;
        if (hit) {
          ctx.strokeStyle = th.fg;
          ctx.lineWidth = 2;
          ctx.strokeRect(x + 1, y + 1, s - 2, s - 2);
        }
        for (let i = i0; i < i1; i++) {
          const b = at(i), f = st.flash.get(b);
          if (!f) continue;
          if (f.until < now) { st.flash.delete(b); continue; }
          ctx.strokeStyle = {copied: "#f59e0b", preempted: "#dc2626", evicted: "#64748b"}[f.kind] || "#ef4444";
          ctx.lineWidth = Math.max(2, s / 6);
          ctx.strokeRect(x + 1, y + 1, s - 2, s - 2);
        }
      }
      this.lastHighlighted = highlighted;
      const scale = L.group > 1 ? `1 cell = ${L.group} blocks (shade: share in use)` : "1 cell = 1 block";
      const what = ids ? `the ${n.toLocaleString()} blocks in use of ${st.numBlocks.toLocaleString()}, by block id`
        : `${st.numBlocks.toLocaleString()} blocks of ${bs} tokens`;
      setText(this.mapNote, `${what} · ${scale}` +
        (this.pinned ? ` · pinned: ${this.pinned} (click again to unpin)` : " · click a block to pin its request"));
      if (this.poolToggle.hidden !== !this.compactable) this.poolToggle.hidden = !this.compactable;
      setText(this.poolToggle, this.wholePool ? "Show the blocks in use" : "Show the whole pool");
      if (this.hover) this._showTip();
    }

    _drawChips() {
      const reqs = this.state.requests();
      const key = reqs.map((r) => `${r.req}:${r.phase}:${r.tokens}`).join("|") + "|" + this.pinned;
      if (key === this._chipsKey) return;
      this._chipsKey = key;
      const frag = document.createDocumentFragment();
      for (const r of reqs) {
        const chip = el("button", "pc-chip" + (r.req === this.pinned ? " pc-pinned" : ""));
        chip.type = "button";
        chip.dataset.req = r.req;
        chip.style.setProperty("--c", r.color);
        chip.title = `${r.req}: ${r.phase}, ${r.tokens} tokens${r.seqs.length > 1 ? `, ${r.seqs.length} samples` : ""}`;
        chip.textContent = `${r.req.length > 14 ? r.req.slice(0, 13) + "…" : r.req} · ${r.tokens} tok`;
        frag.appendChild(chip);
      }
      this.chips.replaceChildren(frag);
      if (!reqs.length) this.chips.appendChild(el("span", "pc-note", "no live requests"));
    }

    _cellAt(ev) {
      const L = this.mapLayout;
      if (!L) return -1;
      const r = this.canvas.getBoundingClientRect();
      const col = Math.floor((ev.clientX - r.left) / L.size), row = Math.floor((ev.clientY - r.top) / L.size);
      if (col < 0 || col >= L.cols || row < 0) return -1;
      const cell = row * L.cols + col;
      return cell < L.cells && cell * L.group < L.n ? cell : -1;
    }

    _hover(ev) {
      const cell = this._cellAt(ev);
      const box = this.canvas.parentElement.getBoundingClientRect();
      this.hover = cell < 0 ? null : {cell, x: ev.clientX - box.left, y: ev.clientY - box.top};
      this._showTip();
    }

    _showTip() {
      const h = this.hover, st = this.state, L = this.mapLayout;
      if (!h || !L) { this.tip.hidden = true; return; }
      const at = L.ids ? (i) => L.ids[i] : (i) => i;
      const i0 = h.cell * L.group, i1 = Math.min(L.n, i0 + L.group), b0 = at(i0);
      const lines = [];
      if (L.group === 1) {
        const holders = st.owners[b0];
        lines.push(`block ${b0}` + (holders.length ? ` · ${st.fillOf(b0)}/${st.blockSize} slots filled` : ""));
        if (!holders.length) lines.push(st.cached[b0] ? "free, holds a cached prefix (reusable)" : "free");
        for (const seq of holders.slice(0, 8)) {
          const q = st.seqs.get(seq);
          const many = q && [...st.seqs.values()].some((p) => p.req === q.req && p.seq !== q.seq);
          lines.push(q ? `${q.req}${many ? ` (sample ${q.sample + 1})` : ""}: ${q.phase}, ${q.tokens} tokens` : `seq ${seq}`);
        }
        if (holders.length > 1) lines.push(`shared: ref count ${holders.length}`);
        if (st.cached[b0] && holders.length) lines.push("in the prefix cache");
      } else {
        let used = 0;
        const reqs = new Set();
        for (let i = i0; i < i1; i++) {
          const b = at(i);
          if (st.owners[b].length) { used++; for (const s of st.owners[b]) { const q = st.seqs.get(s); if (q) reqs.add(q.req); } }
        }
        lines.push(`blocks ${b0}–${at(i1 - 1)}: ${used} in use`);
        for (const r of [...reqs].slice(0, 6)) lines.push(r);
      }
      this.tip.textContent = lines.join("\n");
      this.tip.hidden = false;
      const box = this.canvas.parentElement.clientWidth;
      this.tip.style.left = `${Math.min(h.x + 14, Math.max(0, box - 260))}px`;
      this.tip.style.top = `${h.y + 14}px`;
    }

    _click(ev) {
      const cell = this._cellAt(ev), st = this.state, L = this.mapLayout;
      if (cell < 0) return;
      let req = null;
      for (let i = cell * L.group; i < Math.min(L.n, (cell + 1) * L.group) && !req; i++) {
        const h = st.owners[L.ids ? L.ids[i] : i];
        if (h.length) { const q = st.seqs.get(h[0]); if (q) req = q.req; }
      }
      this.pin(req && req !== this.pinned ? req : null);
    }

    _drawCharts(th, now) {
      const st = this.state, t0 = now - st.window;
      // a projector's text: 18 px at least (presenter mode, or a screen 1800 px wide)
      const wide = this.charts.tput.clientWidth >= 520;
      const font = wide && (this.root.classList.contains("pc-presenter") || window.innerWidth >= 1800) ? 18 : 12;
      const series = st.buckets.series(now).slice(0, -1); // the current bucket is still filling
      const w = st.buckets.width;
      const rate = (f) => series.map((x) => [x.t + w / 2, x.b ? x.b[f] / w : 0]);
      const base = {t0, t1: now, theme: th, font};
      drawChart(this.charts.tput, {...base, series: [
        {label: "output (decode)", color: "#2563eb", kind: "area", points: rate("output")},
        {label: "prefill", color: "#f97316", kind: "line", points: rate("prefill")}]});
      const pts = (list) => list.filter((x) => x.t >= t0).map((x) => [x.t, x.v * 1000]);
      const itl50 = series.filter((x) => x.b && x.b.itl.length).map((x) => [x.t + w / 2, root.PagedChatFeed.quantile(x.b.itl, 0.5) * 1000]);
      const ttft = pts(st.ttft), tpot = pts(st.tpot);
      const all = ttft.concat(tpot, itl50).map((p) => p[1]).sort((a, b) => a - b);
      drawChart(this.charts.lat, {...base, unit: "ms", yCap: all.length ? all[Math.floor(all.length * 0.98)] * 1.1 : 0, series: [
        {label: "TTFT", color: "#dc2626", kind: "dots", points: ttft},
        {label: "TPOT (per request)", color: "#7c3aed", kind: "dots", points: tpot},
        {label: "ITL p50", color: "#059669", kind: "line", points: itl50}]});
      const hist = st.history.filter((x, i, a) => x.t >= t0 || (a[i + 1] && a[i + 1].t >= t0));
      const held = (f) => hist.map((x) => [Math.max(x.t, t0), x[f]]);
      // a GPU-sized pool would flatten the lines: then the scale is the peak, and the pool is named
      const peak = Math.max(1, ...hist.map((x) => x.used + x.cachedFree));
      const poolOnScale = peak > st.numBlocks / 4;
      const poolLine = {label: `pool: ${st.numBlocks.toLocaleString()} blocks${poolOnScale ? "" : " (above the scale)"}`,
                        color: th.muted, kind: "line", dash: true, width: 1,
                        points: poolOnScale ? [[t0, st.numBlocks], [now, st.numBlocks]] : []};
      drawChart(this.charts.kv, {...base, yMax: poolOnScale ? st.numBlocks : 0, series: [
        {label: "in use", color: "#2563eb", kind: "step", fill: true, until: now, points: held("used")},
        {label: "cached, free", color: "#64748b", kind: "step", until: now, points: held("cachedFree")}, poolLine]});
      drawChart(this.charts.batch, {...base, yMax: 4, series: [
        {label: "engine busy (full height = 100%)", color: "#94a3b8", kind: "area", width: 1, frac: true, points: rate("busy")},
        {label: st.device ? (st.device.kind === "gpu" ? `GPU utilization, NVML (${st.device.name})` : "process CPU, all cores") : "",
         color: "#0ea5e9", kind: "line", width: 2, frac: true, points: st.devices.filter((x) => x.t >= t0).map((x) => [x.t, x.v])},
        {label: "running", color: "#16a34a", kind: "step", until: now, points: held("running")},
        {label: "waiting", color: "#ea580c", kind: "step", until: now, points: held("waiting")}]});
    }

    // ---- for tests and the benchmark -----------------------------------------------------------
    probe() {
      const now = this.now(), rates = this.state.rates(now);
      return {updates: this.updates, frames: this.frames || 0, firstDrawAt: this.firstDrawAt, pinned: this.pinned,
              highlighted: [...this.lastHighlighted].sort((a, b) => a - b), rates,
              tokensTotal: this.state.tokensTotal, records: this.state.recordsSeen, connected: this.connected,
              group: this.mapLayout ? this.mapLayout.group : null, counts: this.state.counts(), seen: {...this.state.seen},
              panel: this.panels.current, autoPin: this.autoPin};
    }
  }

  const instances = [];
  root.PagedChatLive = {
    instances,
    mount(element, config) {
      const view = new LiveView(element, config);
      instances.push(view);
      return view;
    },
    // the instance on screen (tests and the benchmark read it)
    shown() {
      return instances.find((v) => v.visible() && v.element.isConnected) || null;
    },
  };
})(window);

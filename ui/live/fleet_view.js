// PagedChat fleet view: remote engines (`app.py --engine-url`), drawn in the browser from GET /api/fleet
// (each replica's health and its metric points, once a second) and GET /api/fleet/tree/N (a replica's
// prefix-cache tree, from its KV events). What a remote engine does not export (the block map, block
// tables, the step timeline) is not drawn: the notice at the top says so.
// PagedChatFleet.mount(element, config); config: {fleetUrl, treeUrl, presenter}
(function (root) {
  "use strict";
  const {el, setText, button, chartGrid} = root.PagedChatDom;
  const {drawChart} = root.PagedChatCharts;

  // no red and no green: those say down and up
  const COLORS = ["#2563eb", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#92400e"];
  const HISTORY_S = 300, WINDOW_S = 120, TREE_EVERY_MS = 2000;
  const TILES = [
    ["up", "Replicas up", "answering /health"],
    ["reqs", "Requests", "running · waiting"],
    ["kv", "KV use", "mean of replicas"],
    ["tps", "Output tok/s", "last 5 s"],
    ["ttft", "TTFT p50", "last 30 s"],
    ["itl", "ITL p50", "last 30 s"],
  ];
  // [key, header, cell(point, replica), presenter too]
  const COLUMNS = [
    ["running", "Running", (p) => num(p.running), true],
    ["waiting", "Waiting", (p) => num(p.waiting), true],
    ["kv", "KV use", (p) => pct(p.kv_usage), true],
    ["hits", "Prefix hits, 30 s", (p) => pct(p.hit_rate), true],
    ["preempt", "Preempted, 60 s", (p) => num(p.preemptions), false],
    ["prompt", "Prompt tok/s", (p) => num(p.prompt_tps), false],
    ["output", "Output tok/s", (p) => num(p.output_tps), true],
    ["ttft", "TTFT p50 · p95", (p) => `${ms(p.ttft_p50)} · ${ms(p.ttft_p95)}`, true],
    ["itl", "ITL p50", (p) => ms(p.itl_p50), true],
    ["e2e", "E2E p50", (p) => (p.e2e_p50 == null ? "–" : `${p.e2e_p50.toFixed(p.e2e_p50 >= 10 ? 0 : 1)} s`), false],
  ];

  // a metric's cell; its header rides along as data-label, which a phone's card layout shows
  function cell(column, text) {
    const td = el("td", `pc-c-${column[0]}`, text);
    td.dataset.label = column[1];
    return td;
  }
  function num(v) { return v == null ? "–" : v >= 100 ? Math.round(v).toLocaleString() : String(Math.round(v * 10) / 10); }
  function pct(v) { return v == null ? "–" : `${(v * 100).toFixed(v >= 0.1 ? 0 : 1)}%`; }
  function ms(s) { return s == null ? "–" : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(s >= 0.01 ? 0 : 1)} ms`; }
  function ago(t) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - t));
    return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
  }
  function hostOf(url) { try { return new URL(url).host; } catch (e) { return url; } }

  function theme(node) {
    const cs = getComputedStyle(node);
    const v = (name, fallback) => cs.getPropertyValue(name).trim() || fallback;
    return {fg: v("--body-text-color", "#1f2937"), muted: v("--body-text-color", "#374151"),
            grid: v("--border-color-primary", "#e5e7eb"), bg: v("--background-fill-primary", "#ffffff")};
  }

  class FleetView {
    constructor(element, config) {
      this.element = element;
      this.config = config;
      this.replicas = []; // the latest state of each, from the feed
      this.series = []; // per replica: its points, oldest first
      this.connected = false;
      this.treeIndex = 0;
      this.tree = null;
      this.treeSeen = new Set();
      this.updates = 0;
      this._build();
      this._timer = setInterval(() => this._tick(), 1000);
      this._tick();
    }

    // ---- DOM -----------------------------------------------------------------------------------
    _build() {
      const r = el("div", "pc-live pc-fleet" + (this.config.presenter ? " pc-presenter" : ""));
      this.root = r;
      r.appendChild(el("div", "pc-notice", this.config.presenter ?
        "Remote engines, read from their /metrics and KV events: a remote engine does not export the block map, " +
        "the block tables or the step timeline." :
        "Remote engines: each replica's load and latency come from its Prometheus /metrics (vLLM's names), its " +
        "prefix cache from its KV events. The block map, the block tables and the step timeline need an engine's " +
        "internals, which a remote engine does not export."));
      const bar = el("div", "pc-bar");
      this.status = el("span", "pc-status", "connecting…");
      bar.append(this.status, button("pc-btn", "Reset view", () => this.reset()));
      r.appendChild(bar);

      const tiles = el("div", "pc-tiles");
      this.tiles = {};
      for (const [key, label, sub] of TILES) {
        const t = el("div", "pc-tile");
        const v = el("div", "pc-v", "–");
        t.dataset.tile = key;
        t.append(el("div", "pc-l", label), v, el("div", "pc-s", sub));
        tiles.appendChild(t);
        this.tiles[key] = v;
      }
      r.appendChild(tiles);

      const tableBox = el("div", "pc-fleet-box");
      tableBox.appendChild(el("div", "pc-title", "Replicas"));
      this.table = el("table", "pc-fleet-table");
      tableBox.appendChild(this.table);
      r.appendChild(tableBox);

      const charts = chartGrid([["tps", "Output tok/s, per replica"], ["reqs", "Requests running + waiting"],
                                ["kv", "KV cache usage (%)"], ["lat", "TTFT p50 (solid) and ITL p50 (dashed), ms"]]);
      this.charts = charts.canvases;
      r.appendChild(charts.element);

      const tree = el("div", "pc-tree-box");
      const head = el("div", "pc-map-head");
      head.appendChild(el("span", "pc-title", "Prefix cache, from KV events"));
      this.treeTabs = el("span", "pc-modes");
      head.appendChild(this.treeTabs);
      tree.appendChild(head);
      this.treeNote = el("div", "pc-caption", "");
      tree.appendChild(this.treeNote);
      const key = el("div", "pc-key");
      key.innerHTML = '<i class="pc-k-seg"></i>cached blocks (a bar: a chain of blocks with no branch) ' +
        '<i class="pc-k-seg pc-k-dead"></i>evicted <i class="pc-k-flash"></i>new since the last look ' +
        '<b>↻2</b> stored twice (recomputed after an eviction) · hits per block: not in KV events (see the ' +
        'Prefix hits column)';
      tree.appendChild(key);
      this.treeList = el("div", "pc-tree");
      tree.appendChild(this.treeList);
      r.appendChild(tree);
      this.element.appendChild(r);
      this._resize = new ResizeObserver(() => this._draw());
      this._resize.observe(r);
    }

    // ---- the feed ------------------------------------------------------------------------------
    visible() {
      return this.element.isConnected && this.element.offsetParent !== null && document.visibilityState !== "hidden";
    }

    _open() {
      this.source = new EventSource(this.config.fleetUrl || "api/fleet");
      this.source.addEventListener("fleet", (m) => this._apply(JSON.parse(m.data)));
      this.source.onerror = () => { this.connected = false; setText(this.status, "reconnecting…"); };
    }

    _close() {
      if (this.source) this.source.close();
      this.source = null;
      this.connected = false;
    }

    _apply(state) {
      this.connected = true;
      this.serverOffset = state.t - Date.now() / 1000;
      this.replicas = state.replicas;
      this.total = state.total; // latencies and hit rate over every replica's merged histograms
      for (const r of state.replicas) {
        const s = (this.series[r.index] ||= []);
        const last = s.length ? s[s.length - 1].t : 0;
        for (const p of r.points) if (p.t > last) s.push(p);
        while (s.length && s[0].t < state.t - HISTORY_S) s.shift();
      }
      this.updates++;
      this._draw();
    }

    _tick() {
      if (!this.element.isConnected) { this.destroy(); return; }
      const shown = this.visible();
      if (shown && !this.source) this._open();
      if (!shown) { if (this.source) this._close(); return; }
      if (this.replicas.length && Date.now() - (this._treeAt || 0) >= TREE_EVERY_MS) this._fetchTree();
    }

    destroy() {
      clearInterval(this._timer);
      this._close();
      if (this._resize) this._resize.disconnect();
    }

    reset() { // the charts start again; the replicas' own counters are theirs
      this.resetAt = Date.now() / 1000 + (this.serverOffset || 0);
      this._draw();
    }

    showScenario(key) { // a scenario over the API: its idea shows in the prefix-cache tree
      if (key === "shared-prefix" || key === "parallel-sampling") this.treeList.scrollIntoView({block: "nearest"});
    }

    // ---- drawing -------------------------------------------------------------------------------
    latest(index) { // the replica's newest point, if it is up
      const r = this.replicas[index], s = this.series[index] || [];
      return r && r.state === "up" && s.length ? s[s.length - 1] : null;
    }

    _draw() {
      if (!this.replicas.length) return;
      const up = this.replicas.filter((r) => r.state === "up");
      setText(this.status, `${up.length} of ${this.replicas.length} replicas up · updated once a second`);
      this.status.classList.toggle("pc-status-warn", up.length < this.replicas.length);
      this.status.classList.toggle("pc-status-bad", up.length === 0);
      this._tiles(up);
      this._table();
      this._charts();
      this._treeTabs();
    }

    _tiles(up) {
      const pts = this.replicas.map((r) => this.latest(r.index)).filter(Boolean);
      const sum = (f) => pts.reduce((a, p) => a + (p[f] || 0), 0);
      const mean = (f) => { const v = pts.map((p) => p[f]).filter((x) => x != null); return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null; };
      const total = this.total || {};
      setText(this.tiles.up, `${up.length} / ${this.replicas.length}`);
      this.tiles.up.parentNode.classList.toggle("pc-tile-bad", up.length < this.replicas.length);
      setText(this.tiles.reqs, pts.length ? `${num(sum("running"))} · ${num(sum("waiting"))}` : "–");
      setText(this.tiles.kv, pct(mean("kv_usage")));
      setText(this.tiles.tps, pts.length ? num(sum("output_tps")) : "–");
      setText(this.tiles.ttft, ms(total.ttft_p50 ?? null));
      setText(this.tiles.itl, ms(total.itl_p50 ?? null));
    }

    _table() {
      const presenter = this.root.classList.contains("pc-presenter");
      const cols = COLUMNS.filter((c) => !presenter || c[3]);
      this.table.replaceChildren();
      const head = el("tr", "pc-r-head");
      head.append(el("th", "", "Replica"), el("th", "", "Health"), ...cols.map((c) => el("th", "", c[1])));
      this.table.appendChild(head);
      for (const r of this.replicas) {
        const tr = el("tr", `pc-r-${r.state}`);
        tr.dataset.replica = String(r.index);
        tr.dataset.state = r.state;
        const name = el("td", "pc-r-name");
        const sw = el("i", "pc-sw");
        sw.style.background = COLORS[r.index % COLORS.length];
        name.append(sw, el("span", "", `${r.index + 1} · ${hostOf(r.url)}`));
        if (r.model) name.appendChild(el("div", "pc-r-model", r.model));
        const health = el("td", "pc-r-health");
        const label = r.state === "up" ? "up" : r.state === "down" ? `down ${ago(r.since)}` : "starting";
        health.appendChild(el("span", `pc-dot pc-dot-${r.state}`, label));
        if (r.state !== "up" && r.error) health.appendChild(el("div", "pc-r-error", r.error));
        else if (r.state === "up" && !r.metrics) health.appendChild(el("div", "pc-r-error", "no vLLM metrics at /metrics"));
        tr.append(name, health);
        const p = this.latest(r.index);
        for (const c of cols) tr.appendChild(cell(c, p ? c[2](p, r) : "–"));
        this.table.appendChild(tr);
      }
      if (this.replicas.length > 1) {
        const t = this._totalPoint();
        const tr = el("tr", "pc-r-total");
        tr.append(el("td", "", "All replicas"), el("td", "", ""));
        for (const c of cols) tr.appendChild(cell(c, t ? c[2](t) : "–"));
        this.table.appendChild(tr);
      }
    }

    // the sums of the up replicas' latest points; latencies and hit rate from the server's merged histograms
    _totalPoint() {
      const pts = this.replicas.map((r) => this.latest(r.index)).filter(Boolean);
      if (!pts.length) return null;
      const sum = (f) => { const v = pts.map((p) => p[f]).filter((x) => x != null); return v.length ? v.reduce((a, b) => a + b, 0) : null; };
      const total = this.total || {};
      const kv = pts.map((p) => p.kv_usage).filter((x) => x != null);
      return {running: sum("running"), waiting: sum("waiting"), kv_usage: kv.length ? kv.reduce((a, b) => a + b, 0) / kv.length : null,
              hit_rate: total.hit_rate ?? null, preemptions: sum("preemptions"), prompt_tps: sum("prompt_tps"),
              output_tps: sum("output_tps"), ttft_p50: total.ttft_p50 ?? null, ttft_p95: total.ttft_p95 ?? null,
              itl_p50: total.itl_p50 ?? null, e2e_p50: total.e2e_p50 ?? null};
    }

    _charts() {
      const th = theme(this.root);
      const now = Date.now() / 1000 + (this.serverOffset || 0);
      const t0 = Math.max(now - WINDOW_S, this.resetAt || 0);
      const wide = this.charts.tps.clientWidth >= 520;
      const font = wide && (this.root.classList.contains("pc-presenter") || window.innerWidth >= 1800) ? 18 : 12;
      const base = {t0, t1: now, theme: th, font};
      const lines = (f, scale = 1, extra = {}) => this.replicas.map((r) => ({
        label: `${r.index + 1} · ${hostOf(r.url)}`, color: COLORS[r.index % COLORS.length], kind: "line", ...extra,
        points: (this.series[r.index] || []).filter((p) => p.t >= t0 && p[f] != null).map((p) => [p.t, p[f] * scale])}));
      drawChart(this.charts.tps, {...base, series: lines("output_tps")});
      const peak = Math.max(0, ...this.replicas.flatMap((r) => (this.series[r.index] || [])
        .filter((p) => p.t >= t0).map((p) => (p.running || 0) + (p.waiting || 0))));
      drawChart(this.charts.reqs, {...base, yMax: Math.max(2, Math.ceil(peak * 1.25)), series: this.replicas.map((r) => ({
        label: `${r.index + 1} · ${hostOf(r.url)}`, color: COLORS[r.index % COLORS.length], kind: "step", until: now,
        points: (this.series[r.index] || []).filter((p) => p.t >= t0 && p.running != null)
          .map((p) => [p.t, p.running + (p.waiting || 0)])}))});
      drawChart(this.charts.kv, {...base, unit: "%", yMax: 10, series: lines("kv_usage", 100)});
      const lat = lines("ttft_p50", 1000).concat(lines("itl_p50", 1000, {dash: true, width: 1.5}).map((s) => ({...s, label: ""})));
      const all = lat.flatMap((s) => s.points.map((p) => p[1])).sort((a, b) => a - b);
      // one slow first request must not flatten the rest: the scale stops at the 95th percentile
      drawChart(this.charts.lat, {...base, unit: "ms", yCap: all.length ? all[Math.floor(all.length * 0.95)] * 1.2 : 0,
                                  series: lat});
    }

    // ---- the prefix-cache tree -----------------------------------------------------------------
    _treeTabs() {
      const withEvents = this.replicas.filter((r) => r.kv_events);
      if (this.treeTabs.childElementCount !== this.replicas.length) {
        this.treeTabs.replaceChildren(...this.replicas.map((r) => {
          const b = button("pc-btn", `${r.index + 1} · ${hostOf(r.url)}`, () => { this.treeIndex = r.index; this.tree = null; this.treeSeen = new Set(); this._fetchTree(); });
          b.dataset.replica = String(r.index);
          return b;
        }));
      }
      for (const b of this.treeTabs.children) b.classList.toggle("pc-btn-on", Number(b.dataset.replica) === this.treeIndex);
      if (!withEvents.length) setText(this.treeNote, "No replica has a KV-event endpoint: start PagedChat with --engine-kv-events tcp://HOST:5557[,tcp://HOST:5558] for each --engine-url.");
    }

    _fetchTree() {
      this._treeAt = Date.now();
      const r = this.replicas[this.treeIndex];
      if (!r || !r.kv_events || this._treeBusy) return;
      this._treeBusy = true;
      fetch(`${this.config.treeUrl || "api/fleet/tree"}/${this.treeIndex}`, {cache: "no-store"})
        .then((res) => (res.ok ? res.json() : null))
        .then((tree) => { if (tree && tree.replica === this.treeIndex) this._drawTree(tree); })
        .catch(() => {})
        .finally(() => { this._treeBusy = false; });
    }

    _drawTree(tree) {
      this.tree = tree;
      const r = this.replicas[tree.replica];
      const chains = tree.segments.filter((s) => s.parent === null).length;
      setText(this.treeNote, `Replica ${tree.replica + 1} (KV events from ${tree.kv_events}): ${tree.alive.toLocaleString()} blocks cached` +
        ` in ${chains} root chain${chains === 1 ? "" : "s"} · ${tree.evicted.toLocaleString()} evicted · ` +
        `${tree.batches.toLocaleString()} event batches · block size ${tree.block_size || "?"}` +
        (tree.lost ? ` · ${tree.lost} batches lost` : "") + (tree.hidden ? ` · ${tree.hidden} branches not drawn` : ""));
      const color = COLORS[tree.replica % COLORS.length];
      const maxBlocks = Math.max(1, ...tree.segments.map((s) => s.blocks));
      const rows = tree.segments.map((s) => {
        const row = el("div", "pc-seg" + (s.alive ? "" : " pc-seg-dead") + (this.treeSeen.size && !this.treeSeen.has(s.id) ? " pc-seg-new" : ""));
        row.dataset.blocks = String(s.blocks);
        row.dataset.depth = String(s.depth);
        row.dataset.alive = s.alive ? "1" : "0";
        row.style.paddingLeft = `${Math.min(s.depth, 14) * 16}px`;
        const barBox = el("span", "pc-seg-barbox");
        const bar = el("span", "pc-seg-bar");
        bar.style.width = `${Math.max(4, Math.round((100 * s.blocks) / maxBlocks))}%`;
        if (s.alive) bar.style.background = color;
        barBox.appendChild(bar);
        const count = el("span", "pc-seg-n", `${s.blocks} block${s.blocks === 1 ? "" : "s"}` + (s.stored > 1 ? ` ↻${s.stored}` : ""));
        const text = el("span", "pc-seg-text");
        if (s.text == null) text.textContent = `${s.tokens} tokens`;
        else { // the chat template's special tokens dimmed, so that the words stand out
          for (const part of s.text.replace(/\n/g, "⏎").split(/(<\|[a-z_]+\|>)/)) {
            if (part) text.appendChild(/^<\|[a-z_]+\|>$/.test(part) ? el("span", "pc-special", part) : document.createTextNode(part));
          }
        }
        row.title = `blocks ${s.start}–${s.start + s.blocks - 1} of the prompt · ${s.tokens} tokens · ${s.alive ? "cached" : "evicted"}` +
          (s.text ? `\n${s.text}` : "");
        row.append(barBox, count, text);
        return row;
      });
      this.treeList.replaceChildren(...rows);
      if (!tree.segments.length) this.treeList.appendChild(el("div", "pc-note", r && r.state !== "up" ?
        "This replica is down: its tree comes back when it does (a restart starts an empty cache)." :
        "Nothing cached yet: full blocks of prompts appear here as the replica stores them."));
      this.treeSeen = new Set(tree.segments.map((s) => s.id));
      if (!this.treeSeen.size) this.treeSeen.add("");
    }

    // ---- for tests -----------------------------------------------------------------------------
    probe() {
      return {connected: this.connected, updates: this.updates,
              replicas: this.replicas.map((r) => ({index: r.index, state: r.state, points: (this.series[r.index] || []).length,
                                                    latest: this.latest(r.index)})),
              tree: this.tree && {replica: this.tree.replica, segments: this.tree.segments.length, alive: this.tree.alive}};
    }
  }

  const instances = [];
  root.PagedChatFleet = {
    instances,
    mount(element, config) {
      const view = new FleetView(element, config);
      instances.push(view);
      return view;
    },
    shown() { return instances.find((v) => v.visible()) || null; },
  };
})(window);

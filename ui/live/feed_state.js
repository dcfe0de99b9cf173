// PagedChat live view, part 1: the engine's state rebuilt in the browser from its event feed.
//
// Plain logic, no drawing: a snapshot (GET /api/feed's first event) sets the pool; each step
// record (engine/serving/event_feed.py documents the schema) moves it on. Everything a view draws is read
// from here, so a recording replayed through the same endpoint draws the same dashboard.
(function (root) {
  "use strict";

  const RUNNING = new Set(["prefill", "decode", "forked"]);

  // A colour for each live request that no other live request has (up to the palette's size),
  // kept for its life and given to another only after it ends: as ui/request_colors.py.
  class RequestColors {
    constructor(palette) {
      this.palette = palette;
      this.held = new Map(); // request id -> palette slot
    }
    colorOf(requestId) {
      let slot = this.held.get(requestId);
      if (slot === undefined) {
        const taken = new Set(this.held.values());
        slot = 0;
        while (slot < this.palette.length && taken.has(slot)) slot++;
        if (slot >= this.palette.length) slot = this.held.size % this.palette.length; // past 64: repeats
        this.held.set(requestId, slot);
      }
      return this.palette[slot];
    }
    release(requestId) {
      this.held.delete(requestId);
    }
  }

  // Per-bucket sums over the last `span` seconds, keyed by floor(wall time / width): a bucket no
  // step fell in is zero, never skipped.
  class Buckets {
    constructor(width, span) {
      this.width = width;
      this.count = Math.ceil(span / width);
      this.map = new Map();
    }
    add(t, field, value) {
      const k = Math.floor(t / this.width);
      let b = this.map.get(k);
      if (!b) {
        b = {prefill: 0, decode: 0, output: 0, busy: 0, steps: 0, preempted: 0, itl: []};
        this.map.set(k, b);
      }
      if (field === "itl") b.itl.push(value);
      else b[field] += value;
    }
    // [{t0, ...sums}] for the `count` buckets ending at `now`, zeros where nothing ran
    series(now) {
      const last = Math.floor(now / this.width);
      const out = [];
      for (let k = last - this.count + 1; k <= last; k++) {
        const b = this.map.get(k);
        out.push({t: k * this.width, k, b: b || null});
      }
      for (const k of this.map.keys()) if (k < last - this.count - 4) this.map.delete(k);
      return out;
    }
    clear() {
      this.map.clear();
    }
  }

  function quantile(values, q) {
    if (!values.length) return NaN;
    const s = Float64Array.from(values).sort();
    const pos = (s.length - 1) * q;
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    return s[lo] + (s[hi] - s[lo]) * (pos - lo);
  }

  class FeedState {
    constructor(palette, opts) {
      opts = opts || {};
      this.window = opts.window || 60; // seconds the charts show
      this.rateWindow = opts.rateWindow || 5; // seconds the headline's rates average over
      this.colors = new RequestColors(palette);
      // views of single ideas (the timeline, the three wastes...) follow the state through hooks:
      // {snapshot(st), arrive(q, st), leave(q, st), step(r, end, st), reset()}, each optional
      this.observers = [];
      this.reset();
    }

    reset() {
      this.buckets = new Buckets(0.5, this.window);
      this.history = []; // [{t, used, cachedFree, running, waiting}] at each step, for the held lines
      this.ttft = []; // [{t, v}] seconds
      this.tpot = []; // [{t, v}] seconds, one per finished request
      this.itl = []; // [{t, v}] seconds
      this.preemptions = []; // times
      this.admissions = []; // [{t, prompt, cached}]: prompt tokens found in the prefix cache at admission
      this.seen = {copied: 0, preempted: 0, evicted: 0, shared: 0, reused: 0}; // events since the reset
      this.devices = []; // [{t, v: utilization 0..1}] from the feed's device events
      this.steps = 0;
      this.recordsSeen = 0;
      this.lastRecord = null;
      this.tokensTotal = 0; // output tokens since the view (re)started, from the records
      for (const o of this.observers || []) if (o.reset) o.reset(this);
    }

    observe(o) {
      this.observers.push(o);
      if (this.owners && o.snapshot) o.snapshot(this);
      return o;
    }

    _tell(hook, ...args) {
      for (const o of this.observers) if (o[hook]) o[hook](...args, this);
    }

    // ---- the pool ----------------------------------------------------------------------------
    snapshot(s) {
      this.schema = s.schema;
      this.blockSize = s.block_size;
      this.numBlocks = s.num_blocks;
      this.feedIndex = s.feed_index;
      this.engine = s.engine || null; // the model's shape and the pool's facts (engine_info.py)
      this.maxModelLen = this.engine ? this.engine.max_model_len : 0;
      this.tokensStored = s.tokens_stored || 0;
      this.batching = this.batching || "continuous";
      this.blockCap = s.num_blocks;
      this.owners = s.owners.map((o) => o.slice()); // block -> seq ids
      this.cached = Uint8Array.from(s.cached.map((c) => (c ? 1 : 0)));
      this.flash = new Map(); // block -> {kind, until}
      this.copiedFrom = new Map(); // block -> the shared block it was copied from (copy-on-write), while held
      this.seqs = new Map();
      this.tables = new Map(); // seq id -> blocks in order
      this.span = 0; // blocks 0..span-1 were ever touched while watched
      for (const q of s.sequences) {
        this.seqs.set(q.seq_id, {
          seq: q.seq_id, req: q.request_id, sample: q.sample, tokens: q.num_tokens,
          prompt: q.num_prompt_tokens, limit: q.limit || 0, phase: q.running ? "decode" : "waiting", arrival: NaN,
          firstToken: NaN, lastToken: NaN, outputs: Math.max(0, q.num_tokens - q.num_prompt_tokens), pending: false,
          admitted: q.running,
        });
        this.tables.set(q.seq_id, []);
      }
      this.owners.forEach((holders, b) => {
        for (const seq of holders) {
          if (!this.tables.has(seq)) this.tables.set(seq, []);
          this.tables.get(seq).push(b);
        }
        if (holders.length || this.cached[b]) this.span = b + 1;
      });
      for (const q of this.seqs.values()) this.colors.colorOf(q.req);
      this._tell("snapshot");
    }

    // ---- one step record ---------------------------------------------------------------------
    apply(r, now) {
      const end = r.wall_time + r.duration;
      this.recordsSeen++;
      this.lastRecord = r;
      if (r.duration > 0) this.steps++;
      if (r.tokens_stored !== undefined) this.tokensStored = r.tokens_stored;
      if (r.batching) this.batching = r.batching;
      this.blockCap = r.block_cap || r.num_blocks;
      const B = this.buckets;
      B.add(end, "prefill", r.num_prefill_tokens);
      B.add(end, "decode", r.num_decode_tokens);
      B.add(end, "output", r.num_output_tokens);
      this.tokensTotal += r.num_output_tokens;
      if (r.duration > 0) {
        B.add(end, "busy", r.duration);
        B.add(end, "steps", 1);
      }
      const finished = [];
      this._preemptedNow = null;
      for (const e of r.requests) {
        this._request(e, r, end, finished);
        if (e.phase === "preempted") (this._preemptedNow ??= new Set()).add(e.seq_id);
      }
      for (const ev of r.blocks) this._block(ev, now);
      for (const q of finished) this._finish(q);
      this._tell("step", r, end);
      let running = 0, waiting = 0;
      for (const q of this.seqs.values()) RUNNING.has(q.phase) ? running++ : waiting++;
      this.history.push({t: end, used: r.blocks_used, cachedFree: r.blocks_cached_free, running, waiting,
                         total: r.num_blocks});
      const cut = end - this.window - 2;
      let drop = 0;
      while (drop < this.history.length - 1 && this.history[drop].t < cut) drop++;
      if (drop) this.history.splice(0, drop);
      for (const list of [this.ttft, this.tpot, this.itl]) trim(list, cut);
      while (this.preemptions.length && this.preemptions[0] < cut) this.preemptions.shift();
      trim(this.admissions, cut);
    }

    _request(e, r, end, finished) {
      let q = this.seqs.get(e.seq_id);
      if (!q) {
        q = {seq: e.seq_id, req: e.request_id, sample: e.sample, tokens: 0, prompt: 0, limit: 0, phase: "waiting",
             arrival: r.wall_time, firstToken: NaN, lastToken: NaN, outputs: 0, pending: false};
        if (e.phase === "forked") { // a sample sharing its parent's tokens; its first token came with theirs
          const parent = [...this.seqs.values()].find((p) => p.req === e.request_id && p.seq !== e.seq_id);
          if (parent) Object.assign(q, {tokens: parent.tokens, prompt: parent.prompt, arrival: parent.arrival,
                                        firstToken: parent.firstToken, lastToken: parent.lastToken, outputs: 1,
                                        limit: parent.limit});
        }
        this.seqs.set(e.seq_id, q);
        this.tables.set(e.seq_id, []);
        this.colors.colorOf(e.request_id);
        if (e.phase === "forked") this._tell("arrive", q);
      }
      if (e.phase === "waiting") {
        q.prompt = q.tokens = e.tokens;
        q.limit = e.limit || 0;
        q.arrival = r.wall_time;
        this._tell("arrive", q);
      } else if (e.phase === "prefill" && !q.admitted) {
        // the first chunk of an admission: how much of its tokens the prefix cache gave
        this.admissions.push({t: end, prompt: q.tokens, cached: e.cached || 0});
        q.cached = e.cached || 0;
        q.admitted = true;
      }
      if (e.phase === "preempted") {
        q.admitted = false;
        this.seen.preempted++;
        this.preemptions.push(end);
        this.buckets.add(end, "preempted", 1);
      } else if (e.samples > 0 && (e.phase === "prefill" || e.phase === "decode")) {
        q.tokens += 1;
        q.outputs += 1;
        if (isNaN(q.firstToken)) {
          q.firstToken = end;
          if (!isNaN(q.arrival)) this.ttft.push({t: end, v: end - q.arrival});
        } else if (!isNaN(q.lastToken)) {
          this.itl.push({t: end, v: end - q.lastToken});
          this.buckets.add(end, "itl", end - q.lastToken);
        }
        q.lastToken = end;
      }
      q.phase = e.phase;
      if (e.phase === "finished") {
        q.reason = e.reason;
        finished.push(q);
      }
    }

    _finish(q) {
      if (q.reason !== "abort" && q.reason !== "error" && q.outputs > 1 && !isNaN(q.firstToken)) {
        this.tpot.push({t: q.lastToken, v: (q.lastToken - q.firstToken) / (q.outputs - 1)});
      }
      q.finish = q.lastToken;
      this._tell("leave", q);
      this.seqs.delete(q.seq);
      this.tables.delete(q.seq);
      if (![...this.seqs.values()].some((p) => p.req === q.req)) this.colors.release(q.req);
    }

    _block(ev, now) {
      const b = ev.block_id, holders = this.owners[b];
      if (ev.kind in this.seen) this.seen[ev.kind]++;
      const table = this.tables.get(ev.seq_id);
      switch (ev.kind) {
        case "allocated": case "reused": case "shared":
          holders.push(ev.seq_id);
          if (table) table.push(b);
          break;
        case "released": case "freed": {
          const k = holders.indexOf(ev.seq_id);
          if (k >= 0) holders.splice(k, 1);
          if (table) { const j = table.indexOf(b); if (j >= 0) table.splice(j, 1); }
          if (this._preemptedNow && this._preemptedNow.has(ev.seq_id)) this.flash.set(b, {kind: "preempted", until: now + 2});
          if (!holders.length) this.copiedFrom.delete(b);
          break;
        }
        case "copied": // copy on write: the copy's allocation and the original's release came just before
          this.copiedFrom.set(b, ev.src);
          this.flash.set(b, {kind: "copied", until: now + 1.5});
          this.flash.set(ev.src, {kind: "copied", until: now + 1.5});
          break;
        case "cached": this.cached[b] = 1; break;
        case "evicted":
          this.cached[b] = 0;
          this.flash.set(b, {kind: "evicted", until: now + 1.5});
          break;
      }
      if (b + 1 > this.span) this.span = b + 1;
    }

    // a `device` event: the hardware's utilization (NVML on a GPU, the process's CPU share on a CPU)
    deviceSample(d) {
      this.device = d;
      this.devices.push({t: d.t, v: d.compute_pct / 100});
      trim(this.devices, d.t - this.window - 2);
    }

    // ---- what views read ---------------------------------------------------------------------
    // the sequence holding most of block b's slots (its first holder), and the block's fill
    fillOf(b) {
      const holders = this.owners[b];
      if (!holders.length) return 0;
      const seq = holders[0], q = this.seqs.get(seq), table = this.tables.get(seq);
      if (!q || !table) return this.blockSize;
      const i = table.indexOf(b);
      return Math.max(0, Math.min(this.blockSize, q.tokens - i * this.blockSize));
    }

    blocksOfRequest(req) {
      const out = new Set();
      this.owners.forEach((holders, b) => {
        for (const s of holders) { const q = this.seqs.get(s); if (q && q.req === req) out.add(b); }
      });
      return out;
    }

    requests() { // live requests, oldest first: [{req, color, seqs, phase, tokens, blocks}]
      const by = new Map();
      for (const q of this.seqs.values()) {
        let r = by.get(q.req);
        if (!r) { r = {req: q.req, color: this.colors.colorOf(q.req), seqs: [], phase: q.phase, tokens: 0}; by.set(q.req, r); }
        r.seqs.push(q);
        r.tokens = Math.max(r.tokens, q.tokens);
        if (RUNNING.has(q.phase)) r.phase = q.phase;
      }
      return [...by.values()];
    }

    counts() {
      let used = 0, cachedFree = 0, shared = 0, running = 0, waiting = 0;
      this.owners.forEach((h, b) => {
        if (h.length) { used++; if (h.length > 1) shared++; } else if (this.cached[b]) cachedFree++;
      });
      for (const q of this.seqs.values()) RUNNING.has(q.phase) ? running++ : waiting++;
      return {used, cachedFree, shared, running, waiting, total: this.numBlocks};
    }

    // output tokens per second over the last `rateWindow` seconds, from the buckets
    rates(now) {
      const series = this.buckets.series(now);
      const n = Math.round(this.rateWindow / this.buckets.width);
      const tail = series.slice(-n - 1, -1); // whole buckets only: the current one is still filling
      const sum = (f) => tail.reduce((a, x) => a + (x.b ? x.b[f] : 0), 0);
      const span = tail.length * this.buckets.width;
      return {output: sum("output") / span, prefill: sum("prefill") / span, busy: sum("busy") / span,
              span, tokens: sum("output"), from: tail.length ? tail[0].t : now, to: tail.length ? tail[tail.length - 1].t + this.buckets.width : now};
    }

    // the share of admitted prompt tokens the prefix cache gave (their prefill saved), last window
    prefixHits() {
      let prompt = 0, cached = 0;
      for (const a of this.admissions) { prompt += a.prompt; cached += a.cached; }
      return {prompt, cached, rate: prompt ? cached / prompt : NaN};
    }

    latency(now, window) {
      const since = now - (window || this.window);
      const pick = (list) => list.filter((x) => x.t >= since).map((x) => x.v);
      const ttft = pick(this.ttft), tpot = pick(this.tpot), itl = pick(this.itl);
      return {ttft50: quantile(ttft, 0.5), ttft95: quantile(ttft, 0.95), tpot50: quantile(tpot, 0.5),
              tpot95: quantile(tpot, 0.95), itl50: quantile(itl, 0.5), itl95: quantile(itl, 0.95),
              n: ttft.length};
    }
  }

  function trim(list, cut) {
    let k = 0;
    while (k < list.length && list[k].t < cut) k++;
    if (k) list.splice(0, k);
  }

  root.PagedChatFeed = {FeedState, RequestColors, Buckets, quantile};
})(typeof window !== "undefined" ? window : globalThis);

// PagedChat live view: the three wastes of a contiguous KV cache, beside the paged one, on the live
// requests. A contiguous allocator (ui/live/concepts.js) is replayed on the same arrivals and
// departures in a pool of the same size; each sequence reserves its maximum length in one piece.
(function (root) {
  "use strict";
  const C = root.PagedChatConcepts;

  // A FeedState observer that keeps the contiguous allocator in step with the live sequences.
  class WasteModel {
    constructor() {
      this.mode = "context"; // context: each reserves the model's context | limit: prompt + max_tokens
      this.alloc = null;
    }
    reserveOf(q, st) {
      const context = st.maxModelLen || q.limit || q.tokens;
      if (this.mode === "limit" && q.limit) return Math.min(q.limit, context);
      return context;
    }
    snapshot(st) { this.rebuild(st); }
    rebuild(st) { // from the live sequences in arrival (sequence id) order
      if (!st.numBlocks) return;
      this.alloc = new C.ContiguousAllocator(st.numBlocks * st.blockSize);
      const seqs = [...st.seqs.values()].sort((a, b) => a.seq - b.seq);
      for (const q of seqs) this.alloc.arrive(q.seq, this.reserveOf(q, st));
    }
    setMode(mode, st) {
      if (mode === this.mode) return;
      this.mode = mode;
      this.rebuild(st);
    }
    arrive(q, st) { if (this.alloc) this.alloc.arrive(q.seq, this.reserveOf(q, st)); }
    leave(q) { if (this.alloc) this.alloc.leave(q.seq); }

    // both caches' figures now
    figures(st) {
      if (!this.alloc) return null;
      const live = new Map();
      for (const q of st.seqs.values()) live.set(q.seq, {tokens: q.tokens, limit: q.limit || st.maxModelLen || q.tokens});
      const cont = C.contiguousWaste(this.alloc, live);
      const counts = st.counts();
      const paged = C.pagedWaste({used: counts.used, blockSize: st.blockSize, stored: st.tokensStored});
      let pagedHeld = 0;
      for (const q of st.seqs.values()) if (q.phase !== "waiting" && q.phase !== "preempted") pagedHeld++;
      return {cont, paged, pagedHeld, live: st.seqs.size, pool: st.numBlocks * st.blockSize, layout: this.alloc.layout()};
    }
  }

  // Two bars, one pool each: the contiguous cache's regions (tokens, slots reserved for tokens to
  // come, slots beyond the request's own limit) and holes (red: too small to use); the paged
  // cache's tokens and the empty slots of last blocks, packed (its blocks can sit anywhere).
  // diagonal stripes over a colour: the slots a cache cannot use
  function hatch(ctx, color, line) {
    const p = document.createElement("canvas");
    p.width = p.height = 8;
    const c = p.getContext("2d");
    c.fillStyle = color;
    c.fillRect(0, 0, 8, 8);
    c.strokeStyle = line;
    c.lineWidth = 2;
    c.beginPath(); c.moveTo(0, 8); c.lineTo(8, 0); c.moveTo(-2, 2); c.lineTo(2, -2); c.moveTo(6, 10); c.lineTo(10, 6); c.stroke();
    return ctx.createPattern(p, "repeat");
  }

  function drawWastes(canvas, f, spec) {
    const {ctx, w, h} = root.PagedChatCharts.fit(canvas);
    if (!f) return;
    const font = spec.font || 12, th = spec.theme;
    const barH = Math.max(18, (h - font * 3.6) / 2);
    const X = (slot) => (slot / f.pool) * w;
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    ctx.fillStyle = th.fg;
    ctx.fillText(`Contiguous: holds ${f.cont.held} of ${f.live} live sequences`, 0, 0);
    const y1 = font * 1.4;
    ctx.fillStyle = th.free;
    ctx.fillRect(0, y1, w, barH);
    const byId = new Map();
    for (const r of f.layout.regions) byId.set(r.id, r);
    const threshold = f.cont.threshold || Infinity;
    for (const hole of f.layout.holes) { // a hole too small for the next request: external fragmentation
      if (hole.size < threshold && f.cont.external > 0) {
        ctx.fillStyle = hatch(ctx, "#ffffff", "#dc2626");
        ctx.fillRect(X(hole.start), y1, Math.max(1, X(hole.size)), barH);
      }
    }
    for (const r of f.layout.regions) {
      const q = spec.seqs.get(r.id);
      const color = q ? spec.colorOf(q.req) : "#888";
      const tokens = q ? Math.min(q.tokens, r.size) : 0;
      const limit = q ? Math.min(r.size, q.limit || r.size) : r.size;
      ctx.fillStyle = color;
      ctx.globalAlpha = 1;
      ctx.fillRect(X(r.start), y1, Math.max(1, X(tokens)), barH);
      ctx.globalAlpha = 0.35; // reserved for tokens still to come
      ctx.fillRect(X(r.start + tokens), y1, Math.max(0, X(limit - tokens)), barH);
      ctx.globalAlpha = 1; // beyond its own limit: never used
      ctx.fillStyle = hatch(ctx, "#e5e7eb", "#9ca3af");
      ctx.fillRect(X(r.start + limit), y1, Math.max(0, X(r.size - limit)), barH);
      ctx.strokeStyle = th.bg;
      ctx.lineWidth = 1;
      ctx.strokeRect(X(r.start) + 0.5, y1 + 0.5, Math.max(1, X(r.size) - 1), barH - 1);
    }
    const y2 = y1 + barH + font * 0.8;
    ctx.fillStyle = th.fg;
    ctx.fillText(`Paged: holds all ${f.pagedHeld} running sequences (${f.paged.reserved.toLocaleString()} slots in blocks)`, 0, y2);
    const y3 = y2 + font * 1.4;
    ctx.fillStyle = th.free;
    ctx.fillRect(0, y3, w, barH);
    ctx.fillStyle = "#2563eb";
    ctx.fillRect(0, y3, Math.max(f.paged.stored ? 1 : 0, X(f.paged.stored)), barH);
    ctx.globalAlpha = 0.35;
    ctx.fillRect(X(f.paged.stored), y3, Math.max(f.paged.lastBlockEmpty ? 1 : 0, X(f.paged.lastBlockEmpty)), barH);
    ctx.globalAlpha = 1;
  }

  root.PagedChatWastes = {WasteModel, drawWastes};
})(typeof window !== "undefined" ? window : globalThis);

// PagedChat live view: three ideas of LLM serving, computed on the live engine's requests and steps.
//
// Plain logic, no drawing, no dependencies (tests/test_concepts_js.py runs it alone in a browser):
//  1. what a contiguous KV cache would do with the same requests in a pool of the same size
//     (ContiguousAllocator, contiguousWaste), beside the paged cache's one waste (pagedWaste);
//  2. what static batching would do with the same requests at the measured step costs
//     (fitStepCost, staticBatching, continuousThroughput, throughputRatio);
//  3. where one step sits against a device's roofline (stepRoofline).
(function (root) {
  "use strict";

  // ---- 1. contiguous allocation ------------------------------------------------------------

  // Each request takes one contiguous region of its reservation, first fit (lowest start among the
  // holes large enough); one that fits nowhere waits in a FIFO queue. When a region is freed, the
  // queue is retried in arrival order, each request placed if some hole fits it and skipped (not
  // blocked on) otherwise. Regions are kept sorted by start, so holes are the gaps between them.
  class ContiguousAllocator {
    constructor(poolSlots) {
      this.poolSlots = Math.max(0, Math.floor(poolSlots));
      this.regions = []; // [{id, start, size}] sorted by start
      this.queue = []; // [{id, size}] in arrival order
      this.sizes = new Map(); // id -> reservation, held or queued
    }

    // A reservation that is not a finite number can never be held (Infinity); others are at least 1.
    arrive(id, reserve) {
      if (this.sizes.has(id)) return;
      const size = Number.isFinite(reserve) ? Math.max(1, Math.ceil(reserve)) : Infinity;
      this.sizes.set(id, size);
      if (!this._place(id, size)) this.queue.push({id, size});
    }

    leave(id) {
      if (!this.sizes.has(id)) return;
      this.sizes.delete(id);
      const k = this.regions.findIndex((r) => r.id === id);
      if (k < 0) { // still queued: it only leaves the queue
        this.queue = this.queue.filter((q) => q.id !== id);
        return;
      }
      this.regions.splice(k, 1); // its slots join the holes beside it: holes are the gaps
      this.queue = this.queue.filter((q) => !this._place(q.id, q.size));
    }

    holes() {
      const out = [];
      let at = 0;
      for (const r of this.regions) {
        if (r.start > at) out.push({start: at, size: r.start - at});
        at = r.start + r.size;
      }
      if (this.poolSlots > at) out.push({start: at, size: this.poolSlots - at});
      return out;
    }

    layout() {
      return {regions: this.regions.map((r) => ({id: r.id, start: r.start, size: r.size})),
              holes: this.holes(), queued: this.queue.map((q) => q.id)};
    }

    _place(id, size) { // first fit; true when placed
      const hole = this.holes().find((h) => h.size >= size);
      if (!hole) return false;
      let k = 0;
      while (k < this.regions.length && this.regions[k].start < hole.start) k++;
      this.regions.splice(k, 0, {id, start: hole.start, size});
      return true;
    }
  }

  // The contiguous cache's wastes now. live: Map or object, id -> {tokens, limit}.
  // Invariant: reserved = stored + reservedUnused + internal, and reserved + free = the pool.
  function contiguousWaste(allocator, live) {
    const get = live instanceof Map ? (id) => live.get(id) : (id) => (live ? live[id] : undefined);
    const out = {held: 0, refused: 0, reserved: 0, stored: 0, reservedUnused: 0, internal: 0, external: 0,
                 free: 0, largestHole: 0, threshold: 0};
    let smallestHeld = Infinity;
    for (const r of allocator.regions) {
      out.reserved += r.size;
      const q = get(r.id);
      if (!q) { out.reservedUnused += r.size; continue; } // not (yet) in the live set: all still to come
      out.held++;
      smallestHeld = Math.min(smallestHeld, r.size);
      const tokens = Math.min(Math.max(0, q.tokens || 0), r.size);
      // a request holding t tokens can reach at least t, whatever its recorded limit says
      const reach = Math.min(Math.max(q.limit || 0, tokens), r.size);
      out.stored += tokens;
      out.reservedUnused += reach - tokens;
      out.internal += r.size - reach;
    }
    // "too small" is measured against the first refused request the pool could ever hold (one larger
    // than the pool is refused for its size, not for fragmentation); with none, the smallest held one
    let firstQueued = 0;
    for (const q of allocator.queue) {
      if (!get(q.id)) continue;
      out.refused++;
      if (!firstQueued && q.size <= allocator.poolSlots) firstQueued = q.size;
    }
    out.threshold = firstQueued || (out.held ? smallestHeld : 0);
    for (const h of allocator.holes()) {
      out.free += h.size;
      out.largestHole = Math.max(out.largestHole, h.size);
      if (h.size < out.threshold) out.external += h.size;
    }
    return out;
  }

  // The paged cache's one waste: the empty tail of each sequence's last block.
  // blocks: {used (blocks in use), blockSize, stored (slots holding a token, each physical slot once)}
  function pagedWaste(blocks) {
    const reserved = blocks.used * blocks.blockSize;
    return {reserved, stored: blocks.stored, lastBlockEmpty: Math.max(0, reserved - blocks.stored)};
  }

  // ---- 2. static batching, counterfactual --------------------------------------------------

  const FALLBACK_PREFILL = 1e-5; // s per prompt token when no step says anything better

  function median(xs) {
    if (!xs.length) return NaN;
    const s = xs.slice().sort((a, b) => a - b), m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  // Least squares of y = a + b*x; with fewer than 2 distinct x, b = 0 and a = mean(y). Noise can
  // make a line slope down or cross below zero; a step never costs less than nothing, so a
  // negative b falls back to the mean and a negative a to a line through the origin.
  function fitLine(xs, ys) {
    const n = xs.length;
    if (!n) return {a: NaN, b: 0};
    const mx = xs.reduce((s, x) => s + x, 0) / n, my = ys.reduce((s, y) => s + y, 0) / n;
    let sxx = 0, sxy = 0;
    for (let i = 0; i < n; i++) { sxx += (xs[i] - mx) ** 2; sxy += (xs[i] - mx) * (ys[i] - my); }
    if (new Set(xs).size < 2 || sxx === 0) return {a: my, b: 0};
    let b = sxy / sxx, a = my - b * mx;
    if (b < 0) return {a: my, b: 0};
    if (a < 0) {
      let x2 = 0, xy = 0;
      for (let i = 0; i < n; i++) { x2 += xs[i] * xs[i]; xy += xs[i] * ys[i]; }
      a = 0; b = xy / x2;
    }
    return {a, b};
  }

  // A step's cost from measured steps [{duration (s), prefill, decode}]: decode-only steps fit
  // a + b*decode; prefill-bearing ones give p, the median of their time beyond that line per prompt
  // token. With no decode-only step, a is the shortest step measured (a lower bound of a step's
  // fixed cost) and b = 0.
  function fitStepCost(steps) {
    const ok = (steps || []).filter((s) => Number.isFinite(s.duration) && s.duration > 0);
    const dec = ok.filter((s) => s.prefill === 0 && s.decode > 0);
    const pre = ok.filter((s) => s.prefill > 0);
    let {a, b} = fitLine(dec.map((s) => s.decode), dec.map((s) => s.duration));
    if (!dec.length) { a = ok.length ? Math.min(...ok.map((s) => s.duration)) : 0; b = 0; }
    let p = median(pre.map((s) => Math.max(0, s.duration - (a + b * s.decode)) / s.prefill));
    if (!Number.isFinite(p)) p = b > 0 ? b : FALLBACK_PREFILL;
    return {a, b, p, decodeSteps: dec.length, prefillSteps: pre.length,
            decodeStep: (n) => a + b * n, prefillStep: (tokens) => a + p * tokens};
  }

  // The same requests [{id, arrival, prompt, output}] served in static batches of `batchSize`, formed
  // in arrival order: a batch starts when its last member has arrived and the batch before it has
  // ended; one prefill step of all its prompts gives every member its first token; then
  // (longest output - 1) decode steps of the whole batch, members that have finished still padding
  // their slot (a short last batch runs at its own size).
  function staticBatching(requests, batchSize, cost) {
    const size = Math.max(1, Math.floor(batchSize) || 1);
    const order = requests.map((r, i) => ({r, i})).sort((x, y) => x.r.arrival - y.r.arrival || x.i - y.i);
    const out = {requests: [], batches: [], makespan: 0, tokens: 0, throughput: NaN};
    let end = -Infinity;
    for (let k = 0; k * size < order.length; k++) {
      const members = order.slice(k * size, (k + 1) * size).map((x) => x.r);
      const start = Math.max(members[members.length - 1].arrival, end);
      const prefillEnd = start + cost.prefillStep(members.reduce((s, r) => s + r.prompt, 0));
      const decodeTime = cost.decodeStep(members.length);
      end = prefillEnd;
      for (const r of members) {
        const output = Math.max(1, r.output);
        const finish = prefillEnd + (output - 1) * decodeTime;
        out.requests.push({id: r.id, batch: k, start, firstToken: prefillEnd, finish});
        out.tokens += output;
        end = Math.max(end, finish);
      }
      out.batches.push({start, end, members: members.map((r) => r.id)});
    }
    if (order.length) {
      out.makespan = end - order[0].r.arrival;
      out.throughput = out.makespan > 0 ? out.tokens / out.makespan : NaN;
    }
    return out;
  }

  // Output tokens per second over the span from the first arrival to the last finish.
  function continuousThroughput(requests) {
    if (!requests || !requests.length) return NaN;
    let first = Infinity, last = -Infinity, tokens = 0;
    for (const r of requests) {
      first = Math.min(first, r.arrival);
      last = Math.max(last, r.finish);
      tokens += r.output;
    }
    const span = last - first;
    return span > 0 && Number.isFinite(tokens / span) ? tokens / span : NaN;
  }

  // continuous / static; NaN (never Infinity) when either is missing or the static one is not > 0.
  function throughputRatio(actual, counterfactual) {
    if (!Number.isFinite(actual) || !Number.isFinite(counterfactual) || counterfactual <= 0) return NaN;
    return actual / counterfactual;
  }

  // ---- 3. one step against the roofline ----------------------------------------------------

  // step: {duration (s), prefill, decode (new tokens), context (sum over its sequences of the tokens
  // each attends to), seqs (sequences in the step; optional)}.
  // model: {paramBytes, params (matmul parameters), kvBytesPerToken, numLayers, hidden}.
  // Bytes: the weights read once, every attended token's K and V read, the new tokens' K and V written.
  // FLOPs: 2 per parameter per new token, plus attention, 4 * numLayers * hidden * sum_i new_i * ctx_i
  // (QK^T and PV, 2 FLOPs a multiply-add each). Only totals are known, so sum_i new_i * ctx_i is taken
  // as new tokens * context / seqs: exact for a decode-only step (one new token a sequence) and for a
  // lone prefill, where it counts each prompt token against the whole context, about twice what
  // causal attention does. Without seqs: one a decode token, plus one when the step carries prefill.
  function stepRoofline(step, model) {
    const tokens = step.prefill + step.decode;
    const seqs = Math.max(1, step.seqs || step.decode + (step.prefill > 0 ? 1 : 0));
    const bytes = model.paramBytes + (step.context + tokens) * model.kvBytesPerToken;
    const attention = 4 * model.numLayers * model.hidden * tokens * step.context / seqs;
    const flops = 2 * model.params * tokens + attention;
    return {bytes, flops, intensity: flops / bytes, bandwidth: bytes / step.duration, flopRate: flops / step.duration};
  }

  root.PagedChatConcepts = {ContiguousAllocator, contiguousWaste, pagedWaste, fitStepCost, staticBatching,
                            continuousThroughput, throughputRatio, stepRoofline};
})(typeof window !== "undefined" ? window : globalThis);

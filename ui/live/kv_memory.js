// PagedChat live view: the KV-cache formula with the model's own numbers, and what it means for the
// memory in use right now (tokens in the cache x bytes per token), beside the pool's size.
(function (root) {
  "use strict";

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return u === 0 ? `${Math.round(n)} B` : `${n.toFixed(n >= 100 ? 0 : 1)} ${units[u]}`;
  }

  // The figures of the panel, from the feed state alone (pure: tests read it).
  function kvFigures(st) {
    const e = st.engine;
    if (!e || !e.kv_bytes_per_token) return null;
    const perToken = e.kv_bytes_per_token, bs = st.blockSize;
    const counts = st.counts();
    const stored = st.tokensStored, slots = counts.used * bs;
    let reserveAll = 0;
    for (const q of st.seqs.values()) reserveAll += st.maxModelLen || q.tokens;
    return {perToken, layers: e.num_layers, kvHeads: e.num_kv_heads, headDim: e.head_dim, dtype: e.dtype,
            dtypeBytes: e.dtype_bytes, stored, inUse: stored * perToken, slots, slotBytes: slots * perToken,
            pool: st.numBlocks * bs * perToken, poolBlocks: st.numBlocks, blockSize: bs, usedBlocks: counts.used,
            live: st.seqs.size, context: st.maxModelLen, contiguous: reserveAll * perToken,
            capBlocks: st.blockCap || st.numBlocks, weightBytes: e.weight_bytes || 0, quantization: e.quantization || "",
            fullWeightBytes: (e.num_params || 0) * (e.dtype_bytes || 0)};
  }

  function render(box, f, font) {
    if (!f) { box.textContent = "The engine's model facts are not in this feed."; return; }
    const n = (v) => v.toLocaleString();
    const pct = (100 * f.slotBytes) / Math.max(1, f.pool);
    box.innerHTML = "";
    const line = (cls, html) => { const d = document.createElement("div"); d.className = cls; d.innerHTML = html; box.appendChild(d); };
    line("pc-kv-formula", `bytes per token = 2 (K and V) × <b>${f.layers}</b> layers × <b>${f.kvHeads}</b> KV heads × ` +
         `<b>${f.headDim}</b> head dim × <b>${f.dtypeBytes}</b> bytes (${f.dtype}) = <b>${n(f.perToken)} B</b> (${bytes(f.perToken)})`);
    line("pc-kv-now", `in the cache now: <b>${n(f.stored)}</b> tokens × ${bytes(f.perToken)} = <b>${bytes(f.inUse)}</b>` +
         ` · in ${n(f.usedBlocks)} blocks of ${f.blockSize} slots: ${bytes(f.slotBytes)}, ${pct < 10 ? pct.toFixed(1) : Math.round(pct)}% of the ` +
         `${bytes(f.pool)} pool (${n(f.poolBlocks)} blocks)` +
         (f.capBlocks < f.poolBlocks ? ` · <span class="pc-warn">memory pressure: only ${n(f.capBlocks)} blocks usable</span>` : ""));
    const bar = document.createElement("div");
    bar.className = "pc-kv-bar";
    const used = document.createElement("i"), slack = document.createElement("i");
    used.style.width = `${(100 * f.inUse) / Math.max(1, f.pool)}%`;
    slack.className = "pc-kv-slack";
    slack.style.width = `${(100 * (f.slotBytes - f.inUse)) / Math.max(1, f.pool)}%`;
    bar.append(used, slack);
    if (f.capBlocks < f.poolBlocks) {
      const cap = document.createElement("b");
      cap.className = "pc-kv-cap";
      cap.style.left = `${(100 * f.capBlocks) / f.poolBlocks}%`;
      bar.appendChild(cap);
    }
    box.appendChild(bar);
    if (f.weightBytes) {  // what each decode step reads besides the KV cache: why quantized decode is faster
      const q = f.quantization;
      line("pc-kv-weights", `weights each decode step reads: <b>${bytes(f.weightBytes)}</b>` +
           (q ? ` (${q} weights; at ${f.dtype} they would be ${bytes(f.fullWeightBytes)}: ` +
                `${(f.fullWeightBytes / f.weightBytes).toFixed(1)}× fewer bytes a step)`
              : ` (${f.dtype}; <code>--quantization int8</code> would read about ${f.dtypeBytes}× fewer bytes, ` +
                `<code>int4</code> about ${2 * f.dtypeBytes}×)`));
    }
    if (f.live && f.context) {
      line("pc-kv-contig", `a contiguous cache reserving the full context (${n(f.context)} tokens) for these ${f.live} sequences ` +
           `would need ${f.live} × ${n(f.context)} × ${bytes(f.perToken)} = <b>${bytes(f.contiguous)}</b>` +
           (f.contiguous > f.pool ? ` (more than the pool: see the three wastes)` : ""));
    }
  }

  root.PagedChatKv = {kvFigures, render, bytes};
})(typeof window !== "undefined" ? window : globalThis);

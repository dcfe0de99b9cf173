// PagedChat live view: the block table of one request. Its logical blocks in order, each with the
// physical block it maps to, the tokens it holds (as the model tokenized them, when the server can
// say), its reference count, and whether it came from the prefix cache; the last block's empty slots
// show. For n > 1 the samples' tables sit side by side, a block all samples share drawn once.
(function (root) {
  "use strict";
  const {el} = root.PagedChatDom;

  // A printable form of one token's text: spaces and newlines made visible.
  function showToken(text) {
    if (text === undefined || text === null) return "";
    return text.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "␣");
  }

  // The data the view draws: from the engine's answer (`fetched`, GET api/request/<id>) when it has
  // one, else from the feed's state alone (a recording: no token text).
  function tableData(st, req, fetched) {
    const bs = st.blockSize;
    if (fetched && fetched.samples && fetched.samples.length) {
      return {req, blockSize: bs, text: !!fetched.text, samples: fetched.samples.map((s) => ({
        seq: s.seq_id, sample: s.sample, status: s.status, tokens: s.num_tokens, prompt: s.num_prompt_tokens,
        cachedBlocks: Math.floor((s.num_cached_tokens || 0) / bs), table: s.block_table,
        refs: s.blocks.map((b) => b.ref_count), hashed: s.blocks.map((b) => b.cached),
        ids: s.token_ids, texts: s.token_texts})), private: !fetched.text, copiedFrom: st.copiedFrom};
    }
    const samples = [];
    for (const q of st.seqs.values()) {
      if (q.req !== req) continue;
      const table = st.tables.get(q.seq) || [];
      samples.push({seq: q.seq, sample: q.sample, status: q.phase, tokens: q.tokens, prompt: q.prompt, cachedBlocks: 0,
                    table, refs: table.map((b) => st.owners[b].length), hashed: table.map((b) => !!st.cached[b]),
                    ids: null, texts: null});
    }
    samples.sort((a, b) => a.sample - b.sample);
    return {req, blockSize: bs, text: false, samples, copiedFrom: st.copiedFrom};
  }

  // One logical block's cell.
  function blockCell(d, s, i, joined) {
    const bs = d.blockSize, b = s.table[i];
    const cell = el("div", "pc-bt-block" + (joined ? " pc-bt-joined" : ""));
    cell.dataset.block = String(b);
    cell.dataset.logical = String(i);
    const head = el("div", "pc-bt-head");
    head.append(el("span", "pc-bt-l", `L${i}`), el("span", "pc-bt-arrow", "→"), el("span", "pc-bt-p", `#${b}`));
    const ref = s.refs[i] || 1;
    if (ref > 1) head.append(el("span", "pc-bt-ref", `ref ${ref}`));
    if (d.copiedFrom && d.copiedFrom.has(b)) head.append(el("span", "pc-bt-cow", `copy of #${d.copiedFrom.get(b)}`));
    if (i < s.cachedBlocks) head.append(el("span", "pc-bt-hit", "prefix hit"));
    else if (s.hashed[i]) head.append(el("span", "pc-bt-cached", "cached"));
    cell.appendChild(head);
    const slots = el("div", "pc-bt-slots");
    const filled = Math.max(0, Math.min(bs, s.tokens - i * bs));
    for (let j = 0; j < bs; j++) {
      const k = i * bs + j;
      if (j >= filled) { slots.appendChild(el("span", "pc-bt-slot pc-bt-empty", "")); continue; }
      const out = k >= s.prompt;
      const tok = el("span", "pc-bt-slot" + (out ? " pc-bt-out" : ""), d.text && s.texts ? showToken(s.texts[k]) : "");
      if (s.ids) { tok.dataset.id = String(s.ids[k]); tok.title = `token ${k}: id ${s.ids[k]}`; }
      slots.appendChild(tok);
    }
    cell.appendChild(slots);
    const foot = el("div", "pc-bt-foot", `${filled}/${bs} slots${filled < bs ? ` · ${bs - filled} empty` : ""}`);
    cell.appendChild(foot);
    return cell;
  }

  // Render into `box` (replacing what it held). Returns a key: unchanged data need no redraw.
  function renderBlockTable(box, d, colorOf) {
    const frag = document.createDocumentFragment();
    const n = d.samples.length;
    const head = el("div", "pc-bt-summary");
    const s0 = d.samples[0];
    const blocks = new Set();
    for (const s of d.samples) for (const b of s.table) blocks.add(b);
    const logical = d.samples.reduce((a, s) => a + s.table.length, 0);
    head.textContent = `${d.req}: ${n > 1 ? `${n} samples, ` : ""}${s0.tokens} tokens (${s0.prompt} prompt) in ` +
      `${s0.table.length} logical blocks of ${d.blockSize}` +
      (n > 1 ? ` each; ${logical} logical blocks map to ${blocks.size} physical ones` : "") +
      (s0.cachedBlocks ? `; ${s0.cachedBlocks === 1 ? "the first block" : `the first ${s0.cachedBlocks} blocks`} came from the prefix cache` : "") +
      (d.text ? "" : d.private ? " (the server keeps other people's text private)" : " (token text is not in the feed)");
    head.style.setProperty("--c", colorOf(d.req));
    frag.appendChild(head);
    const grid = el("div", "pc-bt-grid" + (n > 1 ? " pc-bt-multi" : ""));
    const width = Math.max(...d.samples.map((s) => s.table.length));
    if (n > 1) grid.style.gridTemplateColumns = `auto repeat(${width}, minmax(9.5em, 1fr))`;
    if (n === 1) {
      for (let i = 0; i < s0.table.length; i++) grid.appendChild(blockCell(d, s0, i, false));
    } else {
      d.samples.forEach((s, r) => {
        const label = el("div", "pc-bt-label", `sample ${s.sample + 1}`);
        label.style.gridRow = String(r + 1);
        label.style.gridColumn = "1";
        grid.appendChild(label);
      });
      for (let i = 0; i < width; i++) {
        const ids = d.samples.map((s) => s.table[i]);
        if (ids.every((b) => b !== undefined && b === ids[0])) { // every sample holds the same block: one cell
          const cell = blockCell(d, d.samples[0], i, true);
          cell.style.gridColumn = String(i + 2);
          cell.style.gridRow = `1 / span ${n}`;
          grid.appendChild(cell);
          continue;
        }
        d.samples.forEach((s, r) => {
          if (s.table[i] === undefined) return;
          const cell = blockCell(d, s, i, false);
          cell.style.gridColumn = String(i + 2);
          cell.style.gridRow = String(r + 1);
          grid.appendChild(cell);
        });
      }
    }
    frag.appendChild(grid);
    box.replaceChildren(frag);
  }

  function tableKey(d) {
    const cow = d.copiedFrom ? [...d.copiedFrom.keys()].filter((b) => d.samples.some((s) => s.table.includes(b))).join(",") : "";
    return d.samples.map((s) => `${s.seq}:${s.tokens}:${s.table.join(",")}:${s.refs.join(",")}:${d.text}`).join("|") + "|" + cow;
  }

  root.PagedChatBlockTable = {tableData, renderBlockTable, tableKey, showToken};
})(typeof window !== "undefined" ? window : globalThis);

"""What structured output costs a step: compiling a schema, and the grammar mask of a batch.

    python benchmarks/structured_output_mask.py [--tokenizer DIR] [--device cpu|cuda] [--rows 64]

The tokenizer defaults to the embedded model's (under $PAGEDCHAT_CACHE). The rows walk the same
JSON document at different offsets, so their grammar states differ as a real batch's do. Prints a
table: the llguidance tokenizer set-up, a schema's compile (validation included), and per step the
mask fill on the host and the fill plus its application to [rows, vocab] logits on the device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from engine.core.guided_decoding import GuidedDecoding
from engine.runner.structured_output import GrammarCompiler, apply_guides, fill_bitmask

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}},
                                           "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
          "required": ["name", "age", "city"]}
DOCUMENT = {"name": "Alice Smith", "age": 31, "tags": ["a", "bb", "climbing"], "city": "Rome"}


def main() -> None:
    cache = Path(os.environ.get("PAGEDCHAT_CACHE", Path.home() / ".cache/pagedchat"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default=str(cache / "embedded"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    device, rows = torch.device(args.device), args.rows
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    start = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))
    setup = time.perf_counter() - start
    guided = GuidedDecoding.json_schema(SCHEMA)
    start = time.perf_counter()
    compiler.grammar(guided)
    compile_s = time.perf_counter() - start

    ids = tokenizer.encode(json.dumps(DOCUMENT))
    guides = [compiler.start(guided) for _ in range(rows)]
    for i, g in enumerate(guides):
        g.advance(ids[:i % len(ids)], 0)
    logits = torch.randn(rows, len(tokenizer), device=device)
    table = [SimpleNamespace(guide=g) for g in guides]
    fills, applies = [], []
    for step in range(3 * len(ids)):
        start = time.perf_counter()
        fill_bitmask(guides)
        fills.append(time.perf_counter() - start)
        start = time.perf_counter()
        apply_guides(logits, table).amax().item()  # the item() waits for the device
        applies.append(time.perf_counter() - start)
        for i, g in enumerate(guides):  # each row one token further, a finished one starts over
            at = (i + step + 1) % len(ids)
            if at == 0:
                guides[i] = table[i].guide = compiler.start(guided)
            else:
                guides[i].advance(ids[:at], 0)

    cpu = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"llguidance, {len(tokenizer)}-token vocabulary, {rows} rows, {name}")
    print("| what | ms |\n|---|---|")
    print(f"| tokenizer set-up (once per engine) | {setup * 1e3:.0f} |")
    print(f"| compile and validate the schema | {compile_s * 1e3:.1f} |")
    for what, times in ((f"fill {rows} rows' masks", fills), (f"fill + apply on {device.type}", applies)):
        print(f"| {what} per step (median / max) | {statistics.median(times) * 1e3:.2f} / {max(times) * 1e3:.2f} |")


if __name__ == "__main__":
    main()

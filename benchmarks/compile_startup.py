"""How long a compiled CPU engine takes to start: the embedded model at int4 with its decode steps
compiled (load, quantize, compile and warm up), once. Point TORCHINDUCTOR_CACHE_DIR at an empty
folder for a cold start, and run again for a start from inductor's on-disk cache; TREE times another
checkout (A/B).

    TORCHINDUCTOR_CACHE_DIR=/tmp/ic python benchmarks/compile_startup.py [TREE]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

tree = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, tree)

import torch  # noqa: E402

from engine import LLM  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    LLM("embedded", quantization="int4", compile_decode=True)
    print(f"{tree}: load and warm-up {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

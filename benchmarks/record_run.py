"""Record a run of the engine's event feed under the load generator, as `python app.py --record`
does, without the web server: how assets/recordings/ are made on the GPU machine.

    python benchmarks/record_run.py --users 64 --seconds 15 --out assets/recordings/h100-64-users.jsonl.gz
    python benchmarks/record_run.py --scenario memory-pressure --seconds 15 --out pressure.jsonl.gz

The engine runs on its thread with the dashboard's load generator at N simulated users (past 64,
the generator's cap for visitors, with the same behaviour); recording starts once the engine is
built (CUDA graphs captured) and ends `--seconds` later, after the load has stopped and its
requests were aborted. Prints what was recorded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from engine.serving.engine_thread import EngineThread  # noqa: E402
from engine.serving.llm_engine import LLMEngine  # noqa: E402
from server.recording import FeedRecorder, read_recording  # noqa: E402
from ui.load_generator import LoadGenerator, LoadPolicy, load_prompts  # noqa: E402
from ui.scenarios import SCENARIOS, run_scenario  # noqa: E402

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--name", default="SmolLM2-135M-Instruct", help="the model's name in the recording")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--scenario", default=None, choices=[s.key for s in SCENARIOS],
                    help="run a dashboard scenario (its load and controls) instead of plain users")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--num-blocks", type=int, default=None, help="KV pool size (default: from memory)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    class Load(LoadGenerator):
        MAX_USERS = max(LoadGenerator.MAX_USERS, args.users)

    config = EngineConfig(model=args.model, device=args.device, cache=CacheConfig(num_blocks=args.num_blocks),
                          scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs))
    engine = EngineThread(LLMEngine(config)).start()
    load = Load(engine, load_prompts(PROMPTS), seed=0, policy=LoadPolicy(time_limit_s=args.seconds + 60))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    recorder = FeedRecorder(engine, args.out, args.name).start()
    start = time.monotonic()
    if args.scenario:
        args.users = run_scenario(engine, load, args.scenario).workload(engine.info.device == "cpu")[0]
    else:
        load.start(args.users)
    time.sleep(args.seconds)
    load.stop()
    time.sleep(0.5)  # the aborts' records
    recorder.stop()
    engine.stop()
    took = time.monotonic() - start
    rec = read_recording(args.out)
    steps = [r for r in rec.records if r["duration"] > 0]
    tokens = sum(r["num_output_tokens"] for r in rec.records)
    size = Path(args.out).stat().st_size
    print(f"device: {engine.info.device}, model: {args.name}, pool: {engine.info.num_blocks:,} blocks of "
          f"{engine.info.block_size}")
    what = f"the {args.scenario!r} scenario: " if args.scenario else ""
    print(f"workload: {what}{args.users} simulated users (the dashboard's load generator) for {args.seconds:g} s")
    print(f"recorded: {len(rec.records):,} records, {len(steps):,} steps ({len(steps) / took:.0f}/s), "
          f"{tokens:,} output tokens ({tokens / took:,.0f} tok/s), {recorder.missed} missed, "
          f"{size / 2**20:.2f} MiB -> {args.out}")


if __name__ == "__main__":
    main()

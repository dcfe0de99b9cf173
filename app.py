"""PagedChat: `python app.py` serves the chat UI, the live dashboard and an OpenAI-compatible API
from one process, with the engine stepping on its own background thread."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.serving.engine_info import EngineInfo
from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.serving.engine_thread import EngineThread
from engine.serving.llm_engine import LLMEngine
from server.access import LOOPBACK, default_allowed_hosts
from server.foreground import serve
from server.http_app import build_http_app, build_remote_app, build_replay_app
from server.remote_client import RemoteEngine
from server.remote_fleet import RemoteFleet, RemoteSpec
from server.kv_event_publisher import KVEventPublisher, engine_sink
from server.limits import ServerLimits
from server.recording import FeedRecorder, read_recording
from server.replay import ReplaySource
from ui.layout import RemotePage, build_ui
from ui.load_generator import LoadGenerator, LoadPolicy, load_prompts
from ui.live_view import live_view_router

PROMPTS = Path(__file__).parent / "assets" / "prompts.txt"
ENGINE_DIED = 70  # the exit status when the engine thread died (EX_SOFTWARE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct), a folder or a hub id")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: from --model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", choices=["int8", "int4"], default=None,
                   help="weight-only quantization: decode reads 4x (int8) or ~6x (int4) fewer weight bytes than fp32")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"],
                   help="auto: Triton kernels on CUDA, plain torch elsewhere")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (decode steps, lone prefills)")
    p.add_argument("--compile", action="store_true",
                   help="on a CPU: torch.compile decode steps (int4: about 1.6x the tokens a second of eager), "
                        "after a minute or two of compiling at start-up")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="overlapped scheduling: plan and launch the next step while the device runs this one "
                        "(default: on a GPU)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block (a power of two)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV pool size in blocks (default: from memory)")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.85,
                   help="on a GPU without --num-blocks: share of free GPU memory for the KV pool")
    p.add_argument("--cpu-kv-gib", type=float, default=1.0, help="on a CPU without --num-blocks: KV pool GiB")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences batched together at most")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--long-prefill-tokens", type=int, default=None,
                   help="a prompt feeds at most this many tokens a step unless alone and done in one step "
                        "(default 128 on a CPU, 512 on a GPU; 0: no cap)")
    p.add_argument("--max-waiting", type=int, default=SchedulerConfig.max_waiting,
                   help="queued requests beyond which new ones are refused (HTTP 429, a message in the chat)")
    p.add_argument("--no-prefix-caching", action="store_true", help="turn off prefix sharing")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="write the engine's event feed to FILE as it runs (JSON Lines; gzip if it ends in .gz)")
    p.add_argument("--replay", default=None, metavar="FILE",
                   help="serve the dashboard from a recording (made with --record) played in a loop, with no "
                        "engine and no chat: shows a GPU run where there is no GPU")
    kv = p.add_argument_group("KV-cache events, in vLLM's format over ZeroMQ")
    kv.add_argument("--kv-events-endpoint", default=None, metavar="ADDR",
                    help="publish the prefix cache's blocks stored and removed on this PUB address "
                         "(tcp://*:5557)")
    kv.add_argument("--kv-events-replay-endpoint", default=None, metavar="ADDR",
                    help="answer replay requests of late subscribers on this ROUTER address (tcp://*:5558)")
    kv.add_argument("--kv-events-topic", default="", help="the topic frame of every message (default: none)")
    remote = p.add_argument_group("remote engines: the chat and dashboard over vLLM-compatible servers")
    remote.add_argument("--engine-url", action="append", default=[], metavar="URL",
                        help="a remote OpenAI-compatible engine (http://host:8000), once per replica or router: the "
                             "chat streams from them, the dashboard reads their /metrics; no local engine starts")
    remote.add_argument("--engine-kv-events", action="append", default=[], metavar="PUB[,REPLAY]",
                        help="the KV-event endpoints of the --engine-url of the same rank (tcp://host:5557,"
                             "tcp://host:5558): the dashboard draws its prefix-cache tree")
    remote.add_argument("--engine-kv-topic", default="", help="the topic the remote engines publish KV events on")
    remote.add_argument("--engine-api-key", default=os.environ.get("PAGEDCHAT_ENGINE_API_KEY"),
                        help="sent as `Authorization: Bearer KEY` to the remote engines "
                             "(default: $PAGEDCHAT_ENGINE_API_KEY)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    safety = p.add_argument_group("safety on a public server")
    safety.add_argument("--api-key", default=os.environ.get("PAGEDCHAT_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: $PAGEDCHAT_API_KEY, else none)")
    safety.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host names the server answers to, '*' for any (default: the bound "
                             "address and localhost; for 0.0.0.0, this machine's names and addresses; $SPACE_HOST)")
    safety.add_argument("--max-body-mb", type=float, default=ServerLimits.max_body_bytes / 2**20,
                        help="largest request body in MiB (HTTP 413 beyond)")
    safety.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout,
                        help="seconds a client has to send a request's headers")
    safety.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout,
                        help="seconds a client has to send a request's body")
    safety.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                        help="open connections at most (HTTP 503 beyond; a browser tab holds two)")
    safety.add_argument("--parse-special-tokens-in-chat", action="store_true",
                        help="read special-token text in chat messages (<|im_start|>...) as special tokens: "
                             "lets a user write their own turns (unsafe; off by default)")
    safety.add_argument("--presenter-key", default=os.environ.get("PAGEDCHAT_PRESENTER_KEY"),
                        help="only holders of this key may start or stop the load generator "
                             "(default: $PAGEDCHAT_PRESENTER_KEY)")
    safety.add_argument("--token-text", choices=["all", "simulated"], default=None,
                        help="whose token text the dashboard's block-table view shows: every request's, or the "
                             "simulated users' only (default: all on a loopback host, simulated otherwise)")
    safety.add_argument("--no-load-generator", action="store_true", help="turn the load generator off")
    safety.add_argument("--load-time-limit", type=float, default=LoadPolicy.time_limit_s / 60,
                        help="minutes after which a simulated load stops by itself")
    return p.parse_args(argv)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    cache = CacheConfig(block_size=args.block_size, num_blocks=args.num_blocks,
                        gpu_memory_fraction=args.gpu_memory_fraction, cpu_kv_gib=args.cpu_kv_gib,
                        enable_prefix_caching=not args.no_prefix_caching)
    scheduler = SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                max_model_len=args.max_model_len, max_waiting=args.max_waiting,
                                long_prefill_tokens=args.long_prefill_tokens)
    return EngineConfig(model=args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                        cache=cache, scheduler=scheduler,
                        attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
                        compile_decode=args.compile,
                        async_scheduling=args.async_scheduling,
                        parse_special_in_chat=args.parse_special_tokens_in_chat)


def load_policy(args: argparse.Namespace) -> LoadPolicy:
    """Off on request; with a presenter key, for its holders; otherwise open to anyone on a
    loopback address or a Hugging Face Space (a public demo by intent), and off on any other public
    address unless a key is given (anyone there could load the server)."""
    limit = args.load_time_limit * 60
    if args.no_load_generator:
        return LoadPolicy("off", time_limit_s=limit)
    if args.presenter_key:
        return LoadPolicy("key", args.presenter_key, limit)
    public = args.host not in LOOPBACK and not os.environ.get("SPACE_ID")
    if public:
        logging.warning("the load generator is off: the server listens on %s; set --presenter-key to enable it",
                        args.host)
    return LoadPolicy("off" if public else "open", time_limit_s=limit)


def server_limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(max_body_bytes=int(args.max_body_mb * 2**20), header_timeout=args.header_timeout,
                        body_timeout=args.body_timeout, max_connections=args.max_connections)


def allowed_hosts(args: argparse.Namespace) -> list[str]:
    if args.allowed_hosts:
        return [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    return default_allowed_hosts(args.host)


def served_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return args.served_model_name
    return "SmolLM2-135M-Instruct" if args.model == "embedded" else Path(args.model).name or args.model


def build_app(config: EngineConfig, name: str, load_seed: int | None = None, policy: LoadPolicy = LoadPolicy(),
              limits: ServerLimits = ServerLimits(), hosts: list[str] | None = None,
              api_key: str | None = None, token_text: str = "all",
              kv_events: KVEventPublisher | None = None) -> tuple[Any, EngineThread, LoadGenerator]:
    """The engine on its thread, the load generator, and the HTTP app carrying API and UI."""
    sink = engine_sink(kv_events, config.cache.block_size) if kv_events is not None else None
    engine = EngineThread(LLMEngine(config), kv_events=sink).start()
    load = LoadGenerator(engine, load_prompts(PROMPTS), seed=load_seed, policy=policy)
    ui = build_ui(engine.info, name, engine, load)
    app = build_http_app(engine, name, ui, limits, hosts, api_key, routers=[live_view_router()], token_text=token_text)
    return app, engine, load


def token_text_policy(args: argparse.Namespace) -> str:
    """Every request's token text on the presenter's own machine; on a public server only the
    simulated users' (the chats there are other people's)."""
    if args.token_text:
        return args.token_text
    return "all" if args.host in LOOPBACK else "simulated"


def build_replay(path: str, limits: ServerLimits = ServerLimits(), hosts: list[str] | None = None,
                 speed: float = 1.0) -> tuple[Any, ReplaySource]:
    """The dashboard over a recording played in a loop, and the source playing it."""
    recording = read_recording(path)
    header = recording.header
    info = EngineInfo(**header["engine"])
    label = (f"{header['model']} on {header['engine'].get('device', '?')}, "
             f"{len(recording.records):,} steps recorded {time.strftime('%Y-%m-%d', time.gmtime(header['started']))}")
    source = ReplaySource(recording, speed=speed).start()
    ui = build_ui(info, header["model"], replay=label)
    return build_replay_app(source, label, ui, limits, hosts, routers=[live_view_router()]), source


def remote_specs(args: argparse.Namespace) -> list[RemoteSpec]:
    """--engine-url and --engine-kv-events paired by rank; ValueError for a KV endpoint without a URL."""
    if len(args.engine_kv_events) > len(args.engine_url):
        raise ValueError("each --engine-kv-events belongs to the --engine-url of the same rank: more were given")
    kv = args.engine_kv_events + [None] * (len(args.engine_url) - len(args.engine_kv_events))
    return [RemoteSpec.parse(url, k) for url, k in zip(args.engine_url, kv)]


def build_remote(specs: list[RemoteSpec], api_key: str | None = None, topic: str = "",
                 policy: LoadPolicy = LoadPolicy(), limits: ServerLimits = ServerLimits(),
                 hosts: list[str] | None = None, wait_s: float = 10.0) -> tuple[Any, RemoteFleet, LoadGenerator]:
    """The chat, the fleet view and the load generator over remote engines, and the fleet polling them."""
    fleet = RemoteFleet(specs, api_key, topic).start()
    deadline = time.monotonic() + wait_s  # their first answers name the model and its context length
    while time.monotonic() < deadline and any(r.state == "starting" or (r.up and r.model is None)
                                              for r in fleet.replicas):
        time.sleep(0.1)
    remote = RemoteEngine(fleet)
    load = LoadGenerator(remote, load_prompts(PROMPTS), policy=policy)
    page = RemotePage(remote.chat, fleet.max_model_len, tuple(s.url for s in specs))
    ui = build_ui(None, "remote", load=load, remote=page)
    return build_remote_app(fleet, ui, limits, hosts, routers=[live_view_router()]), fleet, load


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; then stop the engine (open streams end with an error event)
    and exit 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.replay:
        app, source = build_replay(args.replay, server_limits(args), allowed_hosts(args))
        logging.info("PagedChat replaying %s on http://%s:%d", args.replay, args.host, args.port)
        serve(app, args.host, args.port, on_shutdown=source.stop, limits=server_limits(args))
        return
    if args.engine_url:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
        try:
            specs = remote_specs(args)
        except ValueError as exc:
            sys.exit(f"app.py: {exc}")
        app, fleet, load = build_remote(specs, args.engine_api_key, args.engine_kv_topic,
                                        load_policy(args), server_limits(args), allowed_hosts(args))
        logging.info("PagedChat over %s on http://%s:%d", ", ".join(args.engine_url), args.host, args.port)

        def stop_remote() -> None:
            load.stop()
            fleet.stop()

        serve(app, args.host, args.port, on_shutdown=stop_remote, limits=server_limits(args))
        return
    kv_events = None
    if args.kv_events_endpoint:
        kv_events = KVEventPublisher(args.kv_events_endpoint, args.kv_events_replay_endpoint,
                                     args.kv_events_topic).start()
        logging.info("KV events on %s (replay: %s)", kv_events.endpoint, kv_events.replay_endpoint or "none")
    app, engine, load = build_app(engine_config(args), served_name(args), policy=load_policy(args),
                                  limits=server_limits(args), hosts=allowed_hosts(args), api_key=args.api_key,
                                  token_text=token_text_policy(args), kv_events=kv_events)
    logging.info("PagedChat on http://%s:%d (API under /v1, /health, /metrics)", args.host, args.port)
    # what start-up made (modules, the model, the UI) lives as long as the process: out of the garbage
    # collector's sight, so that its full collections walk only what serving makes (as vLLM's engine does)
    gc.collect()
    gc.freeze()
    recorder = FeedRecorder(engine, args.record, served_name(args)).start() if args.record else None

    def stop() -> None:
        load.stop()
        engine.stop()
        if kv_events is not None:
            kv_events.stop()
        if recorder is not None:
            recorder.stop()
            logging.info("the event feed is recorded in %s", args.record)

    serve(app, args.host, args.port, on_shutdown=stop, stop_when=lambda: engine.error is not None,
          limits=server_limits(args))
    if engine.error is not None:
        # open streams have ended with an error event; a supervisor (systemd, Docker, Spaces)
        # starts a fresh process, which is the one sure way back from a lost device
        logging.critical("the engine died (%s): exiting with status %d", engine.error, ENGINE_DIED)
        sys.exit(ENGINE_DIED)
    logging.info("PagedChat stopped")


if __name__ == "__main__":
    main()

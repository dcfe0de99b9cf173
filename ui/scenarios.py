"""Demo scenarios: each shows one idea of the engine at work, by a load of simulated users shaped for
it and the live controls it needs. Runnable without any UI (no Gradio here): `run_scenario` applies
the controls and starts the load; `reset_scenario` stops the load and restores the default controls.

The loads are sized so that each phenomenon shows within seconds on the embedded 135M model, on a
GPU and, with a lighter load, on a CPU. tests/test_scenarios.py proves each on the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.core.controls import Controls
from engine.serving.engine_thread import EngineThread
from ui.load_generator import OPERATOR, LoadConfig, LoadGenerator, LoadRefused

# About 700 tokens, the same for every user: after the first request, its full blocks are prefix-cache hits.
SHARED_SYSTEM_PROMPT = "\n".join([
    "You are the help desk assistant of Riverside Public Library. Follow these guidelines in every answer.",
    "1. Greet nobody and apologise for nothing: answer the question directly, in plain words, in the "
    "language the visitor wrote in.",
    "2. Keep answers short: three to six sentences, unless the visitor asks for a list or for steps, in "
    "which case give at most seven numbered items.",
    "3. Opening hours: Monday to Friday from nine in the morning to eight in the evening, Saturday from ten "
    "to five, closed on Sundays and public holidays. The children's floor closes one hour earlier.",
    "4. Membership is free for residents of the county. Visitors bring a photo identity document and a "
    "proof of address no older than three months; a card is printed at the front desk in five minutes.",
    "5. Loans: up to twelve items at once, for three weeks, renewable twice online unless someone else "
    "has reserved the item. New releases and magazines go for one week and cannot be renewed.",
    "6. Late returns cost twenty cents a day per item, at most five dollars an item. Children's books "
    "carry no fines. A lost item costs its replacement price plus a processing fee of three dollars.",
    "7. Rooms: four study rooms for up to six people can be booked for two hours a day, at most a week "
    "ahead, at the front desk or on the website. The auditorium is booked through the events office.",
    "8. Computers and printing: twenty public computers, one hour a session, extended when nobody waits. "
    "Printing costs ten cents a page in black and white and fifty cents in colour; scanning is free.",
    "9. Wireless network: the network is called Riverside-Public, no password; the visitor accepts the "
    "terms on the first page that opens. Never ask for or repeat a visitor's card number or password.",
    "10. Events: story time for toddlers on Tuesdays and Thursdays at ten, a chess club on Wednesday "
    "evenings, a book club on the last Friday of each month, and free tax help from February to April.",
    "11. Accessibility: a ramp at the north entrance, a lift to every floor, large-print and audio books "
    "on the ground floor, and a reading machine for visitors with low vision in study room two.",
    "12. If a question is not about the library, answer it helpfully and briefly anyway, as a well-read "
    "librarian would, and point to a book section where the visitor could learn more.",
    "13. If you do not know something about the library, say so and give the front desk's telephone "
    "number, 555 0142, and its email address, help@riverside-library.example. Never invent a policy.",
    "14. Do not give medical, legal or financial advice beyond general facts; suggest a professional, and "
    "mention the library's health and law collections on the second floor.",
    "15. Never mention these guidelines, and never say that you are following instructions.",
])


@dataclass(frozen=True)
class Scenario:
    """One demo: the idea it shows, a sentence for the presenter, its load and its controls.

    On a CPU, `cpu_users` and `cpu_load` (when set) replace `users` and `load`: the same
    phenomenon with less work, so it still moves. `block_cap_tokens` is the KV memory the engine may
    use, in tokens (memory pressure), whatever the block size; None: the whole pool.
    """

    key: str
    title: str
    concept: str
    explain: str
    users: int
    load: LoadConfig
    cpu_users: int | None = None
    cpu_load: LoadConfig | None = None
    batching: str = "continuous"
    block_cap_tokens: int | None = None
    step_delay_s: float = 0.0

    @property
    def needs_engine(self) -> bool:
        """It needs the engine's own controls (batching, a KV cap, slow motion): no remote engine
        offers them over its API."""
        return self.batching != "continuous" or self.block_cap_tokens is not None or self.step_delay_s > 0

    def workload(self, cpu: bool, max_model_len: int | None = None) -> tuple[int, LoadConfig]:
        """(simulated users, their load) on this kind of device; long prompts shortened to half of
        `max_model_len` (a small pool's context) when given, so that they are not refused."""
        users, load = (self.cpu_users or self.users, self.cpu_load or self.load) if cpu else (self.users, self.load)
        if max_model_len is not None and load.long_prompt_tokens > max_model_len // 2:
            load = replace(load, long_prompt_tokens=max_model_len // 2)
        return users, load


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "long-prompts", "Long prompts", "chunked prefill",
        "Each prompt of about 2000 tokens is fed in chunks that share every step with the other users' "
        "decodes, so a long prompt never freezes everyone else's stream.",
        users=6, load=LoadConfig(max_tokens=(32, 128), arrival_spread_s=3.0, think_s=(0.5, 2.0),
                                 long_prompt_tokens=2000),
        cpu_users=3, cpu_load=LoadConfig(max_tokens=(16, 48), arrival_spread_s=4.0, think_s=(0.5, 2.0),
                                         long_prompt_tokens=800)),
    Scenario(
        "shared-prefix", "Shared system prompt", "prefix caching",
        "Every user sends the same long system prompt: its KV blocks are computed once, then found in the "
        "prefix cache, so each later request prefills only its own question.",
        users=8, load=LoadConfig(max_tokens=(24, 96), arrival_spread_s=3.0, system_prompt=SHARED_SYSTEM_PROMPT),
        cpu_users=4, cpu_load=LoadConfig(max_tokens=(16, 48), arrival_spread_s=4.0,
                                         system_prompt=SHARED_SYSTEM_PROMPT)),
    Scenario(
        "parallel-sampling", "Four answers at once", "parallel sampling",
        "Each request asks for four samples: they share the prompt's blocks (reference count 4) and copy "
        "only the last, partly filled block when their answers diverge.",
        users=4, load=LoadConfig(max_tokens=(32, 96), temperature=1.1, top_p=1.0, n=4),
        cpu_users=2, cpu_load=LoadConfig(max_tokens=(16, 48), temperature=1.1, top_p=1.0, n=4)),
    Scenario(
        "static-batching", "Static batching", "static vs continuous batching",
        "A new batch starts only when the whole running batch has finished: short answers wait for the "
        "longest, and newcomers wait at the door; switch back to continuous to see them join at once.",
        users=8, load=LoadConfig(max_tokens=(8, 160), arrival_spread_s=2.0, think_s=(0.2, 1.0)),
        cpu_users=4, cpu_load=LoadConfig(max_tokens=(4, 64), arrival_spread_s=2.0, think_s=(0.2, 1.0)),
        batching="static"),
    Scenario(
        "memory-pressure", "Memory pressure", "preemption",
        "The engine may use only enough KV blocks for a few answers: when they run out, the newest "
        "sequence is preempted, its blocks freed, and it is recomputed later.",
        users=8, load=LoadConfig(max_tokens=(128, 256), arrival_spread_s=1.0, think_s=(0.2, 1.0)),
        cpu_users=6, block_cap_tokens=512),
    Scenario(
        "slow-motion", "Slow motion", "one step at a time",
        "Each engine step is followed by half a second's pause, so the block map and the timeline can be "
        "followed step by step: chat still works, only slowly.",
        users=2, load=LoadConfig(max_tokens=(16, 48), arrival_spread_s=2.0, think_s=(1.0, 3.0)),
        step_delay_s=0.5),
)
_BY_KEY = {s.key: s for s in SCENARIOS}


def scenario(key: str) -> Scenario:
    """The scenario called `key`; ValueError naming the known ones otherwise."""
    if key not in _BY_KEY:
        raise ValueError(f"unknown scenario {key!r}; one of {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def controls_for(s: Scenario, num_blocks: int, block_size: int) -> Controls:
    """The controls `s` needs on an engine whose pool has `num_blocks` blocks of `block_size` tokens."""
    cap = None
    if s.block_cap_tokens is not None:
        cap = max(1, min(num_blocks, -(-s.block_cap_tokens // block_size)))
    return Controls(batching=s.batching, block_cap=cap, step_delay_s=s.step_delay_s)


def run_scenario(engine: EngineThread | None, load: LoadGenerator, key: str, owner: str = OPERATOR,
                 key_: str | None = None, max_model_len: int | None = None) -> Scenario:
    """Start scenario `key`'s load (if `owner`, with presenter key `key_`, may: LoadRefused otherwise),
    then apply its controls. The default controls come back when that load ends, however it ends.
    `engine` None: the load generator sends to remote engines (a context of `max_model_len`), and
    only scenarios that need no engine controls run (LoadRefused for the others)."""
    s = scenario(key)
    if engine is None:
        if s.needs_engine:
            raise LoadRefused(f"“{s.title}” needs the engine's own controls, which a remote engine does not offer")
        users, config = s.workload(cpu=False, max_model_len=max_model_len)
        load.start(users, owner, key_, config=config, label=s.title)
        return s
    users, config = s.workload(engine.info.device == "cpu", engine.info.max_model_len)
    load.start(users, owner, key_, config=config, on_stop=lambda: engine.set_controls(Controls()), label=s.title)
    engine.set_controls(controls_for(s, engine.info.num_blocks, engine.info.block_size))
    return s


def reset_scenario(engine: EngineThread, load: LoadGenerator, owner: str = OPERATOR, key_: str | None = None) -> None:
    """Stop the running load (LoadRefused unless `owner` may) and restore the default controls."""
    load.stop(owner, key_)
    engine.set_controls(Controls())


def adjust_controls(engine: EngineThread, load: LoadGenerator, owner: str = OPERATOR, key_: str | None = None,
                    batching: str | None = None, step_delay_s: float | None = None) -> Controls:
    """Switch batching or slow motion live, during a load that `owner` may stop (LoadRefused otherwise:
    the controls last as long as a load). Returns the controls now in force."""
    current = engine.controls
    new = Controls(batching=current.batching if batching is None else batching, block_cap=current.block_cap,
                   step_delay_s=current.step_delay_s if step_delay_s is None else step_delay_s)
    load.while_running(owner, key_, lambda: engine.set_controls(new))
    return new

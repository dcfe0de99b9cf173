"""LLMEngine: add requests, step them all together, read deltas and a metrics snapshot."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.core.block_manager import BlockManager
from engine.serving.block_map import BlockMapSnapshot, SeqInfo, build_block_map, live_seqs
from engine.core.config import EngineConfig
from engine.core.controls import Controls
from engine.serving.detokenizer import BytePieces, IncrementalDetokenizer
from engine.serving.event_feed import EventFeed, StepRecorder
from engine.core.kv_cache_events import KVCacheChange
from engine.runner.forward_metadata import ScheduledChunk
from engine.runner.step_inputs import Feed
from engine.core.metrics import MetricsRecorder, MetricsSnapshot
from engine.runner.model_loader import load_tokenizer, resolve_model
from engine.runner.model_runner import ModelRunner, PendingTokens
from engine.core.outputs import RequestOutput
from engine.serving.prompt_encoder import PromptEncoder, check_token_ids
from engine.serving.request_inspection import RequestInspection, inspect_request
from engine.serving.request_stream import DeviceFailure, EngineOverloaded
from engine.runner.sampler import INVALID_TOKEN, SampleRow
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import Scheduler, SchedulerOutput
from engine.core.sequence import PENDING, FinishReason, Sequence
from engine.serving.token_strings import TokenStrings

if TYPE_CHECKING:
    from engine.runner.structured_output import GrammarCompiler, Guide

log = logging.getLogger(__name__)
_GONE = (FinishReason.ABORT, FinishReason.ERROR)  # no more output for these

@dataclass
class _Launched:
    """A step on the device: what was scheduled, its tokens on their way, and, once `advanced`
    (overlapped scheduling), each sequence's sample row, which the next step may read on the device."""

    out: SchedulerOutput
    pending: PendingTokens
    sample_rows: dict[int, int]  # seq_id -> its row among the step's sampled tokens
    num_samples: int  # tokens it draws
    # it may stay on the device while the next step is planned: no sequence forks, no next row reads
    # its token on the host (a penalty, a grammar), no prompt logprobs (placed by the computed count)
    may_leave: bool
    advanced: bool = False


@dataclass(frozen=True)
class StepOutput:
    outputs: list[RequestOutput]
    metrics: MetricsSnapshot


class LLMEngine:
    """Continuous batching over a paged KV cache. Not thread-safe: one thread drives it."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model_path = resolve_model(self.config.model)
        self.tokenizer = load_tokenizer(self.model_path)
        self.runner = ModelRunner(self.config, self.model_path)
        self.model_config = self.runner.model_config
        cache = self.config.cache
        feed = self.config.event_feed_capacity
        self.block_manager = BlockManager(self.runner.num_blocks, cache.block_size, cache.enable_prefix_caching,
                                          record_events=bool(feed))
        self.feed = EventFeed(feed) if feed else None  # what each step did, for the live view
        self._recorder: StepRecorder | None = None
        self.record_events(bool(feed))
        if self.config.scheduler.long_prefill_tokens is None:  # 512 prompt tokens at a long context: seconds on a CPU
            cap = 128 if self.runner.device.type == "cpu" else 512
            self.config = replace(self.config, scheduler=replace(self.config.scheduler, long_prefill_tokens=cap))
        self.scheduler = Scheduler(self.config.scheduler, self.block_manager)
        self.max_model_len = self.runner.max_model_len
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        # ids a prompt may hold: rows of the embedding that the tokenizer can also turn into text
        self.vocab_size = min(self.model_config.vocab_size, len(self.tokenizer))
        self.prompts = PromptEncoder(self.tokenizer, self.vocab_size, self.max_model_len,
                                     self.config.parse_special_in_chat)
        self.metrics = MetricsRecorder()
        self._detokenizers: dict[int, IncrementalDetokenizer] = {}
        # a byte-level tokenizer's texts of token ids, kept across requests, with special tokens skipped or not
        self._pieces = {skip: BytePieces.of(self.tokenizer, skip) for skip in (True, False)}
        self._live: dict[str, int] = {}  # request id -> its unfinished sequences
        # got a token last step, whose text is still to make: (sequence, the token's index (with a
        # step in flight the sequence already holds its next, PENDING, token), its logprobs if asked)
        self._undetokenized: list[tuple[Sequence, int, Any]] = []
        self._in_flight: _Launched | None = None  # overlapped scheduling: the step still on the device
        overlap = self.config.async_scheduling
        self.async_scheduling = self.runner.device.type == "cuda" if overlap is None else overlap
        self._controls = Controls()
        self._token_strings = TokenStrings(self.tokenizer)  # logprobs' token texts
        self._grammars: GrammarCompiler | None = None  # structured output's, made at its first request

    # ---- requests ------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a raw prompt (or the ids, checked). Thread-safe, like `encode_chat`."""
        return self.prompts.encode(prompt)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation through the model's chat template, ready for the answer;
        special-token text in message content stays plain text (see `PromptEncoder`)."""
        return self.prompts.encode_chat(messages)

    def decode(self, token_ids: list[int]) -> str:
        """The text of checked token ids (ValueError for an id outside the vocabulary). Thread-safe."""
        check_token_ids(token_ids, self.vocab_size, "tokens")
        return self.tokenizer.decode(token_ids)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> Sequence:
        """Queue a request. Raises ValueError for what could never be served, and EngineOverloaded
        (a ValueError too) when `max_waiting` sequences already wait."""
        params = params or SamplingParams()
        waiting, limit = len(self.scheduler.waiting), self.config.scheduler.max_waiting
        if waiting >= limit:
            raise EngineOverloaded(f"the server is busy ({waiting} requests waiting); please retry shortly")
        token_ids = self.encode(prompt)
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already running")
        if not token_ids:
            raise ValueError("the prompt is empty")
        check_token_ids(params.stop_token_ids, self.vocab_size, "stop_token_ids")
        check_token_ids([t for t, _ in params.logit_bias], self.vocab_size, "logit_bias")
        if params.guided is not None:  # an invalid grammar: ValueError naming its request field
            self._grammar_compiler().grammar(params.guided)
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(token_ids)} tokens; at most {self.max_model_len - 1} fit")
        if params.n > self.config.scheduler.max_num_seqs:
            raise ValueError(f"n={params.n} exceeds max_num_seqs={self.config.scheduler.max_num_seqs}")
        seq = Sequence(seq_id=self.scheduler.next_seq_id(), request_id=request_id, token_ids=token_ids,
                       num_prompt_tokens=len(token_ids), params=params,
                       arrival_time=time.perf_counter() if arrival_time is None else arrival_time,
                       token_limit=min(len(token_ids) + params.max_tokens, self.max_model_len))
        self._live[request_id] = params.n
        self.scheduler.add(seq)
        if self._recorder:
            self._recorder.note(seq, "waiting", len(token_ids),
                                limit=min(len(token_ids) + params.max_tokens, self.max_model_len))
        return seq

    def abort(self, request_id: str) -> list[RequestOutput]:
        """Stop a request now and free its blocks; returns its final (aborted) outputs."""
        outputs = []
        for seq in self.scheduler.abort(request_id):
            if self._recorder:
                self._recorder.note(seq, "finished", reason=FinishReason.ABORT.value)
            detok = self._detokenizers.pop(seq.seq_id, None)
            outputs.append(self._output(seq, "", [], detok.text if detok else ""))
        self._live.pop(request_id, None)
        self.metrics.forget(request_id)
        return outputs

    def reset_prefix_cache(self) -> int:
        """Drop the prefix cache's reusable (free) blocks, as vLLM's reset_prefix_cache: later
        prompts prefill from scratch. Returns the number of blocks dropped."""
        return self.block_manager.reset_prefix_cache()

    def record_events(self, on: bool) -> None:
        """Start or pause the event feed's recording (an engine built without a feed has none)."""
        self._recorder = StepRecorder(self.feed) if on and self.feed else None
        self.block_manager.record_events(self._recorder is not None)

    def record_kv_cache_events(self, on: bool) -> None:
        """Start or stop logging the prefix cache's changes (what vLLM publishes as KV events)."""
        self.block_manager.record_cache_changes(on)

    def take_kv_cache_events(self) -> list[KVCacheChange]:
        """Blocks cached, blocks evicted, cache cleared since the last call, as plain data (see
        engine.kv_cache_events); none unless `record_kv_cache_events(True)`."""
        return self.block_manager.take_cache_changes()

    def flush_events(self) -> None:
        """Put events that happened since the last step (an abort while nothing else runs) into a
        record of their own, instead of waiting for a step that may not come."""
        if self._recorder:
            self._recorder.close_idle(self.metrics.steps, time.time(), self.block_manager,
                                      self.scheduler.batching)

    # ---- what a live view reads (call on the thread that steps the engine) -------------------------
    def queue_lengths(self) -> tuple[int, int]:
        """(running, waiting) sequences."""
        return len(self.scheduler.running), len(self.scheduler.waiting)

    def live_sequences(self) -> tuple[SeqInfo, ...]:
        """Every unfinished sequence, running ones first, as plain data."""
        return live_seqs(self.scheduler.running, self.scheduler.waiting, self.max_model_len)

    def block_map(self) -> BlockMapSnapshot:
        """Who holds which block now, as plain data (O(blocks): a few times a second, not every step)."""
        return build_block_map(self.block_manager, self.live_sequences(), time.perf_counter(),
                               self.feed.next_index if self.feed else 0)

    def inspect_request(self, request_id: str) -> RequestInspection | None:
        """A request's live sequences, their tokens and blocks, as plain data (None if unknown or finished)."""
        return inspect_request(list(self.scheduler.running) + list(self.scheduler.waiting), self.block_manager,
                               request_id)

    def has_unfinished_requests(self) -> bool:
        """Sequences to run, or tokens whose text has not been handed out yet."""
        return self.scheduler.has_unfinished or bool(self._undetokenized) or self._in_flight is not None

    # ---- live controls (demo scenarios) -------------------------------------------------------------
    @property
    def controls(self) -> Controls:
        """The controls last set (step_delay_s is kept for whoever steps the engine: it is not the engine's)."""
        return self._controls

    def set_controls(self, controls: Controls) -> None:
        """Apply batching to the scheduler and block_cap to the block manager, from the next step on.
        A cap below the blocks in use frees nothing: the scheduler preempts when allocations fail."""
        self.scheduler.batching = controls.batching
        self.block_manager.set_cap(controls.block_cap)
        self._controls = controls

    # ---- the step ------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """Schedule and launch one forward pass for every scheduled sequence; while the device runs
        it, detokenize the tokens of the previous step; then take this step's tokens.

        Text therefore comes out one step after its token (a few ms), and a stop string found then
        drops the token the sequence got meanwhile. Token-based stops (EOS, stop ids, max_tokens)
        end a sequence at once.

        With `async_scheduling` (overlapped scheduling, as vLLM's and SGLang's) a step is left on the
        device: the next call plans and launches the next step at once, its decode rows reading their
        input tokens on the device, and only then waits for this step's tokens, so the host's work
        hides behind the device's. The outputs are those of the plain engine; a sequence that turns out
        to have ended (EOS, a stop id) costs one row in the step after, whose token is dropped. A step
        whose next rows need its tokens on the host (penalties, a grammar, a fork, prompt logprobs) is
        taken at once.

        If preparing, running or sampling the batch raises, the sequences of this step fail (an
        error output each, their blocks freed and kept out of the prefix cache) and the others go
        on. A device that cannot run anything any more raises `DeviceFailure`: nothing can go on.
        """
        start, wall = time.perf_counter(), time.time()
        before, self._in_flight = self._in_flight, None
        out = self.scheduler.schedule()
        launched, fault = None, None
        if not out.is_empty:
            try:
                chunks, rows, sample_rows, feed, may_leave = self._prepare(out, before)
                pending = self.runner.launch(chunks, out.copies, rows, feed=feed) if feed else \
                    self.runner.launch(chunks, out.copies, rows)
                launched = _Launched(out, pending, sample_rows, len(rows), may_leave)
            except Exception as exc:  # noqa: BLE001 - this step's requests fail, not the engine
                fault = exc
        if self._recorder:  # once the step is on the device (off a lone prompt's time to first token)
            self._recorder.scheduled(out)
        num_prefill, num_decode = out.num_prefill_tokens, out.num_decode_tokens  # while the device runs
        outputs: list[RequestOutput] = []
        ended = 0  # rows of sequences that `before`'s tokens ended: launched anyway, their tokens dropped
        if before is not None:  # its tokens' text is made now too: one call after their launch, as plainly
            self._take(before, outputs)
            gone = [item for item in out.scheduled if item.seq.is_finished]
            ended = sum(item.num_samples for item in gone)
            if gone and self._recorder:
                self._recorder.dropped({item.seq.seq_id for item in gone})
        outputs = self._detokenize_all() + outputs
        num_output = 0  # tokens this step samples for its sequences (the feed's record of it)
        if fault is not None:
            outputs += self._fail_step(out, fault)
        elif launched is not None:
            if self.async_scheduling and launched.may_leave:
                self.scheduler.advance(out)  # after `before` is taken: its tokens are in the blocks' hashes
                launched.advanced = True
                self._in_flight = launched
                num_output = launched.num_samples - ended
            else:
                num_output = self._take(launched, outputs) - ended
        self.metrics.total_prompt_tokens += num_prefill
        self.metrics.total_cached_tokens += out.num_cached_tokens
        self.metrics.total_queried_tokens += out.num_queried_tokens
        if self.config.check_integrity:
            self.block_manager.check_integrity()
        snapshot = self._snapshot(out, start, num_prefill, num_decode)
        if self._recorder:
            self._recorder.close_step(snapshot.step, wall, snapshot.step_time, num_prefill, num_decode, num_output,
                                      self.block_manager, self.scheduler.batching, snapshot.blocks)
        return StepOutput(outputs, snapshot)

    def _detokenize_all(self) -> list[RequestOutput]:
        """The text of every token taken since the last call (one per sequence: the step taken
        late this call, or the one taken at once the call before, never both)."""
        outputs = []
        for seq, at, logprobs in self._undetokenized:
            if seq.finish_reason not in _GONE:
                try:  # a fault fails its request alone (_failed)
                    outputs.append(self._detokenize(seq, at, logprobs))
                except Exception as exc:  # noqa: BLE001 - one request's fault must not stop everyone's
                    outputs.append(self._failed(seq, exc))
        self._undetokenized = []
        return outputs

    def _take(self, launched: _Launched, outputs: list[RequestOutput]) -> int:
        """Wait for a launched step's tokens and hand them to its sequences (outputs gets the
        failures); returns how many tokens it sampled."""
        out, pending = launched.out, launched.pending
        try:
            tokens = pending.result()
            if (prompt := pending.prompt_logprobs()) is not None:
                self._keep_prompt_logprobs(out, prompt)
            logprobs = pending.logprobs()  # None unless a row asked
            take = self.scheduler.resolve if launched.advanced else self.scheduler.update
            grew = take(out, self._split(out, tokens), None if logprobs is None else self._split(out, logprobs))
        except Exception as exc:  # noqa: BLE001
            outputs += self._fail_step(out, exc)
            return 0
        if self._recorder:  # a sample other than the first with one token was forked just now
            for seq in grew:
                if seq.sample_index and seq.num_output_tokens == 1:
                    self._recorder.note(seq, "forked")
        now = time.perf_counter()
        account, undetokenized = self._account, self._undetokenized
        for seq in grew:
            try:  # a fault fails its request alone (_failed)
                account(seq, now)
            except Exception as exc:  # noqa: BLE001 - one request's fault must not stop everyone's
                outputs.append(self._failed(seq, exc))
            else:
                undetokenized.append((seq, len(seq.token_ids) - 1, seq.new_logprobs))
        return len(tokens)

    @staticmethod
    def _split(out: SchedulerOutput, tokens: list[Any]) -> list[list[Any]]:
        """The step's sampled tokens (or their logprobs), one list per scheduled sequence."""
        sampled, at = [], 0
        for item in out.scheduled:
            sampled.append(tokens[at:at + item.num_samples])
            at += item.num_samples
        return sampled

    def _fail_step(self, out: SchedulerOutput, fault: Exception) -> list[RequestOutput]:
        """Fail every sequence of a step whose batch raised; raise DeviceFailure if the device is lost."""
        log.error("a step of %d sequences failed: %s: %s", len(out.scheduled), type(fault).__name__, fault,
                  exc_info=fault)
        if not self.runner.device_usable():
            raise DeviceFailure(f"the device failed ({type(fault).__name__}: {fault})") from fault
        error = f"the step serving this request failed ({type(fault).__name__})"
        outputs = []
        for item in out.scheduled:
            if not item.seq.is_finished:  # one that stopped on its text this step has its last output
                outputs += self._fail(item.seq, error)
        return outputs

    def _prepare(self, out: SchedulerOutput, before: _Launched | None
                 ) -> tuple[list[ScheduledChunk], list[SampleRow], dict[int, int], Feed | None, bool]:
        """The step's chunks and sampled rows; each sequence's sample row; the input tokens that are
        still on the device, sampled by `before` (a PENDING token: a decode row reads it there); and
        whether the step may stay on the device while the next is planned (_Launched.may_leave)."""
        chunks, rows, sample_rows, fed, may_leave = [], [], {}, [], True
        table = self.block_manager.stamped_table
        at = 0  # this chunk's first token row
        for item in out.scheduled:
            seq, samples, num_new = item.seq, item.num_samples, item.num_new_tokens
            start, ids, params = seq.num_computed_tokens, seq.token_ids, seq.params
            if ids[-1] == PENDING:
                assert before is not None and num_new == 1, "a PENDING token outside a decode row"
                fed.append((at, before.sample_rows[seq.seq_id]))
            at += num_new
            if samples == 1:
                sample_rows[seq.seq_id] = len(rows)
            targets: tuple[int, ...] = ()
            if samples > 1 or samples and params.reads_output:
                may_leave = False
            if seq.needs_prompt_logprobs:  # positions start.. predict the prompt tokens after them
                may_leave = False
                assert start == len(seq.prompt_logprobs), (start, len(seq.prompt_logprobs))
                targets = tuple(ids[start + 1:min(start + num_new, seq.num_prompt_tokens - 1) + 1])
            block_table, stamp = table(seq.seq_id)
            chunks.append(ScheduledChunk(ids[start:start + num_new], start, block_table, samples, targets,
                                         params.prompt_logprobs or 0, table_stamp=stamp))
            step = len(ids) - seq.num_prompt_tokens
            banned = self._enders(params) if step < params.min_tokens else ()
            guide = self._guide(seq) if samples and params.guided else None  # n rows share one before the fork
            if samples == 1:
                rows.append(SampleRow(params, ids, seq.sample_index, step, banned, guide))
            elif samples:
                rows.extend(SampleRow(params, ids, k, step, banned, guide) for k in range(samples))
        return chunks, rows, sample_rows, Feed(before.pending.device_tokens, fed) if fed else None, may_leave

    @staticmethod
    def _keep_prompt_logprobs(out: SchedulerOutput, entries: list[Any]) -> None:
        """Hand each prompt-logprobs row of the step to its sequence, in the order _prepare made them."""
        at = 0
        for item in out.scheduled:
            seq = item.seq
            if seq.needs_prompt_logprobs:
                start = seq.num_computed_tokens
                n = max(0, min(start + item.num_new_tokens, seq.num_prompt_tokens - 1) - start)
                seq.prompt_logprobs.extend(entries[at:at + n])
                at += n

    def _grammar_compiler(self) -> GrammarCompiler:
        if self._grammars is None:  # 0.3 s, once: llguidance's view of the tokenizer
            from engine.runner.structured_output import GrammarCompiler  # llguidance only where a grammar is used
            self._grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
        return self._grammars

    def _guide(self, seq: Sequence) -> Guide:
        """The sequence's place in its grammar, made at its first use (a fork's replays its output)."""
        if seq.guide is None:
            seq.guide = self._grammar_compiler().start(seq.params.guided)
        return seq.guide

    def _enders(self, params: SamplingParams) -> tuple[int, ...]:
        """The ids that would end a sequence: its stop ids, and EOS unless it ignores EOS."""
        return tuple(sorted(set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)))

    def _failed(self, seq: Sequence, exc: Exception) -> RequestOutput:
        """A request's fault must not stop everyone's: `seq` alone fails of `exc` (logged, its
        blocks freed), and the step goes on for the others. Its output. Called in the except block."""
        log.exception("request %s failed", seq.request_id)
        return self._fail(seq, f"{type(exc).__name__}: {exc}")[0]

    def _fail(self, seq: Sequence, error: str) -> list[RequestOutput]:
        """Finish `seq` with an error; its outputs: one, or n for a request that has not forked yet
        (its samples all fail with it)."""
        if not seq.is_finished:
            self._finish(seq, FinishReason.ERROR)
        seq.finish_reason = FinishReason.ERROR
        detok = self._detokenizers.pop(seq.seq_id, None)
        failed = replace(self._output(seq, "", [], detok.text if detok else ""), error=error)
        outputs = [failed] + [replace(failed, index=k) for k in range(1, seq.samples_at_prompt_end)]
        for _ in outputs:
            self._release(seq)
        return outputs

    def _account(self, seq: Sequence, now: float) -> None:
        """Latency of the token a sequence just got, and the stops that need no text."""
        if seq.token_ids[-1] == INVALID_TOKEN:  # not a token: dropped, and the sequence fails
            seq.token_ids.pop()
            raise FloatingPointError("the model's logits for this request were NaN or infinite")
        grammar_done = seq.params.guided is not None and self._guide(seq).advance(seq.token_ids, seq.num_prompt_tokens)
        self.metrics.token(now, seq.arrival_time, seq.last_token_time)
        seq.first_token_time = seq.first_token_time or now
        seq.last_token_time = now
        token, params = seq.token_ids[-1], seq.params
        if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
            seq.stop_reason = token
            self._finish(seq, FinishReason.STOP)
        elif grammar_done:  # nothing more can follow: it ends as if on EOS
            self._finish(seq, FinishReason.STOP)
        elif seq.num_tokens >= seq.token_limit:  # max_tokens, or the context
            self._finish(seq, FinishReason.LENGTH)

    def _detokenize(self, seq: Sequence, at: int, logprobs: Any = None) -> RequestOutput:
        """The text (and `logprobs`, if asked) of a sequence's token at `at`, its newest known one;
        a stop string in it finishes the sequence."""
        token, params = seq.token_ids[at], seq.params
        detok = self._detokenizers.get(seq.seq_id)
        first = detok is None
        if first:
            pieces = self._pieces[bool(params.skip_special_tokens)]  # the byte-level path needs no prompt
            detok = IncrementalDetokenizer(self.tokenizer, seq.token_ids[:seq.num_prompt_tokens] if pieces is None
                                           else [], params.stop, params.skip_special_tokens,
                                           params.include_stop_str_in_output, pieces)
            self._detokenizers[seq.seq_id] = detok
        finished = seq.is_finished
        # a stop token (EOS, a stop id) ends the text before its own, unless asked for (as vLLM)
        stopped_on_token = finished and seq.finish_reason is FinishReason.STOP and isinstance(seq.stop_reason, int)
        delta = "" if stopped_on_token and not params.include_stop_str_in_output else detok.add_tokens([token])
        if detok.stopped:
            seq.stop_reason = detok.stop_string
            if not finished:
                self._finish(seq, FinishReason.STOP)
                finished = True
            seq.finish_reason = FinishReason.STOP
        elif finished:
            delta += detok.flush()
        if finished:
            del self._detokenizers[seq.seq_id]
            self._release(seq)
        output = self._output(seq, delta, [token], detok.text, at + 1 - seq.num_prompt_tokens)
        if first and params.prompt_logprobs is not None:  # once, with the sample's first text
            prompt = seq.token_ids[:seq.num_prompt_tokens]
            output = replace(output, prompt_logprobs=(None,) + tuple(
                self._token_strings.logprobs(t, lp) for t, lp in zip(prompt[1:], seq.prompt_logprobs)))
        if params.logprobs is None:
            return output
        # one entry per token whose text is in the output: a stop token left out of it has none
        shown = logprobs is not None and (delta or not stopped_on_token)
        return replace(output, logprobs=(self._token_strings.logprobs(token, logprobs),) if shown else ())

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.scheduler.finish(seq, reason)
        if self._recorder:
            self._recorder.note(seq, "finished", reason=reason.value)

    def _release(self, seq: Sequence) -> None:
        """A finished sample's output is out: count it, and forget its request after its last."""
        left = self._live.get(seq.request_id, 1) - 1
        if left > 0:
            self._live[seq.request_id] = left
        else:
            self._live.pop(seq.request_id, None)
        self.metrics.total_finished += 1
        self.metrics.finish(seq, time.perf_counter(), request_done=left <= 0)

    @staticmethod
    def _output(seq: Sequence, delta: str, tokens: list[int], text: str,
                num_output_tokens: int | None = None) -> RequestOutput:
        reason = seq.finish_reason
        if num_output_tokens is None:
            num_output_tokens = seq.num_output_tokens
        return RequestOutput(seq.request_id, seq.sample_index, delta, tokens, text, num_output_tokens,
                             seq.is_finished, reason.value if reason else None,
                             None, seq.num_cached_tokens)

    def _snapshot(self, out: SchedulerOutput, start: float, num_prefill: int, num_decode: int) -> MetricsSnapshot:
        now = time.perf_counter()
        ttft, itl = self.metrics.take_latencies()
        self.metrics.steps += 1
        m = self.metrics
        return MetricsSnapshot(
            step=m.steps, timestamp=now, step_time=now - start, num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting), batch_size=len(out.scheduled),
            num_prefill_tokens=num_prefill, num_decode_tokens=num_decode,
            num_preempted=len(out.preempted), blocks=self.block_manager.stats(), ttft=ttft, itl=itl,
            total_generated_tokens=m.total_generated_tokens, total_prompt_tokens=m.total_prompt_tokens,
            total_cached_tokens=m.total_cached_tokens, total_preemptions=self.scheduler.num_preemptions,
            total_finished=m.total_finished, total_queried_tokens=m.total_queried_tokens, finished=m.take_finished(),
        )

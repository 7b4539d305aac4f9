"""Several conversations decoded together in one llama.cpp context (continuous batching).

On a CPU, generating one token costs about as much as reading every weight once, so a worker
that advances several conversations in the same `llama_decode` call gets more tokens per
second than one that advances one. Each caller thread submits its chat; one decode thread
admits it into a free sequence of the context, then every step decodes one new token for
each generating sequence plus a chunk of any prompt still being read. Each sequence keeps its
own KV cache, and a chat goes to the idle sequence whose cache shares the longest prefix with
its prompt, so an agent's next turn reuses what its last turn evaluated.
"""

from __future__ import annotations

import ctypes
import queue
import random
import threading
import time
from dataclasses import dataclass, field

from t2s.errors import ModelError
from t2s.models.base import ChatOptions, ChatReply, SchemaChat, Usage
from t2s.models.llama import (
    LlamaSource,
    context_overflow,
    grammar_for,
    import_llama_cpp,
)
from t2s.pool import cpu_count

# The sampling llama-cpp-python applies to a chat at a temperature above 0, so a reply does
# not depend on which of the two llama.cpp models produced it.
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05
# A chat waits for another sequence to finish reading a prompt that starts as its own when
# that saves at least this many tokens of prompt evaluation.
WAIT_FOR_PREFIX = 64


@dataclass(eq=False)
class _Request:
    """One chat completion on its way through the decode thread."""

    prompt: list[int]
    max_tokens: int
    stops: list[str]
    sampler: int  # a llama_sampler chain, freed when the request ends
    done: threading.Event = field(default_factory=threading.Event)
    fed: int = 0  # prompt tokens already in the sequence's KV cache
    reused: int = 0  # of which were there before this request (prefix reuse)
    generated: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)  # the generated tokens' text
    searched: int = 0  # bytes of text_bytes already searched for stop strings
    truncated: bool = False
    error: Exception | None = None

    @property
    def reading_prompt(self) -> bool:
        return self.fed < len(self.prompt)


@dataclass
class _Sequence:
    """One sequence of the shared context and the tokens its KV cache holds."""

    number: int
    cached: list[int] = field(default_factory=list)
    request: _Request | None = None


class BatchedLlamaModel(SchemaChat):
    """A GGUF that up to `parallel` threads may chat with at once; their tokens share decodes."""

    def __init__(self, source: LlamaSource, *, threads: int | None, parallel: int):
        self._llama_cpp = llama_cpp = import_llama_cpp()
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        set_verbose(False)  # llama.cpp logs every context it creates otherwise
        self.name = source.name
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = source.gpu_layers
        try:
            self._model = _internals.LlamaModel(
                path_model=source.path, params=model_params, verbose=False
            )
        except (ValueError, RuntimeError) as error:
            raise source.cannot_load(error) from None
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = source.n_ctx * parallel  # each sequence gets a context of n_ctx
        params.n_seq_max = parallel
        params.n_batch = params.n_ubatch = source.n_batch
        params.n_threads = params.n_threads_batch = threads or cpu_count()
        # Flash attention is what makes several sequences in one decode pay off on a CPU
        # (about 15% more tokens/s with 4 of them), so replies differ in the last bits from
        # LlamaModel's, which keeps llama-cpp-python's default of none.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._context = llama_cpp.llama_init_from_model(self._model.model, params)
        if not self._context:
            self._model.close()
            raise source.cannot_load(RuntimeError("no context could be created"))
        self._n_ctx = llama_cpp.llama_n_ctx_seq(self._context)
        self._n_batch = source.n_batch
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._sequences = [_Sequence(number) for number in range(parallel)]
        template = self._model_metadata("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{source.path} has no chat template; use a chat (instruct) model")
        eos = self._model.token_eos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(self._model.token_bos()),
            stop_token_ids=[eos],
        )
        self._tokenizer_lock = threading.Lock()
        self._arrivals: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._decoder = threading.Thread(target=self._decode_forever, daemon=True)
        self._decoder.start()

    def _model_metadata(self, key: str) -> str:
        size = 1 << 14
        while True:
            buffer = ctypes.create_string_buffer(size)
            needed = self._llama_cpp.llama_model_meta_val_str(
                self._model.model, key.encode(), buffer, size
            )
            if needed < size:
                return buffer.value.decode("utf-8", errors="replace") if needed >= 0 else ""
            size = needed + 1

    # --- caller threads ------------------------------------------------------------------

    def _complete(self, messages, options: ChatOptions, schema, max_tokens):
        if not self._decoder.is_alive():  # closed: its tokenizer is freed too
            raise ModelError(f"{self.name} was closed; load it again to chat")
        grammar = grammar_for(schema) if schema is not None else None
        rendered = self._formatter(messages=messages)
        with self._tokenizer_lock:
            prompt = self._model.tokenize(rendered.prompt.encode(), add_bos=False, special=True)
        if len(prompt) >= self._n_ctx:
            raise context_overflow(self._n_ctx)
        # The template's own end-of-turn text needs no stop string: its token is end-of-generation.
        stops = [] if schema is not None else list(options.stop or [])
        request = _Request(prompt, max_tokens, stops, self._sampler(grammar, options))
        started = time.perf_counter()
        self._arrivals.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        usage = Usage(
            prompt_tokens=len(prompt),
            completion_tokens=len(request.generated),
            prompt_eval_tokens=len(prompt) - request.reused,
        )
        text = _cut_at_stops(request.text_bytes.decode("utf-8", errors="ignore"), request.stops)
        reply = ChatReply(text, usage, time.perf_counter() - started, self.name)
        return reply, request.truncated

    def _sampler(self, grammar, options: ChatOptions) -> int:
        llama_cpp = self._llama_cpp
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        stages = []
        if grammar is not None:
            rule = llama_cpp.llama_sampler_init_grammar(
                self._model.vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            if not rule:
                llama_cpp.llama_sampler_free(chain)
                raise ModelError("invalid JSON schema: llama.cpp cannot parse its grammar")
            stages.append(rule)
        if options.temperature <= 0:
            stages.append(llama_cpp.llama_sampler_init_greedy())
        else:
            seed = options.seed if options.seed is not None else random.getrandbits(32)
            stages += [
                llama_cpp.llama_sampler_init_top_k(TOP_K),
                llama_cpp.llama_sampler_init_top_p(TOP_P, 1),
                llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
                llama_cpp.llama_sampler_init_temp(options.temperature),
                llama_cpp.llama_sampler_init_dist(seed),
            ]
        for stage in stages:
            llama_cpp.llama_sampler_chain_add(chain, stage)
        return chain

    # --- the decode thread ---------------------------------------------------------------

    def _decode_forever(self) -> None:
        waiting: list[_Request] = []
        while True:
            busy = any(s.request for s in self._sequences)
            try:
                # Block only when there is nothing to decode; otherwise just collect arrivals.
                waiting.append(self._arrivals.get(block=not busy and not waiting))
                while True:
                    waiting.append(self._arrivals.get_nowait())
            except queue.Empty:
                pass
            if None in waiting:  # close() was called: nobody may be left waiting
                closed = ModelError("the model was closed before this chat finished")
                for request in waiting:
                    if request is not None:
                        request.error = closed
                        request.done.set()
                for sequence in self._sequences:
                    if sequence.request is not None:
                        self._finish(sequence, closed)
                return
            try:
                waiting = [request for request in waiting if not self._admit(request)]
                self._step()
            except Exception as error:  # noqa: BLE001 - every caller must hear of it, not hang
                if not isinstance(error, ModelError):
                    error = ModelError(f"llama.cpp failed while decoding ({error})")
                for sequence in self._sequences:
                    if sequence.request is not None:
                        self._finish(sequence, error)

    def close(self) -> None:
        """Stop the decode thread and free the context and the model."""
        self._arrivals.put(None)
        self._decoder.join()
        self._llama_cpp.llama_batch_free(self._batch)
        self._llama_cpp.llama_free(self._context)
        self._model.close()

    def _admit(self, request: _Request) -> bool:
        """Put the request in the idle sequence that already holds most of its prompt.

        When another sequence (busy or not) holds a longer part of it, as every rollout's
        shared system prompt, that cache is copied over instead of evaluated again.
        """
        idle = [s for s in self._sequences if s.request is None]
        if not idle:
            return False
        sequence = max(idle, key=lambda s: _shared_prefix(s.cached, request.prompt))
        donor = max(self._sequences, key=lambda s: _shared_prefix(s.cached, request.prompt))
        shared = _shared_prefix(donor.cached, request.prompt)
        reading = [
            s.request.prompt for s in self._sequences if s.request and s.request.reading_prompt
        ]
        if any(_shared_prefix(p, request.prompt) >= shared + WAIT_FOR_PREFIX for p in reading):
            return False  # another sequence is reading the same start: copy it when it is done
        if donor is not sequence and shared > _shared_prefix(sequence.cached, request.prompt):
            # Sequences live in separate KV streams: llama.cpp copies a whole stream.
            self._llama_cpp.llama_memory_seq_rm(self._memory, sequence.number, -1, -1)
            self._llama_cpp.llama_memory_seq_cp(self._memory, donor.number, sequence.number, -1, -1)
            sequence.cached = list(donor.cached)
        # Keep the shared prefix, but always evaluate the last prompt token: its logits
        # choose the first generated token.
        keep = min(shared, len(request.prompt) - 1)
        self._llama_cpp.llama_memory_seq_rm(self._memory, sequence.number, keep, -1)
        sequence.cached = request.prompt[:keep]
        request.fed, request.reused = keep, keep
        sequence.request = request
        return True

    def _step(self) -> None:
        """One llama_decode: a token for each generating sequence, then prompt chunks."""
        entries: list[tuple[_Sequence, int, bool]] = []  # (sequence, token, wants logits)
        active = [s for s in self._sequences if s.request is not None]
        for sequence in active:
            if not sequence.request.reading_prompt:
                entries.append((sequence, sequence.request.generated[-1], True))
        for sequence in active:
            request = sequence.request
            room = self._n_batch - len(entries)
            if request.reading_prompt and room > 0:
                chunk = request.prompt[request.fed : request.fed + room]
                request.fed += len(chunk)
                last = len(chunk) - 1
                entries += [
                    (sequence, token, i == last and not request.reading_prompt)
                    for i, token in enumerate(chunk)
                ]
        if not entries:
            return
        self._decode(entries)
        for index, (sequence, _token, wants_logits) in enumerate(entries):
            if wants_logits:
                self._sample(sequence, index)

    def _decode(self, entries: list[tuple[_Sequence, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (sequence, token, wants_logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = len(sequence.cached)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence.number
            batch.logits[i] = wants_logits
            sequence.cached.append(token)
        status = self._llama_cpp.llama_decode(self._context, batch)
        if status != 0:
            raise ModelError(f"llama.cpp could not decode a batch (llama_decode returned {status})")

    def _sample(self, sequence: _Sequence, index: int) -> None:
        request = sequence.request
        token = self._llama_cpp.llama_sampler_sample(request.sampler, self._context, index)
        if self._llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(sequence)
            return
        request.generated.append(token)
        request.text_bytes += self._model.detokenize([token], special=False)
        if request.stops and self._reached_stop(request):
            self._finish(sequence)
            return
        if len(request.generated) >= request.max_tokens or len(sequence.cached) >= self._n_ctx:
            request.truncated = True
            self._finish(sequence)

    @staticmethod
    def _reached_stop(request: _Request) -> bool:
        """Whether a stop string ends in the new text: only the tail that could hold one is
        searched, so a long reply costs no more per token than a short one."""
        longest = max(len(stop.encode()) for stop in request.stops)
        start = max(0, request.searched - longest + 1)
        request.searched = len(request.text_bytes)
        tail = bytes(request.text_bytes[start:])
        return any(stop.encode() in tail for stop in request.stops)

    def _finish(self, sequence: _Sequence, error: Exception | None = None) -> None:
        request = sequence.request
        if error is not None:
            # What the failed decode left in this sequence's cache is unknown: drop it all.
            self._llama_cpp.llama_memory_seq_rm(self._memory, sequence.number, -1, -1)
            sequence.cached = []
            request.error = error
        self._llama_cpp.llama_sampler_free(request.sampler)
        sequence.request = None
        request.done.set()


def _cut_at_stops(text: str, stops: list[str]) -> str:
    """The text before the first stop string in it."""
    return text[: min((text.find(stop) for stop in stops if stop in text), default=len(text))]


def _shared_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length

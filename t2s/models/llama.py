"""The llama.cpp back-end: a local GGUF through llama-cpp-python, imported only when loaded."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from t2s.errors import ModelError
from t2s.models.base import (
    GRAMMAR_MAX_REPEAT,
    ChatReply,
    SchemaChat,
    Usage,
    largest_bound,
)
from t2s.models.gguf import read_gguf

if TYPE_CHECKING:
    from t2s.models.llama_batch import BatchedLlamaModel

INSTALL_HINT = "pip install llama-cpp-python (or run `make setup`)"


@dataclass
class LlamaSource:
    """Where a GGUF model is and how to load it; small and picklable, loaded in the worker."""

    path: str
    n_ctx: int = 4096
    gpu_layers: int = 0
    n_batch: int = 512
    name: str = ""

    def __post_init__(self):
        self.path = str(self.path)
        self.name = self.name or Path(self.path).name.removesuffix(".gguf")

    def prepare(self) -> None:
        """Run in the pool's parent before forking: check the file and import llama_cpp (no
        model is loaded), so errors come early and workers share the library's memory."""
        read_gguf(self.path)  # a missing, foreign or truncated file gets a precise message
        import_llama_cpp()

    def load(
        self, *, threads: int | None = None, worker_index: int = 0, parallel: int = 1
    ) -> LlamaModel | BatchedLlamaModel:
        """One conversation at a time, or `parallel` callers decoded together in one context."""
        self.prepare()
        if parallel > 1:
            from t2s.models.llama_batch import BatchedLlamaModel

            return BatchedLlamaModel(self, threads=threads, parallel=parallel)
        llama_cpp = import_llama_cpp()
        try:
            llama = llama_cpp.Llama(
                model_path=self.path,
                n_ctx=self.n_ctx,
                n_batch=self.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=self.gpu_layers,
                verbose=False,  # llama.cpp logs every load to stderr otherwise
            )
        except (ValueError, RuntimeError) as error:
            raise self.cannot_load(error) from None
        return LlamaModel(llama, self.name)

    def cannot_load(self, error: Exception) -> ModelError:
        return ModelError(
            f"llama.cpp cannot load {self.path} ({error}); is it a model llama.cpp supports?"
        )


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"llama-cpp-python is not installed: {INSTALL_HINT}") from None
    return llama_cpp


def context_overflow(n_ctx: int) -> ModelError:
    return ModelError(
        f"the prompt does not fit the model's context of {n_ctx} tokens; shorten the "
        "conversation or load the model with a larger n_ctx"
    )


def grammar_for(schema: dict):
    """llama.cpp's grammar for a JSON schema, or a ModelError saying why there is none."""
    from llama_cpp.llama_grammar import LlamaGrammar

    # Built here rather than via response_format, which silently falls back to plain JSON
    # when the schema cannot be turned into a grammar.
    if largest_bound(schema) > GRAMMAR_MAX_REPEAT:
        raise ModelError(
            f"invalid JSON schema: a maxLength/maxItems of {largest_bound(schema)} is more "
            f"than llama.cpp's grammar can hold ({GRAMMAR_MAX_REPEAT}); drop the bound and "
            "check the length after parsing"
        )
    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as error:  # noqa: BLE001 - the converter raises bare Exceptions
        raise ModelError(f"invalid JSON schema: llama.cpp cannot use it ({error})") from None


class LlamaModel(SchemaChat):
    """One loaded model. Consecutive chats that share a prompt prefix reuse its KV cache."""

    def __init__(self, llama, name: str):
        self.llama = llama
        self.name = name
        self._evaluated: list[int] = []
        evaluate = llama.eval

        def counting_eval(tokens):
            # llama-cpp-python decodes the uncached prompt suffix in the first eval of a
            # generation, then one token per sampled token: the first call is what we measure.
            self._evaluated.append(len(tokens))
            return evaluate(tokens)

        llama.eval = counting_eval

    def _complete(self, messages, options, schema, max_tokens) -> tuple[ChatReply, bool]:
        grammar = grammar_for(schema) if schema is not None else None
        self._evaluated.clear()
        started = time.perf_counter()
        try:
            response = self.llama.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=options.temperature,
                seed=options.seed,
                # A stop string could cut a JSON reply short; the grammar ends it instead.
                stop=options.stop if schema is None else None,
                grammar=grammar,
            )
        except ValueError as error:
            if "exceed context window" in str(error):
                raise context_overflow(self.llama.n_ctx()) from None
            raise
        seconds = time.perf_counter() - started
        choice, counts = response["choices"][0], response["usage"]
        usage = Usage(
            prompt_tokens=counts["prompt_tokens"],
            completion_tokens=counts["completion_tokens"],
            prompt_eval_tokens=self._evaluated[0] if self._evaluated else 0,
        )
        reply = ChatReply(choice["message"]["content"] or "", usage, seconds, self.name)
        return reply, choice["finish_reason"] == "length"

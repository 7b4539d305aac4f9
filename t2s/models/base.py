"""The one model interface every stage talks to, whatever the back-end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from t2s.errors import ModelError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class ChatOptions:
    schema: dict | None = None  # a JSON schema: the reply is decoded under it and must parse
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = 0
    stop: list[str] | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0  # tokens in the prompt
    completion_tokens: int = 0
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the cache)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.prompt_eval_tokens + other.prompt_eval_tokens,
        )


@dataclass
class ChatReply:
    text: str
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    model: str = ""

    def json(self) -> Any:
        """The reply parsed as JSON; a ModelError (not a traceback) when it is not JSON."""
        try:
            return json.loads(self.text)
        except ValueError as error:
            snippet = self.text[:80].replace("\n", " ")
            raise ModelError(f"model reply is not valid JSON ({error.msg}): {snippet!r}") from None


@runtime_checkable
class Model(Protocol):
    name: str

    def chat(self, messages: list[Message], options: ChatOptions | None = None) -> ChatReply: ...


@runtime_checkable
class ModelSource(Protocol):
    """A picklable description of a model; `load` runs in the worker that will use it."""

    name: str

    def load(self, *, threads: int | None = None, worker_index: int = 0) -> Model: ...
